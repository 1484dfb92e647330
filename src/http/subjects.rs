//! The data subject's rights over HTTP: the twins of gRPC's `Subjects`
//! (the application layer's `SubjectService`). The subject goes in the
//! body, never in the URL, where proxies would log it.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::api::{body, json_body, Api, Authed};
use super::openapi::Problems;
use super::problem::Problem;
use super::streams::StreamError;
use crate::formats::Format;
use crate::proto::{EraseSubjectRequest, ErasureMode, ExportSubjectRequest, SubjectExportChunk};

/// `POST /v1/subjects/export`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportBody {
    pub subject: String,
    /// ndjson (the default), ocsf, ecs, cef or csv: the events' format.
    #[serde(default)]
    pub format: String,
}

/// `POST /v1/subjects/erase`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EraseBody {
    pub subject: String,
    /// erase (the default) or pseudonymise.
    #[serde(default)]
    pub mode: String,
    /// Why, for the trail, without naming the person.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeptJson {
    pub type_prefix: String,
    pub events: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasedJson {
    pub request_id: String,
    pub erased: u64,
    pub references: u64,
    pub kept: Vec<KeptJson>,
    pub damaged_files_removed: u64,
}

/// One message of the export stream, as a JSON line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportLine {
    /// First line only: the signed checkpoint note every proof is against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Whole lines of the chosen format.
    pub data: String,
    /// One per event of `data`, in order.
    pub proofs: Vec<ProofJson>,
    /// Last line only: the report, as HTML.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub report_html: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProofJson {
    pub id: String,
    pub seq: u64,
    /// A C2SP tlog-proof (docs/integrity.md §5).
    pub proof: String,
}

/// Every event of one subject with its receipt, then a report (GDPR
/// Art. 15): the `ExportSubject` stream's messages as JSON lines.
#[utoipa::path(post, path = "/v1/subjects/export", tag = "subjects",
    request_body = ExportBody,
    responses(
        (status = 200, description = "One ExportLine a line", body = ExportLine,
         content_type = "application/x-ndjson"),
        Problems,
    ))]
pub async fn export(
    State(api): State<Api>,
    auth: Authed,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let bytes = body(bytes, &api)?;
    let request = json_body::<ExportBody>(&bytes)?;
    let format = match request.format.as_str() {
        "" => Format::Ndjson,
        name => Format::parse(name).ok_or_else(|| {
            Problem::invalid("format", "one of ndjson, ocsf, ecs, cef, csv".to_owned())
        })?,
    };
    let request = ExportSubjectRequest {
        subject: request.subject,
        format: format.to_proto() as i32,
    };
    let chunks = api
        .app
        .subjects
        .export::<StreamError>(auth.caller, auth.origin, request)
        .await?;
    let lines = chunks.map(|chunk| {
        chunk.map(|c| {
            let mut line = serde_json::to_vec(&ExportLine::from(c)).expect("JSON");
            line.push(b'\n');
            line
        })
    });
    let mut response = Body::from_stream(lines).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Erases or pseudonymises one subject's personal fields (GDPR Art. 17).
#[utoipa::path(post, path = "/v1/subjects/erase", tag = "subjects",
    request_body = EraseBody,
    responses((status = 200, body = ErasedJson), Problems))]
pub async fn erase(
    State(api): State<Api>,
    auth: Authed,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<ErasedJson>, Problem> {
    let bytes = body(bytes, &api)?;
    let request = json_body::<EraseBody>(&bytes)?;
    let mode = match request.mode.as_str() {
        "" | "erase" => ErasureMode::Erase,
        "pseudonymise" => ErasureMode::Pseudonymise,
        _ => return Err(Problem::invalid("mode", "erase or pseudonymise".to_owned())),
    };
    let request = EraseSubjectRequest {
        subject: request.subject,
        mode: mode as i32,
        reason: request.reason,
    };
    let done = api
        .app
        .subjects
        .erase(&auth.caller, &auth.origin, request)
        .await?;
    Ok(Json(ErasedJson {
        request_id: done.request_id,
        erased: done.erased,
        references: done.references,
        kept: done
            .kept
            .into_iter()
            .map(|k| KeptJson {
                type_prefix: k.type_prefix,
                events: k.events,
            })
            .collect(),
        damaged_files_removed: done.damaged_files_removed,
    }))
}

impl From<SubjectExportChunk> for ExportLine {
    fn from(c: SubjectExportChunk) -> Self {
        ExportLine {
            checkpoint: c.checkpoint.map(|c| c.note),
            data: String::from_utf8_lossy(&c.data).into_owned(),
            proofs: c
                .proofs
                .into_iter()
                .map(|p| ProofJson {
                    id: p.id,
                    seq: p.seq,
                    proof: p.tlog_proof,
                })
                .collect(),
            report_html: c.report_html,
        }
    }
}

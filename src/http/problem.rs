//! RFC 9457 problem details: the one place an error becomes an HTTP
//! answer. The status comes from the error's kind (the same kinds the
//! gRPC adapter maps to codes), the bad fields carry the names gRPC's
//! `BadRequest` gives them, and refusals that pass carry `Retry-After`.

use std::time::Duration;

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::app::{AppError, ErrorKind, FieldViolation};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One HTTP error answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    /// gRPC's name of the kind (`InvalidArgument`), as the trail records it.
    code: &'static str,
    detail: String,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
}

/// An RFC 9457 problem, as every `/v1` error is written.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProblemBody {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub type_: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, in words.
    pub detail: String,
    /// The gRPC code's name (`InvalidArgument`, `NotFound`, ...): what the
    /// same request gets over gRPC.
    pub code: String,
    /// The bad fields, named as gRPC's `BadRequest` names them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<ViolationBody>,
    /// When retrying helps: how long to wait (also as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ViolationBody {
    pub field: String,
    pub reason: String,
}

impl Problem {
    /// A bad request field the HTTP layer itself finds (a query parameter
    /// or body it cannot read), named as gRPC names it.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Problem {
        let (field, reason) = (field.into(), reason.into());
        Problem {
            status: StatusCode::BAD_REQUEST,
            code: ErrorKind::InvalidArgument.name(),
            detail: format!("{field}: {reason}"),
            violations: vec![FieldViolation { field, reason }],
            retry_after: None,
        }
    }

    /// A body over `limits.max_message_bytes`.
    pub fn too_large(limit: usize) -> Problem {
        Problem {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorKind::ResourceExhausted.name(),
            detail: format!(
                "the request body is larger than {limit} bytes (limits.max_message_bytes)"
            ),
            violations: Vec::new(),
            retry_after: None,
        }
    }

    /// A route or method that does not exist.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::NOT_FOUND,
            code: ErrorKind::NotFound.name(),
            detail: detail.into(),
            violations: Vec::new(),
            retry_after: None,
        }
    }
}

impl From<AppError> for Problem {
    fn from(error: AppError) -> Problem {
        let kind = error.kind();
        Problem {
            status: StatusCode::from_u16(kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: kind.name(),
            detail: error.to_string(),
            violations: error.violations(),
            retry_after: error.retry_after(),
        }
    }
}

impl Problem {
    /// The RFC 9457 body.
    pub fn to_json(&self) -> String {
        let body = ProblemBody {
            type_: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            violations: self
                .violations
                .iter()
                .map(|v| ViolationBody {
                    field: v.field.clone(),
                    reason: v.reason.clone(),
                })
                .collect(),
            retry_after_ms: self.retry_after.map(|d| d.as_millis() as u64),
        };
        serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(retry_after) = self.retry_after {
            // Whole seconds, rounded up: never earlier than the hint.
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        response
    }
}

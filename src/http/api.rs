//! The `/v1` JSON routes: each one authenticates, reads its request,
//! calls the application layer and writes its answer. Scope, the read
//! trail, limits and errors are the application layer's, the same as over
//! gRPC.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::app::{App, Origin};
use crate::auth::Caller;
use crate::json::{JsonError, JsonEvent};
use crate::proto::{IngestRequest, WaitFor};

use super::model::{
    AggregateBody, AggregateReply, CreateTokenBody, CreatedToken, IngestBody, IngestReply,
    SearchReply, TokenJson, TokenList,
};
use super::openapi::Problems;
use super::params::{self, FilterParams, PageParams, Params};
use super::problem::Problem;
use super::Peer;

/// What every `/v1` route shares.
#[derive(Clone)]
pub struct Api {
    pub app: App,
    /// The largest body read (`limits.max_message_bytes`, as for gRPC).
    pub max_body_bytes: usize,
    /// The largest page a search returns (`limits.max_search_limit`).
    pub max_search_limit: u32,
}

/// The caller behind `Authorization: Bearer …`, and where the call came
/// from; a route that takes it refuses everyone else with the same 401.
pub struct Authed {
    pub caller: Caller,
    pub origin: Origin,
}

impl FromRequestParts<Api> for Authed {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = api.app.authenticate(header)?;
        Ok(Authed {
            caller,
            origin: origin(parts),
        })
    }
}

/// Where an HTTP call came from, for the trail.
pub fn origin(parts: &Parts) -> Origin {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|info| info.0 .0);
    Origin::http(peer)
}

/// The origin alone, for routes that authenticate in their own way.
pub struct HttpOrigin(pub Origin);

impl<S: Send + Sync> FromRequestParts<S> for HttpOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(HttpOrigin(origin(parts)))
    }
}

/// The body, or 413 past the limit.
pub fn body(body: Result<Bytes, BytesRejection>, api: &Api) -> Result<Bytes, Problem> {
    body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(api.max_body_bytes)
        } else {
            Problem::invalid("body", rejection.body_text())
        }
    })
}

/// A JSON body as `T`; a problem names the path of the bad value
/// (`events[3].acessId`).
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        Problem::invalid(field, error.into_inner().to_string())
    })
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

fn wait_for(value: Option<&str>) -> Result<WaitFor, Problem> {
    match value.unwrap_or("durable") {
        "durable" => Ok(WaitFor::Durable),
        "searchable" => Ok(WaitFor::Searchable),
        other => Err(Problem::invalid(
            "wait_for",
            format!("{other:?} is not durable or searchable"),
        )),
    }
}

/// Event `i` of a batch as the application layer takes it.
fn event(i: usize, event: JsonEvent) -> Result<crate::proto::AuditEvent, Problem> {
    event.into_proto().map_err(|error| match error {
        JsonError::BadTime { field, .. } => {
            Problem::invalid(format!("events[{i}].{field}"), error.to_string())
        }
        JsonError::Syntax(reason) => Problem::invalid(format!("events[{i}]"), reason),
    })
}

/// The batch of `POST /v1/events`: a JSON object, or NDJSON with the
/// batch id and wait-for as query parameters.
fn ingest_request(
    headers: &HeaderMap,
    query: Option<&str>,
    bytes: &[u8],
) -> Result<IngestRequest, Problem> {
    let (events, batch_id, wait) = match content_type(headers) {
        "application/json" => {
            Params::parse(query).finish()?;
            let body: IngestBody = json_body(bytes)?;
            (body.events, body.batch_id, body.wait_for)
        }
        "application/x-ndjson" => {
            let mut params = Params::parse(query);
            let batch_id = params.one("batchId", "batch_id")?.unwrap_or_default();
            let wait = params.one("waitFor", "wait_for")?;
            params.finish()?;
            let text =
                std::str::from_utf8(bytes).map_err(|_| Problem::invalid("body", "not UTF-8"))?;
            let events = text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(n, line)| {
                    JsonEvent::parse(line)
                        .map_err(|e| Problem::invalid(format!("line {}", n + 1), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (events, batch_id, wait)
        }
        other => {
            return Err(Problem::invalid(
                "content-type",
                format!("{other:?}: send application/json or application/x-ndjson"),
            ))
        }
    };
    Ok(IngestRequest {
        events: events
            .into_iter()
            .enumerate()
            .map(|(i, e)| event(i, e))
            .collect::<Result<_, _>>()?,
        batch_id,
        wait_for: wait_for(wait.as_deref())? as i32,
    })
}

/// `POST /v1/events`.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    description = "Ingest a batch, all or nothing: a JSON object, or NDJSON with the batch id and wait-for as query parameters.",
    request_body(content(
        (IngestBody = "application/json"),
        (String = "application/x-ndjson"),
    )),
    params(
        ("batchId" = Option<String>, Query, description = "NDJSON only: a retry with the same id stores nothing twice"),
        ("waitFor" = Option<String>, Query, description = "NDJSON only: `durable` (default) or `searchable`"),
    ),
    responses((status = 200, body = IngestReply), Problems))]
pub async fn ingest(
    State(api): State<Api>,
    auth: Authed,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestReply>, Problem> {
    let bytes = body(bytes, &api)?;
    let request = ingest_request(&headers, query.as_deref(), &bytes)?;
    let reply = api.app.writes.ingest(&auth.caller, request).await?;
    Ok(Json(reply.into()))
}

/// `GET /v1/events`.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    description = "Search: one page of the matching events, newest first unless `ascending`.",
    params(FilterParams, PageParams),
    responses((status = 200, body = SearchReply), Problems))]
pub async fn search(
    State(api): State<Api>,
    auth: Authed,
    RawQuery(query): RawQuery,
) -> Result<Json<SearchReply>, Problem> {
    let request = params::search_request(query.as_deref())?;
    let reply = api
        .app
        .reads
        .search(&auth.caller, &auth.origin, request)
        .await?;
    Ok(Json(reply.into()))
}

/// `GET /v1/events/{id}`.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event's id")),
    responses((status = 200, body = JsonEvent), Problems))]
pub async fn get_event(
    State(api): State<Api>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<JsonEvent>, Problem> {
    let event = api
        .app
        .reads
        .get_event(&auth.caller, &auth.origin, id)
        .await?;
    Ok(Json(JsonEvent::from_proto(event)))
}

/// `POST /v1/aggregate`.
#[utoipa::path(post, path = "/v1/aggregate", tag = "analysis",
    description = "Exact counts over the matches of a filter: terms, date histograms, cardinalities, one level of sub-aggregations.",
    request_body = AggregateBody,
    responses((status = 200, body = AggregateReply), Problems))]
pub async fn aggregate(
    State(api): State<Api>,
    auth: Authed,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<AggregateReply>, Problem> {
    let bytes = body(bytes, &api)?;
    let request = json_body::<AggregateBody>(&bytes)?.into_proto()?;
    let reply = api
        .app
        .reads
        .aggregate(&auth.caller, &auth.origin, request)
        .await?;
    Ok(Json(reply.into()))
}

/// `POST /v1/tokens`.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = CreateTokenBody,
    responses((status = 200, body = CreatedToken), Problems))]
pub async fn create_token(
    State(api): State<Api>,
    auth: Authed,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<CreatedToken>, Problem> {
    let bytes = body(bytes, &api)?;
    let request = json_body::<CreateTokenBody>(&bytes)?.into_proto()?;
    let (token, secret) = api
        .app
        .tokens
        .create(&auth.caller, &auth.origin, request)
        .await?;
    Ok(Json(CreatedToken {
        token: token.into(),
        secret,
    }))
}

/// `GET /v1/tokens`.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList), Problems))]
pub async fn list_tokens(State(api): State<Api>, auth: Authed) -> Result<Json<TokenList>, Problem> {
    let tokens = api.app.tokens.list(&auth.caller, &auth.origin).await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(TokenJson::from).collect(),
    }))
}

/// `DELETE /v1/tokens/{id}`.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's public id")),
    responses((status = 200, body = TokenJson), Problems))]
pub async fn revoke_token(
    State(api): State<Api>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<TokenJson>, Problem> {
    let token = api
        .app
        .tokens
        .revoke(&auth.caller, &auth.origin, id)
        .await?;
    Ok(Json(token.into()))
}

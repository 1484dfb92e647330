//! The Pryv-compatible audit routes: `GET /{subject}/events` answers as
//! Pryv's `events.get` does over its audit store, and `GET
//! /{subject}/streams` as its `streams.get` does for `:_audit:accesses` and
//! `:_audit:actions`. A Pryv client that reads audit logs can be pointed
//! at auditd. Both go through the application layer (scope, trail,
//! limits) like every other read; only the shapes are Pryv's:
//!
//! - events: `id` = `:_audit:<id>`, `streamIds`, `type`, `time`, and
//!   `content` = `{source, action, query, status, error: {id, message}}`,
//!   plus Pryv's `created`/`modified` (the event's time) and
//!   `createdBy`/`modifiedBy` (`system`);
//! - every answer carries Pryv's `meta`; errors are
//!   `{"error": {"id", "message", "data"?}, "meta"}` with Pryv's ids.

mod query;

use axum::extract::{Path, RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::app::{AppError, ErrorKind};
use crate::auth::{Caller, StoredKind};
use crate::json::parse_time;
use crate::proto::{
    aggregation, AggregateRequest, Aggregation, AuditEvent, EventFilter, SearchRequest,
    TermsAggregation,
};

use super::api::{Api, HttpOrigin};
use super::params::Params;

/// The API version Pryv clients read from `meta`.
const API_VERSION: &str = "1.9.0";
/// Pryv's default page when no time range and no limit is given.
const DEFAULT_LIMIT: u32 = 20;
/// A day, Pryv's default span before `toTime` when only it is given.
const DAY_SECONDS: f64 = 86_400.0;
/// Most distinct accesses or actions `streams.get` lists.
const MAX_STREAM_CHILDREN: u32 = 10_000;

/// A Pryv error: its id, HTTP status, message and optional data.
#[derive(Debug)]
pub struct PryvError {
    pub id: &'static str,
    status: StatusCode,
    message: String,
    data: Option<Value>,
}

impl PryvError {
    fn new(id: &'static str, status: StatusCode, message: impl Into<String>) -> Self {
        PryvError {
            id,
            status,
            message: message.into(),
            data: None,
        }
    }

    fn structure(message: impl Into<String>) -> Self {
        Self::new(
            "invalid-request-structure",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    fn parameters(message: impl Into<String>, data: Value) -> Self {
        PryvError {
            data: Some(data),
            ..Self::new(
                "invalid-parameters-format",
                StatusCode::BAD_REQUEST,
                message,
            )
        }
    }

    /// `invalid-parameters-format` naming one parameter.
    fn bad_parameter(name: &str, message: impl Into<String>) -> Self {
        Self::parameters(
            "The parameters' format is invalid.",
            json!([{ "parameter": name, "message": message.into() }]),
        )
    }

    fn unknown_streams(stream: &str) -> Self {
        PryvError {
            data: Some(json!({ "streams": [stream] })),
            ..Self::new(
                "unknown-referenced-resource",
                StatusCode::BAD_REQUEST,
                format!("Unknown referenced streams \"{stream}\""),
            )
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new("forbidden", StatusCode::FORBIDDEN, message)
    }
}

impl From<AppError> for PryvError {
    fn from(error: AppError) -> Self {
        let message = error.to_string();
        let fields: Vec<Value> = error
            .violations()
            .into_iter()
            .map(|v| json!({ "field": v.field, "reason": v.reason }))
            .collect();
        match error.kind() {
            ErrorKind::InvalidArgument => Self::parameters(message, Value::Array(fields)),
            ErrorKind::Unauthenticated => Self::new(
                "invalid-access-token",
                StatusCode::FORBIDDEN,
                "Cannot find access from token.",
            ),
            ErrorKind::PermissionDenied | ErrorKind::FailedPrecondition => Self::forbidden(message),
            ErrorKind::NotFound => Self::new("unknown-resource", StatusCode::NOT_FOUND, message),
            ErrorKind::ResourceExhausted => {
                Self::new("too-many-requests", StatusCode::TOO_MANY_REQUESTS, message)
            }
            ErrorKind::Unavailable | ErrorKind::Aborted => {
                Self::new("api-unavailable", StatusCode::SERVICE_UNAVAILABLE, message)
            }
            ErrorKind::DeadlineExceeded | ErrorKind::DataLoss | ErrorKind::Internal => Self::new(
                "unexpected-error",
                StatusCode::INTERNAL_SERVER_ERROR,
                message,
            ),
        }
    }
}

fn meta() -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    json!({ "apiVersion": API_VERSION, "serverTime": now, "serial": "auditd" })
}

impl IntoResponse for PryvError {
    fn into_response(self) -> Response {
        let mut error = json!({ "id": self.id, "message": self.message });
        if let Some(data) = self.data {
            error["data"] = data;
        }
        (self.status, Json(json!({ "error": error, "meta": meta() }))).into_response()
    }
}

/// Pryv's token forms: the `Authorization` header (the token alone, or
/// `Bearer`/`Basic`), else the `auth` query parameter.
fn caller(api: &Api, headers: &HeaderMap, auth: Option<String>) -> Result<Caller, PryvError> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty());
    let token = match header {
        Some(h) if h.len() > 6 && h[..6].eq_ignore_ascii_case("basic ") => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(h[6..].trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .map(|user| user.split(':').next().unwrap_or_default().to_owned())
        }
        Some(h) if h.len() > 7 && h[..7].eq_ignore_ascii_case("bearer ") => {
            Some(h[7..].trim().to_owned())
        }
        Some(h) => Some(h.to_owned()),
        None => auth,
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(PryvError::new(
            "invalid-access-token",
            StatusCode::UNAUTHORIZED,
            "The access token is missing: expected an \"Authorization\" header or an \"auth\" \
             query string parameter.",
        ));
    };
    Ok(api.app.authenticate(Some(&format!("Bearer {token}")))?)
}

/// The path's account must be the token's (an admin token reads any).
fn check_subject(caller: &Caller, subject: &str) -> Result<(), PryvError> {
    match caller.kind {
        StoredKind::Admin => Ok(()),
        StoredKind::Ingest => Err(PryvError::forbidden(
            "The given token's access permissions do not allow this operation.",
        )),
        _ if caller.subject == subject => Ok(()),
        // Pryv looks the token up in that account, where it is unknown.
        _ => Err(PryvError::new(
            "invalid-access-token",
            StatusCode::FORBIDDEN,
            "Cannot find access from token.",
        )),
    }
}

fn seconds(value: &str, name: &str) -> Result<f64, PryvError> {
    let bad = || PryvError::bad_parameter(name, format!("{value:?} is not a number of seconds"));
    let n: f64 = value.parse().map_err(|_| bad())?;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(bad())
    }
}

fn timestamp(seconds: f64) -> Result<prost_types::Timestamp, PryvError> {
    parse_time(&seconds.to_string()).map_err(|m| PryvError::parameters(m, Value::Null))
}

/// The parameters of Pryv's `events.get`, as one search request; the
/// number of events to skip comes apart.
fn events_request(query: Option<&str>, subject: &str) -> Result<(SearchRequest, u32), PryvError> {
    let mut params = Params::parse(query);
    let take = |p: &mut Params, name: &str| -> Result<Option<String>, PryvError> {
        p.one(name, name)
            .map_err(|_| PryvError::bad_parameter(name, "given more than once"))
    };
    let mut streams = params.all("streams");
    streams.extend(params.all("streams[]"));
    let from = take(&mut params, "fromTime")?
        .map(|v| seconds(&v, "fromTime"))
        .transpose()?;
    let to = take(&mut params, "toTime")?
        .map(|v| seconds(&v, "toTime"))
        .transpose()?;
    let modified_since = take(&mut params, "modifiedSince")?
        .map(|v| seconds(&v, "modifiedSince"))
        .transpose()?;
    let count = |p: &mut Params, name: &str| -> Result<Option<u32>, PryvError> {
        take(p, name)?
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| PryvError::bad_parameter(name, "not a positive integer"))
            })
            .transpose()
    };
    let limit = count(&mut params, "limit")?;
    let skip = count(&mut params, "skip")?.unwrap_or(0);
    let ascending = match take(&mut params, "sortAscending")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(PryvError::bad_parameter(
                "sortAscending",
                format!("{other:?} is not a boolean"),
            ))
        }
    };
    let types = params.all("types");
    let mut types_more = params.all("types[]");
    // Audit events are never trashed, and never deleted.
    let state = take(&mut params, "state")?;
    let _ = take(&mut params, "includeDeletions")?;
    let _ = take(&mut params, "auth")?;
    if let Some((name, _)) = params.remaining().next() {
        return Err(PryvError::bad_parameter(name, "unknown parameter"));
    }
    let query = query::streams_query(&streams)?;
    // Pryv's defaults: toTime alone looks one day back; fromTime alone
    // runs to now; neither, nor a limit: the 20 newest.
    let from = from
        .or(to.map(|t| t - DAY_SECONDS))
        .into_iter()
        .chain(modified_since)
        .reduce(f64::max);
    let limit = match (from, to, limit) {
        (None, None, None) => Some(DEFAULT_LIMIT),
        (_, _, limit) => limit,
    };
    let mut all_types = types;
    all_types.append(&mut types_more);
    let request = SearchRequest {
        from_time: from.map(timestamp).transpose()?,
        to_time: to.map(timestamp).transpose()?,
        subjects: vec![subject.to_owned()],
        types: all_types,
        query: query.unwrap_or_default(),
        ascending,
        limit: limit.map(|l| l.saturating_add(skip)).unwrap_or(u32::MAX),
        // `streams` absent means Pryv's `*`, which never holds audit
        // events; `state=trashed` holds none either.
        ..SearchRequest::default()
    };
    if streams.is_empty() || state.as_deref() == Some("trashed") {
        return Ok((
            SearchRequest {
                limit: 0,
                ..request
            },
            u32::MAX,
        ));
    }
    Ok((request, skip))
}

/// An event as Pryv's audit store writes it.
fn pryv_event(event: AuditEvent) -> Value {
    let time = crate::schema::timestamp_micros(event.time.as_ref()) as f64 / 1e6;
    let mut stream_ids = Vec::new();
    if !event.access_id.is_empty() {
        stream_ids.push(format!(":_audit:access-{}", event.access_id));
    }
    stream_ids.push(format!(":_audit:action-{}", event.action));
    let mut content = json!({
        "source": {
            "name": event.source.as_ref().map(|s| s.name.as_str()).unwrap_or(""),
            "ip": event.source.as_ref().map(|s| s.ip.as_str()).unwrap_or(""),
        },
        "action": event.action,
        "query": event.query,
    });
    if event.status != 0 {
        content["status"] = json!(event.status);
    }
    if !event.error_id.is_empty() || !event.error_message.is_empty() {
        content["error"] = json!({ "id": event.error_id, "message": event.error_message });
    }
    json!({
        "id": format!(":_audit:{}", event.id),
        "streamIds": stream_ids,
        "type": event.r#type,
        "time": time,
        "content": content,
        "created": time,
        "createdBy": "system",
        "modified": time,
        "modifiedBy": "system",
    })
}

/// `GET /{subject}/events`: Pryv's `events.get` over the audit store.
pub async fn events(
    State(api): State<Api>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    HttpOrigin(origin): HttpOrigin,
) -> Result<Json<Value>, PryvError> {
    let auth = Params::parse(query.as_deref()).all("auth").pop();
    let caller = caller(&api, &headers, auth)?;
    check_subject(&caller, &subject)?;
    let (request, skip) = events_request(query.as_deref(), &subject)?;
    // An app or shared token reads its own access's stream only; naming
    // another is refused, as Pryv refuses it, rather than found empty.
    if matches!(caller.kind, StoredKind::App | StoredKind::Shared) {
        let mut streams = Params::parse(query.as_deref());
        let mut values = streams.all("streams");
        values.extend(streams.all("streams[]"));
        if let Some(other) = query::named_accesses(&values)
            .into_iter()
            .find(|a| *a != caller.access_id)
        {
            return Err(PryvError::forbidden(format!(
                "stream [access-{other}] has not sufficient permission to get events"
            )));
        }
    }
    let mut with_deletions = json!({});
    if Params::parse(query.as_deref())
        .all("includeDeletions")
        .pop()
        .as_deref()
        == Some("true")
    {
        with_deletions["eventDeletions"] = json!([]);
    }
    if request.limit == 0 {
        with_deletions["events"] = json!([]);
        with_deletions["meta"] = meta();
        return Ok(Json(with_deletions));
    }
    let max = api.max_search_limit;
    if request.limit != u32::MAX && request.limit > max {
        return Err(PryvError::parameters(
            format!("skip + limit may be at most {max} (limits.max_search_limit)"),
            json!([{ "parameter": "limit", "message": format!("skip + limit > {max}") }]),
        ));
    }
    let unbounded = request.limit == u32::MAX;
    let request = SearchRequest {
        limit: request.limit.min(max),
        exact_total: false,
        ..request
    };
    let answer = api.app.reads.search(&caller, &origin, request).await?;
    if unbounded && !answer.next_page_token.is_empty() {
        return Err(PryvError::new(
            "too-many-results",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "More than {max} events match: give a limit, or a narrower time range \
                 (limits.max_search_limit)"
            ),
        ));
    }
    let events: Vec<Value> = answer
        .events
        .into_iter()
        .skip(skip as usize)
        .map(pryv_event)
        .collect();
    with_deletions["events"] = Value::Array(events);
    with_deletions["meta"] = meta();
    Ok(Json(with_deletions))
}

/// `GET /{subject}/streams?parentId=…`: the audit store's streams, its
/// distinct accesses (`:_audit:accesses`) or actions (`:_audit:actions`).
/// App and shared tokens may not list them, as in Pryv.
pub async fn streams(
    State(api): State<Api>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    HttpOrigin(origin): HttpOrigin,
) -> Result<Json<Value>, PryvError> {
    let mut params = Params::parse(query.as_deref());
    let auth = params.all("auth").pop();
    let parent = params.all("parentId").pop();
    let _ = params.all("state");
    if let Some((name, _)) = params.remaining().next() {
        return Err(PryvError::bad_parameter(name, "unknown parameter"));
    }
    let caller = caller(&api, &headers, auth)?;
    check_subject(&caller, &subject)?;
    let parent_stream = |id: &str, name: &str| {
        json!({ "id": format!(":_audit:{id}"), "name": name, "parentId": ":_audit:",
                "children": [], "childrenHidden": true })
    };
    let (field, prefix, parent_id) = match parent.as_deref() {
        None => {
            return Ok(Json(json!({
                "streams": [{ "id": ":_audit:", "name": "Audit", "parentId": null,
                    "children": [parent_stream("accesses", "Accesses"), parent_stream("actions", "Actions")] }],
                "meta": meta(),
            })))
        }
        Some(":_audit:") => {
            return Ok(Json(json!({
                "streams": [parent_stream("accesses", "Accesses"), parent_stream("actions", "Actions")],
                "meta": meta(),
            })))
        }
        Some(p @ ":_audit:accesses") => ("access_id", "access-", p),
        Some(p @ ":_audit:actions") => ("action", "action-", p),
        Some(other) => return Err(PryvError::unknown_streams(other)),
    };
    if matches!(caller.kind, StoredKind::App | StoredKind::Shared) {
        return Err(PryvError::forbidden(format!(
            "Insufficient permissions or non-existant stream [{parent_id}]"
        )));
    }
    let request = AggregateRequest {
        filter: Some(EventFilter {
            subjects: vec![subject],
            ..EventFilter::default()
        }),
        aggregations: vec![Aggregation {
            name: "values".into(),
            kind: Some(aggregation::Kind::Terms(TermsAggregation {
                field: field.into(),
                size: MAX_STREAM_CHILDREN,
            })),
            sub_aggregations: vec![],
        }],
    };
    let answer = api.app.reads.aggregate(&caller, &origin, request).await?;
    let mut keys: Vec<String> = answer
        .results
        .get("values")
        .map(|r| r.buckets.iter().map(|b| b.key.clone()).collect())
        .unwrap_or_default();
    keys.sort();
    let children: Vec<Value> = keys
        .into_iter()
        .map(|key| {
            json!({ "id": format!(":_audit:{prefix}{key}"), "name": format!("{prefix}{key}"),
                    "parentId": parent_id, "children": [] })
        })
        .collect();
    Ok(Json(json!({ "streams": children, "meta": meta() })))
}

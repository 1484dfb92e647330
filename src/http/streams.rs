//! The long-lived routes: `GET /v1/tail` as Server-Sent Events and
//! `GET /v1/export` as a streamed download. Both are the application
//! layer's streams (bounded outboxes, the trail, the subscriber limit),
//! framed for HTTP.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use crate::app::{tail_resume_token, AppError};
use crate::formats::Format;
use crate::json::JsonEvent;

use super::api::{Api, Authed};
use super::openapi::Problems;
use super::params::{self, ExportParams, FilterParams, TailParams};
use super::problem::Problem;

/// How a stream's error travels once the response has started.
pub struct StreamError(AppError);

impl From<AppError> for StreamError {
    fn from(error: AppError) -> Self {
        StreamError(error)
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StreamError {}

/// `GET /v1/tail?…filter…`: each matching event as `id: <resume token>`
/// and `data: <event JSON>`. `Last-Event-ID` (or `resumeToken`) resumes
/// right after that event. A heartbeat comment, carrying the current
/// token as its id, comes at least every 15 s. An error after the start
/// is a last `event: error` whose data is the problem JSON.
#[utoipa::path(get, path = "/v1/tail", tag = "analysis",
    params(
        FilterParams,
        TailParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume right after this event"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id: <resume token>`, `data: <event JSON>`",
         body = String, content_type = "text/event-stream"),
        Problems,
    ))]
pub async fn tail(
    State(api): State<Api>,
    auth: Authed,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let request = params::tail_request(query.as_deref(), last_event_id)?;
    let responses = api
        .app
        .reads
        .tail::<StreamError>(auth.caller, auth.origin, request)
        .await?;
    let events = responses.flat_map(|response| {
        let events: Vec<Result<Event, Infallible>> = match response {
            Ok(response) if response.events.is_empty() => vec![Ok(Event::default()
                .id(response.resume_token)
                .comment("heartbeat"))],
            Ok(response) => response
                .events
                .into_iter()
                .map(|event| {
                    let id = tail_resume_token(event.seq + 1);
                    let json = serde_json::to_string(&JsonEvent::from_proto(event))
                        .unwrap_or_else(|_| "{}".into());
                    Ok(Event::default().id(id).data(json))
                })
                .collect(),
            Err(StreamError(error)) => vec![Ok(error_event(error))],
        };
        futures::stream::iter(events)
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn error_event(error: AppError) -> Event {
    let problem = Problem::from(error).to_json();
    Event::default().event("error").data(problem)
}

/// `GET /v1/export?format=…&…filter…`: every matching event of one
/// snapshot, as a download. `ascending` and `resumeToken` as for gRPC.
/// An error after the start cuts the body short (the chunked encoding
/// never ends), so a partial download never looks whole.
#[utoipa::path(get, path = "/v1/export", tag = "analysis",
    params(FilterParams, ExportParams),
    responses(
        (status = 200, description = "The events, one line each (CSV: a header row first)",
         content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (String = "text/plain"),
         )),
        Problems,
    ))]
pub async fn export(
    State(api): State<Api>,
    auth: Authed,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let (request, format) = params::export_request(query.as_deref())?;
    let chunks = api
        .app
        .reads
        .export::<StreamError>(auth.caller, auth.origin, request)
        .await?;
    Ok(download(format, chunks.map(|chunk| chunk.map(|c| c.data))))
}

fn download(
    format: Format,
    data: impl Stream<Item = Result<Vec<u8>, StreamError>> + Send + 'static,
) -> Response {
    let mut response = Body::from_stream(data).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let disposition = format!(
        "attachment; filename=\"auditd-export.{}\"",
        format.extension()
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

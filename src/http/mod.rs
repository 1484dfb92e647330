//! HTTP: the `/v1` JSON API (`api`, `streams`), `/metrics` (Prometheus)
//! and `/healthz`. Every `/v1` route is a thin adapter over the
//! application layer, as the gRPC services are; `problem` is the one
//! place an error becomes an HTTP answer.

mod api;
mod model;
mod openapi;
mod page;
mod params;
mod problem;
mod pryv;
mod retention;
mod streams;
mod subjects;
mod tlog;
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::App;
use crate::status::{Health, PipelineStatus};

pub use problem::Problem;
pub use tls::rustls_config;

/// Histogram buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use (several
/// servers in one test process share it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    status: Arc<PipelineStatus>,
    prometheus: PrometheusHandle,
    /// Set when `/metrics` needs an admin token: the application layer,
    /// whose bearer check it shares with every other transport.
    metrics_auth: Option<App>,
}

/// The address of the peer of an HTTP connection, for the read trail.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::conn::HttpListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::conn::HttpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// HTTPS (`axum_server`) gives the peer's address as it is.
impl axum::extract::connect_info::Connected<SocketAddr> for Peer {
    fn connect_info(peer: SocketAddr) -> Peer {
        Peer(peer)
    }
}

/// Every route. `/metrics` asks for an admin token when `metrics_require_token`.
pub fn router(
    app: App,
    status: Arc<PipelineStatus>,
    metrics_require_token: bool,
    limits: &crate::config::Limits,
) -> Router {
    let max_body_bytes = limits.max_message_bytes;
    let state = AppState {
        status,
        prometheus: prometheus(),
        metrics_auth: metrics_require_token.then(|| app.clone()),
    };
    let api = api::Api {
        app,
        max_body_bytes,
        max_search_limit: limits.max_search_limit,
    };
    let v1 = Router::new()
        .route("/v1/events", post(api::ingest).get(api::search))
        .route("/v1/events/{id}", get(api::get_event))
        .route("/v1/events/{id}/receipt", get(tlog::receipt))
        .route("/tlog/checkpoint", get(tlog::checkpoint))
        .route("/tlog/key", get(tlog::key))
        .route("/tlog/tile/{*rest}", get(tlog::tile))
        .route(
            "/tlog/partition/{p}/checkpoint",
            get(tlog::partition_checkpoint),
        )
        .route(
            "/tlog/partition/{p}/tile/{*rest}",
            get(tlog::partition_tile),
        )
        .route("/v1/aggregate", post(api::aggregate))
        .route("/v1/tail", get(streams::tail))
        .route("/v1/export", get(streams::export))
        .route("/v1/tokens", post(api::create_token).get(api::list_tokens))
        .route("/v1/tokens/{id}", delete(api::revoke_token))
        .route("/v1/retention", get(retention::status))
        .route("/v1/retention/lock", post(retention::lock))
        .route("/v1/retention/sweep", post(retention::sweep))
        .route(
            "/v1/holds",
            post(retention::add_hold).get(retention::list_holds),
        )
        .route("/v1/holds/{id}", delete(retention::release_hold))
        .route("/v1/subjects/export", post(subjects::export))
        .route("/v1/subjects/erase", post(subjects::erase))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/{subject}/events", get(pryv::events))
        .route("/{subject}/streams", get(pryv::streams))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(api);
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(v1)
        .merge(page::routes())
        .fallback(|| async { Problem::not_found("no such route") })
        .layer(axum::middleware::map_response(security_headers))
}

/// `GET /v1/openapi.json`, open to all: it describes, it serves no data.
async fn openapi_json() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let document = DOCUMENT.get_or_init(openapi::document).clone();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document,
    )
}

/// The one content security policy: scripts, styles and fetches from
/// this origin only, no inline script or style, no `eval`, no framing.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// On every answer: no sniffing, no referrer, no framing, and a policy
/// that lets nothing run but the page's own files.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        (X_FRAME_OPTIONS, "DENY"),
        (CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_VALUE),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> (StatusCode, String) {
    if let Some(app) = &state.metrics_auth {
        let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let admin = app
            .authenticate(header)
            .and_then(|caller| Ok(caller.require_admin("read metrics")?));
        if let Err(error) = admin {
            let status = StatusCode::from_u16(error.kind().http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, format!("{error}\n"));
        }
    }
    (StatusCode::OK, state.prometheus.render())
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.status.health() {
        Health::Serving => (StatusCode::OK, "serving\n".into()),
        Health::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: replaying the write-ahead log\n".into(),
        ),
        Health::Degraded(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {reason}\n"),
        ),
        Health::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {reason}\n"),
        ),
    }
}

//! HTTP: `/metrics` (Prometheus) and `/healthz`.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::status::{Health, PipelineStatus};

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
}

pub fn router(status: Arc<PipelineStatus>) -> Router {
    let state = AppState {
        status,
        prometheus: prometheus(),
    };
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics_page(State(state): State<AppState>) -> String {
    state.prometheus.render()
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.status.health() {
        Health::Serving => (StatusCode::OK, "serving\n".into()),
        Health::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: replaying the write-ahead log\n".into(),
        ),
        Health::Failed(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {reason}\n"),
        ),
    }
}

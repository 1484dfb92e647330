//! HTTP: `/metrics` (Prometheus) and `/healthz`.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::App;
use crate::status::{Health, PipelineStatus};
use crate::tls::TlsMaterial;
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;

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

/// `/metrics` asks for an admin token when `metrics_auth` is given.
pub fn router(status: Arc<PipelineStatus>, metrics_auth: Option<App>) -> Router {
    let state = AppState {
        status,
        prometheus: prometheus(),
        metrics_auth,
    };
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state(state)
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

/// The rustls settings for HTTPS, from the daemon's TLS material (ring,
/// like tonic's), with client certificates required when it holds a
/// client CA.
pub fn rustls_config(tls: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, std::io::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, reason: String| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {reason}"))
    };
    let read_certs =
        |pem: &[u8], what: &str| -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
            CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(what, e.to_string()))
        };
    let chain = read_certs(&tls.cert, "tls.cert")?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| bad("tls.key", e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in read_certs(ca, "tls.client_ca")? {
                roots
                    .add(root)
                    .map_err(|e| bad("tls.client_ca", e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad("tls.client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| bad("tls.key", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

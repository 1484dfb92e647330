//! HTTP: `/metrics` (Prometheus) and `/healthz`.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::auth::TokenStore;
use crate::config::TlsConfig;
use crate::server::ServerError;
use crate::status::{Health, PipelineStatus};
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
    /// Set when `/metrics` needs an admin token.
    metrics_tokens: Option<Arc<TokenStore>>,
}

/// `/metrics` checks tokens against `metrics_tokens` when given.
pub fn router(status: Arc<PipelineStatus>, metrics_tokens: Option<Arc<TokenStore>>) -> Router {
    let state = AppState {
        status,
        prometheus: prometheus(),
        metrics_tokens,
    };
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> (StatusCode, String) {
    if let Some(tokens) = &state.metrics_tokens {
        let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        match tokens.authenticate(header) {
            Ok(caller) if caller.require_admin("read metrics").is_ok() => {}
            Ok(_) => return (StatusCode::FORBIDDEN, "an admin token is required\n".into()),
            Err(e) => return (StatusCode::UNAUTHORIZED, format!("{e}\n")),
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

/// The rustls settings for HTTPS, from the same files as gRPC's TLS (ring,
/// like tonic's), with client certificates required when `client_ca` is
/// set.
pub fn rustls_config(tls: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let bad = |path: &std::path::Path, reason: String| ServerError::Tls {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    };
    let read_certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, ServerError> {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(path, e.to_string()))
    };
    let chain = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in read_certs(ca)? {
                roots.add(root).map_err(|e| bad(ca, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

//! The client side, shared by `auditctl`, the tests and the benches, and
//! not used by the daemon: the bearer-token interceptor, channel set-up,
//! deterministic sample events (`gen`) and CPU readings (`cpu`).

pub mod cpu;
pub mod gen;

use std::path::Path;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::AuthError;
use crate::proto::audit_log_client::AuditLogClient;

/// Largest message a client sends or accepts: the daemon's own limit
/// (`limits.max_message_bytes`) by default.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// An `AuditLog` client that sends a bearer token with every call.
pub type Client = AuditLogClient<InterceptedService<Channel, BearerToken>>;

/// An `Integrity` client that sends a bearer token.
pub type IntegrityClient =
    crate::proto::integrity_client::IntegrityClient<InterceptedService<Channel, BearerToken>>;

/// A `Retention` client that sends a bearer token.
pub type RetentionClient =
    crate::proto::retention_client::RetentionClient<InterceptedService<Channel, BearerToken>>;

/// A `Subjects` client that sends a bearer token.
pub type SubjectsClient =
    crate::proto::subjects_client::SubjectsClient<InterceptedService<Channel, BearerToken>>;

/// A tonic interceptor that adds `authorization: Bearer <token>` to every
/// call: what `auditctl` and the tests use.
#[derive(Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl BearerToken {
    /// `Err` when `token` holds characters a header cannot carry.
    pub fn new(token: &str) -> Result<Self, AuthError> {
        format!("Bearer {}", token.trim())
            .parse()
            .map(BearerToken)
            .map_err(|_| AuthError::Unauthenticated)
    }

    /// The header's value, `Bearer <token>`, for an HTTP client.
    pub fn header_value(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// What a client needs to reach a daemon over TLS: the CA to trust, and a
/// certificate and key when the daemon asks for one (mutual TLS).
#[derive(Debug, Default, Clone)]
pub struct ClientTls<'a> {
    pub ca: Option<&'a Path>,
    pub identity: Option<(&'a Path, &'a Path)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad address {addr}: {reason}")]
    Address { addr: String, reason: String },
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS settings: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// Where and how to connect to `addr` (`http://…` or `https://…`), with
/// TLS when `tls` names a CA or a client certificate.
pub fn endpoint(addr: &str, tls: &ClientTls<'_>) -> Result<Endpoint, ClientError> {
    let mut endpoint = Channel::from_shared(addr.to_owned()).map_err(|e| ClientError::Address {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })?;
    if tls.ca.is_some() || tls.identity.is_some() {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ClientError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = tls.ca {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = tls.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

/// An `AuditLog` client on `channel`, with the bearer token and the
/// message limits set.
pub fn integrity(channel: Channel, bearer: BearerToken) -> IntegrityClient {
    crate::proto::integrity_client::IntegrityClient::with_interceptor(channel, bearer)
}

pub fn retention(channel: Channel, bearer: BearerToken) -> RetentionClient {
    crate::proto::retention_client::RetentionClient::with_interceptor(channel, bearer)
}

pub fn subjects(channel: Channel, bearer: BearerToken) -> SubjectsClient {
    crate::proto::subjects_client::SubjectsClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn audit_log(channel: Channel, bearer: BearerToken) -> Client {
    AuditLogClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

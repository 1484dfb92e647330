//! TLS material, read once at start-up from the files `tls` names and
//! shared by both listeners: gRPC (tonic) and HTTP (rustls).

use std::path::{Path, PathBuf};

use crate::config::TlsConfig;

/// The PEM bytes of the server's certificate chain and key, and of the
/// client CA when clients must present a certificate (mutual TLS).
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// A TLS file that could not be read, or whose contents are unusable.
#[derive(Debug, thiserror::Error)]
#[error("TLS file {path}: {source}")]
pub struct TlsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl TlsMaterial {
    /// Reads the files `tls` names; `None` when TLS is off.
    pub fn load(tls: &TlsConfig) -> Result<Option<TlsMaterial>, TlsError> {
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            return Ok(None);
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Some(TlsMaterial {
            cert: read(cert)?,
            key: read(key)?,
            client_ca: tls.client_ca.as_deref().map(read).transpose()?,
        }))
    }

    /// The gRPC server's settings.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert, &self.key);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        config
    }
}

//! The rustls settings of the HTTPS listener.

use std::sync::Arc;

use crate::tls::TlsMaterial;

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

//! TLS on gRPC, with certificates made at test time: TLS clients that trust
//! the CA get in, plain-text clients do not, and with a client CA set, a
//! client without a certificate is refused.

mod common;

use std::path::Path;

use auditd::client::BearerToken;
use auditd::config::TlsConfig;
use auditd::proto::audit_log_client::AuditLogClient;
use auditd::proto::SearchRequest;
use common::pki::{pki, Pki};
use common::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn write_tls(dir: &Path, pki: &Pki, mutual: bool) -> TlsConfig {
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    TlsConfig {
        cert: Some(put("server.pem", &pki.server.0)),
        key: Some(put("server.key", &pki.server.1)),
        client_ca: mutual.then(|| put("ca.pem", &pki.ca)),
    }
}

/// A client of `server` with `token`, over TLS trusting `ca` (plain text
/// without), presenting `identity`.
async fn tls_client(
    server: &TestServer,
    token: &str,
    ca: Option<&str>,
    identity: Option<&(String, String)>,
) -> Result<Client, String> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", server.grpc)).unwrap();
    if let Some(ca) = ca {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Ok(AuditLogClient::with_interceptor(
        channel,
        BearerToken::new(token).unwrap(),
    ))
}

async fn tls_search(
    server: &TestServer,
    ca: Option<&str>,
    identity: Option<&(String, String)>,
) -> Result<u64, String> {
    let mut client = tls_client(server, &server.admin_token(), ca, identity).await?;
    client
        .search(SearchRequest::default())
        .await
        .map(|r| r.into_inner().total_hits)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Starts without waiting on the health stream (which would need TLS too):
/// the admin token file appears before the listeners serve.
async fn start_tls(dir: &Path, tls: TlsConfig) -> TestServer {
    let mut config = test_config(dir);
    config.tls = tls;
    let server = TestServer::spawn(config).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while !dir.join(auditd::auth::ADMIN_TOKEN_FILE).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        tokio::task::yield_now().await;
    }
    server
}

/// A TLS search, retried while the daemon still replays its (empty) log;
/// any other failure fails the test.
async fn search_once_serving(
    server: &TestServer,
    ca: &str,
    identity: Option<&(String, String)>,
) -> u64 {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match tls_search(server, Some(ca), identity).await {
            Ok(total) => return total,
            Err(e) if e.starts_with("Unavailable") && std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("a TLS client trusting the CA: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_get_in_and_plain_text_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = pki();
    let server = start_tls(dir.path(), write_tls(certs.path(), &pki, false)).await;
    let total = search_once_serving(&server, &pki.ca, None).await;
    assert_eq!(total, 0);
    let plain = tls_search(&server, None, None).await;
    assert!(
        plain.is_err(),
        "a plain-text client got an answer: {plain:?}"
    );
    let other_ca = pki_ca_of_another_pki();
    let untrusted = tls_search(&server, Some(&other_ca), None).await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the server's CA connected"
    );
    server.stop().await.unwrap();
}

fn pki_ca_of_another_pki() -> String {
    pki().ca
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = pki();
    let server = start_tls(dir.path(), write_tls(certs.path(), &pki, true)).await;
    search_once_serving(&server, &pki.ca, Some(&pki.client)).await;
    let anonymous = tls_search(&server, Some(&pki.ca), None).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate got in: {anonymous:?}"
    );
    let stranger = pki_ca_of_another_client();
    let foreign = tls_search(&server, Some(&pki.ca), Some(&stranger)).await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA got in: {foreign:?}"
    );
    server.stop().await.unwrap();
}

fn pki_ca_of_another_client() -> (String, String) {
    pki().client
}

/// GET over HTTPS with rustls; `Err` when the handshake or the request
/// fails, the raw response otherwise.
async fn https_get(
    server: &TestServer,
    ca: &str,
    identity: Option<&(String, String)>,
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(
                    chain,
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.http)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    tls.read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// A plain-text GET; the raw bytes of whatever comes back.
async fn plain_get(server: &TestServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_side_speaks_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = pki();
    let server = start_tls(dir.path(), write_tls(certs.path(), &pki, false)).await;
    let response = https_get(&server, &pki.ca, None, "/metrics")
        .await
        .expect("HTTPS with the CA");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let plain = plain_get(&server, "/metrics").await;
    assert!(
        !plain.starts_with("HTTP/1.1 200"),
        "plain text was served: {plain:?}"
    );
    server.stop().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = start_tls(dir.path(), write_tls(certs.path(), &pki, true)).await;
    let with_cert = https_get(&server, &pki.ca, Some(&pki.client), "/metrics")
        .await
        .expect("mutual TLS");
    assert!(with_cert.starts_with("HTTP/1.1 200"), "{with_cert}");
    let without = https_get(&server, &pki.ca, None, "/metrics").await;
    assert!(
        !without.is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "no client certificate, yet served"
    );
    server.stop().await.unwrap();
}

/// Nodes of several partitions read each other over mutual TLS
/// (`cluster.tls_ca`, each node's own certificate as client
/// certificate): a `query` node, which holds no index, finds through the
/// owner every event a client wrote to it over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_several_partitions_read_each_other_over_mutual_tls() {
    use auditd::config::Role;
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = pki();
    let tls = write_tls(certs.path(), &pki, true);
    let nats = common::nats::NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let node = |name: &str, role| {
        let mut config = common::nats::on_partitions(dir.path(), &nats, 2, name, role);
        config.tls = tls.clone();
        config.cluster.tls_ca = tls.client_ca.clone();
        config
    };
    let q = TestServer::spawn(node("q", Role::Query)).await;
    let token_file = q.data_dir.join(auditd::auth::ADMIN_TOKEN_FILE);
    let deadline = std::time::Instant::now() + DEADLINE;
    while !token_file.exists() {
        assert!(std::time::Instant::now() < deadline, "q did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let admin = q.admin_token();
    let a = TestServer::spawn(node("a", Role::All)).await;
    let events = generated(300, 71, 300);
    let mut writer = loop {
        match tls_client(&a, &admin, Some(&pki.ca), Some(&pki.client)).await {
            Ok(client) => break client,
            Err(e) => assert!(std::time::Instant::now() < deadline, "a: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    common::nats::ingest_searchable(&mut writer, &events, "over-tls").await;
    let mut reader = tls_client(&q, &admin, Some(&pki.ca), Some(&pki.client))
        .await
        .unwrap();
    let everything = SearchRequest {
        exact_total: true,
        ..Default::default()
    };
    // Until q has seen a's leases, no node owns a partition for it.
    let found = loop {
        match reader.search(everything.clone()).await {
            Ok(found) => break found.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(std::time::Instant::now() < deadline, "q: {s:?}")
            }
            Err(s) => panic!("{s:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(found.total_hits, events.len() as u64);
    for server in [q, a] {
        server.stop().await.unwrap();
    }
}

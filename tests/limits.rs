//! Connection and stream limits: too many connections, idle connections,
//! idle IngestStreams and shutdown with a stream open all end in bounded
//! time, with a clear answer where the protocol allows one.

mod common;

use auditd::proto::IngestRequest;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads until the server closes the connection; fails after DEADLINE.
async fn closed_by_server(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // HTTP/2 settings, GOAWAY
            }
        }
    };
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("the server should close the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once_and_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_connections = 2;
    let server = TestServer::start(config).await;
    // The health watch TestServer::start used may still hold a slot for a
    // moment after it returns: take the second slot with retries.
    let mut first = server.client().await;
    count_stored(&mut first).await;
    let mut second = connected_when_free(&server).await;

    let extra = TcpStream::connect(server.grpc).await.unwrap();
    closed_by_server(extra).await;
    // The two held connections still work.
    count_stored(&mut first).await;
    count_stored(&mut second).await;

    // A slot comes back when a connection closes.
    drop(first);
    let mut third = connected_when_free(&server).await;
    count_stored(&mut third).await;
    let (_, metrics) = http_get(server.http, "/metrics").await;
    assert!(
        metrics.contains("auditd_connections_refused_total"),
        "{metrics}"
    );
    drop((second, third));
    server.stop().await.unwrap();
}

/// A client whose connection works, retried until a slot is free (a
/// closed connection gives its slot back once the server sees the close).
async fn connected_when_free(server: &TestServer) -> Client {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let channel = tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = channel {
            let token = auditd::client::BearerToken::new(&server.admin_token()).unwrap();
            let mut client =
                auditd::proto::audit_log_client::AuditLogClient::with_interceptor(channel, token);
            if client
                .search(auditd::proto::SearchRequest::default())
                .await
                .is_ok()
            {
                return client;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection slot came back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.idle_connection_timeout_ms = 200;
    let server = TestServer::start(config).await;
    let idle = TcpStream::connect(server.grpc).await.unwrap();
    closed_by_server(idle).await;
    let (_, metrics) = http_get(server.http, "/metrics").await;
    assert!(
        metrics.contains("auditd_connections_idle_closed_total"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ingest_stream_ends_with_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.stream_idle_timeout_ms = 200;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let (tx, mut replies) = stream_with_one_batch(&mut client).await;
    // Then nothing: the server ends the stream, the client's sender open.
    let ended = tokio::time::timeout(DEADLINE, replies.message())
        .await
        .expect("the stream should end")
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded);
    assert!(
        ended.message().contains("stream_idle_timeout_ms"),
        "{ended:?}"
    );
    drop(tx);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let (tx, mut replies) = stream_with_one_batch(&mut client).await;

    // The producer keeps its stream open; shutdown must not wait for it.
    let stopping = tokio::spawn(server.stop());
    let ended = tokio::time::timeout(DEADLINE, replies.message())
        .await
        .expect("the stream should end at shutdown")
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    stopping.await.unwrap().unwrap();
    drop(tx);

    // What was acknowledged is there after a restart.
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 10);
    server.stop().await.unwrap();
}

/// An open IngestStream whose first batch (10 events) was answered; the
/// sender stays open.
async fn stream_with_one_batch(
    client: &mut Client,
) -> (
    tokio::sync::mpsc::Sender<IngestRequest>,
    tonic::Streaming<auditd::proto::IngestResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(IngestRequest {
        events: generated(10, 1, 10),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().ids.len(), 10);
    (tx, replies)
}

//! IngestStream, overload refusal with a retry hint, and the HTTP side.

mod common;

use auditd::proto::{IngestRequest, SearchRequest, WaitFor};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stream_answers_each_request_in_order_and_ends_on_the_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(300, 5, 300);
    let mut requests: Vec<IngestRequest> = events
        .chunks(100)
        .map(|c| IngestRequest {
            events: c.to_vec(),
            ..Default::default()
        })
        .collect();
    let mut bad = requests[0].clone();
    bad.events[0].action.clear();
    requests.push(bad);
    requests.push(requests[0].clone()); // never reached
    let mut replies = client
        .ingest_stream(tokio_stream::iter(requests.clone()))
        .await
        .unwrap()
        .into_inner();
    for expected in &requests[..3] {
        let reply = replies
            .message()
            .await
            .unwrap()
            .expect("a reply per request");
        let ids: Vec<String> = expected.events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(reply.ids, ids, "in request order");
    }
    let error = replies.message().await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("events[0].action"));
    assert!(
        replies.message().await.unwrap_or(None).is_none(),
        "the stream ends at the error"
    );

    // The three good batches are stored once each.
    ingest(&mut client, generated(1, 6, 1), WaitFor::Searchable).await;
    assert_eq!(count_stored(&mut client).await, 301);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_lag_budget_ingest_waits_then_refuses_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The indexer never catches up on its own, and one batch fills the
    // budget.
    config.index.commit_interval_ms = 3_600_000;
    config.wal.lag_budget_bytes = 1;
    config.ingest.submit_timeout_ms = 200;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let batch = || IngestRequest {
        events: generated(10, 7, 10),
        ..Default::default()
    };
    client.ingest(batch()).await.expect("the first batch fits");
    let started = std::time::Instant::now();
    let refused = client.ingest(batch()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "it waited first"
    );
    assert!(
        refused.message().contains("lag budget"),
        "{}",
        refused.message()
    );
    let hint = retry_after_ms(&refused);
    assert!(hint > 0);
    assert!(refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .is_some());
    // Refused means not stored: after the graceful stop commits, only the
    // first batch is there.
    server.stop().await.unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 10);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    ingest(&mut client, generated(50, 8, 50), WaitFor::Searchable).await;
    client.search(SearchRequest::default()).await.unwrap();

    let (code, body) = http_get(server.http, "/healthz").await;
    assert_eq!((code, body.trim()), (200, "serving"));
    let (code, metrics) = http_get(server.http, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "auditd_events_ingested_total",
        "auditd_batches_ingested_total",
        "auditd_ingest_duration_seconds_bucket",
        "auditd_index_commits_total",
        "auditd_index_commit_duration_seconds_bucket",
        "auditd_index_docs",
        "auditd_wal_bytes_total",
        "auditd_search_duration_seconds_bucket",
        "auditd_indexer_queue_depth",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let (code, _) = http_get(server.http, "/nope").await;
    assert_eq!(code, 404);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_require_token = true;
    let server = TestServer::start(config).await;
    assert_eq!(http_get(server.http, "/metrics").await.0, 401);
    assert_eq!(
        http_get_with(server.http, "/metrics", Some("adt.bogus.token"))
            .await
            .0,
        401
    );
    let (code, body) =
        http_get_with(server.http, "/metrics", Some(server.admin_token().trim())).await;
    assert_eq!(code, 200);
    assert!(body.contains("auditd_"));
    // /healthz stays open for load balancers.
    assert_eq!(http_get(server.http, "/healthz").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_frames_on_the_grpc_port_leave_the_server_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..=255u8).cycle().take(10_000).collect(),
        vec![0; 64 * 1024],
        // The HTTP/2 preface, then a frame header promising more than comes.
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &[0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3],
        ]
        .concat(),
        // The preface and a gRPC body cut mid-message.
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            &[0, 0, 5, 0, 1, 0, 0, 0, 1, 0],
        ]
        .concat(),
    ];
    for bytes in &garbage {
        let mut stream = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await;
    }
    // Still serving, and nothing was stored by any of it.
    ingest(&mut client, generated(2, 4, 2), WaitFor::Searchable).await;
    assert_eq!(count_stored(&mut client).await, 2);
    server.stop().await.unwrap();
}

//! The daemon on the JetStream log (`log.kind = "jetstream"`), against
//! real `nats-server` processes on loopback: ingest, search, a killed
//! daemon replayed from the stream, NATS going away and coming back, a
//! three-server cluster losing a server under ingest, a batch larger than
//! the servers take, two daemons on one stream, TLS, and the two bounds:
//! the record budget ahead of the index and a full stream.

mod common;

use std::collections::HashSet;

use auditd::proto::{AuditEvent, IngestRequest, WaitFor};
use common::nats::{
    ingest_retrying, jetstream_env, on_jetstream, stream_leader, wait_for_jetstream, NatsServer,
};
use common::*;

/// The refusal of a batch of `events` that must not be stored.
async fn refused(client: &mut Client, events: Vec<AuditEvent>) -> tonic::Status {
    let request = IngestRequest {
        events,
        ..Default::default()
    };
    client.ingest(request).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_and_restart_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let server = TestServer::start(on_jetstream(&data, &nats, "AUDIT_A")).await;
    let mut client = server.client().await;
    let events = generated(2_000, 41, 700);
    for chunk in events.chunks(250) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    assert_eq!(count_stored(&mut client).await, 2_000);
    assert!(!data.join("wal").exists(), "no local log was opened");
    // The log's bytes are bytes here too, not the stream's record count.
    let (_, metrics) = http_get(server.http, "/metrics").await;
    let wal_bytes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("auditd_wal_bytes_total "))
        .expect("auditd_wal_bytes_total")
        .trim()
        .parse()
        .unwrap();
    assert!(
        wal_bytes > 2_000.0 * 100.0,
        "{wal_bytes} bytes for 2,000 events"
    );
    server.stop().await.unwrap();

    let server = TestServer::start(on_jetstream(&data, &nats, "AUDIT_A")).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 2_000, "nothing lost");
    ingest(&mut client, generated(10, 42, 10), WaitFor::Searchable).await;
    assert_dense_seqs(&mut client).await;
    server.stop().await.unwrap();

    // Its index positions are that stream's: another log is refused.
    for other in [
        test_config(&data),
        on_jetstream(&data, &nats, "AUDIT_OTHER"),
    ] {
        let error = TestServer::spawn(other).await.outcome().await.unwrap_err();
        let error = error.to_string();
        assert!(error.contains("jetstream:AUDIT_A"), "{error}");
    }
}

/// A daemon killed with everything acknowledged only in the stream (it
/// never commits on its own) finds it all again from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_replays_what_the_stream_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let env = jetstream_env(&nats);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = Daemon::start_with(&data, &env);
    daemon.wait_serving().await;
    let mut client = daemon.client(&data).await;
    let mut acknowledged = HashSet::new();
    for chunk in generated(3_000, 43, 1_000).chunks(300) {
        let ids = ingest(&mut client, chunk.to_vec(), WaitFor::Durable)
            .await
            .ids;
        acknowledged.extend(ids);
    }
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(!data.join("wal").exists(), "no local log was opened");

    let mut daemon = Daemon::start_with(&data, &env);
    daemon.wait_serving().await;
    let mut client = daemon.client(&data).await;
    let stored = stored_once_with_all_of(&mut client, &acknowledged).await;
    assert_eq!(stored.len(), 3_000);
    assert_dense_seqs(&mut client).await;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
}

/// With NATS gone, Ingest answers UNAVAILABLE and stores nothing; once it
/// is back, ingest goes on, and every acknowledged event is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_away_means_unavailable_and_back_means_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let server = TestServer::start(on_jetstream(&data, &nats, "AUDIT_B")).await;
    let mut client = server.client().await;
    let mut acknowledged = HashSet::new();
    let first = ingest(&mut client, generated(500, 44, 500), WaitFor::Durable).await;
    acknowledged.extend(first.ids);

    nats.kill();
    let refusal = refused(&mut client, generated(100, 45, 100)).await;
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("AUDIT_B"), "{refusal:?}");

    nats.restart();
    // The log repairs and probes on its own: ingest until it is back.
    let (ids, _) = ingest_retrying(&mut client, &generated(300, 46, 300), "").await;
    acknowledged.extend(ids);
    let stored = stored_once_with_all_of(&mut client, &acknowledged).await;
    assert_eq!(stored.len(), 800, "the refused batch was not stored");
    assert_dense_seqs(&mut client).await;
    server.stop().await.unwrap();
}

/// Three NATS servers, a stream of three replicas: killing one server
/// under sustained ingest loses and duplicates nothing, and ingest goes on
/// (a batch caught in the leader's election may be refused UNAVAILABLE,
/// and is retried, as a client would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_cluster_loses_a_server_under_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = NatsServer::cluster(&dir.path().join("nats"), 3, 8 << 20);
    wait_for_jetstream(&servers, 3).await;
    let mut config = on_jetstream(&dir.path().join("data"), &servers[0], "AUDIT_R3");
    config.log.jetstream.servers = servers.iter().map(|s| s.url.clone()).collect();
    config.log.jetstream.replicas = 3;
    config.log.jetstream.timeout_ms = 2_000;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let leader = stream_leader(&servers, "AUDIT_R3").await;
    let events = generated(6_000, 51, 2_000);
    let mut acknowledged = HashSet::new();
    let mut refusals = 0;
    for (i, chunk) in events.chunks(100).enumerate() {
        if i == 20 {
            servers[leader].kill();
        }
        let (ids, refused) = ingest_retrying(&mut client, chunk, &format!("r3-{i}")).await;
        acknowledged.extend(ids);
        refusals += refused;
    }
    eprintln!("killed the stream leader n{leader}: {refusals} refusals, retried");
    let stored = stored_once_with_all_of(&mut client, &acknowledged).await;
    assert_eq!(stored.len(), 6_000, "{refusals} refusals, no duplicate");
    assert_dense_seqs(&mut client).await;
    server.stop().await.unwrap();
}

/// NATS that requires TLS: the log connects with `tls_ca`, and without it
/// the start fails, naming the stream and why the server was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_reaches_nats_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::pki();
    let put = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key) = (
        put("nats.pem", &pki.server.0),
        put("nats.key", &pki.server.1),
    );
    let ca = put("ca.pem", &pki.ca);
    let nats = NatsServer::start_tls(&dir.path().join("nats"), &cert, &key);
    let data = dir.path().join("data");
    let mut config = on_jetstream(&data, &nats, "AUDIT_TLS");
    config.log.jetstream.tls_ca = Some(ca);
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    ingest(&mut client, generated(100, 53, 100), WaitFor::Searchable).await;
    assert_eq!(count_stored(&mut client).await, 100);
    server.stop().await.unwrap();

    config.log.jetstream.tls_ca = None;
    let error = TestServer::spawn(config).await.outcome().await.unwrap_err();
    let error = error.to_string();
    assert!(error.contains("AUDIT_TLS: cannot connect to"), "{error}");
    assert!(error.contains("invalid peer certificate"), "{error}");
}

/// A batch larger than the servers' max_payload is INVALID_ARGUMENT
/// naming `events` and the limit, before it reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_servers_take_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 64 << 10);
    let data = dir.path().join("data");
    let server = TestServer::start(on_jetstream(&data, &nats, "AUDIT_C")).await;
    let mut client = server.client().await;
    let refusal = refused(&mut client, generated(1_000, 47, 1_000)).await;
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument, "{refusal:?}");
    assert!(refusal.message().contains("max_payload"), "{refusal:?}");
    // Smaller batches go in, and the log did not fault.
    for chunk in generated(1_000, 47, 1_000).chunks(50) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    assert_eq!(count_stored(&mut client).await, 1_000);
    server.stop().await.unwrap();
}

/// Two daemons on one stream: the second one's publishes are refused
/// (they do not land after the first one's records), and its repair does
/// not delete what the first one acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_stream_cannot_write_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let first = TestServer::start(on_jetstream(&dir.path().join("a"), &nats, "AUDIT_D")).await;
    let second = TestServer::start(on_jetstream(&dir.path().join("b"), &nats, "AUDIT_D")).await;
    let (mut a, mut b) = (first.client().await, second.client().await);
    let mut acknowledged = HashSet::new();
    acknowledged.extend(
        ingest(&mut a, generated(200, 48, 200), WaitFor::Durable)
            .await
            .ids,
    );
    for _ in 0..3 {
        let refusal = refused(&mut b, generated(50, 49, 50)).await;
        assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
        assert!(refusal.message().contains("AUDIT_D"), "{refusal:?}");
    }
    acknowledged.extend(
        ingest(&mut a, generated(200, 50, 200), WaitFor::Searchable)
            .await
            .ids,
    );
    let stored = stored_once_with_all_of(&mut a, &acknowledged).await;
    assert_eq!(stored.len(), 400);
    second.stop().await.unwrap();
    first.stop().await.unwrap();

    // The first daemon's records are all in the stream, in order.
    let server = TestServer::start(on_jetstream(&dir.path().join("a"), &nats, "AUDIT_D")).await;
    let mut a = server.client().await;
    assert_eq!(count_stored(&mut a).await, 400);
    assert_dense_seqs(&mut a).await;
    server.stop().await.unwrap();
}

/// Past `lag_budget_records` (the stream ahead of the index), Ingest waits
/// for `submit_timeout_ms`, then refuses with RESOURCE_EXHAUSTED and a
/// retry hint, and the refused batch is not in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_record_budget_ingest_is_refused_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let mut config = on_jetstream(&data, &nats, "AUDIT_E");
    // The indexer never catches up on its own, and one record fills the
    // budget.
    config.index.commit_interval_ms = 3_600_000;
    config.log.jetstream.lag_budget_records = 1;
    config.ingest.submit_timeout_ms = 200;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    // The budget is crossed once the stream is more than one record
    // ahead: the third batch is refused.
    ingest(&mut client, generated(10, 61, 10), WaitFor::Durable).await;
    ingest(&mut client, generated(10, 62, 10), WaitFor::Durable).await;
    let refusal = refused(&mut client, generated(10, 63, 10)).await;
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(refusal.message().contains("lag budget"), "{refusal:?}");
    assert!(retry_after_ms(&refusal) > 0);
    server.stop().await.unwrap();

    let server = TestServer::start(on_jetstream(&data, &nats, "AUDIT_E")).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 20, "not the refused batch");
    server.stop().await.unwrap();
}

/// A stream at `max_bytes` refuses what does not fit (discard "new"):
/// Ingest answers UNAVAILABLE naming the stream, stores none of that
/// batch, and takes batches again once indexing has purged the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_whole_batches_until_indexing_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let mut config = on_jetstream(&data, &nats, "AUDIT_F");
    config.index.commit_interval_ms = 3_600_000;
    config.log.jetstream.max_bytes = 256 << 10;
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let mut acknowledged = HashSet::new();
    let refusal = loop {
        let batch = generated(200, 63 + acknowledged.len() as u64, 200);
        let request = IngestRequest {
            events: batch,
            ..Default::default()
        };
        match client.ingest(request).await {
            Ok(reply) => {
                acknowledged.extend(reply.into_inner().ids);
                assert!(acknowledged.len() < 100_000, "the stream never filled");
            }
            Err(status) => break status,
        }
    };
    assert!(
        acknowledged.len() >= 400,
        "batches went in before it filled"
    );
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("AUDIT_F"), "{refusal:?}");
    // A graceful stop indexes what waits, which purges the stream.
    server.stop().await.unwrap();

    // Restarted with the usual commit interval, so that what it takes
    // next is indexed and purged again.
    config.index.commit_interval_ms = test_config(&data).index.commit_interval_ms;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let stored = stored_once_with_all_of(&mut client, &acknowledged).await;
    assert_eq!(stored.len(), acknowledged.len(), "nothing of the refusal");
    let (ids, _) = ingest_retrying(&mut client, &generated(200, 99, 200), "").await;
    assert_eq!(ids.len(), 200);
    server.stop().await.unwrap();
}

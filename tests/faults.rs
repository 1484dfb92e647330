//! Disk faults, injected through the `failpoints` feature: a batch the WAL
//! cannot make durable is refused (UNAVAILABLE) and nothing of it is
//! stored; health says degraded; once the fault clears, ingest resumes on
//! its own; a failed index commit loses nothing. Built only with
//! `--features failpoints` (the README's test command turns it on).
#![cfg(feature = "failpoints")]

mod common;

use std::sync::{Mutex, MutexGuard};

use auditd::proto::{AuditEvent, IngestRequest, SearchRequest, WaitFor};
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// Fail points are process-wide: one test at a time arms them.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the fail-point lock and disarms every point when dropped, even
/// when the test fails.
struct Faults(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Faults {
    fn take() -> Faults {
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Faults(guard)
    }

    fn arm(&self, name: &str, action: &str) {
        fail::cfg(name, action).unwrap();
    }

    fn clear(&self, name: &str) {
        fail::remove(name);
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        for (name, _) in fail::list() {
            fail::remove(name);
        }
    }
}

/// Events whose action marks them as belonging to `tag`.
fn tagged(tag: &str, count: u64, seed: u64) -> Vec<AuditEvent> {
    generated(count, seed, count)
        .into_iter()
        .map(|mut e| {
            e.action = format!("fault.{tag}");
            e
        })
        .collect()
}

async fn count_action(client: &mut Client, action: &str) -> u64 {
    client
        .search(SearchRequest {
            actions: vec![action.into()],
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .total_hits
}

/// A WAL fault at `point`: the batch is refused and not stored, health is
/// degraded (writes only), and ingest resumes by itself once it clears.
async fn wal_fault_refuses_then_heals(point: &str, action: &str, segment_bytes: u64) {
    let faults = Faults::take();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.wal.segment_bytes = segment_bytes;
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    ingest(&mut client, tagged("before", 20, 1), WaitFor::Searchable).await;

    faults.arm(point, action);
    let refused = client
        .ingest(IngestRequest {
            events: tagged("refused", 20, 2),
            ..Default::default()
        })
        .await
        .expect_err("a batch the WAL cannot make durable must be refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("not stored") && refused.message().contains(point),
        "the message says what happened: {}",
        refused.message()
    );

    // Degraded: writes are NOT_SERVING, the server as a whole still serves.
    wait_health(&server.url(), "auditd.ingest", ServingStatus::NotServing).await;
    wait_health(&server.url(), "", ServingStatus::Serving).await;
    let (code, body) = http_get(server.http, "/healthz").await;
    assert_eq!(code, 503);
    assert!(body.starts_with("degraded: wal:"), "{body}");
    let (_, metrics) = http_get(server.http, "/metrics").await;
    assert!(metrics.contains("auditd_wal_errors_total"), "{metrics}");
    assert!(metrics.contains("auditd_degraded{stage=\"wal\"} 1"));
    // Reads are audited through the WAL; one that cannot be audited is
    // refused, never served unaudited.
    let read = client
        .search(SearchRequest::default())
        .await
        .expect_err("an unauditable read is refused");
    assert_eq!(read.code(), tonic::Code::Unavailable);
    assert!(read.message().contains("could not be audited"), "{read:?}");

    // The fault clears: an idle probe notices, and ingest works again.
    faults.clear(point);
    wait_health(&server.url(), "auditd.ingest", ServingStatus::Serving).await;
    ingest(&mut client, tagged("after", 20, 3), WaitFor::Searchable).await;
    assert_eq!(count_action(&mut client, "fault.before").await, 20);
    assert_eq!(count_action(&mut client, "fault.after").await, 20);
    assert_eq!(count_action(&mut client, "fault.refused").await, 0);
    let (code, _) = http_get(server.http, "/healthz").await;
    assert_eq!(code, 200);
    server.stop().await.unwrap();
    assert_eq!(
        actions_in_wal(&config.data_dir)
            .iter()
            .filter(|a| *a == "fault.refused")
            .count(),
        0,
        "a refused batch must not stay in the log, where a crash would replay it"
    );

    // The log the repair left replays cleanly, with nothing refused in it.
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    assert_eq!(count_action(&mut client, "fault.before").await, 20);
    assert_eq!(count_action(&mut client, "fault.after").await, 20);
    assert_eq!(count_action(&mut client, "fault.refused").await, 0);
    server.stop().await.unwrap();
}

/// The action of every event in what is left of the log.
fn actions_in_wal(data_dir: &std::path::Path) -> Vec<String> {
    let dir = auditd::datadir::DataDir::new(data_dir).wal();
    let first = auditd::wal::segment::list(&dir).unwrap()[0].start;
    let mut actions = Vec::new();
    auditd::wal::Wal::open(
        &dir,
        auditd::wal::LogPosition::new(first),
        64 << 20,
        Default::default(),
        |record| {
            if let auditd::record::LogRecord::Batch(batch) = auditd::record::decode(record)? {
                actions.extend(batch.batch.events.into_iter().map(|e| e.action));
            }
            Ok(())
        },
    )
    .unwrap();
    actions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_wal_write_refuses_the_batch_and_heals() {
    wal_fault_refuses_then_heals("wal::write", "return(enospc)", 64 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_wal_fsync_refuses_the_batch_and_heals() {
    wal_fault_refuses_then_heals("wal::fsync", "return", 64 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_wal_rotation_refuses_the_batch_and_heals() {
    // Segments so small that every batch starts a new one.
    wal_fault_refuses_then_heals("wal::rotate", "return", 4096).await;
}

/// An index fault at `point`: batches are still acknowledged (they are in
/// the WAL), reads go on, health is degraded, and once commits work again
/// every acknowledged event becomes searchable, once.
async fn index_fault_loses_nothing_and_heals(point: &str) {
    let faults = Faults::take();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    ingest(&mut client, tagged("before", 20, 1), WaitFor::Searchable).await;

    faults.arm(point, "return");
    for seed in 0..5 {
        ingest(
            &mut client,
            tagged("during", 20, 10 + seed),
            WaitFor::Durable,
        )
        .await;
    }
    wait_health(&server.url(), "auditd.ingest", ServingStatus::NotServing).await;
    let (code, body) = http_get(server.http, "/healthz").await;
    assert_eq!(code, 503);
    assert!(body.starts_with("degraded: index:"), "{body}");
    // Reads are served (the trail still reaches the WAL); what failed to
    // commit is not visible yet.
    assert_eq!(count_action(&mut client, "fault.before").await, 20);
    assert_eq!(count_action(&mut client, "fault.during").await, 0);

    faults.clear(point);
    wait_health(&server.url(), "auditd.ingest", ServingStatus::Serving).await;
    ingest(&mut client, tagged("after", 20, 3), WaitFor::Searchable).await;
    assert_eq!(count_action(&mut client, "fault.during").await, 100);
    assert_eq!(count_action(&mut client, "fault.after").await, 20);
    server.stop().await.unwrap();

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    assert_eq!(count_action(&mut client, "fault.before").await, 20);
    assert_eq!(count_action(&mut client, "fault.during").await, 100);
    assert_eq!(count_action(&mut client, "fault.after").await, 20);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_index_commit_loses_nothing_and_heals() {
    index_fault_loses_nothing_and_heals("index::commit").await;
}

/// Adding a batch to the index fails (a day partition that cannot be
/// made on a full disk) and no batch follows before the next commit: the
/// batch is re-read from the WAL, not skipped (the full-disk test caught
/// one lost this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_add_of_the_last_batch_is_indexed_once_the_index_heals() {
    let faults = Faults::take();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    ingest(&mut client, tagged("before", 20, 1), WaitFor::Searchable).await;
    faults.arm("index::add", "return(enospc)");
    ingest(&mut client, tagged("during", 20, 2), WaitFor::Durable).await;
    wait_health(&server.url(), "auditd.ingest", ServingStatus::NotServing).await;
    faults.clear("index::add");
    // A commit with nothing new heals the index first.
    wait_health(&server.url(), "auditd.ingest", ServingStatus::Serving).await;
    ingest(&mut client, tagged("after", 20, 3), WaitFor::Searchable).await;
    assert_eq!(count_action(&mut client, "fault.during").await, 20);
    assert_eq!(count_action(&mut client, "fault.after").await, 20);
    server.stop().await.unwrap();
}

/// Tantivy cannot create a segment file (the full-disk case inside the
/// index, as the indexing threads flush at commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_segment_file_write_loses_nothing_and_heals() {
    index_fault_loses_nothing_and_heals("index::segment_write").await;
}

//! The whole pipeline on the in-memory log (`LogChoice::Memory`): ingest,
//! index, search, restart, and replay, reaching the log only through the
//! `Log` trait, as a replicated log would be reached.

mod common;

use std::sync::Arc;

use auditd::messages::WalBatch;
use auditd::proto::{GetEventRequest, SearchRequest, WaitFor};
use auditd::record::{self, RecordKind};
use auditd::wal::memory::{MemoryLog, MemoryStore};
use auditd::wal::Log;
use auditd::LogChoice;
use common::*;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_and_restart_on_the_memory_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    let log = LogChoice::Memory(store.clone());
    let server = TestServer::start_on(test_config(dir.path()), log.clone()).await;
    let mut client = server.client().await;
    let events = generated(2_000, 31, 700);
    for chunk in events.chunks(250) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    assert_eq!(count_stored(&mut client).await, 2_000);
    let action = events[0].action.clone();
    let (found, total) = search_all(
        &mut client,
        SearchRequest {
            actions: vec![action.clone()],
            limit: 10_000,
            ..Default::default()
        },
    )
    .await;
    let expected = events.iter().filter(|e| e.action == action).count();
    assert_eq!((found.len(), total), (expected, expected as u64));
    let got = client
        .get_event(GetEventRequest {
            id: events[1_234].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.seq, 1_234);
    assert!(!dir.path().join("wal").exists(), "no local log was opened");
    server.stop().await.unwrap();

    // The same "disk": the index, and the store the log lives in.
    let server = TestServer::start_on(test_config(dir.path()), log).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 2_000, "nothing lost");
    ingest(&mut client, generated(10, 32, 10), WaitFor::Searchable).await;
    assert_dense_seqs(&mut client).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_only_in_the_memory_log_are_replayed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    // What a crash before any commit leaves: records, no index.
    let events = generated(300, 33, 300);
    let mut log =
        MemoryLog::open(store.clone(), auditd::wal::LogPosition::START, |_| Ok(())).unwrap();
    for (n, chunk) in events.chunks(100).enumerate() {
        let mut batch = WalBatch::salted(format!("batch-{n}"), chunk.to_vec());
        // Received just now: inside the idempotency window.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        for event in &mut batch.events {
            event.received = Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: 0,
            });
        }
        let header = record::header(RecordKind::Batch, n as u64 * 100);
        log.append(&[&header, &batch.encode_to_vec()]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    auditd::datadir::DataDir::new(dir.path())
        .write_format()
        .unwrap();

    let server = TestServer::start_on(test_config(dir.path()), LogChoice::Memory(store)).await;
    let mut client = server.client().await;
    let (found, _) = search_all(
        &mut client,
        SearchRequest {
            limit: 10_000,
            ascending: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(found.len(), 300);
    let by_id: std::collections::HashMap<&str, u64> =
        found.iter().map(|e| (e.id.as_str(), e.seq)).collect();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(by_id[event.id.as_str()], i as u64, "{}", event.id);
    }
    // The replayed batch ids are remembered: a retry stores nothing.
    let retry = client
        .ingest(auditd::proto::IngestRequest {
            events: events[..100].to_vec(),
            batch_id: "batch-0".into(),
            wait_for: WaitFor::Searchable as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.ids.len(), 100);
    assert_eq!(count_stored(&mut client).await, 300);
    server.stop().await.unwrap();
}

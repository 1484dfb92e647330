//! Compaction: the partition of a day that is over, once idle, is merged
//! down to one segment in the background (`index.compact_after_idle_ms`),
//! its merged-away files are deleted, and every event is still found.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use auditd::proto::{GetEventRequest, SearchRequest, WaitFor};
use common::*;

/// Segments of the partition in `dir`, and its doc-store files on disk.
fn segments_and_store_files(dir: &Path) -> (usize, usize) {
    let index = tantivy::Index::open_in_dir(dir).expect("open the partition");
    let segments = index.searchable_segment_ids().expect("segments").len();
    let stores = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "store")
        })
        .count();
    (segments, stores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_past_day_is_merged_to_one_segment_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.compact_after_idle_ms = 3_000;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    // One day, 2023-11-14, long over; five searchable commits: five
    // segments.
    let events = generated(1_000, 7, 1_000);
    for chunk in events.chunks(200) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    let partition = dir.path().join("index").join("2023-11-14");
    let (before, _) = segments_and_store_files(&partition);
    assert!(
        before > 1,
        "the test needs several segments, found {before}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticker.tick().await;
        if segments_and_store_files(&partition) == (1, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {:?}",
            segments_and_store_files(&partition)
        );
    }

    assert_eq!(count_stored(&mut client).await, 1_000);
    let (found, total) = search_all(&mut client, SearchRequest::default()).await;
    assert_eq!(total, 1_000);
    let mut found: Vec<String> = found.into_iter().map(|e| e.id).collect();
    let mut sent: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    found.sort();
    sent.sort();
    assert_eq!(found, sent);
    let mut got = client
        .get_event(GetEventRequest {
            id: events[500].id.clone(),
        })
        .await
        .expect("get_event")
        .into_inner();
    assert!(got.received.take().is_some(), "the daemon sets received");
    assert_eq!(got, events[500]);

    // A late event for that day is still taken, beside the merged segment.
    let mut late = generated(1, 8, 1).remove(0);
    late.id = "late-event".into();
    ingest(&mut client, vec![late], WaitFor::Searchable).await;
    assert_eq!(count_stored(&mut client).await, 1_001);
    server.stop().await.unwrap();
}

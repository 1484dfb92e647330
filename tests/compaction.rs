//! Compaction: the partition of a day that is over, once idle, is merged
//! in the background (`index.compact_after_idle_ms`) into as few segments
//! as `index.compact_segment_docs` allows, in time order; its merged-away
//! files are deleted, and every event is still found.

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
    assert_eq!(got.seq, 500, "the 501st event the log took");
    got.seq = 0;
    assert_eq!(got, events[500]);

    // A late event for that day is still taken, beside the merged segment.
    let mut late = generated(1, 8, 1).remove(0);
    late.id = "late-event".into();
    ingest(&mut client, vec![late], WaitFor::Searchable).await;
    assert_eq!(count_stored(&mut client).await, 1_001);
    server.stop().await.unwrap();
}

/// `(docs, min time, max time)` of every segment of the partition in
/// `dir`, by min time.
fn segment_shapes(dir: &Path) -> Vec<(u32, i64, i64)> {
    let index = tantivy::Index::open_in_dir(dir).expect("open the partition");
    let searcher = index.reader().expect("reader").searcher();
    let mut shapes: Vec<_> = searcher
        .segment_readers()
        .iter()
        .map(|s| {
            let time = s.fast_fields().i64("time").expect("time column");
            (s.num_docs(), time.min_value(), time.max_value())
        })
        .collect();
    shapes.sort_by_key(|&(_, min, _)| min);
    shapes
}

/// With `index.compact_segment_docs` at 250, seven segments of 100 events
/// compact to runs of consecutive segments below it: 200, 200, 200, and
/// the last one alone, each covering its own stretch of time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_time_ordered_runs_below_compact_segment_docs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.compact_after_idle_ms = 2_000;
    config.index.compact_segment_docs = 250;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    // Seven searchable commits, seven segments: fewer than the eight the
    // merge policy waits for, so only compaction merges them.
    let events = generated(700, 9, 700);
    for chunk in events.chunks(100) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    let partition = dir.path().join("index").join("2023-11-14");
    assert_eq!(segment_shapes(&partition).len(), 7);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let shapes = loop {
        ticker.tick().await;
        let shapes = segment_shapes(&partition);
        if shapes.len() == 4 {
            break shapes;
        }
        assert!(Instant::now() < deadline, "not compacted: {shapes:?}");
    };
    let docs: Vec<u32> = shapes.iter().map(|s| s.0).collect();
    assert_eq!(docs, [200, 200, 200, 100], "{shapes:?}");
    assert!(
        shapes.windows(2).all(|w| w[0].2 <= w[1].1),
        "merged segments overlap in time: {shapes:?}"
    );
    assert_eq!(count_stored(&mut client).await, 700);
    server.stop().await.unwrap();
}

/// While a day is written, the merge policy too merges only neighbours in
/// time and builds no segment of `index.max_segment_docs` or more:
/// Tantivy's log policy alone would merge eight segments of any times
/// into one of any size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_merges_are_time_neighbours_below_max_segment_docs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.compact_after_idle_ms = 0;
    config.index.max_segment_docs = 250;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    // Twenty searchable commits of 40 events: the policy merges from the
    // ninth on, in runs of up to six.
    let events = generated(800, 13, 800);
    for chunk in events.chunks(40) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    let partition = dir.path().join("index").join("2023-11-14");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let shapes = loop {
        ticker.tick().await;
        let shapes = segment_shapes(&partition);
        if shapes.len() <= 10 {
            break shapes;
        }
        assert!(Instant::now() < deadline, "not merged: {shapes:?}");
    };
    assert!(shapes.iter().all(|s| s.0 < 250), "{shapes:?}");
    assert!(
        shapes.windows(2).all(|w| w[0].2 <= w[1].1),
        "merged segments overlap in time: {shapes:?}"
    );
    assert_eq!(count_stored(&mut client).await, 800);
    server.stop().await.unwrap();
}

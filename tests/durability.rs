//! Durability: what was acknowledged survives a clean stop, a kill, a torn
//! WAL tail; damage before the tail stops start-up; batch ids stay
//! idempotent across a restart; WAIT_FOR_SEARCHABLE and paging keep their
//! promises while events arrive.

mod common;

use auditd::record::{self, RecordKind};
use auditd::wal::LogPosition;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use auditd::messages::WalBatch;
use auditd::proto::{AuditEvent, IngestRequest, SearchRequest, WaitFor};
use auditd::schema::micros_to_timestamp;
use auditd::wal::{Recovery, Wal};
use common::*;
use prost::Message;

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn everything() -> SearchRequest {
    SearchRequest {
        limit: 10_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let events = generated(3_000, 21, 1_000);
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    for chunk in events.chunks(1_000) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Durable).await;
    }
    server.stop().await.unwrap();
    // A clean stop saves which dense terms' bit sets searches were using
    // (none here: no segment is big enough), for the next start to make.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dense-terms.json")).unwrap())
            .unwrap();
    assert_eq!(saved, serde_json::json!({"version": 1, "sets": []}));

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let (found, total) = search_all(&mut client, everything()).await;
    assert_eq!(total, 3_000);
    let found: HashSet<String> = ids(&found).into_iter().collect();
    assert_eq!(found, ids(&events).into_iter().collect());
    server.stop().await.unwrap();
}

/// SIGKILL, then check the kill came before any index checkpoint: every
/// acknowledged event is only in the WAL.
fn kill_before_any_checkpoint(daemon: &mut Daemon, data_dir: &Path) {
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let checkpoint = auditd::indexer::read_checkpoint(data_dir).unwrap();
    assert_eq!(
        checkpoint.wal_position,
        LogPosition::START,
        "nothing was committed to the index before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_acknowledged_before_a_kill_are_replayed_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let mut client = daemon.client(dir.path()).await;
    let events = generated(2_000, 31, 2_000);
    let mut acknowledged = Vec::new();
    for chunk in events.chunks(250) {
        acknowledged.extend(ingest_when_ready(&mut client, chunk.to_vec()).await);
    }
    kill_before_any_checkpoint(&mut daemon, dir.path());

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let (found, total) = search_all(&mut client, everything()).await;
    assert_eq!(total as usize, acknowledged.len());
    let found: HashSet<String> = ids(&found).into_iter().collect();
    assert_eq!(found, acknowledged.into_iter().collect());
    server.stop().await.unwrap();
}

/// Writes batches straight into a WAL, as an ingest would, with nothing
/// indexed: start-up must replay them. Returns each record's span.
fn write_wal(data_dir: &Path, batches: &[Vec<AuditEvent>]) -> Vec<(u64, u64)> {
    auditd::datadir::DataDir::new(data_dir)
        .write_format()
        .unwrap();
    let (mut wal, _) = Wal::open(
        &data_dir.join("wal"),
        LogPosition::START,
        1 << 20,
        Recovery::TolerateTornTail,
        |_| Ok(()),
    )
    .unwrap();
    let mut spans = Vec::new();
    let mut next_seq = 0;
    for events in batches {
        let mut events = events.clone();
        for e in &mut events {
            e.received = Some(micros_to_timestamp(1_700_000_000_000_000));
        }
        let batch = WalBatch::salted(String::new(), events);
        let header = record::header(RecordKind::Batch, next_seq);
        next_seq += batch.events.len() as u64;
        let span = wal.append(&[&header, &batch.encode_to_vec()]).unwrap();
        // The local log's positions are bytes: the tests below flip them.
        spans.push((span.start.get(), span.end.get()));
    }
    wal.sync().unwrap();
    spans
}

fn segment_path(data_dir: &Path) -> std::path::PathBuf {
    auditd::wal::segment::list(&data_dir.join("wal")).unwrap()[0]
        .path
        .clone()
}

fn three_batches() -> Vec<Vec<AuditEvent>> {
    let mut events = generated(30, 41, 30);
    for (i, e) in events.iter_mut().enumerate() {
        e.id = format!("ev-{i}");
    }
    events.chunks(10).map(<[AuditEvent]>::to_vec).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_any_offset_and_the_rest_is_served() {
    let batches = three_batches();
    let probe = tempfile::tempdir().unwrap();
    let spans = write_wal(probe.path(), &batches);
    let (last_start, last_end) = spans[2];
    let header = auditd::wal::segment::MAGIC.len() as u64;
    let last_len = last_end - last_start;
    // Cut inside the header, just after it, in the middle, one byte short;
    // and a tail of zeroes such as a pre-extended file leaves.
    type Cut = Box<dyn Fn(&Path)>;
    let mut cuts: Vec<Cut> = Vec::new();
    for keep in [1, 7, 9, last_len / 2, last_len - 1] {
        cuts.push(Box::new(move |path: &Path| {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(header + last_start + keep).unwrap();
        }));
    }
    cuts.push(Box::new(move |path: &Path| {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(header + last_start).unwrap();
        file.set_len(header + last_start + 4096).unwrap();
    }));
    for (n, cut) in cuts.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        write_wal(dir.path(), &batches);
        let segment = segment_path(dir.path());
        cut(&segment);
        let server = TestServer::start(test_config(dir.path())).await;
        let mut client = server.client().await;
        // The two whole batches are replayed; the torn one is gone.
        let (found, total) = search_all(&mut client, everything()).await;
        assert_eq!(total, 20, "cut {n}");
        let mut found = ids(&found);
        found.sort();
        let mut expected: Vec<String> = (0..20).map(|i| format!("ev-{i}")).collect();
        expected.sort();
        assert_eq!(found, expected, "cut {n}");
        // New writes land after the cut, and survive a restart.
        ingest(&mut client, batches[2].clone(), WaitFor::Durable).await;
        server.stop().await.unwrap();
        let server = TestServer::start(test_config(dir.path())).await;
        let mut client = server.client().await;
        assert_eq!(
            search_all(&mut client, everything()).await.1,
            30,
            "cut {n} after restart"
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_tail_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spans = write_wal(dir.path(), &three_batches());
    let segment = segment_path(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    let header = auditd::wal::segment::MAGIC.len();
    // A flipped bit in the middle of the first record's payload.
    let at = header + (spans[0].0 + spans[0].1) as usize / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let server = TestServer::spawn(test_config(dir.path())).await;
    let error = server
        .outcome()
        .await
        .expect_err("start-up must fail")
        .to_string();
    assert!(error.contains("damaged"), "{error}");
    assert!(error.contains(&segment.display().to_string()), "{error}");
    assert!(
        error.contains(&format!("offset {}", header as u64 + spans[0].0)),
        "{error}"
    );
    assert!(error.contains("auditd recover --data-dir"), "{error}");
    // Nothing was cut: the operator decides.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);

    // The way out: a skip record over exactly the damaged record, the
    // segment as it was kept aside, and the records after it replayed.
    let report = auditd::recover::recover(&test_config(dir.path())).unwrap();
    eprintln!("{report}");
    let [skip] = &report.wal_skipped[..] else {
        panic!("one damaged span expected: {report}")
    };
    assert_eq!((skip.start.get(), skip.end.get()), spans[0], "{report}");
    assert_eq!(std::fs::read(&skip.copy).unwrap(), bytes);
    assert!(report.to_string().contains("not yet indexed"), "{report}");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let (found, total) = search_all(&mut client, everything()).await;
    assert_eq!(total, 20);
    let mut found = ids(&found);
    found.sort();
    let mut expected: Vec<String> = (10..30).map(|i| format!("ev-{i}")).collect();
    expected.sort();
    assert_eq!(found, expected);
    server.stop().await.unwrap();
    let again = auditd::recover::recover(&test_config(dir.path())).unwrap();
    assert!(again.wal_skipped.is_empty(), "{again}");
}

/// Damage at a sample of offsets in older records: each is refused at
/// start-up, and recover skips exactly the damaged record, whatever byte
/// of it was hit (header or payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_skips_exactly_the_damaged_record_at_any_offset() {
    let batches = three_batches();
    let probe = tempfile::tempdir().unwrap();
    let spans = write_wal(probe.path(), &batches);
    let header = auditd::wal::segment::MAGIC.len() as u64;
    let (start, end) = spans[1];
    let offsets: Vec<u64> = (start..end)
        .step_by(37)
        .chain([start + 4, end - 1])
        .collect();
    for at in offsets {
        let dir = tempfile::tempdir().unwrap();
        write_wal(dir.path(), &batches);
        let segment = segment_path(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[(header + at) as usize] ^= 0x20;
        std::fs::write(&segment, &bytes).unwrap();
        let report = auditd::recover::recover(&test_config(dir.path())).unwrap();
        let spans_skipped: Vec<(u64, u64)> = report
            .wal_skipped
            .iter()
            .map(|s| (s.start.get(), s.end.get()))
            .collect();
        assert_eq!(spans_skipped, vec![spans[1]], "flip at {at}: {report}");
        let mut replayed = Vec::new();
        Wal::open(
            &dir.path().join("wal"),
            LogPosition::START,
            1 << 20,
            Recovery::Strict,
            |record| {
                if let record::LogRecord::Batch(batch) = record::decode(record)? {
                    replayed.extend(batch.batch.events.into_iter().map(|e| e.id));
                }
                Ok(())
            },
        )
        .unwrap();
        let expected: Vec<String> = (0..10).chain(20..30).map(|i| format!("ev-{i}")).collect();
        assert_eq!(replayed, expected, "flip at {at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_id_is_idempotent_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let events = generated(100, 51, 100);
    let mut events_without_ids = events.clone();
    for e in &mut events_without_ids {
        e.id.clear();
    }
    let request = IngestRequest {
        events: events_without_ids,
        batch_id: "batch-0001".into(),
        wait_for: WaitFor::Durable as i32,
    };
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let first = client.ingest(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.ids.len(), 100);
    assert!(
        first.ids.windows(2).all(|w| w[0] < w[1]),
        "server ids sort by time"
    );
    // A fresh store: the batch's events take seqs 0..100, their leaves.
    assert_eq!(first.seqs, (0..100).collect::<Vec<u64>>());
    let again = client.ingest(request.clone()).await.unwrap().into_inner();
    assert_eq!(again.ids, first.ids, "a retry in the same run");
    assert_eq!(again.seqs, first.seqs);
    server.stop().await.unwrap();

    // After a restart the memory is gone: the index answers.
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let after = client.ingest(request.clone()).await.unwrap().into_inner();
    assert_eq!(after.ids, first.ids, "a retry after a restart");
    assert_eq!(after.seqs, first.seqs, "the index knows the seqs too");
    let (_, total) = search_all(&mut client, everything()).await;
    assert_eq!(total, 100, "nothing stored twice");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_id_pushed_out_of_memory_is_found_in_the_index() {
    // The map remembers one batch: the second pushes the first out, and
    // a retry of the first must then be found in the index.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.ingest.idempotency_capacity = 1;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let batch = |id: &str, seed| {
        let mut events = generated(20, seed, 20);
        for e in &mut events {
            e.id.clear();
        }
        IngestRequest {
            events,
            batch_id: id.into(),
            wait_for: WaitFor::Searchable as i32,
        }
    };
    let (first, second) = (batch("batch-a", 71), batch("batch-b", 72));
    let a = client.ingest(first.clone()).await.unwrap().into_inner();
    client.ingest(second).await.unwrap();
    let again = client.ingest(first).await.unwrap().into_inner();
    assert_eq!(again.ids, a.ids, "the first attempt's ids");
    let (_, total) = search_all(&mut client, everything()).await;
    assert_eq!(total, 40, "nothing stored twice");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_searchable_means_visible_and_durable_alone_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.commit_interval_ms = 3_600_000;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let events = generated(10, 61, 10);
    ingest(&mut client, events.clone(), WaitFor::Durable).await;
    assert_eq!(
        search_all(&mut client, everything()).await.1,
        0,
        "not committed yet"
    );
    server.stop().await.unwrap();
    // A graceful stop commits.
    let mut config = test_config(dir.path());
    config.index.commit_interval_ms = 500;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    assert_eq!(search_all(&mut client, everything()).await.1, 10);

    // A retry of a stored batch with WAIT_FOR_SEARCHABLE stores nothing and
    // returns once the first attempt is searchable.
    let mut retried = IngestRequest {
        events: generated(30, 69, 30),
        batch_id: "retry-until-searchable".into(),
        wait_for: WaitFor::Durable as i32,
    };
    client.ingest(retried.clone()).await.unwrap();
    retried.wait_for = WaitFor::Searchable as i32;
    client.ingest(retried).await.unwrap();
    assert_eq!(search_all(&mut client, everything()).await.1, 40);

    for round in 0..5 {
        let batch = generated(20, 70 + round, 20);
        let reply = ingest(&mut client, batch, WaitFor::Searchable).await;
        for id in reply.ids {
            let found = client
                .get_event(auditd::proto::GetEventRequest { id: id.clone() })
                .await;
            assert!(
                found.is_ok(),
                "round {round}: {id} not visible after WAIT_FOR_SEARCHABLE"
            );
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_events_keep_arriving_has_no_duplicate_and_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let first = generated(1_000, 81, 1_000);
    ingest(&mut client, first.clone(), WaitFor::Searchable).await;

    let mut request = SearchRequest {
        limit: 37,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut round = 0u64;
    loop {
        let page = client.search(request.clone()).await.unwrap().into_inner();
        assert_eq!(
            page.total_hits, 1_000,
            "the snapshot of the first page holds"
        );
        seen.extend(ids(&page.events));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
        // Newer and older events arrive, and become searchable, between
        // pages.
        round += 1;
        let mut more = generated(20, 900 + round, 20);
        for (i, e) in more.iter_mut().enumerate() {
            e.id = format!("late-{round}-{i}");
            if i % 2 == 0 {
                e.time.as_mut().unwrap().seconds -= 3_600;
            } else {
                e.time.as_mut().unwrap().seconds += 3_600;
            }
        }
        ingest(&mut client, more, WaitFor::Searchable).await;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert_eq!(
        unique,
        ids(&first).iter().collect::<HashSet<_>>(),
        "exactly the first 1,000"
    );
    // A new search sees the late arrivals too.
    assert_eq!(
        search_all(&mut client, everything()).await.1,
        1_000 + 20 * round
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_closed_early_are_not_indexed_twice_on_replay_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // One writer open at a time: each batch on a new day commits and
    // closes the previous day's partition, ahead of any checkpoint.
    let env = [("AUDITD_INDEX__MAX_OPEN_WRITERS", "1")];
    let mut daemon = Daemon::start_with(dir.path(), &env);
    let mut client = daemon.client(dir.path()).await;
    // Six days, one batch each, then backfill from 1999 and a batch that
    // spans every day at once.
    let events = generated(700, 91, 100);
    let mut acknowledged = Vec::new();
    for day in events.chunks(100).take(6) {
        acknowledged.extend(ingest_when_ready(&mut client, day.to_vec()).await);
    }
    let mut backfill = events[600..700].to_vec();
    for e in &mut backfill {
        e.time.as_mut().unwrap().seconds -= 24 * 365 * 86_400;
    }
    acknowledged.extend(ingest_when_ready(&mut client, backfill).await);
    let mut spanning: Vec<AuditEvent> = events[..600].iter().step_by(50).cloned().collect();
    for (i, e) in spanning.iter_mut().enumerate() {
        e.id = format!("span-{i}");
    }
    acknowledged.extend(ingest_when_ready(&mut client, spanning).await);
    // Wait until the indexer has closed the early partitions (their commit
    // payloads are on disk) — then kill it before any checkpoint.
    let committed_early = |dir: &Path| -> usize {
        let Ok(days) = std::fs::read_dir(dir.join("index")) else {
            return 0;
        };
        days.filter_map(|d| std::fs::read(d.ok()?.path().join("meta.json")).ok())
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
            .filter(|m| m["payload"].as_str().is_some_and(|p| p != "0"))
            .count()
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    while committed_early(dir.path()) < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "partitions were never closed early"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    kill_before_any_checkpoint(&mut daemon, dir.path());
    assert_eq!(
        std::fs::read_dir(dir.path().join("index")).unwrap().count(),
        7,
        "six days and one in 1999"
    );

    // Replay: records already in a partition closed early are skipped.
    let mut daemon = Daemon::start_with(dir.path(), &env);
    let mut client = daemon.client(dir.path()).await;
    let probe = ingest_when_ready(&mut client, generated(1, 92, 1)).await;
    acknowledged.extend(probe);
    // SIGTERM: drain, commit, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = daemon.child.wait().unwrap();
    assert!(exit.success(), "auditd exited with {exit:?} on SIGTERM");

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let (found, total) = search_all(&mut client, everything()).await;
    assert_eq!(
        total as usize,
        acknowledged.len(),
        "every event exactly once"
    );
    let found: HashSet<String> = ids(&found).into_iter().collect();
    assert_eq!(found.len(), acknowledged.len());
    assert_eq!(found, acknowledged.into_iter().collect());
    let old = SearchRequest {
        to_time: Some(micros_to_timestamp(1_000_000_000_000_000)),
        limit: 1_000,
        ..Default::default()
    };
    assert_eq!(
        search_all(&mut client, old).await.1,
        100,
        "the backfilled events, by time range"
    );
    server.stop().await.unwrap();
}

/// A daemon gone quiet with every record indexed keeps no records in its
/// WAL, the active segment included (`Wal::retire_indexed_active`), and
/// a restart then has nothing to replay and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_daemon_keeps_no_indexed_records_in_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let wal_bytes = || -> u64 {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    // Over the 1 MiB an active segment must hold to be worth retiring,
    // all of it in the one active 64 MiB segment.
    let events = generated(8_000, 12, 8_000);
    for batch in events.chunks(1_000) {
        ingest(&mut client, batch.to_vec(), WaitFor::Searchable).await;
    }
    assert!(wal_bytes() > 1 << 20, "{} bytes of WAL", wal_bytes());

    // The idle WAL thread wakes every 200 ms; searchable already means
    // committed, so the next wake retires the segment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while wal_bytes() > auditd::wal::segment::MAGIC.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL still holds {} bytes",
            wal_bytes()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count_stored(&mut client).await, 8_000);
    server.stop().await.unwrap();

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 8_000, "nothing lost");
    server.stop().await.unwrap();
}

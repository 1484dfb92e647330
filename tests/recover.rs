//! Damaged index files: start-up refuses with the file named and the way
//! out; `auditd recover` moves the damaged partition aside, the next start
//! re-indexes what the write-ahead log holds, and the report's count of
//! lost events is exact (checked against what a search finds afterwards).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use auditd::partition::{day_of, format_day};
use auditd::proto::{AuditEvent, WaitFor};
use auditd::recover::RecoverReport;
use auditd::schema::timestamp_micros;
use auditd::Config;
use common::*;

fn day_name(event: &AuditEvent) -> String {
    format_day(day_of(timestamp_micros(event.time.as_ref())))
}

/// Acknowledged ids by day.
type ByDay = BTreeMap<String, HashSet<String>>;

/// Ingests `events` in batches of 200, each waited on until searchable (so
/// commits, and with small segments WAL trimming, happen throughout), then
/// kills the daemon (SIGKILL). A crash, not a clean stop: a clean stop
/// drops every indexed record from the log, while after a crash the log
/// still holds its last segment, which recovery can give back.
async fn ingest_and_kill(config: &Config, events: &[AuditEvent]) -> ByDay {
    let segment_bytes = config.wal.segment_bytes.to_string();
    let commit_ms = config.index.commit_interval_ms.to_string();
    let mut daemon = Daemon::start_with(
        &config.data_dir,
        &[
            ("AUDITD_WAL__SEGMENT_BYTES", &segment_bytes),
            ("AUDITD_INDEX__COMMIT_INTERVAL_MS", &commit_ms),
        ],
    );
    daemon.wait_serving().await;
    let mut client = daemon.client(&config.data_dir).await;
    let mut by_day = ByDay::new();
    for chunk in events.chunks(200) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
        for event in chunk {
            by_day
                .entry(day_name(event))
                .or_default()
                .insert(event.id.clone());
        }
    }
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    by_day
}

fn partition_dir(data_dir: &Path, day: &str) -> PathBuf {
    data_dir.join("index").join(day)
}

/// Start-up must refuse, naming `needle` and pointing at `auditd recover`.
async fn start_up_refuses(config: Config, needle: &str) {
    let error = TestServer::spawn(config)
        .await
        .outcome()
        .await
        .expect_err("start-up must refuse a damaged index")
        .to_string();
    assert!(error.contains(needle), "{error}");
    assert!(error.contains("auditd recover --data-dir"), "{error}");
}

/// Restarts and checks: the undamaged days hold every acknowledged id once;
/// each recovered day holds a subset of its ids, and exactly as many fewer
/// as the report says were lost.
async fn check_after_recovery(config: Config, by_day: &ByDay, report: &RecoverReport) {
    let damaged: BTreeMap<&str, u64> = report
        .damaged
        .iter()
        .map(|d| {
            (
                d.day.as_str(),
                d.lost.expect("the ledger knows every partition"),
            )
        })
        .collect();
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let intact: HashSet<String> = by_day
        .iter()
        .filter(|(day, _)| !damaged.contains_key(day.as_str()))
        .flat_map(|(_, ids)| ids.iter().cloned())
        .collect();
    let found = stored_once_with_all_of(&mut client, &intact).await;
    for (day, lost) in &damaged {
        let acknowledged = &by_day[*day];
        let back: HashSet<String> = found
            .iter()
            .filter(|e| day_name(e) == *day)
            .map(|e| e.id.clone())
            .collect();
        assert!(back.is_subset(acknowledged), "{day}: unknown ids came back");
        assert_eq!(
            acknowledged.len() as u64 - back.len() as u64,
            *lost,
            "{day}: the report's lost count must be exact"
        );
    }
    server.stop().await.unwrap();
}

/// The largest file of a partition: a segment's postings or store.
fn largest_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x != "json" && x != "lock"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a segment file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_segment_file_is_refused_then_recovered_with_an_exact_loss_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Small segments: the log is trimmed behind the commits, so it can no
    // longer give back the oldest day's events.
    config.wal.segment_bytes = 16 * 1024;
    // The oldest day's last 200 events go last: the trimmed log still
    // holds that one record, so the day is part given back, part lost.
    let mut events = generated(3_000, 51, 1_000);
    let first = day_name(&events[0]);
    let last_of_first = events.iter().rposition(|e| day_name(e) == first).unwrap();
    let held_back: Vec<AuditEvent> = events.drain(last_of_first - 199..=last_of_first).collect();
    events.extend(held_back);
    let by_day = ingest_and_kill(&config, &events).await;

    let file = largest_file(&partition_dir(dir.path(), &first));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    start_up_refuses(config.clone(), "checksum mismatch").await;

    let report = auditd::recover::recover(&config).unwrap();
    eprintln!("{report}");
    assert_eq!(report.damaged.len(), 1, "{report}");
    let damaged = &report.damaged[0];
    assert_eq!(damaged.day, first);
    assert_eq!(damaged.held, Some(by_day[&first].len() as u64), "{report}");
    assert_eq!(damaged.given_back, 200, "{report}");
    assert!(
        damaged.lost.unwrap() > 0,
        "the trimmed log should not hold the rest of the oldest day: {report}"
    );
    assert!(damaged.moved_to.join(file.file_name().unwrap()).exists());
    assert!(!partition_dir(dir.path(), &first).exists());
    check_after_recovery(config.clone(), &by_day, &report).await;

    // Once recovered there is nothing left to do.
    let again = auditd::recover::recover(&config).unwrap();
    assert!(again.damaged.is_empty(), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_metadata_and_commit_payload_are_recovered_in_full_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let events = generated(3_000, 52, 1_000);
    let by_day = ingest_and_kill(&config, &events).await;
    let days: Vec<&String> = by_day.keys().collect();
    assert!(days.len() >= 3);

    // One partition's meta.json is garbage; another's commit payload no
    // longer parses as a log position.
    let garbage = partition_dir(dir.path(), days[1]).join("meta.json");
    std::fs::write(&garbage, b"{\"segments\": [tru").unwrap();
    start_up_refuses(config.clone(), days[1]).await;
    let meta = partition_dir(dir.path(), days[2]).join("meta.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    json["payload"] = serde_json::Value::String("twelve".into());
    std::fs::write(&meta, serde_json::to_vec(&json).unwrap()).unwrap();

    // The command a user runs; the log is whole, so nothing is lost.
    let mut recover = std::process::Command::new(env!("CARGO_BIN_EXE_auditd"));
    recover.args(["recover", "--data-dir", dir.path().to_str().unwrap()]);
    let stdout = run_ok(recover).await;
    assert!(
        stdout.contains(&format!("partition {}:", days[1])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("partition {}:", days[2])),
        "{stdout}"
    );
    assert!(stdout.contains("is not a WAL position"), "{stdout}");
    assert!(stdout.contains("events lost in all: 0"), "{stdout}");

    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let all: HashSet<String> = by_day.values().flatten().cloned().collect();
    let found = stored_once_with_all_of(&mut client, &all).await;
    assert_eq!(found.len(), all.len());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_refuses_while_a_daemon_holds_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let error = auditd::recover::recover(&config).unwrap_err().to_string();
    assert!(error.contains("in use by another auditd"), "{error}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_segment_file_is_refused_then_recovered_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let events = generated(2_000, 53, 1_000);
    let by_day = ingest_and_kill(&config, &events).await;
    let day = by_day.keys().next().unwrap().clone();
    let partition = partition_dir(dir.path(), &day);
    std::fs::remove_file(largest_file(&partition)).unwrap();
    start_up_refuses(config.clone(), &partition.display().to_string()).await;

    let report = auditd::recover::recover(&config).unwrap();
    assert_eq!(report.damaged.len(), 1, "{report}");
    assert_eq!(report.damaged[0].day, day);
    assert_eq!(report.lost(), Some(0), "the whole log is there: {report}");
    check_after_recovery(config, &by_day, &report).await;
}

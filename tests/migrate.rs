//! Upgrading a data directory of an older format (format 1, written by
//! auditd as of commit 53d9c9c, and format 2, as of f880949;
//! `scripts/make_old_format_fixture.sh N` made each fixture with that
//! binary): start-up refuses it with the way out, `auditd migrate`
//! rewrites it, and the daemon then serves every event, field for field,
//! with dense seqs, each a leaf of the Merkle tree.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use auditd::json::JsonEvent;
use auditd::proto::AuditEvent;
use common::*;

fn fixture(format: u32) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{format}"))
}

/// The events the old binary was given, by id (the same for both
/// fixtures).
fn sent() -> HashMap<String, AuditEvent> {
    ["indexed.ndjson", "log-only.ndjson"]
        .iter()
        .flat_map(|name| {
            std::fs::read_to_string(fixture(1).join(name))
                .unwrap()
                .lines()
                .map(|line| JsonEvent::parse(line).unwrap().into_proto().unwrap())
                .collect::<Vec<_>>()
        })
        .map(|e| (e.id.clone(), e))
        .collect()
}

fn migrate(data_dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditd"))
        .args(["migrate", "--data-dir", data_dir.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_directory_is_refused_then_migrated_and_serves_every_event() {
    refused_then_migrated_and_served(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_directory_is_refused_then_migrated_and_serves_every_event() {
    refused_then_migrated_and_served(2).await;
}

async fn refused_then_migrated_and_served(format: u32) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(format).join("data"), dir.path());
    let config = test_config(dir.path());

    let refused = TestServer::spawn(config.clone())
        .await
        .outcome()
        .await
        .expect_err("an older directory must be refused")
        .to_string();
    assert!(
        refused.contains(&format!("data format {format}")),
        "{refused}"
    );
    assert!(refused.contains("auditd migrate --data-dir"), "{refused}");

    let out = migrate(dir.path(), &["--keep-old"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 600 events from the index, 400 from the log alone, and the trail of
    // the old run's reads.
    let migrated = format!("migrated to data format {}", auditd::datadir::FORMAT);
    assert!(stdout.contains(&migrated), "{stdout}");
    assert!(dir
        .path()
        .join(format!("format-{format}"))
        .join("index")
        .exists());

    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let sent = sent();
    assert_eq!(sent.len(), 1_000);
    let ids: HashSet<String> = sent.keys().cloned().collect();
    let found = stored_once_with_all_of(&mut client, &ids).await;
    assert_eq!(found.len(), sent.len(), "nothing but the events sent");
    for event in &found {
        let mut stored = event.clone();
        assert!(stored.received.take().is_some());
        stored.seq = 0;
        assert_eq!(&stored, &sent[&event.id], "{} changed", event.id);
    }

    // Every event, the old run's read trail included, has a seq of its
    // own, 0..n, in the old log's order: the indexed day first.
    let stored = assert_dense_seqs(&mut client).await;
    let first_log_only = found
        .iter()
        .filter(|e| e.time.as_ref().unwrap().seconds >= 1_700_090_000)
        .map(|e| e.seq)
        .min()
        .unwrap();
    assert!(found
        .iter()
        .filter(|e| e.time.as_ref().unwrap().seconds < 1_700_090_000)
        .all(|e| e.seq < first_log_only));
    server.stop().await.unwrap();
    // Each one a leaf (and so is the trail of the searches above).
    let tree = auditd::integrity::store::TreeStore::open(dir.path()).unwrap();
    assert!(
        tree.durable().size >= stored,
        "{} < {stored}",
        tree.durable().size
    );

    let again = migrate(dir.path(), &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to migrate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stopped_after_the_old_files_moved_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(1).join("data"), dir.path());
    // What a migration killed half-way through its swap leaves: the new
    // log built, the old index and checkpoint moved aside, no FORMAT.
    let first = migrate(dir.path(), &["--keep-old"]);
    assert!(first.status.success());
    std::fs::remove_file(dir.path().join("FORMAT")).unwrap();
    std::fs::create_dir(dir.path().join("migrate.tmp")).unwrap();
    std::fs::rename(dir.path().join("wal"), dir.path().join("migrate.tmp/wal")).unwrap();
    std::fs::rename(dir.path().join("format-1/wal"), dir.path().join("wal")).unwrap();

    let again = migrate(dir.path(), &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!dir.path().join("format-1").exists(), "old files deleted");
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let ids: HashSet<String> = sent().keys().cloned().collect();
    let found = stored_once_with_all_of(&mut client, &ids).await;
    assert_eq!(found.len(), 1_000);
    server.stop().await.unwrap();
}

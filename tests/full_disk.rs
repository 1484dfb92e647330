//! A real full disk: the data directory on a small tmpfs, filled by
//! ingest until writes fail. What was acknowledged stays searchable, what
//! was refused is not stored, health says degraded, and once the disk has
//! room again (a remount with a larger size) ingest resumes by itself.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says why it
//! skipped and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use auditd::proto::{IngestRequest, SearchRequest, WaitFor};
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_owned();
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            &path,
        )?;
        Ok(Tmpfs { path, _dir: dir })
    }

    fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], &self.path).expect("remount");
    }
}

fn mount(args: &[&str], at: &Path) -> Result<(), String> {
    let output = Command::new("mount")
        .args(args)
        .arg(at)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_what_was_acknowledged_and_recovers() {
    let disk = match Tmpfs::mount("8m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the full-disk test: {reason}");
            return;
        }
    };
    let data_dir = disk.path.join("data");
    let config = test_config(&data_dir);
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;

    // Fill the disk. Every acknowledged id is recorded.
    let mut acked: Vec<String> = Vec::new();
    let mut refusal = None;
    for seed in 0..400 {
        let events = generated(500, seed, 500)
            .into_iter()
            .map(|mut e| {
                e.action = "disk.fill".into();
                e
            })
            .collect();
        let request = IngestRequest {
            events,
            ..Default::default()
        };
        match client.ingest(request).await {
            Ok(reply) => acked.extend(reply.into_inner().ids),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => continue,
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("8 MiB should fill before 200,000 events");
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("not stored"),
        "{}",
        refusal.message()
    );
    assert!(!acked.is_empty());
    eprintln!(
        "full disk: {} events acknowledged, then: {}",
        acked.len(),
        refusal.message()
    );
    wait_health(&server.url(), "auditd.ingest", ServingStatus::NotServing).await;
    let (code, body) = http_get(server.http, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("degraded:"), "{body}");

    // Room again: nothing to restart, ingest resumes by itself.
    disk.resize("512m");
    wait_health(&server.url(), "auditd.ingest", ServingStatus::Serving).await;
    let last = ingest(&mut client, generated(10, 999, 10), WaitFor::Searchable).await;
    assert_eq!(last.ids.len(), 10);

    let stored = stored_ids(&mut client).await;
    acked.sort();
    assert_eq!(
        stored.len(),
        acked.len(),
        "every acknowledged event once, nothing refused"
    );
    assert_eq!(stored, acked);
    server.stop().await.unwrap();

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    assert_eq!(stored_ids(&mut client).await, acked);
    server.stop().await.unwrap();
}

async fn stored_ids(client: &mut Client) -> Vec<String> {
    let (events, _) = search_all(
        client,
        SearchRequest {
            actions: vec!["disk.fill".into()],
            limit: 1000,
            ..Default::default()
        },
    )
    .await;
    let mut ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
    ids.sort();
    ids
}

//! SIGTERM during heavy ingest: every in-flight batch is answered or
//! refused explicitly (no client hangs), the daemon commits and exits 0 in
//! bounded time, and every acknowledged event is there after a restart.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use auditd::proto::{AuditEvent, IngestRequest};
use common::*;

const PRODUCERS: usize = 4;
const BATCH: usize = 200;
/// Acknowledged batches before the SIGTERM.
const SIGTERM_AFTER: usize = 30;

fn batch(producer: usize, n: usize, template: &[AuditEvent]) -> Vec<AuditEvent> {
    template
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e.id = format!("p{producer}-b{n}-{i}");
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_batch_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_with(dir.path(), &[("AUDITD_INDEX__COMMIT_INTERVAL_MS", "200")]);
    daemon.wait_serving().await;
    let template = generated(BATCH as u64, 11, BATCH as u64);
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let acked_batches = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let mut client = daemon.client(dir.path()).await;
        let (acknowledged, acked_batches, progress, template) = (
            acknowledged.clone(),
            acked_batches.clone(),
            progress.clone(),
            template.clone(),
        );
        producers.push(tokio::spawn(async move {
            let record = |ids: Vec<String>| {
                acknowledged.lock().unwrap().extend(ids);
                acked_batches.fetch_add(1, Ordering::SeqCst);
                progress.notify_one();
            };
            if p == 0 {
                // One producer on a long-lived IngestStream.
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let mut replies = match client
                    .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Ok(r) => r.into_inner(),
                    Err(status) => return status,
                };
                for n in 0.. {
                    let events = batch(p, n, &template);
                    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                    if tx
                        .send(IngestRequest {
                            events,
                            ..Default::default()
                        })
                        .await
                        .is_err()
                    {
                        // The server ended the stream: its status says why.
                        return match replies.message().await {
                            Err(status) => status,
                            Ok(_) => tonic::Status::ok("stream ended"),
                        };
                    }
                    match replies.message().await {
                        Ok(Some(reply)) => {
                            assert_eq!(reply.ids, ids);
                            record(ids);
                        }
                        Ok(None) => return tonic::Status::ok("stream ended"),
                        Err(status) => return status,
                    }
                }
                unreachable!()
            }
            for n in 0.. {
                let events = batch(p, n, &template);
                let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                let request = IngestRequest {
                    events,
                    ..Default::default()
                };
                match client.ingest(request).await {
                    Ok(reply) => {
                        assert_eq!(reply.into_inner().ids, ids);
                        record(ids);
                    }
                    Err(status) => return status,
                }
            }
            unreachable!()
        }));
    }

    let deadline = Instant::now() + DEADLINE;
    while acked_batches.load(Ordering::SeqCst) < SIGTERM_AFTER {
        assert!(
            !producers.iter().all(|p| p.is_finished()),
            "every producer ended before the SIGTERM"
        );
        assert!(Instant::now() < deadline, "no ingest progress");
        let _ = tokio::time::timeout(DEADLINE, progress.notified()).await;
    }
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // Every producer ends, each with an explicit answer.
    for producer in producers {
        let last = tokio::time::timeout(DEADLINE, producer)
            .await
            .expect("a producer hung after SIGTERM")
            .unwrap();
        eprintln!("producer ended with {:?}: {}", last.code(), last.message());
    }
    let status = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || daemon.child.wait()),
    )
    .await
    .expect("auditd did not exit after SIGTERM")
    .unwrap()
    .unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "auditd exited with {status}");
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "SIGTERM under load: {} events acknowledged, exit 0 after {:.2} s",
        acknowledged.len(),
        took.as_secs_f64()
    );

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    stored_once_with_all_of(&mut client, &acknowledged).await;
    server.stop().await.unwrap();
}

/// A test that fails while its daemon runs drops the handle: the daemon
/// goes with it, not left to slow the test binaries after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_daemon_handle_takes_its_process_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let pid = daemon.child.id();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    drop(daemon);
    // Killed and reaped: no process, not even a zombie.
    assert!(!proc_dir.exists(), "auditd {pid} outlived its handle");
}

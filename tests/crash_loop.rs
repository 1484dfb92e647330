//! The crash loop: a real daemon in a child process, concurrent producers
//! that record every acknowledged id, and a SIGKILL at a random moment —
//! mid-batch, mid-commit, mid-rotation (small segments, frequent commits),
//! or during start-up replay — cycle after cycle. At the end every
//! acknowledged id must be searchable exactly once, nothing else may
//! appear but events that were sent, and the stored events' seqs are
//! exactly 0..n. After every restart the Merkle tree holds every
//! acknowledged event (a signed checkpoint of at least the highest
//! acknowledged seq + 1 leaves), and at the end the full audit recomputes
//! every leaf and the signed root and finds nothing. Run on the local log,
//! on the JetStream log, and as a node of a one-partition cluster.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use auditd::proto::{AuditEvent, IngestRequest};
use auditd::Config;
use common::nats::{jetstream_env, on_cluster, on_jetstream, NatsServer};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cycles in CI; `CRASH_LOOP_CYCLES` runs more.
const DEFAULT_CYCLES: usize = 20;
/// Cycles in CI on the JetStream log.
const JETSTREAM_CYCLES: usize = 10;
const PRODUCERS: usize = 3;
const BATCH: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_random_kills() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments and frequent commits put rotations and commits in the
    // way of the kills.
    let env = [
        ("AUDITD_INDEX__COMMIT_INTERVAL_MS", "30"),
        ("AUDITD_WAL__SEGMENT_BYTES", "65536"),
        ("AUDITD_INDEX__MAX_OPEN_WRITERS", "2"),
    ];
    let config = test_config(dir.path());
    crash_loop(dir.path(), &env, config, DEFAULT_CYCLES).await;
}

/// The same on the JetStream log (one `nats-server`, which is never
/// killed): a kill leaves whatever the stream acknowledged, and the
/// restarted daemon, another writer, replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_nothing_acknowledged_is_lost_across_random_kills() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let mut env = jetstream_env(&nats);
    env.push(("AUDITD_INDEX__COMMIT_INTERVAL_MS", "30".into()));
    env.push(("AUDITD_INDEX__MAX_OPEN_WRITERS", "2".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = on_jetstream(&data, &nats, "AUDITD");
    crash_loop(&data, &env, config, JETSTREAM_CYCLES).await;
}

/// The same for a node of a one-partition cluster (`[cluster] enabled`):
/// every write goes through the stream by compare-and-set, and the
/// restarted node replays and then follows the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_node_nothing_acknowledged_is_lost_across_random_kills() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let data = dir.path().join("data");
    let config = on_cluster(&data, &nats, "AUDITD");
    let mut env = jetstream_env(&nats);
    env.push(("AUDITD_CLUSTER__ENABLED", "true".into()));
    env.push((
        "AUDITD_LOG__JETSTREAM__SUBJECT",
        config.log.jetstream.subject.clone(),
    ));
    env.push(("AUDITD_INDEX__COMMIT_INTERVAL_MS", "30".into()));
    env.push(("AUDITD_INDEX__MAX_OPEN_WRITERS", "2".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    crash_loop(&data, &env, config, JETSTREAM_CYCLES).await;
}

/// Kills a daemon on `dir` started with `env` `cycles` times (or
/// `CRASH_LOOP_CYCLES`), then checks what a clean start on `config`
/// finds.
async fn crash_loop(dir: &Path, env: &[(&str, &str)], config: Config, cycles: usize) {
    let cycles = std::env::var("CRASH_LOOP_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cycles);
    let seed = std::env::var("CRASH_LOOP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261123u64);
    eprintln!("crash loop: {cycles} cycles, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let template = generated(BATCH as u64 * 4, 7, BATCH as u64);
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent: Arc<Mutex<HashMap<String, AuditEvent>>> = Arc::default();
    // The seq after the highest acknowledged event.
    let acknowledged_end = Arc::new(AtomicU64::new(0));

    for cycle in 0..cycles {
        let mut daemon = Daemon::start_with(dir, env);
        // Kill after this many acknowledged batches; 0 kills at once,
        // often in the middle of replay.
        let kill_after = if rng.random_bool(0.15) {
            0
        } else {
            rng.random_range(1..25)
        };
        let acked_batches = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut producers = Vec::new();
        if kill_after > 0 {
            // What the last kill left: every acknowledged event a leaf.
            let mut proofs = integrity_client(&daemon.url, &admin_token(dir)).await;
            checkpoint_of_at_least(&mut proofs, acknowledged_end.load(Ordering::SeqCst)).await;
            for p in 0..PRODUCERS {
                let mut client = daemon.client(dir).await;
                let (acknowledged, sent, acked_batches, notify, end) = (
                    acknowledged.clone(),
                    sent.clone(),
                    acked_batches.clone(),
                    notify.clone(),
                    acknowledged_end.clone(),
                );
                let template = template.clone();
                producers.push(tokio::spawn(async move {
                    for n in 0.. {
                        let events: Vec<AuditEvent> = template
                            [(n % 4) * BATCH..(n % 4 + 1) * BATCH]
                            .iter()
                            .enumerate()
                            .map(|(i, e)| {
                                let mut e = e.clone();
                                e.id = format!("c{cycle}-p{p}-b{n}-{i}");
                                e
                            })
                            .collect();
                        {
                            let mut sent = sent.lock().unwrap();
                            for e in &events {
                                sent.insert(e.id.clone(), e.clone());
                            }
                        }
                        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                        let request = IngestRequest {
                            events,
                            ..Default::default()
                        };
                        match client.ingest(request).await {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                assert_eq!(reply.ids, ids);
                                let last = reply.seqs.iter().max().expect("seqs");
                                end.fetch_max(last + 1, Ordering::SeqCst);
                                acknowledged.lock().unwrap().extend(ids);
                                acked_batches.fetch_add(1, Ordering::SeqCst);
                                notify.notify_one();
                            }
                            // Starting up: try again.
                            Err(s)
                                if s.code() == tonic::Code::Unavailable
                                    && s.message().contains("starting") =>
                            {
                                tokio::task::yield_now().await
                            }
                            // The kill: whatever was in flight is unacknowledged.
                            Err(_) => return,
                        }
                    }
                }));
            }
            let deadline = std::time::Instant::now() + DEADLINE;
            while acked_batches.load(Ordering::SeqCst) < kill_after {
                assert!(
                    std::time::Instant::now() < deadline,
                    "cycle {cycle}: no progress"
                );
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notify.notified())
                    .await;
            }
        }
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        for producer in producers {
            producer.await.unwrap();
        }
    }

    // A clean start replays whatever the last kill left.
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= cycles * BATCH / 2,
        "the loop acknowledged too little to mean anything"
    );
    let found = stored_once_with_all_of(&mut client, &acknowledged).await;
    for event in &found {
        let original = sent
            .get(&event.id)
            .unwrap_or_else(|| panic!("{} was never sent", event.id));
        let mut stored = event.clone();
        stored.received = None;
        stored.seq = 0;
        assert_eq!(&stored, original, "{} came back damaged", event.id);
    }
    // Whatever the kills interrupted, the stored events' seqs are 0..n.
    assert_dense_seqs(&mut client).await;
    // The tree holds every acknowledged event, and every stored event and
    // the signed root match a recomputation.
    let mut proofs = integrity_client(&server.url(), &server.admin_token()).await;
    checkpoint_of_at_least(&mut proofs, acknowledged_end.load(Ordering::SeqCst)).await;
    let problems = full_audit(&mut proofs).await;
    assert!(problems.is_empty(), "{problems:#?}");
    eprintln!(
        "crash loop: {cycles} kills, {} acknowledged, {} stored (the rest were in flight), 0 lost",
        acknowledged.len(),
        found.len()
    );
    server.stop().await.unwrap();
}

//! Overload: producers that ignore every retry hint drive a child daemon
//! with small queues far past what it can take, for `OVERLOAD_SECS`
//! (default 60). The daemon must refuse the excess with RESOURCE_EXHAUSTED
//! and a retry hint, keep its memory flat (RSS sampled every second from
//! /proc), lose nothing it acknowledged, and take load normally again once
//! the flood stops.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditd::proto::{IngestRequest, WaitFor};
use common::*;
use prost::Message;

/// Connections the flood is spread over.
const CONNECTIONS: usize = 12;
const BATCH: u64 = 500;
/// How long the closed-loop probe of the sustainable rate runs.
const SUSTAINED_PROBE: Duration = Duration::from_secs(5);
/// The index writer's heap in this test (two threads, the least Tantivy
/// takes for each). The writer fills it between commits and frees it at
/// each: bounded memory that nonetheless moves with the commit pace, which
/// slows as merges compete for the two cores.
const WRITER_HEAP: u64 = 32 << 20;

/// `(VmRSS, RssAnon)` of `pid` in bytes. Anonymous memory is what an
/// unbounded queue would grow; the rest is mostly the index's mapped files.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_a_hint_memory_stays_flat_and_it_recovers() {
    let secs: u64 = std::env::var("OVERLOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_with(
        dir.path(),
        &[
            ("AUDITD_INDEX__COMMIT_INTERVAL_MS", "200"),
            ("AUDITD_INGEST__WAL_QUEUE_CAPACITY", "8"),
            ("AUDITD_INGEST__QUEUE_CAPACITY", "4"),
            ("AUDITD_INGEST__SUBMIT_TIMEOUT_MS", "50"),
            ("AUDITD_WAL__LAG_BUDGET_BYTES", "16777216"),
            ("AUDITD_INDEX__WRITER_HEAP_BYTES", &WRITER_HEAP.to_string()),
        ],
    );
    let pid = daemon.child.id();
    daemon.wait_serving().await;
    if std::env::var_os(auditd::allocator::ALLOW_THP).is_none() {
        assert_ne!(
            auditd::allocator::huge_pages_enabled(pid),
            Some(true),
            "the daemon keeps transparent huge pages off (auditd::allocator)"
        );
    }
    let template = generated(BATCH, 3, BATCH);
    let batch_bytes = IngestRequest {
        events: template.clone(),
        ..Default::default()
    }
    .encoded_len() as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(daemon.client(dir.path()).await);
    }

    // What the daemon sustains: closed-loop producers for a few seconds.
    let probing = Arc::new(AtomicBool::new(true));
    let mut producers = Vec::new();
    for mut client in clients.iter().take(4).cloned() {
        let (acked, probing, template) = (acked.clone(), probing.clone(), template.clone());
        producers.push(tokio::spawn(async move {
            while probing.load(Ordering::Relaxed) {
                let request = IngestRequest {
                    events: template.clone(),
                    ..Default::default()
                };
                if let Ok(reply) = client.ingest(request).await {
                    acked.fetch_add(reply.into_inner().ids.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    let probe_started = Instant::now();
    tokio::time::sleep(SUSTAINED_PROBE).await;
    probing.store(false, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let sustainable = acked.load(Ordering::Relaxed) as f64 / probe_started.elapsed().as_secs_f64();
    let acked_before_flood = acked.load(Ordering::Relaxed);

    // The flood: open loop at three times that, one task per batch,
    // whatever the answers. At twice, a probe that came out low (the
    // flood then got as much through as the probe had) left too little
    // refused for the test to mean anything, in some runs on a loaded
    // machine (docs/benchmarks-history.md, "2026-12-06").
    let every = Duration::from_secs_f64(BATCH as f64 / (3.0 * sustainable));
    let flooding = Arc::new(AtomicBool::new(true));
    let offered = Arc::new(AtomicU64::new(0));
    let flood = {
        let (acked, refused, flooding, offered, template, clients) = (
            acked.clone(),
            refused.clone(),
            flooding.clone(),
            offered.clone(),
            template.clone(),
            clients.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = 0usize;
            while flooding.load(Ordering::Relaxed) {
                tick.tick().await;
                offered.fetch_add(1, Ordering::Relaxed);
                let mut client = clients[n % clients.len()].clone();
                n += 1;
                let (acked, refused, template) = (acked.clone(), refused.clone(), template.clone());
                tasks.spawn(async move {
                    let request = IngestRequest {
                        events: template,
                        ..Default::default()
                    };
                    match client.ingest(request).await {
                        Ok(reply) => {
                            acked.fetch_add(reply.into_inner().ids.len() as u64, Ordering::Relaxed);
                        }
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            assert!(
                                status.metadata().get("retry-after-ms").is_some(),
                                "a refusal carries a retry hint: {status:?}"
                            );
                            // Ignore the hint: the worst kind of client.
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => panic!("overload must be refused cleanly: {status:?}"),
                    }
                });
                while let Some(done) = tasks.try_join_next() {
                    done.unwrap();
                }
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        })
    };

    // Sample RSS once a second while the flood lasts.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < Duration::from_secs(secs) {
        ticker.tick().await;
        samples.push(rss(pid));
    }
    flooding.store(false, Ordering::Relaxed);
    flood.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let (acked_n, refused_n) = (
        acked.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let flood_acked = acked_n - acked_before_flood;
    let (total, anon): (Vec<u64>, Vec<u64>) = samples.iter().copied().unzip();
    let quarter = anon.len() / 4;
    // The first quarter is the daemon warming up; the second is the
    // baseline the last quarter is held to.
    let baseline = median(&anon[quarter..2 * quarter]);
    let late = median(&anon[3 * quarter..]);
    let peak = *total.iter().max().unwrap();
    let mib = |v: &[u64]| v.iter().map(|s| s >> 20).collect::<Vec<_>>();
    eprintln!(
        "overload: sustainable {sustainable:.0} events/s; offered three times that for {secs} s over \
         {CONNECTIONS} connections: {} batches offered, {flood_acked} events acknowledged ({:.0}/s), \
         {refused_n} batches refused ({} MiB). RSS peak {} MiB; anonymous memory median {} MiB (second \
         quarter) → {} MiB (last quarter). RSS MiB {:?}; anon MiB {:?}",
        offered.load(Ordering::Relaxed),
        flood_acked as f64 / elapsed,
        (refused_n * batch_bytes) >> 20,
        peak >> 20,
        baseline >> 20,
        late >> 20,
        mib(&total),
        mib(&anon),
    );
    assert!(
        refused_n * 4 >= offered.load(Ordering::Relaxed),
        "the flood did not overload the daemon; the test means nothing"
    );
    assert!(flood_acked > 0, "nothing got through the flood");
    let allowed_growth = baseline / 4 + (16 << 20) + WRITER_HEAP;
    let refused_bytes = refused_n * batch_bytes;
    assert!(
        refused_bytes >= 2 * allowed_growth,
        "refused {} MiB, too little for a kept queue to show past the allowed {} MiB",
        refused_bytes >> 20,
        allowed_growth >> 20
    );

    // The flood is over: a polite producer gets through, at first perhaps
    // after a hint or two while the index catches up, then without any.
    let mut client = daemon.client(dir.path()).await;
    let mut polite = 0u64;
    let deadline = Instant::now() + DEADLINE;
    let mut clean_in_a_row = 0;
    while clean_in_a_row < 10 {
        assert!(Instant::now() < deadline, "ingest did not recover");
        let request = IngestRequest {
            events: template.clone(),
            wait_for: WaitFor::Durable as i32,
            ..Default::default()
        };
        match client.ingest(request).await {
            Ok(reply) => {
                polite += reply.into_inner().ids.len() as u64;
                clean_in_a_row += 1;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                clean_in_a_row = 0;
                let hint = retry_after_ms(&status);
                tokio::time::sleep(Duration::from_millis(hint)).await;
            }
            Err(status) => panic!("after the flood: {status:?}"),
        }
    }

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || daemon.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // Judged after the daemon is stopped, so a failure leaves no orphan.
    assert!(peak < 1 << 30, "RSS past 1 GiB under overload");
    // Allowed: a quarter of the baseline plus 16 MiB of slack, and the
    // writer heap, which a slower commit pace fills further. A queue that
    // kept what it refused would grow by the refused bytes, checked above
    // to be far beyond this.
    assert!(
        late <= baseline + allowed_growth,
        "anonymous memory grew under sustained overload: {} MiB → {} MiB (allowed {} MiB)",
        baseline >> 20,
        late >> 20,
        allowed_growth >> 20
    );

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    assert_eq!(
        count_stored(&mut client).await,
        acked_n + polite,
        "exactly what was acknowledged is stored"
    );
    server.stop().await.unwrap();
}

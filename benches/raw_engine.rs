//! The raw-engine limit on a given NDJSON file: auditd's own schema and
//! document code indexing the file's events straight into one Tantivy
//! IndexWriter (2 threads, 128 MiB, zstd doc store, as the daemon's
//! defaults), then one commit. No network, no WAL, no queue. Parsing the
//! JSON, and the arrival times the daemon would stamp, are done before the
//! clock starts, as `auditctl load` does; the documents carry batch ids
//! as the load generator's batches do (`engine::BATCH_EVENTS`).
//!
//!     BENCH_NDJSON=events.ndjson BENCH_RUNS=3 cargo bench --bench raw_engine
//!
//! `BENCH_KEEP=<dir>` (with one run) keeps the index there, for
//! `examples/index_space.rs` to break down.
//!
//! Prints one JSON line per run and one with the median, for
//! `scripts/bench_ingest.sh` to put beside the end-to-end figure of the
//! same run. Without `BENCH_NDJSON` it says so and exits (so that a plain
//! `cargo bench` still runs the criterion benches).

use std::time::Instant;

/// The daemon's allocator (`src/bin/auditd.rs`), so that the limit and
/// the daemon differ only in what the daemon adds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/engine.rs"]
mod engine;

use auditd::json::JsonEvent;
use auditd::proto::AuditEvent;
use auditd::schema::AuditSchema;

/// Same per-writer settings as the daemon's defaults (`[index]`).
const WRITER_THREADS: usize = 2;
const WRITER_HEAP_BYTES: usize = 128 << 20;

fn main() {
    // Without huge pages, as the daemon.
    auditd::allocator::keep_huge_pages_off();
    let Some(path) = std::env::var_os("BENCH_NDJSON") else {
        eprintln!("raw_engine: set BENCH_NDJSON=<file.ndjson> to run (skipped)");
        return;
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let text = std::fs::read_to_string(&path).expect("reading BENCH_NDJSON");
    let bytes = text.len() as u64;
    let mut events: Vec<AuditEvent> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| JsonEvent::parse(line).unwrap().into_proto().unwrap())
        .collect();
    engine::receive(&mut events);
    drop(text);
    let schema = AuditSchema::new();
    let mut rates = Vec::new();
    for run in 1..=runs {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let (cpu_before, main_before) = cpu_now();
        let writer = engine::index_all(
            dir.path(),
            &schema,
            &mut events,
            WRITER_THREADS,
            WRITER_HEAP_BYTES,
        );
        let seconds = started.elapsed().as_secs_f64();
        let (cpu_after, main_after) = cpu_now();
        writer.wait_merging_threads().unwrap();
        let rate = events.len() as f64 / seconds;
        rates.push(rate);
        let (index_bytes, by_kind) = index_bytes(dir.path());
        println!(
            "{{\"run\":{run},\"events\":{},\"seconds\":{seconds:.3},\"events_per_sec\":{rate:.0},\"ndjson_mb_per_sec\":{:.2},\"index_bytes\":{index_bytes},\"index_per_ndjson\":{:.3},\"index_bytes_by_kind\":{by_kind},\"cpu_seconds\":{:.2},\"main_thread_cpu_seconds\":{:.2}}}",
            events.len(),
            bytes as f64 / 1e6 / seconds,
            index_bytes as f64 / bytes as f64,
            cpu_after - cpu_before,
            main_after - main_before,
        );
        if let Some(keep) = std::env::var_os("BENCH_KEEP") {
            // For `cargo run --example index_space -- <dir>`.
            std::fs::rename(dir.keep(), &keep).expect("moving the index to BENCH_KEEP");
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"median_events_per_sec\":{:.0},\"min\":{:.0},\"max\":{:.0}}}",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}

/// CPU seconds so far of the process and of this thread (the one that
/// builds the documents; Tantivy's own threads do the rest), 0 where
/// `/proc` is not there. `scripts/bench_summary.py` sets them beside the
/// daemon's, thread by thread.
fn cpu_now() -> (f64, f64) {
    (
        auditd::client::cpu::process_cpu_seconds().unwrap_or(0.0),
        auditd::client::cpu::thread_cpu_seconds().unwrap_or(0.0),
    )
}

/// The index's size once merges have settled, and a JSON object of bytes
/// by file kind (`store`, `term`, `idx`, ...): where the disk
/// figure goes.
fn index_bytes(dir: &std::path::Path) -> (u64, String) {
    let mut total = 0;
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let len = entry.metadata().unwrap().len();
        total += len;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = name.rsplit('.').next().unwrap_or("").to_owned();
        *kinds.entry(kind).or_default() += len;
    }
    (total, serde_json::to_string(&kinds).unwrap())
}

//! Criterion benches for the hot steps of the write path, on generated
//! events of the shape `gen_events.py` writes, and the raw-engine limit:
//! auditd's own schema and document code indexing straight into a Tantivy
//! IndexWriter, with no network, no WAL and no queue.
//!
//!     cargo bench --bench pipeline
//!
//! Throughput is reported in events/s (criterion's "elem/s").

use std::hint::black_box;

#[path = "common/engine.rs"]
mod engine;

use auditd::config::Limits;
use auditd::json::JsonEvent;
use auditd::messages::WalBatch;
use auditd::proto::{AuditEvent, IngestRequest};
use auditd::schema::AuditSchema;
use auditd::validate::validate_batch;
use auditd::wal::{Recovery, Wal};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;

/// Events per batch, as `auditctl ingest` sends them.
const BATCH: usize = 1_000;
/// Events per raw-engine run.
const ENGINE_EVENTS: usize = 100_000;

fn events(count: usize) -> Vec<AuditEvent> {
    let opts = auditd::client::gen::GenOptions {
        count: count as u64,
        ..Default::default()
    };
    let mut events: Vec<AuditEvent> = auditd::client::gen::events(&opts)
        .map(|e| {
            JsonEvent::parse(&e.to_json_line())
                .unwrap()
                .into_proto()
                .unwrap()
        })
        .collect();
    engine::receive(&mut events);
    events
}

fn decode_and_validate(c: &mut Criterion) {
    let batch = events(BATCH);
    let bytes = IngestRequest {
        events: batch,
        ..Default::default()
    }
    .encode_to_vec();
    let limits = Limits::default();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode+validate 1000 events", |b| {
        b.iter(|| {
            let request = IngestRequest::decode(black_box(bytes.as_slice())).unwrap();
            validate_batch(&request.events, &limits, 1_800_000_000_000_000).unwrap();
            request
        })
    });
    group.finish();
}

fn document_building(c: &mut Criterion) {
    let mut batch = events(BATCH);
    let schema = AuditSchema::new();
    let mut body = Vec::new();
    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("build 1000 documents", |b| {
        b.iter(|| {
            for (i, event) in batch.iter_mut().enumerate() {
                black_box(schema.document(event, i as u64, "", None, &mut body));
            }
        })
    });
    group.finish();
}

/// What integrity adds per event at ingest: its leaf (ten salted part
/// commitments at most, and the leaf hash), made by the ingest handler.
fn leaf_hashes(c: &mut Criterion) {
    use auditd::integrity::leaf;
    let batch = events(BATCH);
    let salts: Vec<leaf::Salt> = batch.iter().map(|_| leaf::new_salt()).collect();
    let mut scratch = Vec::new();
    let mut group = c.benchmark_group("integrity");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, version) in [
        ("leaf hashes of 1000 events, version 2", leaf::Version::V2),
        ("leaf hashes of 1000 events, version 1", leaf::Version::V1),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for (event, salt) in batch.iter().zip(&salts) {
                    black_box(leaf::event_leaf_hash(version, event, salt, &mut scratch));
                }
            })
        });
    }
    group.finish();
}

fn wal_append(c: &mut Criterion) {
    let payload = WalBatch::salted(String::new(), events(BATCH)).encode_to_vec();
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, sync) in [
        ("append 1000-event batch, fsync", true),
        ("append 1000-event batch, no fsync", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(
            dir.path(),
            auditd::wal::LogPosition::START,
            64 << 20,
            Recovery::TolerateTornTail,
            |_| Ok(()),
        )
        .unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                // The record header's cost is the daemon's too.
                let header = auditd::record::header(auditd::record::RecordKind::Batch, 0);
                wal.append(&[&header, &payload]).unwrap();
                if sync {
                    wal.sync().unwrap();
                } else {
                    wal.flush().unwrap();
                }
            })
        });
    }
    group.finish();
}

/// The raw-engine limit: the same documents into an IndexWriter with two
/// threads, then one commit.
fn raw_engine(c: &mut Criterion) {
    let mut all = events(ENGINE_EVENTS);
    let schema = AuditSchema::new();
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ENGINE_EVENTS as u64));
    group.bench_function("raw tantivy: 100k events, 2 threads, commit", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                engine::index_all(dir.path(), &schema, &mut all, 2, 128 << 20);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_and_validate,
    document_building,
    leaf_hashes,
    wal_append,
    raw_engine
);
criterion_main!(benches);

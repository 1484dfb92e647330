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
    let mut scratch = leaf::LeafScratch::default();
    let mut group = c.benchmark_group("integrity");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, version) in [
        ("leaf hashes of 1000 events, version 3", leaf::Version::V3),
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

/// Events in the doc-store benches.
const STORE_EVENTS: usize = 100_000;

/// Where a fetched event comes from: Tantivy's doc store as partitions
/// before data format 5 keep it (64 KiB blocks, zstd level 6), against
/// the events store (`docstore`: 4 KiB blocks, zstd level 3, a dictionary
/// trained on the events), on the same stored bytes (body and opening).
/// Prints each one's size; times writing them, and fetching 100 events
/// scattered over them with no block cached (a sparse page).
fn doc_store(c: &mut Criterion) {
    use auditd::docstore::file::FileWriter;
    use auditd::docstore::{encode_record, EventsFile, PartitionDictionary};
    use auditd::integrity::leaf::{new_salt, Version};
    use auditd::integrity::opening::Opening;
    use tantivy::directory::{Directory, OwnedBytes, RamDirectory};
    use tantivy::store::{Compressor, StoreReader, StoreWriter, ZstdCompressor};
    use tantivy::HasLen;

    let records: Vec<Vec<u8>> = events(STORE_EVENTS)
        .iter_mut()
        .map(|event| {
            let (mut body, mut record) = (Vec::new(), Vec::new());
            auditd::schema::encode_body(event, &mut body);
            let opening = Opening::Salt(Version::CURRENT, new_salt()).to_bytes();
            encode_record(&body, &opening, &mut record);
            record
        })
        .collect();
    let raw: usize = records.iter().map(Vec::len).sum();
    let tantivy_store = || {
        let directory = RamDirectory::create();
        let path = std::path::Path::new("store");
        let zstd = Compressor::Zstd(ZstdCompressor {
            compression_level: Some(6),
        });
        let mut writer =
            StoreWriter::new(directory.open_write(path).unwrap(), zstd, 64 << 10, false).unwrap();
        for record in &records {
            writer.store_bytes(record).unwrap();
        }
        writer.close().unwrap();
        directory.open_read(path).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let dictionary = PartitionDictionary::open(dir.path()).unwrap();
    let trained = dictionary.current_or_train(&records).unwrap();
    let events_store = || {
        let mut writer = FileWriter::new(Vec::new(), trained.clone());
        for record in &records {
            writer.push(record).unwrap();
        }
        writer.finish().unwrap()
    };
    let tantivy_file = tantivy_store();
    let events_file = events_store();
    eprintln!(
        "doc store of {STORE_EVENTS} events ({raw} bytes stored): Tantivy's {} bytes ({:.2}x), \
         the events store's {} bytes ({:.2}x) and a {} byte dictionary",
        tantivy_file.len(),
        raw as f64 / tantivy_file.len() as f64,
        events_file.len(),
        raw as f64 / events_file.len() as f64,
        std::fs::metadata(dir.path().join(auditd::docstore::dictionary::FILE))
            .unwrap()
            .len(),
    );
    let tantivy_reader = StoreReader::open(tantivy_file, 0).unwrap();
    let events_reader = EventsFile::open(OwnedBytes::new(events_file), &dictionary).unwrap();
    let scattered: Vec<u32> = (0..100u32).map(|i| i * 997 % STORE_EVENTS as u32).collect();

    let mut group = c.benchmark_group("doc store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(STORE_EVENTS as u64));
    group.bench_function("Tantivy's: write 100k events", |b| b.iter(tantivy_store));
    group.bench_function("events store: write 100k events", |b| b.iter(events_store));
    group.sample_size(50);
    group.throughput(Throughput::Elements(scattered.len() as u64));
    group.bench_function("Tantivy's: fetch 100 scattered events", |b| {
        b.iter(|| {
            for doc in &scattered {
                black_box(tantivy_reader.get_document_bytes(*doc).unwrap());
            }
        })
    });
    group.bench_function("events store: fetch 100 scattered events", |b| {
        b.iter(|| {
            for doc in &scattered {
                black_box(events_reader.get(*doc).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_and_validate,
    document_building,
    leaf_hashes,
    wal_append,
    raw_engine,
    doc_store
);
criterion_main!(benches);

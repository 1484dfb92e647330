//! The raw-engine step both benches time: auditd's schema and document
//! code, straight into one Tantivy IndexWriter (with the events store, as
//! the daemon's partitions: `partition::create_index`), one commit. No network, no WAL, no queue.

use std::path::Path;

use auditd::integrity::leaf::{new_salt, Version};
use auditd::integrity::opening::Opening;
use auditd::proto::AuditEvent;
use auditd::schema::{micros_to_timestamp, AuditSchema};

/// Events per batch, as `scripts/bench_ingest.sh` sends them
/// (`auditctl load --batch-size 1000`): each batch's events carry its id
/// and its arrival time, so these documents are the daemon's.
pub const BATCH_EVENTS: usize = 1000;

/// Gives `events` the arrival times the daemon would: one per batch of
/// `BATCH_EVENTS`, a few milliseconds apart. Outside the clock (the
/// daemon sets them on its request path, which the end-to-end run times).
pub fn receive(events: &mut [AuditEvent]) {
    const START_MICROS: i64 = 1_800_000_000_000_000;
    for (i, event) in events.iter_mut().enumerate() {
        let batch = (i / BATCH_EVENTS) as i64;
        event.received = Some(micros_to_timestamp(START_MICROS + batch * 7_000));
    }
}

/// Indexes `events` into a new index in `dir` and commits once, each
/// batch of `BATCH_EVENTS` under a batch id as `auditctl load` names
/// them. Returns the writer, whose merges may still run.
pub fn index_all(
    dir: &Path,
    schema: &AuditSchema,
    events: &mut [AuditEvent],
    threads: usize,
    heap_bytes: usize,
) -> tantivy::IndexWriter {
    let directory = tantivy::directory::MmapDirectory::open(dir).unwrap();
    let (index, _) = auditd::partition::create_index(dir, directory, schema).unwrap();
    auditd::schema::register_tokenizers(&index);
    let mut writer: tantivy::IndexWriter =
        index.writer_with_num_threads(threads, heap_bytes).unwrap();
    let mut body = Vec::new();
    // Seq is the event's ordinal, as the daemon's dense seqs are.
    let mut batch_id = String::new();
    for (i, event) in events.iter_mut().enumerate() {
        if i % BATCH_EVENTS == 0 {
            batch_id = format!("load-01KAW3C7Z6RX3V9Q2N8M4T5Y1B-{}", i / BATCH_EVENTS);
        }
        let seq = i as u64;
        // A salt each, as the daemon stores (random: it does not compress).
        let salt = Opening::Salt(Version::CURRENT, new_salt()).to_bytes();
        writer
            .add_document(schema.document(event, seq, &batch_id, Some(&salt), &mut body))
            .unwrap();
    }
    writer.commit().unwrap();
    writer
}

//! The raw-engine step both benches time: auditd's schema and document
//! code, straight into one Tantivy IndexWriter (zstd doc store, as the
//! daemon's partitions), one commit. No network, no WAL, no queue.

use std::path::Path;

use auditd::messages::event_seq;
use auditd::proto::AuditEvent;
use auditd::schema::AuditSchema;
use auditd::wal::Span;

/// Indexes `events` into a new index in `dir` and commits once. Returns
/// the writer, whose merges may still run.
pub fn index_all(
    dir: &Path,
    schema: &AuditSchema,
    events: &mut [AuditEvent],
    threads: usize,
    heap_bytes: usize,
) -> tantivy::IndexWriter {
    let index = tantivy::Index::builder()
        .schema(schema.schema.clone())
        .settings(auditd::partition::index_settings())
        .create_in_dir(dir)
        .unwrap();
    auditd::schema::register_tokenizers(&index);
    let mut writer: tantivy::IndexWriter =
        index.writer_with_num_threads(threads, heap_bytes).unwrap();
    let mut body = Vec::new();
    // One record as long as its events: seq is then the event's ordinal,
    // the cheapest column there is.
    let n = events.len();
    let record = Span {
        start: 0,
        end: n as u64,
    };
    for (i, event) in events.iter_mut().enumerate() {
        writer
            .add_document(schema.document(event, event_seq(&record, n, i), "", &mut body))
            .unwrap();
    }
    writer.commit().unwrap();
    writer
}

//! The events store: where a partition created since data format 5 keeps
//! each event's stored bytes (its body and its salt), in place of
//! Tantivy's doc store.
//!
//! Tantivy's doc store compresses 64 KiB blocks without a dictionary, and
//! a fetched event costs its whole block's decompression: a sparse page of
//! 100 events decompressed up to 100 blocks, 44 % of a sparse search's CPU
//! (BENCHMARKS.md, issue 17). Here a block is about 4 KiB, a dozen
//! events, compressed at zstd level 3 with a dictionary trained on the
//! partition's own events: on auditd's stored bytes of `gen_events.py`
//! events that is 6 % smaller than the 64 KiB blocks at level 6, writes
//! in about half the time, and fetches scattered events in a twelfth of
//! it (`cargo bench --bench pipeline -- "doc store"`;
//! docs/benchmarks-history.md, "2026-12-03: a doc store that reads one
//! event").
//!
//! It is a Tantivy [`SegmentPlugin`]: each segment gets a `<segment>.events`
//! file ([`file`]), written with the segment, merged with it (blocks of
//! the same dictionary are copied, not recompressed, unless the segment
//! has deleted documents), checksummed and collected with it. The
//! partition's dictionary lives beside the segments ([`dictionary`]).
//! Partitions created before keep Tantivy's doc store and are read as
//! before.

pub mod dictionary;
pub mod file;

use std::any::Any;
use std::io;
use std::sync::Arc;

use tantivy::directory::{TerminatingWrite, WritePtr};
use tantivy::index::SegmentComponent;
use tantivy::indexer::doc_id_mapping::{DocIdMapping, MappingType};
use tantivy::plugin::{PluginMergeContext, PluginWriter, PluginWriterContext, SegmentPlugin};
use tantivy::schema::document::ErasedDocument;
use tantivy::schema::{Field, Schema, Value};
use tantivy::{DocId, Segment, SegmentReader, TantivyDocument, TantivyError};

pub use dictionary::PartitionDictionary;
use dictionary::MAX_TRAINING_RECORDS;
use file::FileWriter;
pub use file::{encode_record, EventsFile};

/// The extension of a segment's events file.
pub const EXTENSION: &str = "events";

/// zstd level of the blocks (and of the dictionary's prepared tables).
pub const LEVEL: i32 = 3;

fn component() -> SegmentComponent {
    SegmentComponent::Custom(EXTENSION.to_string())
}

/// Opens the events file of `segment`, which must hold a record for each
/// of its documents.
pub fn open(
    segment: &SegmentReader,
    dictionary: &PartitionDictionary,
) -> tantivy::Result<EventsFile> {
    let bytes = segment.open_read(component())?.read_bytes()?;
    let file = EventsFile::open(bytes, dictionary)?;
    if file.docs() != segment.max_doc() {
        return Err(dictionary::invalid(format!(
            "segment {} holds {} documents and its events file {}",
            segment.segment_id().uuid_string(),
            segment.max_doc(),
            file.docs()
        ))
        .into());
    }
    Ok(file)
}

/// The plugin of one partition: the fields it stores, and the
/// partition's dictionary.
pub struct EventsPlugin {
    body: Field,
    salt: Field,
    dictionary: Arc<PartitionDictionary>,
}

impl EventsPlugin {
    pub fn new(body: Field, salt: Field, dictionary: Arc<PartitionDictionary>) -> EventsPlugin {
        EventsPlugin {
            body,
            salt,
            dictionary,
        }
    }
}

impl SegmentPlugin for EventsPlugin {
    fn extensions(&self) -> &[&str] {
        &[EXTENSION]
    }

    fn create_writer(&self, ctx: &PluginWriterContext) -> tantivy::Result<Box<dyn PluginWriter>> {
        Ok(Box::new(EventsWriter::new(self, ctx.segment)?))
    }

    fn merge(&self, ctx: PluginMergeContext) -> tantivy::Result<()> {
        if ctx.doc_id_mapping.mapping_type() == MappingType::Shuffled {
            return Err(unsorted());
        }
        let files = ctx
            .readers
            .iter()
            .map(|reader| open(reader, &self.dictionary))
            .collect::<tantivy::Result<Vec<_>>>()?;
        let dictionary = match self.dictionary.current() {
            Some(dictionary) => Some(dictionary),
            // Every segment merged was written before the partition had a
            // dictionary: their records, together, may be enough to train
            // one. At most MAX_TRAINING_RECORDS of them are kept for it.
            None => {
                let alive: usize = ctx.readers.iter().map(|r| r.num_docs() as usize).sum();
                let step = alive.div_ceil(MAX_TRAINING_RECORDS).max(1);
                let (mut records, mut seen) = (Vec::new(), 0usize);
                for_each_alive(ctx.readers, &files, |record| {
                    if seen % step == 0 {
                        records.push(record.to_vec());
                    }
                    seen += 1;
                    Ok(())
                })?;
                self.dictionary.current_or_train(&records)?
            }
        };
        let mut writer = FileWriter::new(ctx.target_segment.open_write(component())?, dictionary);
        for (reader, file) in ctx.readers.iter().zip(&files) {
            if !reader.has_deletes() && file.dictionary_id() == writer.dictionary_id() {
                writer.stack(file)?;
            } else {
                for_each_alive(
                    std::slice::from_ref(reader),
                    std::slice::from_ref(file),
                    |r| writer.push(r),
                )?;
            }
        }
        writer.finish()?.terminate()?;
        Ok(())
    }
}

/// Calls `f` with the record of every live document of `readers`, in
/// order (`files[i]` belongs to `readers[i]`).
fn for_each_alive(
    readers: &[SegmentReader],
    files: &[EventsFile],
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    for (reader, file) in readers.iter().zip(files) {
        file.for_each(|doc, record| match reader.is_deleted(doc) {
            true => Ok(()),
            false => f(record),
        })?;
    }
    Ok(())
}

fn unsorted() -> TantivyError {
    TantivyError::InvalidArgument("the events store keeps documents in the order added".into())
}

/// A segment's events file while the segment is written: compressed block
/// by block as documents arrive (so a commit only closes the last block),
/// once the partition has a dictionary.
struct EventsWriter {
    body: Field,
    salt: Field,
    dictionary: Arc<PartitionDictionary>,
    segment: Segment,
    state: WriterState,
}

enum WriterState {
    /// The partition has no dictionary yet: the records wait until there
    /// are [`MAX_TRAINING_RECORDS`] to train one from, or the segment ends
    /// (and trains one if it has at least `MIN_TRAINING_RECORDS`).
    Waiting {
        records: Vec<u8>,
        ends: Vec<usize>,
    },
    Writing(FileWriter<WritePtr>),
}

impl EventsWriter {
    fn new(plugin: &EventsPlugin, segment: &Segment) -> tantivy::Result<EventsWriter> {
        let state = match plugin.dictionary.current() {
            Some(dictionary) => WriterState::Writing(FileWriter::new(
                segment.open_write(component())?,
                Some(dictionary),
            )),
            None => WriterState::Waiting {
                records: Vec::new(),
                ends: Vec::new(),
            },
        };
        Ok(EventsWriter {
            body: plugin.body,
            salt: plugin.salt,
            dictionary: plugin.dictionary.clone(),
            segment: segment.clone(),
            state,
        })
    }
}

/// The writer of `segment`'s events file, given its first records
/// (`ends[i]` is where record `i` of `records` ends): with the partition's
/// dictionary, trained from those records if it has none yet and they
/// are enough.
fn start_writing(
    dictionary: &PartitionDictionary,
    segment: &Segment,
    records: &[u8],
    ends: &[usize],
) -> tantivy::Result<FileWriter<WritePtr>> {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    let records: Vec<&[u8]> = starts
        .zip(ends)
        .map(|(start, end)| &records[start..*end])
        .collect();
    let dictionary = dictionary.current_or_train(&records)?;
    let mut writer = FileWriter::new(segment.open_write(component())?, dictionary);
    for record in records {
        writer.push(record)?;
    }
    Ok(writer)
}

impl PluginWriter for EventsWriter {
    fn add_document(
        &mut self,
        _: DocId,
        doc: &dyn ErasedDocument,
        _: &Schema,
    ) -> tantivy::Result<()> {
        let doc = doc
            .as_any()
            .downcast_ref::<TantivyDocument>()
            .ok_or_else(|| TantivyError::InvalidArgument("not a TantivyDocument".into()))?;
        let bytes = |field| {
            doc.get_first(field)
                .and_then(|value| value.as_bytes())
                .unwrap_or_default()
        };
        match &mut self.state {
            WriterState::Writing(writer) => {
                writer.push_record(bytes(self.body), bytes(self.salt))?
            }
            WriterState::Waiting { records, ends } => {
                encode_record(bytes(self.body), bytes(self.salt), records);
                ends.push(records.len());
                if ends.len() >= MAX_TRAINING_RECORDS {
                    let writer = start_writing(&self.dictionary, &self.segment, records, ends)?;
                    self.state = WriterState::Writing(writer);
                }
            }
        }
        Ok(())
    }

    fn serialize(
        self: Box<Self>,
        _: &Segment,
        doc_id_map: Option<&DocIdMapping>,
    ) -> tantivy::Result<()> {
        if doc_id_map.is_some() {
            return Err(unsorted());
        }
        let this = *self;
        let writer = match this.state {
            WriterState::Writing(writer) => writer,
            WriterState::Waiting { records, ends } => {
                start_writing(&this.dictionary, &this.segment, &records, &ends)?
            }
        };
        writer.finish()?.terminate()?;
        Ok(())
    }

    fn mem_usage(&self) -> usize {
        match &self.state {
            WriterState::Waiting { records, ends } => {
                records.capacity() + ends.capacity() * std::mem::size_of::<usize>()
            }
            WriterState::Writing(writer) => writer.mem_usage(),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use tantivy::directory::MmapDirectory;
    use tantivy::{DocAddress, IndexWriter, Term};

    use super::dictionary::{MAX_TRAINING_RECORDS, MIN_TRAINING_RECORDS};
    use crate::partition::{open_existing, Partition};
    use crate::proto::{AuditEvent, Source};
    use crate::schema::{id_key, micros_to_timestamp, AuditSchema};

    const DAY: i64 = 19_675;

    fn event(seq: u64) -> AuditEvent {
        AuditEvent {
            id: format!("event-{seq:08}"),
            time: Some(micros_to_timestamp(DAY * 86_400_000_000 + seq as i64)),
            received: Some(micros_to_timestamp(DAY * 86_400_000_000 + seq as i64)),
            r#type: "audit-log/pryv-api".into(),
            action: ["events.get", "streams.get", "auth.login"][seq as usize % 3].into(),
            subject: format!("user{:03}", seq % 41),
            source: Some(Source {
                name: "http".into(),
                ip: format!("10.1.{}.{}", seq % 7, seq % 251),
            }),
            status: 200,
            ..AuditEvent::default()
        }
    }

    fn add(writer: &mut IndexWriter, schema: &AuditSchema, seqs: std::ops::Range<u64>) {
        let mut body = Vec::new();
        for seq in seqs {
            let salt = [seq as u8; 17];
            let doc = schema.document(&mut event(seq), seq, "batch", Some(&salt), &mut body);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
    }

    /// Every live document's (seq, event id, salt), read as a search reads it.
    fn read_all(partition: &Partition, schema: &AuditSchema) -> Vec<(u64, String, Vec<u8>)> {
        partition.reader.reload().unwrap();
        let view = partition.view().unwrap();
        let mut out = Vec::new();
        let segments = view.searcher.segment_readers().iter().zip(&view.columns);
        for (ord, (segment, columns)) in segments.enumerate() {
            assert!(columns.events.is_some(), "a segment of the events store");
            for doc in segment.doc_ids_alive() {
                let stored = view
                    .stored(DocAddress::new(ord as u32, doc), schema)
                    .unwrap();
                let event: AuditEvent = prost::Message::decode(stored.body.as_slice()).unwrap();
                let seq = columns.seq.first(doc).unwrap();
                out.push((seq, event.id, stored.salt.unwrap()));
            }
        }
        out.sort();
        out
    }

    fn expected(seqs: impl Iterator<Item = u64>) -> Vec<(u64, String, Vec<u8>)> {
        seqs.map(|seq| (seq, event(seq).id, vec![seq as u8; 17]))
            .collect()
    }

    #[test]
    fn a_partition_keeps_its_events_through_training_merges_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let schema = AuditSchema::new();
        let (index, dictionary) = crate::partition::create_index(
            dir.path(),
            MmapDirectory::open(dir.path()).unwrap(),
            &schema,
        )
        .unwrap();
        crate::schema::register_tokenizers(&index);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000).unwrap();
        writer.set_merge_policy(Box::new(tantivy::merge_policy::NoMergePolicy));

        // Two segments too small to train from: no dictionary yet.
        let half = MIN_TRAINING_RECORDS as u64 / 2 + 10;
        add(&mut writer, &schema, 0..half);
        add(&mut writer, &schema, half..2 * half);
        assert!(dictionary.current().is_none());
        drop(writer);

        // Reopened as the daemon opens it; then their merge has enough
        // records to train the partition's dictionary.
        let partition = open_existing(dir.path(), DAY, &schema).unwrap();
        assert_eq!(read_all(&partition, &schema), expected(0..2 * half));
        let dictionary = partition.events.clone().expect("the events store");
        let mut writer: IndexWriter = partition
            .index
            .writer_with_num_threads(1, 50_000_000)
            .unwrap();
        writer.set_merge_policy(Box::new(tantivy::merge_policy::NoMergePolicy));
        let ids = partition.index.searchable_segment_ids().unwrap();
        writer.merge(&ids).wait().unwrap();
        let trained = dictionary.current().expect("trained at the merge").id();
        assert_eq!(read_all(&partition, &schema), expected(0..2 * half));

        // A segment written with the dictionary, merged with the first
        // by copying blocks; then a delete, merged away by repacking.
        add(&mut writer, &schema, 2 * half..2 * half + 3_000);
        let ids = partition.index.searchable_segment_ids().unwrap();
        assert_eq!(ids.len(), 2);
        writer.merge(&ids).wait().unwrap();
        let all = 2 * half + 3_000;
        assert_eq!(read_all(&partition, &schema), expected(0..all));
        writer.delete_term(Term::from_field_text(schema.id, &id_key(&event(7).id)));
        writer.commit().unwrap();
        let ids = partition.index.searchable_segment_ids().unwrap();
        writer.merge(&ids).wait().unwrap();
        writer.wait_merging_threads().unwrap();
        let partition = open_existing(dir.path(), DAY, &schema).unwrap();
        assert_eq!(
            read_all(&partition, &schema),
            expected((0..all).filter(|seq| *seq != 7))
        );
        assert_eq!(partition.events.unwrap().current().unwrap().id(), trained);
        assert!(partition.index.validate_checksum().unwrap().is_empty());
    }

    #[test]
    fn a_first_segment_big_enough_trains_the_dictionary_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let schema = AuditSchema::new();
        let directory = MmapDirectory::open(dir.path()).unwrap();
        let (index, dictionary) =
            crate::partition::create_index(dir.path(), directory, &schema).unwrap();
        crate::schema::register_tokenizers(&index);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000).unwrap();
        let count = MAX_TRAINING_RECORDS as u64 + 2_500;
        add(&mut writer, &schema, 0..count);
        let trained = dictionary
            .current()
            .expect("trained by the first segment")
            .id();
        drop(writer);
        let partition = open_existing(dir.path(), DAY, &schema).unwrap();
        assert_eq!(read_all(&partition, &schema), expected(0..count));
        let view = partition.view().unwrap();
        let file = view.columns[0].events.as_ref().unwrap();
        assert_eq!((file.docs() as u64, file.dictionary_id()), (count, trained));
    }
}

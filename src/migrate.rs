//! `auditd migrate`: rewrites a data directory of an older format into
//! this binary's, losing nothing. Format 1: no `FORMAT` file, bare prost
//! records, byte-derived seqs, plain-number commit payloads. Format 2:
//! typed records and dense seqs, but no salts, so no leaf of the Merkle
//! tree can be made for its events.
//!
//! How: every event the old directory holds, from its index partitions
//! and from the log records past what the index covers, is put in the
//! old log order (both formats' seqs increase in log order) and written
//! into a new log of typed records, each event with a fresh salt, which
//! gives each event its dense seq (0, 1, 2, …: a format-2 event keeps
//! its own). The old index and log move to `format-<N>/`; the new log
//! takes their place with no index, and the next start indexes it all
//! (a full re-index: about the time replay takes for that many events).
//! With `--keep-old` the old files stay in `format-<N>/` for the operator
//! to delete; otherwise they go once the new directory is complete.
//!
//! An interrupted migration is finished by running it again: the new log
//! is complete and synced before the old files move, and the swap picks
//! up where it stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;
use tantivy::schema::Value;
use tantivy::{DocAddress, DocId, SegmentOrdinal, TantivyDocument};

use crate::config::Config;
use crate::datadir::{DataDir, Format, FormatError};
use crate::messages::{CommitPayload, WalBatch};
use crate::partition::{day_of, Partitions};
use crate::proto::AuditEvent;
use crate::record::{self, LogRecord, RecordKind};
use crate::schema::{names, restore_times, timestamp_micros, AuditSchema};
use crate::server::{lock_data_dir, ServerError};
use crate::wal::{frame, LogPosition, Recovery, Span, Wal, WalError};

/// Events in one record of the new log (a batch id's events stay
/// together, up to this many).
const EVENTS_PER_RECORD: usize = 1_000;

/// Where the new log is built before the swap.
const BUILD_DIR: &str = "migrate.tmp";

/// Where the old index, log and checkpoint of format `n` go.
fn old_dir(root: &Path, n: u32) -> PathBuf {
    root.join(format!("format-{n}"))
}

/// The old formats `migrate` reads.
const OLD_FORMATS: [u32; 2] = [1, 2];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    DataDir(#[from] ServerError),
    #[error("data directory {0} is already of format {format}; nothing to migrate", format = crate::datadir::FORMAT)]
    NothingToMigrate(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the old index: {0}")]
    Index(String),
    #[error("the old write-ahead log: {0}")]
    Wal(#[from] WalError),
}

/// What `migrate` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Events read from the old index partitions.
    pub from_index: u64,
    /// Events read from old log records the index did not hold yet.
    pub from_log: u64,
    /// Records written to the new log.
    pub records: u64,
    /// Where the old files are, when kept.
    pub kept: Option<PathBuf>,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "migrated to data format {}: {} events ({} from the index, {} from the log) \
             in {} log records, with seqs 0..{}",
            crate::datadir::FORMAT,
            self.from_index + self.from_log,
            self.from_index,
            self.from_log,
            self.records,
            self.from_index + self.from_log,
        )?;
        writeln!(f, "the next start indexes them all again before it serves")?;
        match &self.kept {
            Some(path) => writeln!(f, "the old files are kept in {}", path.display()),
            None => writeln!(f, "the old files are deleted"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Migrates `config.data_dir`, under its lock.
pub fn migrate(config: &Config, keep_old: bool) -> Result<MigrateReport, MigrateError> {
    let root = &config.data_dir;
    let _lock = lock_data_dir(root)?;
    let data = DataDir::new(root);
    // A swap that stopped half-way leaves no log or index at the top, and
    // the old files in their `format-<N>/`.
    let moved = OLD_FORMATS.into_iter().find(|n| old_dir(root, *n).exists());
    let format = match (data.format(), moved) {
        (Ok(Format::Current | Format::InPlace(_)), _) => {
            return Err(MigrateError::NothingToMigrate(root.clone()))
        }
        (Ok(Format::Fresh), None) => return Err(MigrateError::NothingToMigrate(root.clone())),
        (Ok(Format::Fresh), Some(n)) => n,
        (Err(FormatError::Older { found, .. }), _) if OLD_FORMATS.contains(&found) => found,
        (Err(other), _) => return Err(ServerError::from(other).into()),
    };
    let old = old_dir(root, format);
    let build = root.join(BUILD_DIR);
    let mut report = MigrateReport::default();
    if !old.exists() {
        // Nothing moved yet: (re)build the new log from the old files.
        if build.exists() {
            std::fs::remove_dir_all(&build).map_err(io(&build))?;
        }
        // One snapshot of the old partitions serves all three steps: the
        // events are numbered by its searchers and read back through them.
        let searchers = old_partitions(&data.index())?;
        let mut events = old_index_events(&searchers, &mut report)?;
        old_log_events(config, &data, format, &searchers, &mut events, &mut report)?;
        events.sort_by_key(|e| e.old_seq);
        report.records = write_new_log(config, &build.join("wal"), events, &searchers)?;
    }
    swap(&data, &build, &old)?;
    if keep_old {
        report.kept = Some(old);
    } else {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(report)
}

/// One old event, with its place in the old log order.
struct OldEvent {
    old_seq: u64,
    batch_id: String,
    source: Source,
}

enum Source {
    /// Still to be read from the old index.
    Index {
        partition: usize,
        address: DocAddress,
    },
    /// Read from the old log.
    Log(Box<AuditEvent>),
}

/// An old partition: its day, its directory, and a searcher on it.
struct OldPartition {
    day: i64,
    path: std::path::PathBuf,
    searcher: tantivy::Searcher,
}

/// The old index's partitions, in day order (none when there is no index).
fn old_partitions(root: &Path) -> Result<Vec<OldPartition>, MigrateError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    // Format 1's payloads are bare positions, which `verify` would refuse;
    // damage still shows when the documents are read.
    let partitions = Partitions::open(root, AuditSchema::new(), false)
        .map_err(|e| MigrateError::Index(e.to_string()))?;
    Ok(partitions
        .overlapping(None, None)
        .iter()
        .map(|p| OldPartition {
            day: p.day,
            path: p.path.clone(),
            searcher: p.reader.searcher(),
        })
        .collect())
}

/// Every live document of the old partitions, by old seq, with its batch
/// id (indexed, not stored: read back from the term dictionary).
fn old_index_events(
    partitions: &[OldPartition],
    report: &mut MigrateReport,
) -> Result<Vec<OldEvent>, MigrateError> {
    let mut events = Vec::new();
    let bad = |e: &dyn std::fmt::Display| MigrateError::Index(e.to_string());
    for (p, partition) in partitions.iter().enumerate() {
        let searcher = &partition.searcher;
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let seqs = segment.fast_fields().u64(names::SEQ).map_err(|e| bad(&e))?;
            let batch_ids = segment_batch_ids(segment).map_err(|e| bad(&e))?;
            for doc in segment.doc_ids_alive() {
                let old_seq = seqs.first(doc).ok_or_else(|| {
                    bad(&format!(
                        "{}: a document without seq",
                        partition.path.display()
                    ))
                })?;
                events.push(OldEvent {
                    old_seq,
                    batch_id: batch_ids.get(&doc).cloned().unwrap_or_default(),
                    source: Source::Index {
                        partition: p,
                        address: DocAddress::new(ord as SegmentOrdinal, doc),
                    },
                });
                report.from_index += 1;
            }
        }
    }
    Ok(events)
}

/// The batch id of each document of `segment` that has one.
fn segment_batch_ids(segment: &tantivy::SegmentReader) -> tantivy::Result<HashMap<DocId, String>> {
    let field = segment.schema().get_field(names::BATCH_ID)?;
    let inverted = segment.inverted_index(field)?;
    let mut terms = inverted.terms().stream()?;
    let mut ids = HashMap::new();
    while terms.advance() {
        let batch_id = String::from_utf8_lossy(terms.key()).into_owned();
        let mut postings = inverted.read_postings_from_terminfo(
            terms.value(),
            tantivy::schema::IndexRecordOption::Basic,
        )?;
        use tantivy::DocSet;
        let mut doc = postings.doc();
        while doc != tantivy::TERMINATED {
            ids.insert(doc, batch_id.clone());
            doc = postings.advance();
        }
    }
    Ok(ids)
}

/// Format 1's seq of the event at `index` of a record of `events` events
/// spanning `record`: the record's bytes shared out among its events.
fn legacy_seq(record: Span, events: usize, index: usize) -> u64 {
    let (start, end) = (record.start.get(), record.end.get());
    let len = u128::from(end - start);
    start + (index as u128 * len / events as u128) as u64
}

/// Adds every event of the old log's records that the old index does not
/// hold yet: in format 1, a record that starts at or past its day's
/// partition commit; in format 2, an event whose seq is at or past it.
fn old_log_events(
    config: &Config,
    data: &DataDir,
    format: u32,
    partitions: &[OldPartition],
    events: &mut Vec<OldEvent>,
    report: &mut MigrateReport,
) -> Result<(), MigrateError> {
    let wal_dir = data.wal();
    if !wal_dir.exists() {
        return Ok(());
    }
    let committed = old_commits(partitions, format)?;
    // Every record the log still holds; each partition's own commit says
    // which of them it already has (a record below the checkpoint is in
    // every partition it touched, whose commits are at or past it).
    let from = crate::wal::segment::list(&wal_dir)
        .map_err(io(&wal_dir))?
        .first()
        .map_or(LogPosition::START, |s| LogPosition::new(s.start));
    let (_wal, _) = Wal::open(
        &wal_dir,
        from,
        config.wal.segment_bytes,
        Recovery::TolerateTornTail,
        |record| {
            if frame::is_skip(record.payload) {
                return Ok(());
            }
            let span = Span {
                start: record.start,
                end: record.end,
            };
            // Format 1: a bare batch, ordered by bytes; format 2: a typed
            // record, ordered by seq.
            let (batch, first_seq) = if format == 1 {
                let batch = WalBatch::decode(record.payload).map_err(|e| WalError::BadRecord {
                    path: record.path.to_owned(),
                    offset: record.offset,
                    reason: format!("not a format-1 batch: {e}"),
                })?;
                (batch, None)
            } else {
                match record::decode(record)? {
                    LogRecord::Batch(typed) => (typed.batch, Some(typed.first_seq)),
                    LogRecord::Skip(_) | LogRecord::Retention(..) => return Ok(()),
                }
            };
            let n = batch.events.len();
            for (i, event) in batch.events.into_iter().enumerate() {
                let day = day_of(timestamp_micros(event.time.as_ref()));
                let old_seq = match first_seq {
                    Some(first) => first + i as u64,
                    None => legacy_seq(span, n, i),
                };
                // What the day's partition commit covers: below its log
                // position (format 1), below its seq (format 2).
                let covered = if format == 1 {
                    span.start.get()
                } else {
                    old_seq
                };
                if committed.get(&day).is_some_and(|c| covered < *c) {
                    continue;
                }
                events.push(OldEvent {
                    old_seq,
                    batch_id: batch.batch_id.clone(),
                    source: Source::Log(Box::new(event)),
                });
                report.from_log += 1;
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// What each old partition's commit covers: format 1's payload is a bare
/// log position, format 2's a `CommitPayload`, whose seq is taken.
fn old_commits(
    partitions: &[OldPartition],
    format: u32,
) -> Result<HashMap<i64, u64>, MigrateError> {
    let mut commits = HashMap::new();
    for partition in partitions {
        let metas = partition
            .searcher
            .index()
            .load_metas()
            .map_err(|e| MigrateError::Index(e.to_string()))?;
        let covered = match &metas.payload {
            None => Some(0),
            Some(p) if format == 1 => p.parse().ok(),
            Some(p) => CommitPayload::parse(p).map(|c| c.seq),
        };
        let covered = covered.ok_or_else(|| {
            MigrateError::Index(format!(
                "{}: commit payload {:?} is not of data format {format}",
                partition.path.display(),
                metas.payload.unwrap_or_default()
            ))
        })?;
        commits.insert(partition.day, covered);
    }
    Ok(commits)
}

/// Writes `events`, in order, as typed records with dense seqs from 0.
fn write_new_log(
    config: &Config,
    dir: &Path,
    events: Vec<OldEvent>,
    partitions: &[OldPartition],
) -> Result<u64, MigrateError> {
    let schema = AuditSchema::new();
    let (mut wal, _) = Wal::open(
        dir,
        LogPosition::START,
        config.wal.segment_bytes,
        Recovery::Strict,
        |_| Ok(()),
    )?;
    let mut next_seq = 0u64;
    let mut records = 0u64;
    let mut batch = WalBatch::default();
    let mut flush = |wal: &mut Wal, batch: &mut WalBatch| -> Result<(), MigrateError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let header = record::header(RecordKind::Batch, next_seq);
        next_seq += batch.events.len() as u64;
        let salted = WalBatch::salted(batch.batch_id.clone(), std::mem::take(&mut batch.events));
        wal.append(&[&header, &salted.encode_to_vec()])?;
        wal.flush()?;
        records += 1;
        Ok(())
    };
    for old in events {
        if old.batch_id != batch.batch_id || batch.events.len() >= EVENTS_PER_RECORD {
            flush(&mut wal, &mut batch)?;
            batch.batch_id = old.batch_id.clone();
        }
        let mut event = match old.source {
            Source::Log(event) => *event,
            Source::Index { partition, address } => {
                read_old_event(&partitions[partition].searcher, address, &schema)?
            }
        };
        event.seq = 0;
        batch.events.push(event);
    }
    flush(&mut wal, &mut batch)?;
    wal.sync()?;
    Ok(records)
}

/// An old document's event: its body, with the times the fast fields hold.
fn read_old_event(
    searcher: &tantivy::Searcher,
    address: DocAddress,
    schema: &AuditSchema,
) -> Result<AuditEvent, MigrateError> {
    let bad = |e: &dyn std::fmt::Display| MigrateError::Index(format!("{address:?}: {e}"));
    let doc: TantivyDocument = searcher.doc(address).map_err(|e| bad(&e))?;
    let body = doc
        .get_first(schema.body)
        .and_then(|v| v.as_bytes())
        .ok_or_else(|| bad(&"no body"))?;
    let mut event = AuditEvent::decode(body).map_err(|e| bad(&e))?;
    let fast = searcher.segment_reader(address.segment_ord).fast_fields();
    let time = fast.i64(names::TIME).map_err(|e| bad(&e))?;
    let received = fast.i64(names::RECEIVED).map_err(|e| bad(&e))?;
    let (Some(time), Some(received)) = (time.first(address.doc_id), received.first(address.doc_id))
    else {
        return Err(bad(&"no time"));
    };
    restore_times(&mut event, time, received);
    Ok(event)
}

/// Moves the old index, log and checkpoint into `old` (`format-<N>/`),
/// the new log into place, and writes the format: each step is skipped
/// when a run that stopped half-way has done it already.
fn swap(data: &DataDir, build: &Path, old: &Path) -> Result<(), MigrateError> {
    std::fs::create_dir_all(old).map_err(io(old))?;
    let new_wal = build.join("wal");
    for path in [data.index(), data.checkpoint()] {
        move_into(&path, old)?;
    }
    if new_wal.exists() {
        // The top-level log is still the old one until the new moves in.
        move_into(&data.wal(), old)?;
        std::fs::rename(&new_wal, data.wal()).map_err(io(&new_wal))?;
    }
    if build.exists() {
        std::fs::remove_dir_all(build).map_err(io(build))?;
    }
    crate::wal::segment::sync_dir(data.root()).map_err(io(data.root()))?;
    data.write_format().map_err(io(&data.format_file()))
}

fn move_into(path: &Path, dir: &Path) -> Result<(), MigrateError> {
    if !path.exists() {
        return Ok(());
    }
    let to = dir.join(path.file_name().expect("data directory entries have names"));
    std::fs::rename(path, &to).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_seqs_increase_in_log_order() {
        let mut start = 8;
        let mut last = None;
        for (events, len) in [(1, 1), (3, 300), (1000, 301_234), (7, 9)] {
            let span = Span {
                start: LogPosition::new(start),
                end: LogPosition::new(start + len),
            };
            for i in 0..events {
                let seq = legacy_seq(span, events, i);
                assert!(last < Some(seq));
                assert!(start <= seq && seq < start + len);
                last = Some(seq);
            }
            start += len;
        }
    }
}

//! A partition as one search sees it: a Tantivy searcher, and the columns
//! every search reads (`time`, `seq`, `received`) and the events file
//! (`docstore`), opened once per segment rather than once per search.
//!
//! Opening a column reads its header and, for `time` (stored blockwise
//! linear), the table of every block: for a 10 M-event partition that was
//! 9 % of a sparse search's CPU, paid again by every search
//! (BENCHMARKS.md, issue 17). A segment never changes once written, so
//! its columns are kept for as long as the partition's searcher holds it,
//! and carried over when the searcher is reloaded after a commit.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use tantivy::columnar::{Cardinality, Column};
use tantivy::index::SegmentId;
use tantivy::schema::Value;
use tantivy::{DocAddress, DocId, IndexReader, SegmentReader, TantivyDocument};

use crate::docstore::{self, EventsFile, PartitionDictionary};
use crate::schema::{names, AuditSchema};

/// The columns of one segment.
#[derive(Clone)]
pub struct Columns {
    pub seq: Column<u64>,
    pub received: Column<i64>,
    /// The segment's events file; `None` in a partition created before
    /// the events store, whose events are in Tantivy's doc store.
    pub events: Option<EventsFile>,
    /// The stretches of rows over which `seq` ascends, found on the first
    /// look-up by seq; `None` where there are too many to be worth it.
    seq_runs: Arc<OnceLock<Option<Vec<SeqRun>>>>,
    /// The time column, and the least and greatest time of each
    /// `TIME_BOUNDS_DOCS` rows, shared with every view and time range of
    /// the segment.
    times: Arc<SegmentTimes>,
}

/// A segment's time column and its `TIME_BOUNDS_DOCS` bounds, one a
/// segment open in any view, found by segment id ([`segment_times`]): a
/// time range's scorer sees only the segment reader, and starts where
/// the bounds say the range can match (`time_range.rs`).
pub struct SegmentTimes {
    pub column: Column<i64>,
    bounds: OnceLock<Option<TimeBounds>>,
}

impl SegmentTimes {
    /// The bounds of each `TIME_BOUNDS_DOCS` rows (`Columns::time_bounds`),
    /// found by the first to ask. Two that ask at once each find them
    /// rather than one waiting for the other: the first may be a warming
    /// thread at the lowest priority (`Partitions::warm_in_background`).
    pub fn bounds(&self) -> Option<TimeBounds> {
        if let Some(bounds) = self.bounds.get() {
            return bounds.clone();
        }
        let bounds = time_bounds(&self.column, TIME_BOUNDS_DOCS);
        self.bounds.get_or_init(|| bounds).clone()
    }
}

/// The segments some view holds, weakly: an entry outlives its views
/// only until the next segment is opened.
static OPEN_SEGMENTS: LazyLock<Mutex<HashMap<SegmentId, Weak<SegmentTimes>>>> =
    LazyLock::new(Mutex::default);

/// The times of segment `id`, if a view holds it.
pub fn segment_times(id: SegmentId) -> Option<Arc<SegmentTimes>> {
    let open = OPEN_SEGMENTS.lock().expect("open segments lock");
    open.get(&id).and_then(Weak::upgrade)
}

/// The times of segment `id` as the views share them, its `column` kept
/// when no view holds it yet.
fn open_segment_times(id: SegmentId, column: &Column<i64>) -> Arc<SegmentTimes> {
    let mut open = OPEN_SEGMENTS.lock().expect("open segments lock");
    if let Some(times) = open.get(&id).and_then(Weak::upgrade) {
        return times;
    }
    open.retain(|_, times| times.strong_count() > 0);
    let times = Arc::new(SegmentTimes {
        column: column.clone(),
        bounds: OnceLock::new(),
    });
    open.insert(id, Arc::downgrade(&times));
    times
}

/// The least and greatest time of each stretch of rows (`Columns::time_bounds`).
pub type TimeBounds = Arc<[(i64, i64)]>;

/// Whether a stretch whose times lie between `min` and `max` can hold a
/// time of `times`.
pub fn meets((min, max): (i64, i64), times: &std::ops::RangeInclusive<i64>) -> bool {
    max >= *times.start() && min <= *times.end()
}

/// Rows a `Columns::time_bounds` entry covers: 512 entries (8 KiB) for a
/// segment of 2 M events.
pub const TIME_BOUNDS_DOCS: u32 = 4096;

impl Columns {
    fn open(
        reader: &SegmentReader,
        events: Option<&PartitionDictionary>,
    ) -> tantivy::Result<Columns> {
        let fast = reader.fast_fields();
        let time = fast.i64(names::TIME)?;
        Ok(Columns {
            times: open_segment_times(reader.segment_id(), &time),
            seq: fast.u64(names::SEQ)?,
            received: fast.i64(names::RECEIVED)?,
            events: events
                .map(|dictionary| docstore::open(reader, dictionary))
                .transpose()?,
            seq_runs: Arc::default(),
        })
    }

    pub fn time(&self) -> &Column<i64> {
        &self.times.column
    }

    /// The least and greatest time of rows `[i × rows, (i + 1) × rows)`
    /// at `i`, where every row has one time (`None` if not): lets a search
    /// with a full page pass over the stretches of a segment too old (or
    /// too new) to enter it without reading their times one by one. Kept
    /// for `TIME_BOUNDS_DOCS`; other sizes (tests) are computed each time.
    pub fn time_bounds(&self, rows: u32) -> Option<TimeBounds> {
        if rows == TIME_BOUNDS_DOCS {
            return self.times.bounds();
        }
        time_bounds(self.time(), rows)
    }

    /// The documents whose seq is `seq`, deleted ones included.
    pub fn docs_at_seq(&self, seq: u64) -> Vec<DocId> {
        self.docs_in_seqs(seq..=seq)
    }

    /// The documents whose seq lies in `seqs`, deleted ones included:
    /// binary searches of the stretches where seq ascends (the indexer
    /// adds events in log order, each writer thread to its own segment,
    /// and a merge appends whole segments, so a segment is a few such
    /// stretches), or a scan of the column where it is not.
    pub fn docs_in_seqs(&self, seqs: std::ops::RangeInclusive<u64>) -> Vec<DocId> {
        let (first, last) = (*seqs.start(), *seqs.end());
        let column = &self.seq;
        let rows = column.num_docs();
        let runs = self.seq_runs.get_or_init(|| seq_runs(column));
        let Some(runs) = runs else {
            let mut docs = Vec::new();
            column.get_docids_for_value_range(first..=last, 0..rows, &mut docs);
            return docs;
        };
        let first_at_least = |rows: &std::ops::Range<u32>, target: u64| {
            let (mut low, mut high) = (rows.start, rows.end);
            while low < high {
                let middle = low + (high - low) / 2;
                if column.values.get_val(middle) < target {
                    low = middle + 1;
                } else {
                    high = middle;
                }
            }
            low
        };
        let mut docs = Vec::new();
        for run in runs.iter().filter(|r| r.first <= last && first <= r.last) {
            let start = first_at_least(&run.rows, first);
            let end = match last.checked_add(1) {
                Some(next) => first_at_least(&run.rows, next),
                None => run.rows.end,
            };
            docs.extend(start..end);
        }
        docs
    }
}

/// The least and greatest value of each `rows` rows of a time column
/// with a value in every row, or `None`.
fn time_bounds(column: &Column<i64>, rows: u32) -> Option<TimeBounds> {
    if column.get_cardinality() != Cardinality::Full || rows == 0 {
        return None;
    }
    let mut bounds = Vec::new();
    let mut values = column.values.iter();
    loop {
        let mut block = values.by_ref().take(rows as usize);
        let Some(first) = block.next() else { break };
        bounds.push(block.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t))));
    }
    Some(bounds.into())
}

/// Rows `rows` of a seq column, over which seq never falls.
#[derive(Debug, Clone, PartialEq)]
struct SeqRun {
    rows: std::ops::Range<u32>,
    first: u64,
    last: u64,
}

/// More stretches than this in one segment and a look-up by seq scans
/// its column instead: the list would cost more memory than it saves.
const MAX_SEQ_RUNS: usize = 4_096;

/// The ascending stretches of a seq column with a value in every row
/// (the doc id is the row), or `None`.
fn seq_runs(column: &Column<u64>) -> Option<Vec<SeqRun>> {
    if column.get_cardinality() != Cardinality::Full {
        return None;
    }
    let mut runs: Vec<SeqRun> = Vec::new();
    for (row, seq) in (0u32..).zip(column.values.iter()) {
        if let Some(run) = runs.last_mut().filter(|run| run.last <= seq) {
            run.rows.end = row + 1;
            run.last = seq;
            continue;
        }
        if runs.len() == MAX_SEQ_RUNS {
            return None;
        }
        runs.push(SeqRun {
            rows: row..row + 1,
            first: seq,
            last: seq,
        });
    }
    Some(runs)
}

/// A searcher with the columns of each of its segments, in segment
/// order (`columns[ord]` belongs to `searcher.segment_reader(ord)`).
pub struct View {
    pub searcher: tantivy::Searcher,
    pub columns: Vec<Columns>,
}

impl AsRef<View> for View {
    fn as_ref(&self) -> &View {
        self
    }
}

/// A document's stored bytes.
pub struct Stored {
    /// The event, prost-encoded, less its times (`schema::encode_body`).
    pub body: Vec<u8>,
    /// Its salt or opening (`integrity::opening`); `None` without one.
    pub salt: Option<Vec<u8>>,
}

impl View {
    /// The view of `searcher` over a partition without the events store,
    /// its columns opened.
    pub fn new(searcher: tantivy::Searcher) -> tantivy::Result<View> {
        View::open(searcher, None, None)
    }

    /// Which reload of its partition's reader this is a view of.
    fn generation(&self) -> u64 {
        self.searcher.generation().generation_id()
    }

    /// The view of `searcher`, reusing the columns `previous` already
    /// opened for the segments both hold.
    fn open(
        searcher: tantivy::Searcher,
        events: Option<&PartitionDictionary>,
        previous: Option<&View>,
    ) -> tantivy::Result<View> {
        let known: HashMap<SegmentId, &Columns> = previous
            .map(|view| {
                let ids = view
                    .searcher
                    .segment_readers()
                    .iter()
                    .map(|r| r.segment_id());
                ids.zip(&view.columns).collect()
            })
            .unwrap_or_default();
        let columns = searcher
            .segment_readers()
            .iter()
            .map(|reader| match known.get(&reader.segment_id()) {
                Some(columns) => Ok((*columns).clone()),
                None => Columns::open(reader, events),
            })
            .collect::<tantivy::Result<_>>()?;
        Ok(View { searcher, columns })
    }

    /// The stored bytes of the document at `address`: from its segment's
    /// events file, or from Tantivy's doc store in a partition created
    /// before the events store.
    pub fn stored(&self, address: DocAddress, schema: &AuditSchema) -> tantivy::Result<Stored> {
        let segment = &self.columns[address.segment_ord as usize];
        if let Some(events) = &segment.events {
            let (body, salt) = events.get(address.doc_id)?;
            let salt = (!salt.is_empty()).then_some(salt);
            return Ok(Stored { body, salt });
        }
        let doc: TantivyDocument = self.searcher.doc(address)?;
        let bytes = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_bytes())
                .map(<[u8]>::to_vec)
        };
        Ok(Stored {
            body: bytes(schema.body).unwrap_or_default(),
            salt: bytes(schema.salt),
        })
    }
}

/// The current view of one partition's reader: rebuilt when the reader
/// has been reloaded since, shared until then.
///
/// A view is opened outside the lock: every read of the partition asks
/// for its view, and one held up while opening it (the self-audit's
/// thread runs at the lowest CPU priority, and waits whenever anything
/// else can run) would hold up every search of the partition with it.
#[derive(Default)]
pub struct Views {
    current: Mutex<Option<Arc<View>>>,
}

impl Views {
    pub fn current(
        &self,
        reader: &IndexReader,
        events: Option<&PartitionDictionary>,
    ) -> tantivy::Result<Arc<View>> {
        let searcher = reader.searcher();
        let generation = searcher.generation().generation_id();
        let last = self.last();
        if let Some(view) = last.as_ref() {
            if view.generation() == generation {
                return Ok(view.clone());
            }
        }
        let view = match View::open(searcher, events, last.as_deref()) {
            Ok(view) => view,
            // The events file of a segment this searcher holds is gone:
            // Tantivy deletes a merge's inputs as soon as it ends, before
            // the indexer reloads the reader, and no view had opened them.
            // The reloaded searcher names the merged segment instead.
            Err(error) if reload_moved(reader, generation) => {
                tracing::debug!(%error, "a merged-away segment: taking the reloaded searcher");
                View::open(reader.searcher(), events, last.as_deref())?
            }
            Err(error) => return Err(error),
        };
        let view = Arc::new(view);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        // Another read may have opened a newer one meanwhile.
        if current
            .as_ref()
            .is_none_or(|c| c.generation() < view.generation())
        {
            *current = Some(view.clone());
        }
        Ok(view)
    }

    /// Opens the current view now, with the time bounds of each of its
    /// segments, so that the next search finds them made: a 2 M-event
    /// segment's bounds are a scan of its time column.
    pub fn warm(
        &self,
        reader: &IndexReader,
        events: Option<&PartitionDictionary>,
    ) -> tantivy::Result<()> {
        let view = self.current(reader, events)?;
        for columns in &view.columns {
            columns.times.bounds();
        }
        Ok(())
    }

    /// Whether a view of `reader`'s searcher is kept, and knows every
    /// segment's time bounds.
    #[cfg(test)]
    pub fn is_warm(&self, reader: &IndexReader) -> bool {
        let generation = reader.searcher().generation().generation_id();
        self.last().is_some_and(|view| {
            let known = |c: &Columns| c.times.bounds.get().is_some();
            view.generation() == generation && view.columns.iter().all(known)
        })
    }

    /// The view kept last, if any.
    fn last(&self) -> Option<Arc<View>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reloads `reader`; true if its searcher is no longer of `generation`.
fn reload_moved(reader: &IndexReader, generation: u64) -> bool {
    reader.reload().is_ok() && reader.searcher().generation().generation_id() != generation
}

#[cfg(test)]
mod tests {
    use tantivy::{doc, Index, ReloadPolicy};

    use super::*;
    use crate::schema::AuditSchema;

    /// One segment holding `seqs` in this order, as a view.
    fn segment_of(seqs: &[u64]) -> View {
        let schema = AuditSchema::new();
        let index = Index::create_in_ram(schema.schema.clone());
        crate::schema::register_tokenizers(&index);
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for &seq in seqs {
            let row = doc!(schema.seq => seq, schema.time => 0i64, schema.received => 0i64);
            writer.add_document(row).unwrap();
        }
        writer.commit().unwrap();
        View::new(index.reader().unwrap().searcher()).unwrap()
    }

    fn every_lookup_finds_what_a_scan_finds(seqs: &[u64]) {
        let view = segment_of(seqs);
        let columns = &view.columns[0];
        for seq in 0..=seqs.iter().max().unwrap() + 1 {
            let scanned: Vec<DocId> = (0..)
                .zip(seqs)
                .filter(|(_, s)| **s == seq)
                .map(|(doc, _)| doc)
                .collect();
            assert_eq!(columns.docs_at_seq(seq), scanned, "seq {seq}");
        }
        let max = *seqs.iter().max().unwrap();
        for (first, last) in [(0, max), (4, 12), (5, 5), (13, 19), (21, max + 3)] {
            let scanned: Vec<DocId> = (0..)
                .zip(seqs)
                .filter(|(_, s)| (first..=last).contains(*s))
                .map(|(doc, _)| doc)
                .collect();
            assert_eq!(
                columns.docs_in_seqs(first..=last),
                scanned,
                "seqs {first}..={last}"
            );
        }
    }

    #[test]
    fn a_warmed_view_is_the_next_searchs_with_its_time_bounds() {
        let schema = AuditSchema::new();
        let index = Index::create_in_ram(schema.schema.clone());
        crate::schema::register_tokenizers(&index);
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        // Reloaded by the test only: a reload of its own on the commit
        // would make a new generation between the warming and the checks.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .unwrap();
        let views = Views::default();
        for times in [0..5_000i64, 3_000..9_000] {
            for time in times {
                let row =
                    doc!(schema.seq => time as u64, schema.time => time, schema.received => 0i64);
                writer.add_document(row).unwrap();
            }
            writer.commit().unwrap();
            reader.reload().unwrap();
            assert!(!views.is_warm(&reader));
            views.warm(&reader, None).unwrap();
            assert!(views.is_warm(&reader));
            let warmed = views.last().unwrap();
            assert_eq!(
                warmed.generation(),
                reader.searcher().generation().generation_id()
            );
            assert!(Arc::ptr_eq(&views.current(&reader, None).unwrap(), &warmed));
        }
        let view = views.last().unwrap();
        let bounds: Vec<_> = view
            .columns
            .iter()
            .map(|c| c.time_bounds(TIME_BOUNDS_DOCS).unwrap())
            .collect();
        let mut expected = [
            vec![(0, 4095), (4096, 4999)],
            vec![(3_000, 7_095), (7_096, 8_999)],
        ];
        let mut found: Vec<Vec<(i64, i64)>> = bounds.iter().map(|b| b.to_vec()).collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_look_up_by_seq_searches_each_ascending_stretch() {
        // Two writer threads' batches appended by a merge, and a forged
        // document repeating a seq.
        let seqs = [10, 11, 12, 13, 3, 4, 5, 20, 4, 30, 31];
        every_lookup_finds_what_a_scan_finds(&seqs);
        let view = segment_of(&seqs);
        let runs = seq_runs(&view.columns[0].seq).unwrap();
        assert_eq!(runs.len(), 3, "{runs:?}");
    }

    #[test]
    fn too_many_stretches_and_the_column_is_scanned() {
        let seqs: Vec<u64> = (0..MAX_SEQ_RUNS as u64 + 10).rev().collect();
        let view = segment_of(&seqs);
        assert_eq!(seq_runs(&view.columns[0].seq), None);
        every_lookup_finds_what_a_scan_finds(&seqs);
    }
}

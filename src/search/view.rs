//! A partition as one search sees it: a Tantivy searcher, and the columns
//! every search reads (`time`, `seq`, `received`), opened once per segment
//! rather than once per search.
//!
//! Opening a column reads its header and, for `time` (stored blockwise
//! linear), the table of every block: for a 10 M-event partition that was
//! 9 % of a sparse search's CPU, paid again by every search
//! (BENCHMARKS.md, issue 17). A segment never changes once written, so
//! its columns are kept for as long as the partition's searcher holds it,
//! and carried over when the searcher is reloaded after a commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::{IndexReader, SegmentReader};

use crate::schema::names;

/// The columns of one segment.
#[derive(Clone)]
pub struct Columns {
    pub time: Column<i64>,
    pub seq: Column<u64>,
    pub received: Column<i64>,
}

impl Columns {
    fn open(reader: &SegmentReader) -> tantivy::Result<Columns> {
        let fast = reader.fast_fields();
        Ok(Columns {
            time: fast.i64(names::TIME)?,
            seq: fast.u64(names::SEQ)?,
            received: fast.i64(names::RECEIVED)?,
        })
    }
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

impl View {
    /// The view of `searcher`, its columns opened.
    pub fn new(searcher: tantivy::Searcher) -> tantivy::Result<View> {
        View::open(searcher, None)
    }

    /// The view of `searcher`, reusing the columns `previous` already
    /// opened for the segments both hold.
    fn open(searcher: tantivy::Searcher, previous: Option<&View>) -> tantivy::Result<View> {
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
                None => Columns::open(reader),
            })
            .collect::<tantivy::Result<_>>()?;
        Ok(View { searcher, columns })
    }
}

/// The current view of one partition's reader: rebuilt when the reader
/// has been reloaded since, shared until then.
#[derive(Default)]
pub struct Views {
    current: Mutex<Option<Arc<View>>>,
}

impl Views {
    pub fn current(&self, reader: &IndexReader) -> tantivy::Result<Arc<View>> {
        let searcher = reader.searcher();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let generation = searcher.generation().generation_id();
        if let Some(view) = current.as_ref() {
            if view.searcher.generation().generation_id() == generation {
                return Ok(view.clone());
            }
        }
        let view = Arc::new(View::open(searcher, current.as_deref())?);
        *current = Some(view.clone());
        Ok(view)
    }
}

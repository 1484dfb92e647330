//! A time range, `from ≤ time < to`, whose scorer reads only the
//! stretches of rows whose times can meet it.
//!
//! Tantivy's range query on a fast field scans the column from row 0 to
//! its first match each time a scorer is made. A time range from an
//! instant, oldest first, makes a scorer for each chunk of each segment
//! it visits, and each scanned the segment's rows before the instant:
//! 6.9 ms at p50 over HTTP on 10 M events, against 1.4 newest first
//! (BENCHMARKS.md, issue 17). Here the scorer starts at the first
//! `TIME_BOUNDS_DOCS` rows whose least and greatest time meet the range,
//! and passes over every stretch that cannot (`view::SegmentTimes`). A
//! segment no view holds (no bounds known) is read from row 0, as
//! Tantivy would.

use std::ops::RangeInclusive;

use tantivy::columnar::Column;
use tantivy::query::{ConstScorer, EmptyScorer, EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SeekDangerResult, SegmentReader, TantivyError, TERMINATED};

use super::view::{self, meets, TimeBounds, TIME_BOUNDS_DOCS};
use crate::schema::names;

/// Events with `from ≤ time < to` (micros; `None`: unbounded).
#[derive(Debug, Clone)]
pub struct TimeRange {
    times: RangeInclusive<i64>,
}

impl TimeRange {
    pub fn new(from: Option<i64>, to: Option<i64>) -> TimeRange {
        let first = from.unwrap_or(i64::MIN);
        let last = to.map_or(i64::MAX, |to| to.saturating_sub(1));
        TimeRange {
            times: first..=last,
        }
    }

    /// The segment's time column, and its bounds when a view holds it.
    fn column(&self, reader: &SegmentReader) -> tantivy::Result<(Column<i64>, Option<TimeBounds>)> {
        Ok(match view::segment_times(reader.segment_id()) {
            Some(times) => (times.column.clone(), times.bounds()),
            None => (reader.fast_fields().i64(names::TIME)?, None),
        })
    }
}

impl Query for TimeRange {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for TimeRange {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let (column, bounds) = self.column(reader)?;
        let (first, last) = (*self.times.start(), *self.times.end());
        if first > last || first > column.max_value() || last < column.min_value() {
            return Ok(Box::new(EmptyScorer));
        }
        let docs = TimeRangeDocSet::new(column, self.times.clone(), bounds);
        Ok(Box::new(ConstScorer::new(docs, boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let (column, _) = self.column(reader)?;
        let matches = column.values_for_doc(doc).any(|t| self.times.contains(&t));
        match matches {
            true => Ok(Explanation::new("TimeRange", 1.0)),
            false => Err(TantivyError::InvalidArgument(format!(
                "document #({doc}) does not match"
            ))),
        }
    }
}

/// The documents of one segment whose time is in `times`, read a
/// stretch of `TIME_BOUNDS_DOCS` rows at a time.
struct TimeRangeDocSet {
    column: Column<i64>,
    times: RangeInclusive<i64>,
    /// Each stretch's least and greatest time; `None`: every stretch is
    /// read.
    bounds: Option<TimeBounds>,
    /// The first row not read yet.
    next: u32,
    /// The matches read, from `at` on still ahead.
    docs: Vec<DocId>,
    at: usize,
    /// Rows in the stretches that can meet the range.
    cost: u64,
}

impl TimeRangeDocSet {
    fn new(
        column: Column<i64>,
        times: RangeInclusive<i64>,
        bounds: Option<TimeBounds>,
    ) -> TimeRangeDocSet {
        let rows = column.num_docs();
        let cost = match &bounds {
            Some(bounds) => (0..bounds.len())
                .filter(|&i| meets(bounds[i], &times))
                .map(|i| u64::from(stretch_rows(i, rows).len() as u32))
                .sum(),
            None => u64::from(rows),
        };
        let mut docs = TimeRangeDocSet {
            column,
            times,
            bounds,
            next: 0,
            docs: Vec::with_capacity(TIME_BOUNDS_DOCS as usize),
            at: 0,
            cost,
        };
        docs.read_on();
        docs
    }

    /// Whether stretch `i` can hold a match.
    fn may_match(&self, i: usize) -> bool {
        self.bounds
            .as_ref()
            .is_none_or(|bounds| bounds.get(i).is_none_or(|&b| meets(b, &self.times)))
    }

    /// Reads from `next` on, stretch by stretch, until one holds a match
    /// or the rows end.
    fn read_on(&mut self) {
        self.docs.clear();
        self.at = 0;
        let rows = self.column.num_docs();
        while self.docs.is_empty() && self.next < rows {
            let i = (self.next / TIME_BOUNDS_DOCS) as usize;
            let end = stretch_rows(i, rows).end;
            if self.may_match(i) {
                let (times, rows) = (self.times.clone(), self.next..end);
                self.column
                    .get_docids_for_value_range(times, rows, &mut self.docs);
            }
            self.next = end;
        }
    }
}

/// Rows `[i × TIME_BOUNDS_DOCS, (i + 1) × TIME_BOUNDS_DOCS)` of `rows`.
fn stretch_rows(i: usize, rows: u32) -> std::ops::Range<u32> {
    let start = (i as u32).saturating_mul(TIME_BOUNDS_DOCS).min(rows);
    start..start.saturating_add(TIME_BOUNDS_DOCS).min(rows)
}

impl DocSet for TimeRangeDocSet {
    fn advance(&mut self) -> DocId {
        self.at += 1;
        if self.at >= self.docs.len() {
            self.read_on();
        }
        self.doc()
    }

    fn doc(&self) -> DocId {
        self.docs.get(self.at).copied().unwrap_or(TERMINATED)
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.doc() >= target {
            return self.doc();
        }
        if self.docs.last().is_some_and(|&last| last >= target) {
            self.at += self.docs[self.at..].partition_point(|&doc| doc < target);
            return self.doc();
        }
        self.next = self.next.max(target);
        self.read_on();
        self.doc()
    }

    /// Whether `target` itself matches, from its time alone; a miss
    /// names the next stretch that can hold a match as the lower bound.
    fn seek_danger(&mut self, target: DocId) -> SeekDangerResult {
        let rows = self.column.num_docs();
        if target >= rows {
            return SeekDangerResult::SeekLowerBound(TERMINATED);
        }
        let i = (target / TIME_BOUNDS_DOCS) as usize;
        if self.may_match(i) {
            if self
                .column
                .values_for_doc(target)
                .any(|t| self.times.contains(&t))
            {
                // Valid again, on `target`; `advance` reads on after it.
                self.docs.clear();
                self.docs.push(target);
                self.at = 0;
                self.next = target + 1;
                return SeekDangerResult::Found;
            }
            return SeekDangerResult::SeekLowerBound(target + 1);
        }
        let next = (i + 1..)
            .find(|&j| self.may_match(j))
            .map_or(TERMINATED, |j| {
                let start = stretch_rows(j, rows).start;
                if start >= rows {
                    TERMINATED
                } else {
                    start
                }
            });
        SeekDangerResult::SeekLowerBound(next)
    }

    fn size_hint(&self) -> u32 {
        self.cost.min(u64::from(u32::MAX)) as u32 / 10
    }

    fn cost(&self) -> u64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tantivy::query::{BooleanQuery, Occur, RangeQuery, TermQuery};
    use tantivy::schema::{IndexRecordOption, Schema, FAST, STRING};
    use tantivy::{doc, Index, IndexWriter, Term};

    use super::*;
    use crate::search::view::View;

    /// Events of one segment: three runs of ascending times that overlap
    /// (as a merge appends segments), every 997th event late.
    fn times() -> Vec<i64> {
        let run = 3 * TIME_BOUNDS_DOCS as i64 + 1_000;
        let starts = [0, run * 5, run * 2];
        let mut times = Vec::new();
        for start in starts {
            times.extend((0..run).map(|i| start + i * 10));
        }
        for (i, time) in times.iter_mut().enumerate() {
            if i % 997 == 0 {
                *time = (*time - 20_000).max(0);
            }
        }
        times
    }

    /// The segment of `times`, each event tagged `a` or `b`, and a view
    /// of it (which keeps its bounds known while it lives).
    fn segment(times: &[i64]) -> (View, tantivy::schema::Field) {
        let mut builder = Schema::builder();
        let time = builder.add_i64_field(names::TIME, FAST);
        let seq = builder.add_u64_field(names::SEQ, FAST);
        let received = builder.add_i64_field(names::RECEIVED, FAST);
        let tag = builder.add_text_field("tag", STRING);
        let index = Index::create_in_ram(builder.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000).unwrap();
        for (i, &t) in times.iter().enumerate() {
            let which = if i % 7 == 0 { "a" } else { "b" };
            let document = doc!(time => t, seq => i as u64, received => t, tag => which);
            writer.add_document(document).unwrap();
        }
        writer.commit().unwrap();
        let view = View::new(index.reader().unwrap().searcher()).unwrap();
        assert_eq!(view.searcher.segment_readers().len(), 1);
        (view, tag)
    }

    fn scorer(view: &View, query: &dyn Query) -> Box<dyn Scorer> {
        let scoring = EnableScoring::disabled_from_searcher(&view.searcher);
        let weight = query.weight(scoring).unwrap();
        weight.scorer(view.searcher.segment_reader(0), 1.0).unwrap()
    }

    fn all(mut docs: impl DocSet) -> Vec<DocId> {
        let mut found = Vec::new();
        while docs.doc() != TERMINATED {
            found.push(docs.doc());
            docs.advance();
        }
        found
    }

    /// A range of up to two stretches' worth of times, or open at one end.
    fn range(rng: &mut StdRng, end: i64) -> (Option<i64>, Option<i64>) {
        let from = rng.random_range(0..end);
        let to = from + rng.random_range(1..2 * 10 * TIME_BOUNDS_DOCS as i64);
        match rng.random_range(0..6) {
            0 => (None, Some(to)),
            1 => (Some(from), None),
            _ => (Some(from), Some(to)),
        }
    }

    /// Every way a scorer is driven (advance, seek, seek_danger, and
    /// inside Tantivy's intersection) finds what a scan of every time
    /// finds; and the bounds are used (a narrow range costs less than
    /// the segment's rows).
    #[test]
    fn every_way_of_reading_matches_a_scan_of_every_time() {
        let times = times();
        let (view, tag) = segment(&times);
        let end = *times.iter().max().unwrap() + 20;
        let mut rng = StdRng::seed_from_u64(17);
        let mut narrow = 0;
        for _ in 0..200 {
            let (from, to) = range(&mut rng, end);
            let query = TimeRange::new(from, to);
            let wanted: Vec<DocId> = (0..times.len() as DocId)
                .filter(|&d| query.times.contains(&times[d as usize]))
                .collect();
            let label = format!("{from:?}..{to:?}");
            let docs = scorer(&view, &query);
            if docs.cost() < times.len() as u64 / 2 {
                narrow += 1;
            }
            assert_eq!(all(docs), wanted, "advance, {label}");
            // seek, to increasing targets, near (inside what was read)
            // and far.
            let mut docs = scorer(&view, &query);
            while docs.doc() != TERMINATED {
                let gap = match rng.random_bool(0.5) {
                    true => rng.random_range(0..64),
                    false => rng.random_range(0..3 * TIME_BOUNDS_DOCS),
                };
                let target = docs.doc() + gap;
                let expected = wanted.iter().copied().find(|&d| d >= target);
                assert_eq!(
                    docs.seek(target),
                    expected.unwrap_or(TERMINATED),
                    "seek {target}, {label}"
                );
            }
            // seek_danger, to strictly increasing targets.
            let mut docs = scorer(&view, &query);
            let mut target = rng.random_range(0..TIME_BOUNDS_DOCS);
            while (target as usize) < times.len() {
                let next = wanted
                    .iter()
                    .copied()
                    .find(|&d| d > target)
                    .unwrap_or(TERMINATED);
                match docs.seek_danger(target) {
                    SeekDangerResult::Found => {
                        assert!(
                            wanted.binary_search(&target).is_ok(),
                            "found {target}, {label}"
                        );
                        assert_eq!(docs.doc(), target);
                        assert_eq!(docs.advance(), next, "after {target}, {label}");
                    }
                    SeekDangerResult::SeekLowerBound(bound) => {
                        assert!(
                            wanted.binary_search(&target).is_err(),
                            "missed {target}, {label}"
                        );
                        assert!(
                            target < bound && bound <= next,
                            "bound {bound} for {target}, {label}"
                        );
                    }
                }
                target += rng.random_range(1..TIME_BOUNDS_DOCS);
            }
            // Inside an intersection with a term (its lead).
            let a: Box<dyn Query> = Box::new(TermQuery::new(
                Term::from_field_text(tag, "a"),
                IndexRecordOption::Basic,
            ));
            let both = BooleanQuery::new(vec![(Occur::Must, a), (Occur::Must, Box::new(query))]);
            let wanted_a: Vec<DocId> = wanted.iter().copied().filter(|d| d % 7 == 0).collect();
            assert_eq!(all(scorer(&view, &both)), wanted_a, "with a term, {label}");
        }
        assert!(
            narrow > 50,
            "the bounds were used for {narrow} ranges of 200"
        );
    }

    /// A segment no view holds is read from its first row, as Tantivy's
    /// own range reads it.
    #[test]
    fn without_a_view_it_reads_what_tantivys_range_reads() {
        let times = times();
        let (view, _) = segment(&times);
        let searcher = view.searcher.clone();
        drop(view);
        let reader = searcher.segment_reader(0);
        assert!(view::segment_times(reader.segment_id()).is_none());
        let time = searcher.schema().get_field(names::TIME).unwrap();
        let scoring = EnableScoring::disabled_from_searcher(&searcher);
        let (from, to) = (40_000, 190_000);
        let ours = TimeRange::new(Some(from), Some(to));
        let theirs = RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_i64(time, from)),
            std::ops::Bound::Excluded(Term::from_field_i64(time, to)),
        );
        let docs = |q: &dyn Query| all(q.weight(scoring).unwrap().scorer(reader, 1.0).unwrap());
        let ours_docs = docs(&ours);
        assert!(!ours_docs.is_empty());
        assert_eq!(ours_docs, docs(&theirs));
        let scorer = ours.weight(scoring).unwrap().scorer(reader, 1.0).unwrap();
        assert_eq!(scorer.cost(), times.len() as u64, "no bounds: every row");
    }
}

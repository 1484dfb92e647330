//! The best `limit` matches by (time, seq), over every segment of the
//! partitions a search touches, and how many matches there are.
//!
//! Segments are visited best first by the bounds of their `time` column
//! (newest first, or oldest first when ascending). Events mostly arrive in
//! time order, so each segment covers a narrow stretch of time, and once
//! the page is full most segments cannot hold a better hit: they are only
//! counted, and counting stops at `count_up_to` (`limits.exact_total_hits`)
//! unless the request asks for an exact total. A broad search then reads
//! the newest segments instead of every match in the index.
//!
//! Not a Tantivy `Collector`: a collector sees one segment at a time, in
//! the searcher's order, and cannot skip one.

use std::cmp::Reverse;
use std::ops::Range;

use tantivy::query::{EnableScoring, Query, Weight};
use tantivy::{DocAddress, DocId, DocSet, SegmentOrdinal, SegmentReader, TERMINATED};

use super::view::{meets, Columns, View, TIME_BOUNDS_DOCS};

/// The first chunk a search visits at the best end of a segment
/// (`State::collect_all`); each next one is four times as long, until the
/// page is full.
const FIRST_CHUNK_DOCS: u32 = 4096;

/// Once the page is full, the rest of a segment is scanned in blocks of
/// this many documents: the candidates of one block are kept in a buffer
/// of at most this many doc ids (256 KiB), and the page's threshold rises
/// from block to block.
const SCAN_BLOCK_DOCS: u32 = 65_536;

/// A query that reads at most this many postings to find its matches in
/// a segment (`DocSet::cost`: for terms that must all match, the rarest
/// term's) is sparse there: its matches are read in one pass of one
/// scorer, then offered best end first. Building a scorer looks every
/// term up in the segment's dictionary, which the chunks of `collect_all`
/// did again for each chunk: 19 % of a sparse search's CPU (BENCHMARKS.md,
/// issue 17). Not the estimate of its matches (`DocSet::size_hint`): two
/// frequent words estimate few matches but read a term of 200,000
/// postings a segment, all of them in one pass, where the chunks from the
/// newest end stop once the page is full and the count done (free text
/// of two frequent words: BENCHMARKS.md, issue 17). Also `scan_block`'s
/// buffer size, so the one buffer serves both.
const SPARSE_MATCHES: u32 = SCAN_BLOCK_DOCS;

/// A block of `scan_block` whose times could reach the page and that
/// holds at most this many matches has each match's time read, not the
/// whole block's times scanned: one read costs a few times a row of the
/// scan, and a sparse filter (an app token's subject and access) holds a
/// few hundred matches in a block of 65,536 events, where the scans were
/// a fifth of its search's CPU (docs/benchmarks-history.md, "2026-12-05
/// (5)"). Past this many, the rest of the block is scanned.
const SPARSE_BLOCK_MATCHES: u32 = SCAN_BLOCK_DOCS / 32;

/// The constants above, as one value, so tests can make them small.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    first_chunk: u32,
    scan_block: u32,
    sparse_matches: u32,
    sparse_block: u32,
    time_bounds: u32,
}

const TUNING: Tuning = Tuning {
    first_chunk: FIRST_CHUNK_DOCS,
    scan_block: SCAN_BLOCK_DOCS,
    sparse_matches: SPARSE_MATCHES,
    sparse_block: SPARSE_BLOCK_MATCHES,
    time_bounds: TIME_BOUNDS_DOCS,
};

/// One hit: where it is and its sort key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hit {
    pub time: i64,
    pub seq: u64,
    /// Into the searcher of `partition`.
    pub address: DocAddress,
    pub partition: usize,
}

pub(super) struct Page {
    /// Matches inside the snapshot, counted up to `count_up_to`.
    pub total: u64,
    /// More hits past this page.
    pub more: bool,
    /// Best first.
    pub hits: Vec<Hit>,
}

/// What to collect.
pub(super) struct TimeOrder {
    pub limit: usize,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// The previous page's last (time, seq): only hits past it are wanted.
    pub after: Option<(i64, u64)>,
    /// Only events whose seq is below this are seen.
    pub snapshot: u64,
    /// Counting may stop once this many matches are seen (`u64::MAX`:
    /// count them all).
    pub count_up_to: u64,
    /// A promise about the query: every match's time is in `from..to`
    /// (the request's own time range; `None` is unbounded). A segment is
    /// then entered at the first stretch of rows whose time bounds can
    /// hold a match, rather than read from its end until the query's
    /// scorer finds one.
    pub times: (Option<i64>, Option<i64>),
}

/// Larger is better, whatever the direction. Times are never negative
/// (validation refuses events before 1970), so negation is safe.
type Rank = (i64, u64);

/// A segment to visit, with its columns.
struct Segment<'a> {
    partition: usize,
    ord: SegmentOrdinal,
    reader: &'a SegmentReader,
    /// Its `time` and `seq` columns and their time bounds.
    columns: &'a Columns,
}

/// Runs `query` over the segments of `views` (one per partition).
pub(super) fn collect<V: AsRef<View>>(
    views: &[V],
    query: &dyn Query,
    order: &TimeOrder,
) -> tantivy::Result<Page> {
    collect_tuned(views, query, order, TUNING)
}

fn collect_tuned<V: AsRef<View>>(
    views: &[V],
    query: &dyn Query,
    order: &TimeOrder,
    tuning: Tuning,
) -> tantivy::Result<Page> {
    let mut weights = Vec::with_capacity(views.len());
    let mut segments = Vec::new();
    for (partition, view) in views.iter().map(AsRef::as_ref).enumerate() {
        let searcher = &view.searcher;
        weights.push(query.weight(EnableScoring::disabled_from_searcher(searcher))?);
        for (ord, (reader, columns)) in searcher
            .segment_readers()
            .iter()
            .zip(&view.columns)
            .enumerate()
        {
            segments.push(Segment {
                partition,
                ord: ord as SegmentOrdinal,
                reader,
                columns,
            });
        }
    }
    // Best first. The column bounds are read from its header.
    if order.ascending {
        segments.sort_by_key(|s| s.columns.time().min_value());
    } else {
        segments.sort_by_key(|s| Reverse(s.columns.time().max_value()));
    }
    let mut state = State {
        order,
        top: TopN::new(order.limit),
        total: 0,
        after_cursor: 0,
        candidates: Vec::new(),
        tuning,
    };
    for segment in &segments {
        state.visit(segment, weights[segment.partition].as_ref())?;
    }
    let hits = state.top.into_sorted();
    Ok(Page {
        total: state.total,
        more: state.after_cursor > hits.len() as u64,
        hits: hits
            .into_iter()
            .map(|(_, hit)| Hit {
                time: hit.time,
                seq: hit.seq,
                address: hit.address,
                partition: hit.partition,
            })
            .collect(),
    })
}

struct State<'o> {
    order: &'o TimeOrder,
    top: TopN,
    /// Matches inside the snapshot seen so far.
    total: u64,
    /// Of those, the ones past the cursor: more than a page of them means
    /// there is a next page.
    after_cursor: u64,
    /// `scan_block`'s buffer, kept between blocks.
    candidates: Vec<DocId>,
    tuning: Tuning,
}

impl State<'_> {
    fn rank(&self, time: i64, seq: u64) -> Rank {
        if self.order.ascending {
            (-time, u64::MAX - seq)
        } else {
            (time, seq)
        }
    }

    /// True if (time, seq) comes after the cursor in the page order.
    fn past_cursor(&self, time: i64, seq: u64) -> bool {
        match self.order.after {
            None => true,
            Some(after) if self.order.ascending => (time, seq) > after,
            Some(after) => (time, seq) < after,
        }
    }

    fn visit(&mut self, segment: &Segment, weight: &dyn Weight) -> tantivy::Result<()> {
        let (min, max) = (
            segment.columns.time().min_value(),
            segment.columns.time().max_value(),
        );
        // The best rank any event of this segment could have, on time.
        let best = if self.order.ascending { -min } else { max };
        let could_enter = match self.top.threshold() {
            None => self.order.limit > 0,
            Some(worst) => best >= worst.0,
        };
        let could_be_past_cursor = match self.order.after {
            None => true,
            Some((time, _)) if self.order.ascending => max >= time,
            Some((time, _)) => min <= time,
        };
        if could_enter && could_be_past_cursor {
            self.collect_all(segment, weight)
        } else {
            // Nothing here makes the page. When the page is full, every
            // match here is worse than its worst, so past the cursor too.
            let past = !could_enter && self.top.threshold().is_some();
            self.count(segment, weight, past)
        }
    }

    /// Every match of the segment is offered to the page.
    ///
    /// Documents are written, and compaction merges segments, roughly in
    /// time order, so the best matches sit at the segment's end (newest
    /// first) or start (oldest first). That end is visited first, in
    /// chunks each four times the last, until the page is full: in doc
    /// order every match of a newest-first search would beat the one before
    /// and enter the page (about twice the time for page 10 of a broad
    /// search: docs/benchmarks-history.md).
    /// Once the page is full, the rest goes to `scan_rest`.
    fn collect_all(&mut self, segment: &Segment, weight: &dyn Weight) -> tantivy::Result<()> {
        let check_seq = segment.columns.seq.max_value() >= self.order.snapshot;
        let scorer = weight.scorer(segment.reader, 1.0)?;
        if scorer.cost() <= u64::from(self.tuning.sparse_matches) {
            return self.offer_sparse(segment, scorer, check_seq);
        }
        drop(scorer);
        let mut rest = self.rows_in_times(segment);
        let mut chunk = self.tuning.first_chunk;
        while !rest.is_empty() {
            if self.top.threshold().is_some() {
                // The page is full: what is left is only scanned, in doc
                // order, so that one scorer serves all of it.
                self.scan_rest(segment, weight, rest, check_seq)?;
                break;
            }
            let len = chunk.min(rest.end - rest.start);
            let block = if self.order.ascending {
                rest.start += len;
                rest.start - len..rest.start
            } else {
                rest.end -= len;
                rest.end..rest.end + len
            };
            let next = self.offer_block(segment, weight, block, check_seq)?;
            if self.order.ascending {
                // The scorer found no match before `next`: the chunks
                // up to it would each have sought there again (a time
                // range starting mid-segment, oldest first, rescanned the
                // column to its start once a chunk: ~29 ms on 10 M events).
                rest.start = rest.start.max(next.min(rest.end));
            }
            // A page's worth kept sets the threshold now rather than at
            // twice that (`TopN::push`).
            self.top.settle();
            chunk = chunk.saturating_mul(4);
        }
        self.top.settle();
        Ok(())
    }

    /// The segment's rows from the first to the last stretch whose time
    /// bounds meet `order.times`: no match lies outside them. A time range
    /// from an instant mid-segment, oldest first, had each chunk's scorer
    /// scan the time column from the segment's start to the instant.
    fn rows_in_times(&self, segment: &Segment) -> Range<DocId> {
        let all = 0..segment.reader.max_doc();
        let (from, to) = self.order.times;
        if from.is_none() && to.is_none() {
            return all;
        }
        let rows = self.tuning.time_bounds;
        let Some(bounds) = segment.columns.time_bounds(rows) else {
            return all;
        };
        // `to` is exclusive: an event at to - 1 µs is the last that counts.
        let times = from.unwrap_or(i64::MIN)..=to.map_or(i64::MAX, |to| to.saturating_sub(1));
        let can_hold = |&stretch: &(i64, i64)| meets(stretch, &times);
        let (Some(first), Some(last)) = (
            bounds.iter().position(can_hold),
            bounds.iter().rposition(can_hold),
        ) else {
            return all.start..all.start; // no stretch can hold a match
        };
        let start = (first as DocId).saturating_mul(rows).min(all.end);
        let end = (last as DocId + 1).saturating_mul(rows).min(all.end);
        start..end
    }

    /// Offers every match of a segment where the query is sparse: read in
    /// one pass of `scorer`, then offered from the best end, so that the
    /// page fills first with the matches most likely to stay on it.
    fn offer_sparse(
        &mut self,
        segment: &Segment,
        mut scorer: Box<dyn tantivy::query::Scorer>,
        check_seq: bool,
    ) -> tantivy::Result<()> {
        let alive = segment.reader.alive_bitset();
        let mut matches = std::mem::take(&mut self.candidates);
        matches.clear();
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                matches.push(doc);
            }
            doc = scorer.advance();
        }
        let result = if self.order.ascending {
            matches
                .iter()
                .try_for_each(|&doc| self.offer(segment, doc, check_seq))
        } else {
            matches
                .iter()
                .rev()
                .try_for_each(|&doc| self.offer(segment, doc, check_seq))
        };
        self.candidates = matches;
        self.top.settle();
        result
    }

    /// Offers each match in `block`, reading its time (and seq if needed).
    /// Returns the first match past the block (`TERMINATED` if none).
    fn offer_block(
        &mut self,
        segment: &Segment,
        weight: &dyn Weight,
        block: Range<DocId>,
        check_seq: bool,
    ) -> tantivy::Result<DocId> {
        let alive = segment.reader.alive_bitset();
        let (mut scorer, mut doc) = scorer_at(segment, weight, block.start)?;
        // TERMINATED is past every segment's end.
        while doc < block.end {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                self.offer(segment, doc, check_seq)?;
            }
            doc = scorer.advance();
        }
        Ok(doc)
    }

    /// The rest of a segment once the page is full: `scan_block` over
    /// blocks of `scan_block` documents taken in doc order, all with one
    /// scorer, passing over the blocks whose times cannot reach the page
    /// once the count is done (`Columns::time_bounds`); with 2 M-event
    /// segments that took the outcome shape from 12–18 to 1.7 ms at p99,
    /// where reading each match's time had cost more than the scan of
    /// the blocks that could still enter. Visiting them from the best end
    /// instead would need a scorer per block (a scorer only moves
    /// forward), and building one can cost as much as reading every match
    /// in the segment (a prefix's builds a bit set of them): with
    /// 2 M-event segments an action prefix took 39.7 ms at p99, and 8.4
    /// with one scorer (docs/benchmarks-history.md, "2026-12-03: 100 M
    /// within 20 ms"). The page's threshold is set by then,
    /// so the order only changes how soon it rises.
    fn scan_rest(
        &mut self,
        segment: &Segment,
        weight: &dyn Weight,
        rest: Range<DocId>,
        check_seq: bool,
    ) -> tantivy::Result<()> {
        let (mut scorer, mut doc) = scorer_at(segment, weight, rest.start)?;
        let rows = self.tuning.time_bounds;
        let bounds = segment.columns.time_bounds(rows);
        let mut start = rest.start;
        while start < rest.end && doc < rest.end {
            let end = start.saturating_add(self.tuning.scan_block).min(rest.end);
            // A block the scorer passed over holds no match; one whose
            // times cannot reach the page needs reading only to count.
            let enter = bounds
                .as_deref()
                .is_none_or(|b| self.could_enter(b, rows, start..end));
            let skip = doc >= end || (!enter && self.counted_enough(true));
            if !skip {
                let block = start..end;
                doc = self.scan_block(segment, scorer.as_mut(), doc, block, enter, check_seq)?;
            }
            start = end;
        }
        Ok(())
    }

    /// Whether a document of `docs` could enter the (full) page on its
    /// time, by the time `bounds` of every `rows` rows.
    fn could_enter(&self, bounds: &[(i64, i64)], rows: u32, docs: Range<DocId>) -> bool {
        let Some((worst, _)) = self.top.threshold() else {
            return true;
        };
        let first = (docs.start / rows) as usize;
        let last = ((docs.end - 1) / rows) as usize;
        let Some(covering) = bounds.get(first..=last) else {
            return true;
        };
        covering
            .iter()
            .any(|&(min, max)| match self.order.ascending {
                true => -min >= worst,
                false => max >= worst,
            })
    }

    /// Only matches in `block` whose time could reach the (full) page are
    /// offered, found by one bulk scan of the block's time column (what
    /// Tantivy's own range queries use), several times cheaper than a
    /// column read per match; but a block of at most `sparse_block`
    /// matches has each one's time read instead (`SPARSE_BLOCK_MATCHES`). The other matches are only counted, and only
    /// until `counted_enough`. `scorer` stands on `doc`, at or past the
    /// block's start, and is left on the returned doc: the first match not
    /// looked at, or one past `block` (every match before it was seen).
    /// A block whose times cannot reach the page (`enter` false) is only
    /// counted, without the scan: an exact total counts every block of
    /// the index, and scanning the times of each took an access id's
    /// exact total on 10 M events to 10.3 ms at p99 (5.1–5.4 without).
    fn scan_block(
        &mut self,
        segment: &Segment,
        scorer: &mut dyn tantivy::query::Scorer,
        mut doc: DocId,
        block: Range<DocId>,
        enter: bool,
        check_seq: bool,
    ) -> tantivy::Result<DocId> {
        let Some((worst, _)) = self.top.threshold() else {
            return Err(tantivy::TantivyError::InternalError(
                "scan_block needs a full page".into(),
            ));
        };
        // A time equal to the worst kept can still win on seq.
        let times = match self.order.ascending {
            true => i64::MIN..=-worst,
            false => worst..=i64::MAX,
        };
        let alive = segment.reader.alive_bitset();
        if enter {
            // The scorer can lag behind the block only on a match already
            // looked at, once the count is done.
            if doc < block.start {
                doc = scorer.seek(block.start);
            }
            // The first `sparse_block` matches are offered one by one: if
            // they are all the block holds, its times are never scanned.
            let mut read = 0;
            while doc < block.end && read < self.tuning.sparse_block {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    self.offer(segment, doc, check_seq)?;
                }
                read += 1;
                doc = scorer.advance();
            }
            if doc >= block.end {
                return Ok(doc);
            }
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        if enter {
            segment.columns.time().get_docids_for_value_range(
                times,
                doc..block.end,
                &mut candidates,
            );
        }
        let mut next = 0;
        // Every match, while the count is still wanted. The ones not
        // among the candidates rank below the page's worst, so they are
        // past the cursor too (the worst is).
        while doc < block.end && !self.counted_enough(true) {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                while candidates.get(next).is_some_and(|&c| c < doc) {
                    next += 1;
                }
                if candidates.get(next) == Some(&doc) {
                    self.offer(segment, doc, check_seq)?;
                } else if !check_seq || self.before_snapshot(segment, doc) {
                    self.total += 1;
                    self.after_cursor += 1;
                }
            }
            doc = scorer.advance();
        }
        // Then the candidates only: does each match? A candidate below
        // `doc` does not: the scorer passed it.
        for &candidate in candidates.iter().skip(next) {
            if doc >= block.end {
                break; // no match left in the block
            }
            if candidate < doc {
                continue;
            }
            doc = scorer.seek(candidate);
            if doc == candidate && alive.is_none_or(|a| a.is_alive(doc)) {
                self.offer(segment, doc, check_seq)?;
            }
        }
        self.candidates = candidates;
        Ok(doc)
    }

    /// The count is as far as it needs to go: `count_up_to` reached and,
    /// if the matches being counted are `past` the cursor, known to be more
    /// than a page.
    fn counted_enough(&self, past: bool) -> bool {
        self.total >= self.order.count_up_to
            && (!past || self.after_cursor > self.order.limit as u64)
    }

    fn before_snapshot(&self, segment: &Segment, doc: DocId) -> bool {
        segment.columns.seq.first(doc).unwrap_or(u64::MAX) < self.order.snapshot
    }

    fn offer(&mut self, segment: &Segment, doc: DocId, check_seq: bool) -> tantivy::Result<()> {
        let missing = || tantivy::TantivyError::InternalError(format!("doc {doc} has no time/seq"));
        let time = segment.columns.time().first(doc).ok_or_else(missing)?;
        let read_seq = || segment.columns.seq.first(doc).ok_or_else(missing);
        // The seq is read only when it decides something: the snapshot
        // (new segments only), a time equal to the cursor's, or a place on
        // the page. Most matches of a large old segment need the time only.
        let mut seq = None;
        if check_seq {
            let s = read_seq()?;
            if s >= self.order.snapshot {
                return Ok(());
            }
            seq = Some(s);
        }
        self.total += 1;
        if let Some((after_time, _)) = self.order.after {
            if time == after_time && seq.is_none() {
                seq = Some(read_seq()?);
            }
            let past = match seq {
                Some(s) => self.past_cursor(time, s),
                None if self.order.ascending => time > after_time,
                None => time < after_time,
            };
            if !past {
                return Ok(());
            }
        }
        self.after_cursor += 1;
        if self.order.limit == 0 {
            return Ok(());
        }
        let rank_time = if self.order.ascending { -time } else { time };
        if self
            .top
            .threshold()
            .is_some_and(|worst| rank_time < worst.0)
        {
            return Ok(());
        }
        let seq = match seq {
            Some(s) => s,
            None => read_seq()?,
        };
        let rank = self.rank(time, seq);
        self.top.push(
            rank,
            Hit {
                time,
                seq,
                address: DocAddress::new(segment.ord, doc),
                partition: segment.partition,
            },
        );
        Ok(())
    }

    /// Counts the segment's matches, stopping once `counted_enough`.
    fn count(&mut self, segment: &Segment, weight: &dyn Weight, past: bool) -> tantivy::Result<()> {
        if self.counted_enough(past) {
            return Ok(());
        }
        let check_seq = segment.columns.seq.max_value() >= self.order.snapshot;
        if !check_seq && self.order.count_up_to == u64::MAX {
            // Every match counts and none can stop the count early: the
            // weight counts them its own way (a term with no deletes from
            // its dictionary entry, the rest in one tight loop).
            let matches = u64::from(weight.count(segment.reader)?);
            self.total += matches;
            self.after_cursor += matches * u64::from(past);
            return Ok(());
        }
        let alive = segment.reader.alive_bitset();
        let mut scorer = weight.scorer(segment.reader, 1.0)?;
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            let visible = alive.is_none_or(|a| a.is_alive(doc))
                && (!check_seq || self.before_snapshot(segment, doc));
            if visible {
                self.total += 1;
                self.after_cursor += past as u64;
                if self.counted_enough(past) {
                    break;
                }
            }
            doc = scorer.advance();
        }
        Ok(())
    }
}

/// A scorer of `weight` on the segment, and its first match at or past
/// `start`.
fn scorer_at(
    segment: &Segment,
    weight: &dyn Weight,
    start: DocId,
) -> tantivy::Result<(Box<dyn tantivy::query::Scorer>, DocId)> {
    let mut scorer = weight.scorer(segment.reader, 1.0)?;
    let mut doc = scorer.doc();
    if doc < start {
        doc = scorer.seek(start);
    }
    Ok((scorer, doc))
}

/// The best `limit` hits seen: a buffer of up to twice that, cut back to
/// the best `limit` when full. Cheaper than a heap when, as here, nearly
/// every new hit beats the worst kept (events arrive in time order).
struct TopN {
    limit: usize,
    buffer: Vec<(Rank, Hit)>,
    /// The worst rank kept, once `limit` are kept: nothing at or below it
    /// can enter.
    threshold: Option<Rank>,
}

/// Hits `TopN` makes room for up front; past it, the buffer grows as
/// hits come. A look-up by batch id or event id asks for up to
/// `MAX_EVENTS_PER_RECORD` hits and finds a handful: reserving twice that
/// made each such look-up fault in and zero megabytes of fresh pages.
const TOP_N_RESERVE: usize = 1024;

impl TopN {
    fn new(limit: usize) -> TopN {
        TopN {
            limit,
            buffer: Vec::with_capacity((2 * limit).min(TOP_N_RESERVE)),
            threshold: None,
        }
    }

    fn threshold(&self) -> Option<Rank> {
        self.threshold
    }

    fn push(&mut self, rank: Rank, hit: Hit) {
        if self.threshold.is_some_and(|worst| rank <= worst) {
            return;
        }
        self.buffer.push((rank, hit));
        if self.buffer.len() >= 2 * self.limit {
            self.settle();
        }
    }

    /// Keeps the best `limit`, and the threshold they set.
    fn settle(&mut self) {
        if self.limit == 0 || self.buffer.len() < self.limit {
            return;
        }
        if self.buffer.len() > self.limit {
            self.buffer
                .select_nth_unstable_by(self.limit - 1, |a, b| b.0.cmp(&a.0));
            self.buffer.truncate(self.limit);
        }
        self.threshold = self.buffer.iter().map(|(rank, _)| *rank).min();
    }

    fn into_sorted(mut self) -> Vec<(Rank, Hit)> {
        self.settle();
        self.buffer
            .sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(time: i64, seq: u64) -> Hit {
        Hit {
            time,
            seq,
            address: DocAddress::new(0, seq as DocId),
            partition: 0,
        }
    }

    #[test]
    fn top_n_keeps_the_best_whatever_the_arrival_order() {
        let ranks: Vec<Rank> = (0..1000u64)
            .map(|i| ((i * 7919 % 1000) as i64, i))
            .collect();
        for limit in [1, 3, 100, 999, 1000, 5000] {
            let mut top = TopN::new(limit);
            for (i, rank) in ranks.iter().enumerate() {
                top.push(*rank, hit(rank.0, rank.1));
                if i % 97 == 0 {
                    top.settle();
                }
            }
            let got: Vec<Rank> = top.into_sorted().into_iter().map(|(r, _)| r).collect();
            let mut want = ranks.clone();
            want.sort_unstable_by(|a, b| b.cmp(a));
            want.truncate(limit);
            assert_eq!(got, want, "limit {limit}");
        }
    }

    #[test]
    fn top_n_threshold_is_the_worst_kept_once_full() {
        let mut top = TopN::new(2);
        top.push((5, 0), hit(5, 0));
        top.settle();
        assert_eq!(top.threshold(), None, "not full yet");
        top.push((9, 0), hit(9, 0));
        top.push((7, 0), hit(7, 0));
        top.settle();
        assert_eq!(top.threshold(), Some((7, 0)));
        top.push((6, 0), hit(6, 0));
        assert_eq!(top.buffer.len(), 2, "below the threshold: not kept");
    }
}

/// `collect` against a brute-force sort, over small segments and small
/// chunks so that every path runs: chunks from either end, blocks scanned
/// for candidates or passed over on their time bounds, sparse segments,
/// deleted documents, a snapshot, a count that stops, page tokens.
#[cfg(test)]
mod brute_force {
    use proptest::prelude::*;
    use tantivy::query::{AllQuery, BooleanQuery, Occur, TermQuery};
    use tantivy::schema::{IndexRecordOption, Schema, FAST, INDEXED, STRING};
    use tantivy::{doc, Index, IndexWriter, Term};

    use super::*;
    use crate::schema::names;

    #[derive(Debug, Clone)]
    struct Event {
        time: i64,
        seq: u64,
        tag: &'static str,
        partition: usize,
        /// Written, then deleted.
        deleted: bool,
    }

    const TAGS: [&str; 3] = ["a", "b", "c"];

    /// Roughly in time order with jitter and ties, some events late by a
    /// lot; tag "a" dense, "b" sparse.
    fn events() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec(
            (
                -40i64..40,
                prop::bool::weighted(0.05),
                0u32..100,
                0usize..2,
                prop::bool::weighted(0.05),
            ),
            0..1200,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (jitter, late, tag, partition, deleted))| {
                    let now = 1_000 + 3 * i as i64;
                    Event {
                        time: if late { now / 2 } else { now + jitter },
                        seq: 10 * (i as u64 + 1),
                        tag: match tag {
                            0..70 => TAGS[0],
                            70..78 => TAGS[1],
                            _ => TAGS[2],
                        },
                        partition,
                        deleted,
                    }
                })
                .collect()
        })
    }

    /// One index per partition, a commit (a segment) every `segment`
    /// events, deletions committed last.
    fn build(events: &[Event], segment: usize) -> Vec<View> {
        let mut builder = Schema::builder();
        let time = builder.add_i64_field(names::TIME, FAST);
        let received = builder.add_i64_field(names::RECEIVED, FAST);
        let seq = builder.add_u64_field(names::SEQ, FAST | INDEXED);
        let tag = builder.add_text_field("tag", STRING);
        let schema = builder.build();
        (0..2)
            .map(|partition| {
                let index = Index::create_in_ram(schema.clone());
                let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
                writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
                let mine: Vec<&Event> =
                    events.iter().filter(|e| e.partition == partition).collect();
                for batch in mine.chunks(segment) {
                    for e in batch {
                        writer
                            .add_document(doc!(time => e.time, received => e.time, seq => e.seq, tag => e.tag))
                            .unwrap();
                    }
                    writer.commit().unwrap();
                }
                for e in mine.iter().filter(|e| e.deleted) {
                    writer.delete_term(Term::from_field_u64(seq, e.seq));
                }
                writer.commit().unwrap();
                View::new(index.reader().unwrap().searcher()).unwrap()
            })
            .collect()
    }

    fn query(which: usize, schema: &Schema) -> Box<dyn Query> {
        let tag = schema.get_field("tag").unwrap();
        let term = |t: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(tag, t),
                IndexRecordOption::Basic,
            ))
        };
        match which {
            0 => Box::new(AllQuery),
            1 => term(TAGS[0]),
            2 => term(TAGS[1]),
            _ => Box::new(BooleanQuery::new(vec![
                (Occur::Should, term(TAGS[1])),
                (Occur::Should, term(TAGS[2])),
            ])),
        }
    }

    /// `query` joined with a range on time, as `Searcher::matching` makes.
    fn within(query: Box<dyn Query>, from: Option<i64>, to: Option<i64>) -> Box<dyn Query> {
        if from.is_none() && to.is_none() {
            return query;
        }
        let range = crate::search::time_range::TimeRange::new(from, to);
        Box::new(BooleanQuery::new(vec![
            (Occur::Must, query),
            (Occur::Must, Box::new(range)),
        ]))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn pages_are_the_brute_force_order(
            events in events(),
            segment in prop_oneof![1usize..300, 300usize..1200],
            one_partition: bool,
            which in 0usize..4,
            limit in 1usize..40,
            ascending: bool,
            snapshot_at in prop::option::of(0u64..13_000),
            count_up_to in prop::option::of(1u64..200),
            first_chunk in 1u32..20,
            scan_block in 1u32..50,
            time_bounds in prop_oneof![1u32..40, Just(TIME_BOUNDS_DOCS)],
            sparse_matches in prop_oneof![Just(0u32), 0u32..400, Just(u32::MAX)],
            sparse_block in prop_oneof![Just(0u32), 0u32..20, Just(u32::MAX)],
            from in prop::option::of(400i64..4_700),
            span in prop::option::of(0i64..2_000),
        ) {
            let mut events = events;
            if one_partition {
                events.iter_mut().for_each(|e| e.partition = 0);
            }
            let searchers = build(&events, segment);
            let to = span.map(|span| from.unwrap_or(400) + span);
            let query = within(query(which, searchers[0].searcher.schema()), from, to);
            let matching = |e: &&Event| {
                let tagged = match which {
                    0 => true,
                    1 => e.tag == TAGS[0],
                    2 => e.tag == TAGS[1],
                    _ => e.tag != TAGS[0],
                };
                tagged && from.is_none_or(|f| e.time >= f) && to.is_none_or(|t| e.time < t)
            };
            let snapshot = snapshot_at.unwrap_or(u64::MAX);
            let mut expected: Vec<(i64, u64)> = events
                .iter()
                .filter(|e| !e.deleted && e.seq < snapshot)
                .filter(matching)
                .map(|e| (e.time, e.seq))
                .collect();
            expected.sort_unstable();
            if !ascending {
                expected.reverse();
            }
            let count_up_to = count_up_to.unwrap_or(u64::MAX);
            let tuning = Tuning { first_chunk, scan_block, sparse_matches, sparse_block, time_bounds };
            let mut after = None;
            let mut seen = 0;
            // Thirty pages at most: enough to cross many segments.
            for _ in 0..30 {
                let times = (from, to);
                let order = TimeOrder { limit, ascending, after, snapshot, count_up_to, times };
                let page = collect_tuned(&searchers, &*query, &order, tuning).unwrap();
                let total = expected.len() as u64;
                prop_assert_eq!(page.total.min(count_up_to), total.min(count_up_to), "total");
                let got: Vec<(i64, u64)> = page.hits.iter().map(|h| (h.time, h.seq)).collect();
                let want = &expected[seen..(seen + limit).min(expected.len())];
                prop_assert_eq!(&got[..], want, "page after {:?}", after);
                seen += got.len();
                prop_assert_eq!(page.more, seen < expected.len(), "more");
                match page.hits.last() {
                    Some(last) if page.more => after = Some((last.time, last.seq)),
                    _ => break,
                }
            }
        }
    }

    /// A time range whose ends fall on the edges of the time bounds
    /// stretches: the rows `rows_in_times` keeps hold all its matches.
    #[test]
    fn time_ranges_at_stretch_edges() {
        let events: Vec<Event> = (0..40)
            .map(|i| Event {
                time: i,
                seq: i as u64 + 1,
                tag: TAGS[0],
                partition: 0,
                deleted: false,
            })
            .collect();
        let searchers = build(&events, 40);
        let tuning = Tuning {
            first_chunk: 2,
            scan_block: 4,
            sparse_matches: 0,
            sparse_block: 0,
            time_bounds: 4,
        };
        // Stretches of 4 rows: times 4..=7, 8..=11, ...
        for (from, to) in [(7, 9), (8, 12), (4, 8), (7, 8), (12, 12), (0, 40), (39, 41)] {
            for ascending in [true, false] {
                let query = within(
                    query(0, searchers[0].searcher.schema()),
                    Some(from),
                    Some(to),
                );
                let order = TimeOrder {
                    limit: 50,
                    ascending,
                    after: None,
                    snapshot: u64::MAX,
                    count_up_to: u64::MAX,
                    times: (Some(from), Some(to)),
                };
                let page = collect_tuned(&searchers, &*query, &order, tuning).unwrap();
                let mut got: Vec<i64> = page.hits.iter().map(|h| h.time).collect();
                got.sort_unstable();
                let want: Vec<i64> = (from..to.min(40)).collect();
                assert_eq!(got, want, "{from}..{to}, ascending {ascending}");
                assert_eq!(page.total, want.len() as u64);
            }
        }
    }

    /// A segment whose only candidate does not match, after a newest one
    /// that filled the page exactly: its other matches, only counted by
    /// the block scan, are what says there is a next page.
    #[test]
    fn matches_only_counted_by_the_scan_make_a_next_page() {
        let event = |i: u64, time: i64, tag: &'static str| Event {
            time,
            seq: i + 1,
            tag,
            partition: 0,
            deleted: false,
        };
        // Written first, older but for one event that the query leaves out.
        let mut events: Vec<Event> = (0..9).map(|i| event(i, 50 + i as i64, TAGS[0])).collect();
        events.push(event(9, 105, TAGS[1]));
        // Written last: exactly a page.
        events.extend((10..20).map(|i| event(i, 90 + i as i64, TAGS[0])));
        let searchers = build(&events, 10);
        let query = query(1, searchers[0].searcher.schema());
        let tuning = Tuning {
            first_chunk: 4,
            scan_block: 4,
            sparse_matches: 0,
            sparse_block: 0,
            time_bounds: 4,
        };
        for count_up_to in [1, 15, u64::MAX] {
            let order = TimeOrder {
                limit: 10,
                ascending: false,
                after: None,
                snapshot: u64::MAX,
                count_up_to,
                times: (None, None),
            };
            let page = collect_tuned(&searchers, &*query, &order, tuning).unwrap();
            let times: Vec<i64> = page.hits.iter().map(|h| h.time).collect();
            assert_eq!(times, (100..110).rev().collect::<Vec<_>>());
            assert!(page.more, "count up to {count_up_to}");
            assert_eq!(page.total.min(count_up_to), 19u64.min(count_up_to));
        }
    }
}

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

use tantivy::columnar::Column;
use tantivy::query::{EnableScoring, Query, Weight};
use tantivy::{DocAddress, DocId, DocSet, SegmentOrdinal, SegmentReader, TERMINATED};

use crate::schema::names;

/// The first chunk a newest-first search visits at the end of a segment
/// (`State::collect_all`); each next one, further back, is four times as
/// long, until the page is full.
const NEWEST_FIRST_CHUNK_DOCS: u32 = 4096;

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
}

/// Larger is better, whatever the direction. Times are never negative
/// (validation refuses events before 1970), so negation is safe.
type Rank = (i64, u64);

/// A segment to visit, with its columns.
struct Segment<'a> {
    partition: usize,
    ord: SegmentOrdinal,
    reader: &'a SegmentReader,
    time: Column<i64>,
    seq: Column<u64>,
}

/// Runs `query` over the segments of `searchers` (one per partition).
pub(super) fn collect(
    searchers: &[tantivy::Searcher],
    query: &dyn Query,
    order: &TimeOrder,
) -> tantivy::Result<Page> {
    let mut weights = Vec::with_capacity(searchers.len());
    let mut segments = Vec::new();
    for (partition, searcher) in searchers.iter().enumerate() {
        weights.push(query.weight(EnableScoring::disabled_from_searcher(searcher))?);
        for (ord, reader) in searcher.segment_readers().iter().enumerate() {
            let fast = reader.fast_fields();
            segments.push(Segment {
                partition,
                ord: ord as SegmentOrdinal,
                reader,
                time: fast.i64(names::TIME)?,
                seq: fast.u64(names::SEQ)?,
            });
        }
    }
    // Best first. The column bounds are read from its header.
    if order.ascending {
        segments.sort_by_key(|s| s.time.min_value());
    } else {
        segments.sort_by_key(|s| Reverse(s.time.max_value()));
    }
    let mut state = State {
        order,
        top: TopN::new(order.limit),
        total: 0,
        after_cursor: 0,
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
        let (min, max) = (segment.time.min_value(), segment.time.max_value());
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
    fn collect_all(&mut self, segment: &Segment, weight: &dyn Weight) -> tantivy::Result<()> {
        let check_seq = segment.seq.max_value() >= self.order.snapshot;
        let alive = segment.reader.alive_bitset();
        if self.order.ascending {
            let mut result = Ok(());
            weight.for_each_no_score(segment.reader, &mut |docs| {
                for &doc in docs {
                    if alive.is_some_and(|a| !a.is_alive(doc)) {
                        continue;
                    }
                    if let Err(e) = self.offer(segment, doc, check_seq) {
                        result = Err(e);
                        return;
                    }
                }
            })?;
            self.top.settle();
            return result;
        }
        // Newest first. Documents are written, and compaction merges
        // segments, roughly in time order, so the newest matches sit at the
        // end: visited first, in chunks from the end, each four times the
        // last until the page is full, then the rest in one go, they fill
        // the page early and the rest mostly fall below its threshold. In
        // doc order every match would beat the one before and enter the
        // page (page 10 of 430 k matches: 13 ms p50, against 7).
        let mut end = segment.reader.max_doc();
        let mut chunk = NEWEST_FIRST_CHUNK_DOCS;
        while end > 0 {
            let start = end.saturating_sub(chunk);
            let mut scorer = weight.scorer(segment.reader, 1.0)?;
            let mut doc = scorer.doc();
            if doc < start {
                doc = scorer.seek(start);
            }
            // TERMINATED is past every segment's end.
            while doc < end {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    self.offer(segment, doc, check_seq)?;
                }
                doc = scorer.advance();
            }
            end = start;
            chunk = if self.top.threshold().is_some() {
                end
            } else {
                chunk.saturating_mul(4)
            };
        }
        self.top.settle();
        Ok(())
    }

    fn offer(&mut self, segment: &Segment, doc: DocId, check_seq: bool) -> tantivy::Result<()> {
        let missing = || tantivy::TantivyError::InternalError(format!("doc {doc} has no time/seq"));
        let time = segment.time.first(doc).ok_or_else(missing)?;
        let read_seq = || segment.seq.first(doc).ok_or_else(missing);
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

    /// Counts the segment's matches, stopping once nothing more is needed:
    /// `count_up_to` reached and, if these matches are `past` the cursor,
    /// known to be more than a page.
    fn count(&mut self, segment: &Segment, weight: &dyn Weight, past: bool) -> tantivy::Result<()> {
        let done = |state: &State| {
            state.total >= state.order.count_up_to
                && (!past || state.after_cursor > state.order.limit as u64)
        };
        if done(self) {
            return Ok(());
        }
        let check_seq = segment.seq.max_value() >= self.order.snapshot;
        let alive = segment.reader.alive_bitset();
        let mut scorer = weight.scorer(segment.reader, 1.0)?;
        let mut doc = scorer.doc();
        while doc != TERMINATED {
            let visible = alive.is_none_or(|a| a.is_alive(doc))
                && (!check_seq || segment.seq.first(doc).unwrap_or(u64::MAX) < self.order.snapshot);
            if visible {
                self.total += 1;
                self.after_cursor += past as u64;
                if done(self) {
                    break;
                }
            }
            doc = scorer.advance();
        }
        Ok(())
    }
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

impl TopN {
    fn new(limit: usize) -> TopN {
        TopN {
            limit,
            buffer: Vec::with_capacity(2 * limit),
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

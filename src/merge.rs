//! Which segments of a partition are merged together: by Tantivy's merge
//! policy while it is written, and by compaction once its day is over.
//!
//! A search skips a segment by the bounds of its `time` column
//! (`search::time_order`), so a merge should join segments that are
//! neighbours in time, and no merged segment should be so large that a
//! search reads much of it (`index.max_segment_docs`). Tantivy's log merge
//! policy knows neither: it merges like-sized segments whatever their
//! times, and eight segments just under the cap make one of eight times
//! it: on the 10 M-event bench a day ended with segments four times the
//! cap, each spanning most of the day (docs/benchmarks-history.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tantivy::index::{SegmentId, SegmentMeta};
use tantivy::merge_policy::{LogMergePolicy, MergeCandidate, MergePolicy};

use crate::schema::names;

/// Each segment's earliest event time (µs), as of the partition's last
/// reader reload. Shared by the indexer, which fills it after each commit
/// (`note`), and the partition writer's merge policy, which reads it.
#[derive(Debug, Clone, Default)]
pub struct SegmentTimes(Arc<Mutex<HashMap<SegmentId, i64>>>);

impl SegmentTimes {
    /// Replaces what is known with the segments `searcher` sees.
    pub fn note(&self, searcher: &tantivy::Searcher) -> tantivy::Result<()> {
        let times = segments_by_time(searcher)?
            .into_iter()
            .map(|s| (s.id, s.min_time))
            .collect();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = times;
        Ok(())
    }
}

/// Segments of one size class that make a merge (Tantivy's default: 8).
///
/// Why 16: at full load frequent commits leave small segments; eight of
/// them made a segment whose eight would pass `max_segment_docs`, so a
/// second round merged those in twos and threes and each event was
/// rewritten about twice. Sixteen reach the cap's order at once, about one
/// rewrite, and merge CPU fell (BENCHMARKS.md, CPU by stage; the runs:
/// docs/benchmarks-history.md). The cost is up to 15 more small segments
/// in today's partition between merges, each one more dictionary look-up
/// per search term.
const MIN_SEGMENTS_PER_MERGE: usize = 16;

/// Tantivy's log merge policy (`MIN_SEGMENTS_PER_MERGE`), with each merge it proposes
/// cut into runs of segments neighbouring in time, each run holding fewer
/// than `max_docs` events, and no segment of `max_docs` or more taken in.
/// A segment not yet in `times` (made by the commit or merge that just
/// ended) waits for the next round, once the indexer has noted it.
#[derive(Debug)]
pub struct TimeOrderedMergePolicy {
    log: LogMergePolicy,
    max_docs: u32,
    times: SegmentTimes,
}

impl TimeOrderedMergePolicy {
    pub fn new(max_docs: u32, times: SegmentTimes) -> TimeOrderedMergePolicy {
        let mut log = LogMergePolicy::default();
        log.set_max_docs_before_merge(max_docs as usize);
        log.set_min_num_segments(MIN_SEGMENTS_PER_MERGE);
        TimeOrderedMergePolicy {
            log,
            max_docs,
            times,
        }
    }
}

impl MergePolicy for TimeOrderedMergePolicy {
    fn compute_merge_candidates(&self, segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
        let times = self.times.0.lock().unwrap_or_else(|e| e.into_inner());
        let max_doc: HashMap<SegmentId, u32> =
            segments.iter().map(|s| (s.id(), s.max_doc())).collect();
        self.log
            .compute_merge_candidates(segments)
            .into_iter()
            .flat_map(|MergeCandidate(candidate)| {
                // Every noted segment takes its place in time; those outside
                // the candidate (in another merge, merged away since, or
                // too large) end a run, so that no merge spans them.
                let timed = times
                    .iter()
                    .map(|(&id, &min_time)| Timed {
                        min_time,
                        id,
                        max_doc: match candidate.contains(&id) {
                            true => max_doc.get(&id).copied().unwrap_or(u32::MAX),
                            false => u32::MAX,
                        },
                    })
                    .collect();
                time_ordered_runs(timed, self.max_docs)
            })
            .map(MergeCandidate)
            .collect()
    }
}

/// A segment, its size and where it starts in time.
#[derive(Debug, Clone, Copy)]
struct Timed {
    min_time: i64,
    id: SegmentId,
    max_doc: u32,
}

fn segments_by_time(searcher: &tantivy::Searcher) -> tantivy::Result<Vec<Timed>> {
    searcher
        .segment_readers()
        .iter()
        .map(|segment| {
            Ok(Timed {
                min_time: segment.fast_fields().i64(names::TIME)?.min_value(),
                id: segment.segment_id(),
                max_doc: segment.max_doc(),
            })
        })
        .collect()
}

/// The merges that compact a partition (`searcher` is its current view):
/// all its segments, in runs as `time_ordered_runs` cuts them.
pub fn compaction_runs(
    searcher: &tantivy::Searcher,
    max_docs: u32,
) -> tantivy::Result<Vec<Vec<SegmentId>>> {
    Ok(time_ordered_runs(segments_by_time(searcher)?, max_docs))
}

/// `segments` in time order, cut into runs of consecutive segments holding
/// fewer than `max_docs` events together; only runs of two or more (a
/// segment of `max_docs` or more is in none). Time order keeps each merged
/// segment's time range narrow, which is what lets a search skip it.
fn time_ordered_runs(mut segments: Vec<Timed>, max_docs: u32) -> Vec<Vec<SegmentId>> {
    segments.sort_unstable_by_key(|s| (s.min_time, s.id));
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut docs = 0u64;
    for segment in segments {
        if docs + u64::from(segment.max_doc) >= u64::from(max_docs) {
            if run.len() > 1 {
                runs.push(std::mem::take(&mut run));
            }
            run.clear(); // a lone segment is no merge
            docs = 0;
            if segment.max_doc >= max_docs {
                continue; // too large to start a run
            }
        }
        run.push(segment.id);
        docs += u64::from(segment.max_doc);
    }
    if run.len() > 1 {
        runs.push(run);
    }
    runs
}

#[cfg(test)]
mod tests {
    use tantivy::schema::{Schema, FAST};
    use tantivy::Index;

    use super::*;

    fn index() -> Index {
        let mut schema = Schema::builder();
        schema.add_i64_field(names::TIME, FAST);
        Index::create_in_ram(schema.build())
    }

    /// Twenty segments of 100 events (enough for one merge), written in a
    /// shuffled order, each a stretch of time; the newest not yet noted.
    #[test]
    fn merges_are_runs_of_time_neighbours_under_the_cap() {
        const { assert!(MIN_SEGMENTS_PER_MERGE <= 20) };
        let index = index();
        let metas: Vec<SegmentMeta> = (0..20)
            .map(|_| index.new_segment_meta(SegmentId::generate_random(), 100))
            .collect();
        let times = SegmentTimes::default();
        {
            let mut map = times.0.lock().unwrap();
            for (i, meta) in metas.iter().enumerate() {
                // Start times in an order unrelated to the ids'; i = 17
                // would start at 19,000.
                if i != 17 {
                    map.insert(meta.id(), (i as i64 * 7 % 20) * 1_000);
                }
            }
        }
        // A segment noted at time 4,500 that is not offered (in another
        // merge): no run may span it.
        let busy = SegmentId::generate_random();
        times.0.lock().unwrap().insert(busy, 4_500);
        let policy = TimeOrderedMergePolicy::new(350, times.clone());
        let candidates = policy.compute_merge_candidates(&metas);
        let start = |id: &SegmentId| times.0.lock().unwrap()[id];
        let mut merged = 0;
        for MergeCandidate(run) in &candidates {
            assert!(run.len() >= 2, "a lone segment is no merge");
            assert!(run.len() * 100 < 350, "under the cap: {}", run.len());
            let starts: Vec<i64> = run.iter().map(start).collect();
            for pair in starts.windows(2) {
                assert_eq!(pair[1] - pair[0], 1_000, "neighbours in time: {starts:?}");
            }
            merged += run.len();
        }
        assert!(
            candidates.iter().all(|c| !c.0.contains(&metas[17].id())),
            "a segment not yet noted waits"
        );
        let spans_busy = |c: &&MergeCandidate| {
            c.0.iter().any(|id| start(id) < 4_500) && c.0.iter().any(|id| start(id) > 4_500)
        };
        assert!(!candidates.iter().any(|c| spans_busy(&c)), "{candidates:?}");
        // Starts 0-4 and 5-18 thousand, either side of the busy one:
        // runs of 3 and 2, then 3, 3, 3, 3 and 2.
        assert_eq!(merged, 19);
    }

    #[test]
    fn segments_too_large_to_pair_are_left_alone() {
        let index = index();
        let metas: Vec<SegmentMeta> = (0..MIN_SEGMENTS_PER_MERGE as u32)
            .map(|i| index.new_segment_meta(SegmentId::generate_random(), 300 + i))
            .collect();
        let times = SegmentTimes::default();
        for (i, meta) in metas.iter().enumerate() {
            times.0.lock().unwrap().insert(meta.id(), i as i64);
        }
        // Enough segments of 300 and some events for the log policy to
        // merge them into one; under a cap of 500 no two fit together.
        let policy = TimeOrderedMergePolicy::new(500, times);
        assert!(policy.compute_merge_candidates(&metas).is_empty());
    }
}

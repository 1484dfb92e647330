//! Every event a filter matches over several partitions, in the merged
//! order of a fan-out search (time, then partition, then seq), read a
//! page of each partition at a time: what an Export reads on a node of
//! several partitions.
//!
//! Each partition is a lane: a page of its events past its own cursor,
//! in its snapshot. The scan takes the first event of all lanes, again
//! and again, and asks a lane's owner for its next page only when the
//! lane runs dry, so each event is read once, and memory is one page a
//! partition ([`SCAN_PAGE_EVENTS`]). The token after an event is a
//! fan-out search's page token (the event's place and every partition's
//! snapshot), so a resumed scan continues the same snapshots.

use std::collections::{BTreeMap, VecDeque};

use futures::future::try_join_all;

use super::fanout::{partitions_for, unowned, FanOutError, MergedCursor, Place, Reader};
use crate::auth::ReadScope;
use crate::proto::{AuditEvent, EventFilter, SearchRequest};
use crate::search::{request_of, PageAt};

/// Events asked of a partition at a time: a scan holds at most this many
/// a partition.
pub const SCAN_PAGE_EVENTS: u32 = 500;

/// One partition's place in a scan.
struct Lane {
    /// Read, not yet taken, in the scan's order.
    buffered: VecDeque<(Place, AuditEvent)>,
    /// The partition's own cursor: the last (time, seq) read.
    after: Option<(i64, u64)>,
    /// The snapshot its first page saw (`None` before it).
    snapshot: Option<u64>,
    /// More matches past what was read.
    more: bool,
}

/// A scan over the partitions a filter and a scope can reach.
pub struct MergedScan {
    request: SearchRequest,
    scope: ReadScope,
    lanes: BTreeMap<u32, Lane>,
}

impl MergedScan {
    /// A scan of `filter` inside `scope` over `partitions` partitions,
    /// from the start, or right after the event `token` (a token of this
    /// scan, [`MergedScan::next`]) was made for; a token of another scan
    /// is INVALID_ARGUMENT naming `token_field`.
    pub fn new(
        filter: EventFilter,
        ascending: bool,
        scope: ReadScope,
        partitions: u32,
        token: &str,
        token_field: &'static str,
    ) -> Result<MergedScan, FanOutError> {
        let asked = partitions_for(&filter.subjects, &scope, partitions);
        let cursor = match token {
            "" => None,
            token => Some(MergedCursor::decode(token, ascending, &asked, token_field)?),
        };
        let lanes = asked
            .iter()
            .map(|&p| {
                let lane = Lane {
                    buffered: VecDeque::new(),
                    after: cursor.as_ref().map(|c| c.after_in(p, ascending)),
                    snapshot: cursor.as_ref().map(|c| c.snapshots[&p]),
                    more: true,
                };
                (p, lane)
            })
            .collect();
        let request = SearchRequest {
            ascending,
            limit: SCAN_PAGE_EVENTS,
            ..request_of(filter)
        };
        Ok(MergedScan {
            request,
            scope,
            lanes,
        })
    }

    /// The next events, at most `max`; none past the last. `readers` are the partitions'
    /// readers now (index = partition): a partition without one, or whose
    /// owner fails, fails the call, and the scan can be called again.
    pub async fn next(
        &mut self,
        readers: &[Option<Reader>],
        max: usize,
    ) -> Result<ScanSlice, FanOutError> {
        let (mut events, mut places) = (Vec::new(), Vec::new());
        self.refill(readers).await?;
        while events.len() < max {
            let fronts = self.lanes.values_mut().filter(|l| !l.buffered.is_empty());
            let first = match self.request.ascending {
                true => fronts.min_by_key(|lane| lane.buffered[0].0),
                false => fronts.max_by_key(|lane| lane.buffered[0].0),
            };
            let Some(lane) = first else { break };
            let (place, event) = lane.buffered.pop_front().expect("not empty");
            let dry = lane.buffered.is_empty() && lane.more;
            events.push(event);
            places.push(place);
            if dry && events.len() < max {
                self.refill(readers).await?;
            }
        }
        let snapshots = self
            .lanes
            .iter()
            .filter_map(|(p, lane)| Some((*p, lane.snapshot?)))
            .collect();
        Ok(ScanSlice {
            events,
            places,
            snapshots,
            ascending: self.request.ascending,
        })
    }

    /// Reads the next page of each lane that ran dry and has more, all at
    /// once.
    async fn refill(&mut self, readers: &[Option<Reader>]) -> Result<(), FanOutError> {
        let dry: Vec<u32> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.buffered.is_empty() && lane.more)
            .map(|(p, _)| *p)
            .collect();
        let pages = dry.iter().map(|&p| {
            let reader = readers.get(p as usize).cloned().flatten();
            let lane = &self.lanes[&p];
            let at = PageAt {
                after: lane.after,
                snapshot: lane.snapshot,
            };
            let (request, scope) = (self.request.clone(), self.scope.clone());
            async move {
                let reader = reader.ok_or_else(|| unowned(p))?;
                Ok::<_, FanOutError>((p, reader.search_at(request, scope, at).await?))
            }
        });
        for (p, page) in try_join_all(pages).await? {
            let lane = self.lanes.get_mut(&p).expect("a lane of the scan");
            lane.snapshot = Some(page.snapshot);
            lane.more = page.more && !page.events.is_empty();
            lane.buffered = page
                .events
                .into_iter()
                .map(|e| (Place::of(&e, p), e))
                .collect();
            if let Some((place, _)) = lane.buffered.back() {
                lane.after = Some((place.time, place.seq));
            }
        }
        Ok(())
    }
}

/// What one [`MergedScan::next`] read.
pub struct ScanSlice {
    pub events: Vec<AuditEvent>,
    places: Vec<Place>,
    /// Every partition's snapshot: each was read by the time an event is.
    snapshots: BTreeMap<u32, u64>,
    ascending: bool,
}

impl ScanSlice {
    /// The token that resumes the scan right after `events[i]`.
    pub fn token_after(&self, i: usize) -> String {
        MergedCursor {
            last: self.places[i],
            snapshots: self.snapshots.clone(),
            ascending: self.ascending,
        }
        .encode()
    }
}

//! Search over the partitions of a cluster (docs/cluster.md, item 6):
//! each partition asked for a page, the pages merged into one, exactly as
//! one node would page through the same events.
//!
//! Events are ordered by (time, partition, seq): time first, as on one
//! node; a partition's own dense seq breaks ties inside it, and the
//! partition number between partitions (seqs of two partitions are not
//! comparable). A merged page of `limit` events takes at most `limit`
//! from any partition, so each partition is asked for `limit` events past
//! the merged cursor; the merged page token holds that cursor and the
//! snapshot each partition's first page saw, so later pages see the same
//! set of events on every partition. The total is the sum of the
//! partitions' counts, each bounded as one node bounds its own: the
//! merged total and its lower-bound flag are exactly what one node holding
//! every partition would answer.
//!
//! A search asks only the partitions that can hold a match: a filter
//! that names subjects, or a caller whose scope is one subject, needs
//! only their partitions (a partition is a hash of the subject). A
//! partition needed and without a reader (no owner) fails the whole
//! search with [`FanOutError::Unavailable`] naming it: never a short
//! answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::{try_join_all, BoxFuture};
use futures::stream::BoxStream;

use super::partition_of;
use crate::app::{AppError, IntegrityService, RetentionService};
use crate::auth::ReadScope;
pub use crate::proto::partition_integrity_request::Op as IntegrityOp;
pub use crate::proto::partition_integrity_response::Answer as IntegrityAnswer;
pub use crate::proto::partition_retention_request::Op as RetentionOp;
pub use crate::proto::partition_retention_response::Answer as RetentionAnswer;
use crate::proto::{
    AggregateRequest, AggregateResponse, AuditEvent, AuditLogProgress, AuditLogRequest,
    EventFilter, SearchRequest, SearchResponse,
};
use crate::schema::{timestamp_micros, AuditSchema};
use crate::search::aggregate::{self, FirstPass, Planned, SecondPass, Selections};
use crate::search::{PageAt, SearchError, Searcher, SnapshotPage};

/// One partition, as a fan-out reads it: the owner's index, in this
/// process (`Searcher::search_at`) or on another node.
pub trait PartitionReader: Send + Sync {
    /// One page of `request` (its `page_token` unread) inside `scope`,
    /// from `at`.
    fn search_at(
        &self,
        request: SearchRequest,
        scope: ReadScope,
        at: PageAt,
    ) -> BoxFuture<'static, Result<SnapshotPage, FanOutError>>;

    /// The event with `id` inside `scope`, if this partition holds it
    /// (`Searcher::get`).
    fn get(
        &self,
        id: String,
        scope: ReadScope,
    ) -> BoxFuture<'static, Result<Option<AuditEvent>, FanOutError>>;

    /// Returns once events up to `seq` are searchable (`Searcher::reach`
    /// of `seq + 1`), waiting at most `within`.
    fn reach(&self, seq: u64, within: Duration) -> BoxFuture<'static, Result<(), FanOutError>>;

    /// A Tail's next events on this partition: those `filter` matches
    /// inside `scope` with seqs in `[from, to)`, in seq order, where `to`
    /// is where the partition is searchable once it passes `from`
    /// (waited for at most `wait`; then no events and `to == from`), and
    /// at most `max_seqs` past `from`. `from = None`: no events, `to` =
    /// where it is searchable now.
    fn log_page(
        &self,
        filter: EventFilter,
        scope: ReadScope,
        from: Option<u64>,
        max_seqs: u64,
        wait: Duration,
    ) -> BoxFuture<'static, Result<LogPage, FanOutError>>;

    /// The first pass of `request` inside `scope` (`Searcher::aggregate_first`).
    fn aggregate_first(
        &self,
        request: AggregateRequest,
        scope: ReadScope,
    ) -> BoxFuture<'static, Result<FirstPass, FanOutError>>;

    /// The second pass, inside the buckets the merged first pass selected.
    fn aggregate_second(
        &self,
        request: AggregateRequest,
        scope: ReadScope,
        selections: Selections,
    ) -> BoxFuture<'static, Result<SecondPass, FanOutError>>;

    /// The partition's part of a retention call (`app::retention_partitions`):
    /// a change applied through its log, a sweep, or its state.
    fn retention(
        &self,
        op: RetentionOp,
    ) -> BoxFuture<'static, Result<RetentionAnswer, FanOutError>>;

    /// The partition's tree at its owner (`app::integrity_partitions`):
    /// a checkpoint, an inclusion proof inside `scope`, or a consistency
    /// proof. Its errors keep the owner's kind (a checkpoint not kept is
    /// NOT_FOUND, a changed event DATA_LOSS).
    fn integrity(
        &self,
        scope: ReadScope,
        op: IntegrityOp,
    ) -> BoxFuture<'static, Result<IntegrityAnswer, AppError>>;

    /// The full audit of the partition's tree at its owner, its progress
    /// as it goes (`IntegrityService::audit_stream`).
    fn audit(
        &self,
        request: AuditLogRequest,
    ) -> BoxFuture<'static, Result<AuditProgress, AppError>>;
}

/// A full audit's progress, as an owner reports it.
pub type AuditProgress = BoxStream<'static, Result<AuditLogProgress, AppError>>;

/// How long a partition's index is waited for when a page's snapshot is
/// past it (the partition moved to a node still catching up) before the
/// page is refused, UNAVAILABLE naming the partition.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// What [`PartitionReader::log_page`] read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogPage {
    pub events: Vec<AuditEvent>,
    pub to: u64,
}

/// A partition's reader, shared by the searches that ask it.
pub type Reader = Arc<dyn PartitionReader>;

/// A partition whose index is in this process, read on the blocking
/// pool.
#[derive(Clone)]
pub struct LocalPartition {
    pub partition: u32,
    pub searcher: Searcher,
    /// Its retention, on its node's trail (`None`: retention calls are
    /// refused, as for a one-partition node's partition 0). Weak: the
    /// owned partition holds it, and with it its WAL queue's sender, which
    /// must go before its pipeline can stop.
    pub retention: Option<Weak<RetentionService>>,
    /// Its tree, checkpoints and proofs (`None`: integrity calls are
    /// refused). Weak, as `retention`.
    pub integrity: Option<Weak<IntegrityService>>,
}

impl LocalPartition {
    /// Runs `read` on the blocking pool, its errors as a fan-out's.
    fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Searcher) -> Result<T, SearchError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, FanOutError>> {
        let (partition, searcher) = (self.partition, self.searcher.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read(&searcher))
                .await
                .map_err(|e| FanOutError::Failed {
                    partition,
                    reason: e.to_string(),
                })?
                .map_err(|e| FanOutError::of(e, partition))
        })
    }
}

impl PartitionReader for LocalPartition {
    fn search_at(
        &self,
        request: SearchRequest,
        scope: ReadScope,
        at: PageAt,
    ) -> BoxFuture<'static, Result<SnapshotPage, FanOutError>> {
        let (partition, searcher) = (self.partition, self.searcher.clone());
        let page = self.blocking(move |searcher| searcher.search_at(&request, &scope, at));
        Box::pin(async move {
            let reached = searcher.reach(at.snapshot, SNAPSHOT_WAIT).await;
            reached.map_err(|behind| FanOutError::of(behind, partition))?;
            page.await
        })
    }

    fn get(
        &self,
        id: String,
        scope: ReadScope,
    ) -> BoxFuture<'static, Result<Option<AuditEvent>, FanOutError>> {
        self.blocking(move |searcher| searcher.get(&id, &scope))
    }

    fn reach(&self, seq: u64, within: Duration) -> BoxFuture<'static, Result<(), FanOutError>> {
        let (partition, searcher) = (self.partition, self.searcher.clone());
        Box::pin(async move {
            let reached = searcher.reach(Some(seq + 1), within).await;
            reached.map_err(|behind| FanOutError::of(behind, partition))
        })
    }

    fn log_page(
        &self,
        filter: EventFilter,
        scope: ReadScope,
        from: Option<u64>,
        max_seqs: u64,
        wait: Duration,
    ) -> BoxFuture<'static, Result<LogPage, FanOutError>> {
        let local = self.clone();
        Box::pin(async move {
            let searchable = || *local.searcher.searchable().borrow();
            let Some(from) = from else {
                let to = searchable();
                return Ok(LogPage {
                    events: Vec::new(),
                    to,
                });
            };
            // Not there within `wait`: an empty page, no error.
            let _ = local.searcher.reach(Some(from + 1), wait).await;
            let to = searchable().min(from.saturating_add(max_seqs));
            if to <= from {
                return Ok(LogPage {
                    events: Vec::new(),
                    to: from,
                });
            }
            let read = local.blocking(move |s| s.in_log_order(&filter, &scope, from, to));
            Ok(LogPage {
                events: read.await?,
                to,
            })
        })
    }

    fn aggregate_first(
        &self,
        request: AggregateRequest,
        scope: ReadScope,
    ) -> BoxFuture<'static, Result<FirstPass, FanOutError>> {
        self.blocking(move |searcher| searcher.aggregate_first(&request, &scope))
    }

    fn aggregate_second(
        &self,
        request: AggregateRequest,
        scope: ReadScope,
        selections: Selections,
    ) -> BoxFuture<'static, Result<SecondPass, FanOutError>> {
        self.blocking(move |searcher| searcher.aggregate_second(&request, &scope, &selections))
    }

    fn retention(
        &self,
        op: RetentionOp,
    ) -> BoxFuture<'static, Result<RetentionAnswer, FanOutError>> {
        let (partition, retention) = (self.partition, self.retention.clone());
        Box::pin(async move {
            let retention = retention.ok_or_else(|| FanOutError::Failed {
                partition,
                reason: "its retention is not kept by partition".into(),
            })?;
            let retention = retention
                .upgrade()
                .ok_or_else(|| FanOutError::Unavailable {
                    partition,
                    reason: "no longer held by this node".into(),
                })?;
            retention.at_partition(op).await.map_err(|error| {
                use crate::app::ErrorKind::{DeadlineExceeded, ResourceExhausted, Unavailable};
                let reason = error.to_string();
                match error {
                    AppError::Invalid { field, reason } => FanOutError::Invalid { field, reason },
                    AppError::FanOut(error) => error,
                    error => match error.kind() {
                        Unavailable | ResourceExhausted | DeadlineExceeded => {
                            FanOutError::Unavailable { partition, reason }
                        }
                        _ => FanOutError::Failed { partition, reason },
                    },
                }
            })
        })
    }

    fn integrity(
        &self,
        scope: ReadScope,
        op: IntegrityOp,
    ) -> BoxFuture<'static, Result<IntegrityAnswer, AppError>> {
        let integrity = self.integrity_here();
        Box::pin(async move { integrity?.at_partition(scope, op).await })
    }

    fn audit(
        &self,
        request: AuditLogRequest,
    ) -> BoxFuture<'static, Result<AuditProgress, AppError>> {
        let integrity = self.integrity_here();
        Box::pin(async move { integrity?.audit_stream(request) })
    }
}

impl LocalPartition {
    /// Its integrity service, while this node holds the partition.
    fn integrity_here(&self) -> Result<Arc<IntegrityService>, AppError> {
        let partition = self.partition;
        let integrity = self.integrity.clone().ok_or_else(|| FanOutError::Failed {
            partition,
            reason: "its tree is not kept by partition".into(),
        })?;
        integrity.upgrade().ok_or_else(|| {
            FanOutError::Unavailable {
                partition,
                reason: "no longer held by this node".into(),
            }
            .into()
        })
    }
}

/// Why a merged search has no answer.
#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    /// The request is wrong; `field` names the request field.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A partition the search needs has no owner, or its owner did not
    /// answer: retry later (another node takes it over once its lease
    /// expires).
    #[error("partition {partition}: {reason}")]
    Unavailable { partition: u32, reason: String },
    /// A partition's owner failed to answer for another reason.
    #[error("partition {partition}: {reason}")]
    Failed { partition: u32, reason: String },
    /// The answer would take more memory than a call may (as
    /// `SearchError::TooLarge`).
    #[error("{0}")]
    TooLarge(String),
}

impl FanOutError {
    /// A search error, of `partition`'s owner when it comes from one.
    fn of(error: SearchError, partition: u32) -> FanOutError {
        match error {
            SearchError::Invalid { field, reason } => FanOutError::Invalid { field, reason },
            SearchError::TooLarge(reason) => FanOutError::TooLarge(reason),
            behind @ SearchError::Behind { .. } => FanOutError::Unavailable {
                partition,
                reason: behind.to_string(),
            },
            other => FanOutError::Failed {
                partition,
                reason: other.to_string(),
            },
        }
    }
}

/// How a merged page is cut: one node's `Searcher::limit_of` and
/// `Searcher::count_up_to` for the request (every node of a cluster has
/// the same limits).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub limit: usize,
    pub count_up_to: u64,
}

/// The partitions, of `partitions`, that can hold an event of one of
/// `subjects` (any subject when empty) inside `scope`, in order.
pub fn partitions_for(subjects: &[String], scope: &ReadScope, partitions: u32) -> Vec<u32> {
    let scoped = match scope {
        ReadScope::All => None,
        ReadScope::Subject(subject) | ReadScope::SubjectAndAccess { subject, .. } => {
            Some(partition_of(subject, partitions))
        }
    };
    let mut named: Vec<u32> = match subjects.is_empty() {
        true => (0..partitions).collect(),
        false => subjects
            .iter()
            .map(|s| partition_of(s, partitions))
            .collect(),
    };
    named.sort_unstable();
    named.dedup();
    named.retain(|p| scoped.is_none_or(|s| s == *p));
    named
}

/// The event with `id` inside `scope`, asked of every partition the scope
/// allows (an id says nothing of its partition) at once. Found anywhere,
/// it is the answer; `None` only when every partition asked said it holds
/// no such event, so a partition without owner, or one that failed, makes
/// a miss an error naming it, never a false "not found".
pub async fn get(
    readers: &[Option<Reader>],
    id: &str,
    scope: &ReadScope,
) -> Result<Option<AuditEvent>, FanOutError> {
    let started = Instant::now();
    let partitions = partitions_for(&[], scope, readers.len() as u32);
    let mut missing = None;
    let mut asked = Vec::new();
    for p in partitions {
        match readers[p as usize].clone() {
            Some(reader) => asked.push(reader.get(id.to_owned(), scope.clone())),
            None => missing = missing.or(Some(unowned(p))),
        }
    }
    let answers = futures::future::join_all(asked).await;
    metrics::histogram!(crate::metrics::CLUSTER_FANOUT_SECONDS, "call" => "get")
        .record(started.elapsed().as_secs_f64());
    let mut failed = missing;
    for answer in answers {
        match answer {
            Ok(Some(event)) => return Ok(Some(event)),
            Ok(None) => {}
            Err(error) => failed = failed.or(Some(error)),
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(None),
    }
}

/// Returns once each partition's owner has made its events up to the
/// seq given for it searchable, waiting at most `within` for all of them
/// together (`wait_for = SEARCHABLE` on a cluster of several partitions).
pub async fn reach(
    readers: &[Option<Reader>],
    highest: &BTreeMap<u32, u64>,
    within: Duration,
) -> Result<(), FanOutError> {
    let partitions: Vec<u32> = highest.keys().copied().collect();
    let asked = owners(readers, &partitions)?;
    let waits = asked
        .into_iter()
        .map(|(p, reader)| reader.reach(highest[&p], within));
    try_join_all(waits).await.map(|_| ())
}

/// One merged page of `request` over `readers` (index = partition; `None`
/// = no owner), inside `scope`.
pub async fn search(
    readers: &[Option<Reader>],
    request: &SearchRequest,
    scope: &ReadScope,
    bounds: Bounds,
) -> Result<SearchResponse, FanOutError> {
    let started = Instant::now();
    let partitions = partitions_for(&request.subjects, scope, readers.len() as u32);
    let cursor = match request.page_token.as_str() {
        "" => None,
        token => Some(MergedCursor::decode(
            token,
            request.ascending,
            &partitions,
            "page_token",
        )?),
    };
    let asked = owners(readers, &partitions)?;
    let mut inner = request.clone();
    inner.page_token.clear();
    inner.limit = bounds.limit as u32;
    let pages = asked.into_iter().map(|(p, reader)| {
        let at = PageAt {
            after: cursor.as_ref().map(|c| c.after_in(p, request.ascending)),
            snapshot: cursor.as_ref().map(|c| c.snapshots[&p]),
        };
        let page = reader.search_at(inner.clone(), scope.clone(), at);
        async move { Ok::<_, FanOutError>((p, page.await?)) }
    });
    let pages = try_join_all(pages).await?;
    let response = merge(pages, request.ascending, bounds);
    metrics::histogram!(crate::metrics::CLUSTER_FANOUT_SECONDS, "call" => "search")
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// Exact counts of `request` inside `scope`, over `readers` (index =
/// partition; `None` = no owner): each partition's first pass, merged;
/// the buckets kept; each partition's second pass inside them, merged.
/// The same answer as one index holding every partition.
pub async fn aggregate(
    readers: &[Option<Reader>],
    request: &AggregateRequest,
    scope: &ReadScope,
) -> Result<AggregateResponse, FanOutError> {
    let started = Instant::now();
    let planned = Planned::of(&AuditSchema::new(), request).map_err(|e| FanOutError::of(e, 0))?;
    let plans = &planned.plans;
    let no_subjects = Vec::new();
    let subjects = request
        .filter
        .as_ref()
        .map_or(&no_subjects, |f| &f.subjects);
    let partitions = partitions_for(subjects, scope, readers.len() as u32);
    let asked = owners(readers, &partitions)?;
    let firsts = asked
        .iter()
        .map(|(_, reader)| reader.aggregate_first(request.clone(), scope.clone()));
    let mut first = FirstPass::empty(plans);
    for part in try_join_all(firsts).await? {
        first
            .merge(part, plans)
            .map_err(|e| FanOutError::of(e, 0))?;
    }
    let total_hits = first.hits;
    let (results, selections) = aggregate::select(plans, first, planned.from, planned.to)
        .map_err(|e| FanOutError::of(e, 0))?;
    let mut second = SecondPass::empty(plans, &selections);
    if selections.iter().any(Option::is_some) {
        let seconds = asked.iter().map(|(_, reader)| {
            reader.aggregate_second(request.clone(), scope.clone(), selections.clone())
        });
        for part in try_join_all(seconds).await? {
            second
                .merge(part, plans)
                .map_err(|e| FanOutError::of(e, 0))?;
        }
    }
    let results = aggregate::complete(plans, results, second, planned.from, planned.to)
        .map_err(|e| FanOutError::of(e, 0))?;
    metrics::histogram!(crate::metrics::CLUSTER_FANOUT_SECONDS, "call" => "aggregate")
        .record(started.elapsed().as_secs_f64());
    Ok(AggregateResponse {
        total_hits,
        results: results.into_iter().collect(),
    })
}

/// The reader of each of `partitions`; UNAVAILABLE naming the first one
/// without.
fn owners(
    readers: &[Option<Reader>],
    partitions: &[u32],
) -> Result<Vec<(u32, Reader)>, FanOutError> {
    partitions
        .iter()
        .map(|&p| match &readers[p as usize] {
            Some(reader) => Ok((p, reader.clone())),
            None => Err(unowned(p)),
        })
        .collect()
}

/// UNAVAILABLE: `partition` has no owner.
pub fn unowned(partition: u32) -> FanOutError {
    FanOutError::Unavailable {
        partition,
        reason: "no node owns it".into(),
    }
}

/// The first `bounds.limit` events of the partitions' pages in the merged
/// order, with the token past the last one.
fn merge(pages: Vec<(u32, SnapshotPage)>, ascending: bool, bounds: Bounds) -> SearchResponse {
    let counted: u64 = pages.iter().map(|(_, page)| page.counted).sum();
    let mut more = pages.iter().any(|(_, page)| page.more);
    let snapshots: BTreeMap<u32, u64> = pages.iter().map(|(p, page)| (*p, page.snapshot)).collect();
    let mut events: Vec<(Place, AuditEvent)> = pages
        .into_iter()
        .flat_map(|(p, page)| page.events.into_iter().map(move |e| (Place::of(&e, p), e)))
        .collect();
    events.sort_by_key(|(place, _)| *place);
    if !ascending {
        events.reverse();
    }
    if events.len() > bounds.limit {
        events.truncate(bounds.limit);
        more = true;
    }
    let next_page_token = match (more, events.last()) {
        (true, Some((last, _))) => MergedCursor {
            last: *last,
            snapshots,
            ascending,
        }
        .encode(),
        _ => String::new(),
    };
    SearchResponse {
        events: events.into_iter().map(|(_, e)| e).collect(),
        next_page_token,
        total_hits: counted.min(bounds.count_up_to),
        total_hits_is_lower_bound: counted >= bounds.count_up_to,
    }
}

/// An event's place in the merged order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Place {
    pub(super) time: i64,
    pub(super) partition: u32,
    pub(super) seq: u64,
}

impl Place {
    pub(super) fn of(event: &AuditEvent, partition: u32) -> Place {
        Place {
            time: timestamp_micros(event.time.as_ref()),
            partition,
            seq: event.seq,
        }
    }
}

/// Where a merged page ended, and what each partition's first page saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MergedCursor {
    pub(super) last: Place,
    pub(super) snapshots: BTreeMap<u32, u64>,
    pub(super) ascending: bool,
}

/// `f1`: a fan-out's page token (one node's are `p3`).
const TOKEN_VERSION: &str = "f1";

impl MergedCursor {
    /// Partition `p`'s own cursor: its events past `last` in the merged
    /// order, as the (time, seq) a partition pages after. Seqs are never
    /// `u64::MAX`, and times are whole microseconds, so each case is one
    /// pair: a partition before `last`'s takes its events at `last.time`
    /// only in the direction's past, one after it all of them.
    pub(super) fn after_in(&self, p: u32, ascending: bool) -> (i64, u64) {
        let Place {
            time,
            partition,
            seq,
        } = self.last;
        match (p.cmp(&partition), ascending) {
            (std::cmp::Ordering::Equal, _) => (time, seq),
            // Ascending, then later times only; descending, time itself too.
            (std::cmp::Ordering::Less, true) => (time, u64::MAX),
            (std::cmp::Ordering::Less, false) => (time + 1, 0),
            // Ascending, time itself too; descending, earlier times only.
            (std::cmp::Ordering::Greater, true) => (time - 1, u64::MAX),
            (std::cmp::Ordering::Greater, false) => (time, 0),
        }
    }

    pub(super) fn encode(&self) -> String {
        let snapshots: Vec<String> = self
            .snapshots
            .iter()
            .map(|(p, s)| format!("{p}={s}"))
            .collect();
        let Place {
            time,
            partition,
            seq,
        } = self.last;
        let raw = format!(
            "{TOKEN_VERSION}:{}:{time}:{partition}:{seq}:{}",
            self.ascending as u8,
            snapshots.join(",")
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor of `token`, which must come from a page of the same
    /// search: the same order and the same partitions `asked`; else
    /// INVALID_ARGUMENT naming `field`.
    pub(super) fn decode(
        token: &str,
        ascending: bool,
        asked: &[u32],
        field: &'static str,
    ) -> Result<MergedCursor, FanOutError> {
        let bad = |reason: &str| FanOutError::Invalid {
            field,
            reason: reason.into(),
        };
        let not_ours = || bad("not a token from a previous response");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_ours())?;
        let raw = String::from_utf8(raw).map_err(|_| not_ours())?;
        let parts: Vec<&str> = raw.split(':').collect();
        let [TOKEN_VERSION, order, time, partition, seq, snapshots] = parts[..] else {
            return Err(not_ours());
        };
        let number = |s: &str| s.parse::<u64>().map_err(|_| not_ours());
        let cursor = MergedCursor {
            last: Place {
                time: time.parse().map_err(|_| not_ours())?,
                partition: partition.parse().map_err(|_| not_ours())?,
                seq: number(seq)?,
            },
            snapshots: snapshots
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|pair| {
                    let (p, s) = pair.split_once('=').ok_or_else(not_ours)?;
                    Ok((p.parse().map_err(|_| not_ours())?, number(s)?))
                })
                .collect::<Result<_, FanOutError>>()?,
            ascending: match order {
                "0" => false,
                "1" => true,
                _ => return Err(not_ours()),
            },
        };
        if cursor.ascending != ascending {
            return Err(bad("the token was made for the other sort order"));
        }
        if !cursor.snapshots.keys().copied().eq(asked.iter().copied()) {
            return Err(bad("the token was made for another search"));
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(time: i64, partition: u32, seq: u64, ascending: bool) -> MergedCursor {
        MergedCursor {
            last: Place {
                time,
                partition,
                seq,
            },
            snapshots: [(1, 10), (2, 20), (3, 30)].into(),
            ascending,
        }
    }

    /// Brute force: every (time, seq) of partitions 1..=3 around the
    /// cursor is past it in the merged order exactly when it is past the
    /// partition's own cursor in the partition's order.
    #[test]
    fn a_partitions_cursor_takes_exactly_what_follows_in_the_merged_order() {
        for ascending in [false, true] {
            let c = cursor(100, 2, 5, ascending);
            for p in 1..=3 {
                let own = c.after_in(p, ascending);
                for time in 98..=102 {
                    for seq in 0..10 {
                        let merged = Place {
                            time,
                            partition: p,
                            seq,
                        };
                        let past_merged = match ascending {
                            true => merged > c.last,
                            false => merged < c.last,
                        };
                        let past_own = match ascending {
                            true => (time, seq) > own,
                            false => (time, seq) < own,
                        };
                        assert_eq!(past_merged, past_own, "{merged:?} asc {ascending}");
                    }
                }
            }
        }
    }

    #[test]
    fn tokens_round_trip_and_garbage_or_another_search_is_refused() {
        let c = cursor(-1 + 2, 3, 7, true);
        assert_eq!(
            MergedCursor::decode(&c.encode(), true, &[1, 2, 3], "page_token").unwrap(),
            c
        );
        let field_of = |r: Result<MergedCursor, FanOutError>| match r {
            Err(FanOutError::Invalid { field, reason }) => (field, reason),
            other => panic!("{other:?}"),
        };
        for bad in ["", "x", &URL_SAFE_NO_PAD.encode("p3:1:2:3:0")] {
            let (field, _) = field_of(MergedCursor::decode(bad, true, &[1, 2, 3], "page_token"));
            assert_eq!(field, "page_token");
        }
        let (_, reason) = field_of(MergedCursor::decode(
            &c.encode(),
            false,
            &[1, 2, 3],
            "page_token",
        ));
        assert!(reason.contains("other sort order"), "{reason}");
        let (_, reason) = field_of(MergedCursor::decode(
            &c.encode(),
            true,
            &[1, 2],
            "page_token",
        ));
        assert!(reason.contains("another search"), "{reason}");
    }

    #[test]
    fn subjects_and_a_subject_scope_narrow_the_partitions_asked() {
        let n = 32;
        let all = ReadScope::All;
        let request =
            |subjects: &[&str]| -> Vec<String> { subjects.iter().map(|s| s.to_string()).collect() };
        assert_eq!(
            partitions_for(&request(&[]), &all, n),
            (0..n).collect::<Vec<_>>()
        );
        // docs/cluster.md's table: emma → 28, user-1 → 18.
        assert_eq!(
            partitions_for(&request(&["emma", "user-1", "emma"]), &all, n),
            [18, 28]
        );
        let emma = ReadScope::Subject("emma".into());
        assert_eq!(partitions_for(&request(&[]), &emma, n), [28]);
        assert!(partitions_for(&request(&["user-1"]), &emma, n).is_empty());
    }
}

//! Retention and legal hold for a caller: admin tokens only, every call on
//! the trail. Changes go through the log as typed records and are applied
//! by the indexer (`retention`); this layer checks them first and answers
//! with what was applied.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::read::Routes;
use super::retention_partitions::State;
use super::self_audit::system_caller;
use super::trail::{self, Trail};
use super::{AppError, Origin};
use crate::auth::{Caller, ReadScope};
use crate::ingest::{now_micros, IngestService};
use crate::metrics as m;
use crate::partition::{format_day, Day, PARTITION_MICROS};
use crate::proto::{
    self, AddHoldRequest, DroppedDay, EventFilter, KeptDay, RetentionStatus, SweepResponse,
};
use crate::retention::policy::past;
use crate::retention::{Applied, Change, Dropped, Hold, Retention, RetentionRecord, Verdict};
use crate::schema::micros_to_timestamp;
use crate::search::Searcher;

/// Holds in force at most: each is checked against every partition due
/// for a drop.
pub const MAX_HOLDS: usize = 1000;

/// The longest subject, query or reason of a hold, in bytes.
pub const MAX_HOLD_FIELD_BYTES: usize = 4096;

#[derive(Clone)]
pub struct RetentionService {
    retention: Arc<Retention>,
    ingest: Arc<IngestService>,
    pub(super) searcher: Searcher,
    trail: Trail,
    /// On a node of several partitions: each partition's owner, where
    /// every change and sweep goes (`retention_partitions`); the read
    /// service's, set once the node's owner runs.
    pub(super) routes: Arc<OnceLock<Routes>>,
}

impl RetentionService {
    pub fn new(
        retention: Arc<Retention>,
        ingest: Arc<IngestService>,
        searcher: Searcher,
        trail: Trail,
        routes: Arc<OnceLock<Routes>>,
    ) -> Self {
        RetentionService {
            retention,
            ingest,
            searcher,
            trail,
            routes,
        }
    }

    /// The same partition's retention, its drops on `trail` (an owned
    /// partition's, on its node's trail: its events go to the partition
    /// of their subject, never straight into this one's log).
    pub fn with_trail(&self, trail: Trail) -> RetentionService {
        RetentionService {
            trail,
            ..self.clone()
        }
    }

    /// Whether changes, sweeps and the state go to the partitions' owners.
    fn partitioned(&self) -> bool {
        self.ingest.partitioned()
    }

    /// The retention state: this node's, or every partition's merged.
    async fn state(&self) -> Result<State, AppError> {
        match self.partitioned() {
            true => self.merged_state().await,
            false => Ok(self.local_state()),
        }
    }

    pub fn retention(&self) -> &Arc<Retention> {
        &self.retention
    }

    pub async fn status(
        &self,
        caller: &Caller,
        origin: &Origin,
    ) -> Result<RetentionStatus, AppError> {
        let result = async {
            caller.require_admin("read the retention settings")?;
            Ok(self.status_of(self.state().await?))
        }
        .await;
        self.trail
            .audited(
                caller,
                trail::RETENTION_STATUS,
                origin,
                BTreeMap::new(),
                result,
            )
            .await
    }

    /// Raises the compliance floor to `min_days`, for good.
    pub async fn lock(
        &self,
        caller: &Caller,
        origin: &Origin,
        min_days: u32,
    ) -> Result<RetentionStatus, AppError> {
        let query = BTreeMap::from([("min_days".to_owned(), min_days.to_string())]);
        let result = async {
            caller.require_admin("lock retention")?;
            if min_days == 0 {
                return Err(AppError::Invalid {
                    field: "min_days",
                    reason: "at least 1 day".into(),
                });
            }
            if let Some(floor) = self.state().await?.floor_days.filter(|f| *f > min_days) {
                return Err(AppError::BelowFloor(format!(
                    "the compliance floor is {floor} days and can only be raised"
                )));
            }
            if let Some(setting) = self.retention.policy().below(min_days) {
                return Err(AppError::BelowFloor(format!(
                    "a floor of {min_days} days is above the configuration: {setting}; lengthen it first"
                )));
            }
            self.change(Change::Lock(min_days)).await?;
            Ok(self.status_of(self.state().await?))
        }
        .await;
        self.trail
            .audited(caller, trail::RETENTION_LOCK, origin, query, result)
            .await
    }

    pub async fn add_hold(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: AddHoldRequest,
    ) -> Result<proto::Hold, AppError> {
        let mut query = BTreeMap::from([("reason".to_owned(), request.reason.clone())]);
        for (key, value) in [("subject", &request.subject), ("query", &request.query)] {
            if !value.is_empty() {
                query.insert(key.to_owned(), value.clone());
            }
        }
        let result = async {
            caller.require_admin("place legal holds")?;
            self.check_hold(&request).await?;
            let change = Change::Hold(crate::retention::HoldRequest {
                subject: request.subject,
                query: request.query,
                reason: request.reason,
                by: caller.token_id.clone(),
            });
            match self.change(change).await? {
                Applied::Held(hold) => Ok(hold_to_proto(&hold)),
                other => Err(unexpected(other)),
            }
        }
        .await;
        if let Ok(hold) = &result {
            query.insert("hold_id".to_owned(), hold.id.clone());
        }
        self.trail
            .audited(caller, trail::HOLD_ADD, origin, query, result)
            .await
    }

    async fn check_hold(&self, request: &AddHoldRequest) -> Result<(), AppError> {
        let invalid = |field, reason: &str| {
            Err(AppError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if request.subject.is_empty() && request.query.trim().is_empty() {
            return invalid("subject", "a hold names a subject, a query, or both");
        }
        if request.reason.trim().is_empty() {
            return invalid("reason", "say why the events are held");
        }
        for (field, value) in [
            ("subject", &request.subject),
            ("query", &request.query),
            ("reason", &request.reason),
        ] {
            if value.len() > MAX_HOLD_FIELD_BYTES {
                return invalid(field, "longer than 4096 bytes");
            }
            if value
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return invalid(field, "control characters are not allowed");
            }
        }
        if !request.query.is_empty() {
            let filter = EventFilter {
                query: request.query.clone(),
                ..Default::default()
            };
            self.searcher.matching(&filter, &ReadScope::All)?;
        }
        let state = self.state().await?;
        if state.holds.iter().filter(|h| h.released.is_none()).count() >= MAX_HOLDS {
            return Err(AppError::TooManyHolds(MAX_HOLDS));
        }
        Ok(())
    }

    pub async fn list_holds(
        &self,
        caller: &Caller,
        origin: &Origin,
        include_released: bool,
    ) -> Result<Vec<proto::Hold>, AppError> {
        let result = async {
            caller.require_admin("list legal holds")?;
            let state = self.state().await?;
            let holds = state.holds.iter();
            Ok(holds
                .filter(|h| include_released || h.released.is_none())
                .map(hold_to_proto)
                .collect())
        }
        .await;
        self.trail
            .audited(caller, trail::HOLD_LIST, origin, BTreeMap::new(), result)
            .await
    }

    pub async fn release_hold(
        &self,
        caller: &Caller,
        origin: &Origin,
        id: String,
    ) -> Result<proto::Hold, AppError> {
        let query = BTreeMap::from([("hold_id".to_owned(), id.clone())]);
        let result = async {
            caller.require_admin("release legal holds")?;
            if !self.state().await?.holds.iter().any(|h| h.id == id) {
                return Err(AppError::HoldNotFound(id));
            }
            match self.change(Change::Release(id)).await? {
                Applied::Released(hold) => Ok(hold_to_proto(&hold)),
                other => Err(unexpected(other)),
            }
        }
        .await;
        self.trail
            .audited(caller, trail::HOLD_RELEASE, origin, query, result)
            .await
    }

    /// Drops now every partition that is due.
    pub async fn sweep(&self, caller: &Caller, origin: &Origin) -> Result<SweepResponse, AppError> {
        let result = match caller.require_admin("run retention") {
            Ok(()) if self.partitioned() => self.sweep_everywhere().await,
            Ok(()) => self.sweep_now().await,
            Err(error) => Err(error.into()),
        };
        let query = match &result {
            Ok(swept) => BTreeMap::from([("dropped".to_owned(), swept.dropped.len().to_string())]),
            Err(_) => BTreeMap::new(),
        };
        self.trail
            .audited(caller, trail::RETENTION_SWEEP, origin, query, result)
            .await
    }

    /// Sweeps every `every` until `stop`, the first time at once.
    pub async fn run_sweeper(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(error) = self.sweep_now().await {
                tracing::warn!(%error, "retention sweep failed; will retry");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Judges every partition old enough to be due, and drops those that
    /// are through the log; each drop is an event on the trail.
    pub(super) async fn sweep_now(&self) -> Result<SweepResponse, AppError> {
        let now = now_micros();
        let (searcher, retention) = (self.searcher.clone(), self.retention.clone());
        let verdicts = tokio::task::spawn_blocking(move || judge_due(&searcher, &retention, now))
            .await
            .map_err(|e| AppError::Internal(format!("retention task failed: {e}")))?
            .map_err(|e| AppError::Internal(format!("retention: {e}")))?;
        let mut swept = SweepResponse::default();
        for (day, verdict) in verdicts {
            let kept = |reason| KeptDay {
                day: format_day(day),
                reason,
            };
            if let Verdict::Keep(reason) = verdict {
                swept.kept.push(kept(reason));
                continue;
            }
            let record = RetentionRecord {
                id: ulid::Ulid::new().to_string(),
                at_micros: now,
                change: Some(Change::Drop(day)),
            };
            match self.apply_here(record).await? {
                Applied::Dropped(dropped) => {
                    self.trail_drop(&dropped).await;
                    swept.dropped.push(dropped_to_proto(&dropped));
                }
                Applied::Unchanged(reason) => swept.kept.push(kept(reason)),
                other => return Err(unexpected(other)),
            }
        }
        note_oldest(&self.searcher);
        Ok(swept)
    }

    async fn trail_drop(&self, dropped: &Dropped) {
        let query = BTreeMap::from([
            ("drop_id".to_owned(), dropped.id.clone()),
            ("day".to_owned(), dropped.day.clone()),
            ("events".to_owned(), dropped.events.to_string()),
            ("bytes".to_owned(), dropped.bytes.to_string()),
            ("rule".to_owned(), dropped.rule.clone()),
            ("days".to_owned(), dropped.days.to_string()),
        ]);
        let origin = Origin {
            transport: "retention",
            peer: None,
        };
        let stored = self
            .trail
            .store(
                &system_caller(),
                trail::RETENTION_DROP,
                &origin,
                query,
                None,
            )
            .await;
        if let Err(error) = stored {
            tracing::error!(%error, day = %dropped.day, "could not write the retention.drop event");
        }
    }

    /// A lock, a hold or a release, as one record: through this node's
    /// log, or every partition's.
    async fn change(&self, change: Change) -> Result<Applied, AppError> {
        let record = RetentionRecord {
            id: ulid::Ulid::new().to_string(),
            at_micros: now_micros(),
            change: Some(change),
        };
        match self.partitioned() {
            true => self.apply_everywhere(record).await,
            false => self.apply_here(record).await,
        }
    }

    /// `record` through this pipeline's own log, once applied.
    pub(super) async fn apply_here(&self, record: RetentionRecord) -> Result<Applied, AppError> {
        Ok(self.ingest.change_retention(record).await?.0)
    }

    fn status_of(&self, state: State) -> RetentionStatus {
        let policy = self.retention.policy();
        RetentionStatus {
            floor_days: state.floor_days,
            default_days: policy.default_days,
            rules: policy
                .rules
                .iter()
                .map(|r| proto::RetentionRule {
                    name: r.name.clone(),
                    type_prefix: r.type_prefix.clone(),
                    actions: r.actions.clone(),
                    days: r.days,
                })
                .collect(),
            holds: state
                .holds
                .iter()
                .filter(|h| h.released.is_none())
                .map(hold_to_proto)
                .collect(),
            dropped: state.drops.iter().map(dropped_to_proto).collect(),
            oldest_day: state.oldest_day.map(format_day).unwrap_or_default(),
        }
    }
}

/// The verdict on every partition whose day is past the shortest rule
/// and the floor, oldest first.
fn judge_due(
    searcher: &Searcher,
    retention: &Retention,
    now: i64,
) -> tantivy::Result<Vec<(Day, Verdict)>> {
    let policy = retention.policy();
    let Some(shortest) = policy.shortest() else {
        return Ok(Vec::new());
    };
    let floor = retention.floor();
    let wait = shortest.max(floor.unwrap_or(0));
    let holds = retention.holds();
    let mut verdicts = Vec::new();
    for partition in searcher.partitions().overlapping(None, None) {
        if !past(partition.day, wait, now) {
            break;
        }
        let verdict = policy.judge(searcher.schema(), &partition, floor, &holds, now)?;
        verdicts.push((partition.day, verdict));
    }
    Ok(verdicts)
}

/// The oldest day still held, also as a gauge.
pub(super) fn note_oldest(searcher: &Searcher) -> Option<Day> {
    let oldest = searcher
        .partitions()
        .overlapping(None, None)
        .first()
        .map(|p| p.day);
    if let Some(day) = oldest {
        let seconds = day * PARTITION_MICROS / 1_000_000;
        metrics::gauge!(m::RETENTION_OLDEST_SECONDS).set(seconds as f64);
    }
    oldest
}

fn hold_to_proto(hold: &Hold) -> proto::Hold {
    proto::Hold {
        id: hold.id.clone(),
        subject: hold.subject.clone(),
        query: hold.query.clone(),
        reason: hold.reason.clone(),
        created_by: hold.by.clone(),
        created: Some(micros_to_timestamp(hold.created)),
        released: hold.released.map(micros_to_timestamp),
    }
}

fn dropped_to_proto(dropped: &Dropped) -> DroppedDay {
    DroppedDay {
        id: dropped.id.clone(),
        day: dropped.day.clone(),
        dropped: Some(micros_to_timestamp(dropped.at)),
        rule: dropped.rule.clone(),
        days: dropped.days,
        events: dropped.events,
        bytes: dropped.bytes,
    }
}

pub(super) fn unexpected(applied: Applied) -> AppError {
    AppError::Internal(format!("retention: unexpected outcome {applied:?}"))
}

//! The write path's front: validate a batch whole, give it ids, hand it to
//! the WAL thread, and answer once it is durable (or searchable).
//!
//! Knows nothing of gRPC; `grpc` maps `IngestError` to status codes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use prost::Message;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::Limits;
use crate::idempotency::{Begin, Idempotency, Stored};
use crate::integrity::seeds;
use crate::messages::{AppendRequest, Refused, RetentionChange, WalBatch};
use crate::metrics as m;
use crate::partition::day_of;
use crate::proto::{AuditEvent, IngestRequest, IngestResponse, WaitFor};
use crate::retention::{Applied, Retention, RetentionRecord};
use crate::schema::{micros_to_timestamp, timestamp_micros};
use crate::search::Searcher;
use crate::status::{Health, PipelineStatus};
use crate::validate::{validate_batch, InvalidBatch, Violation, MAX_REPORTED_VIOLATIONS};
use crate::wal::group_commit::WalPositions;
use crate::wal::Span;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(InvalidBatch),
    /// The pipeline is full; try again after `retry_after`.
    #[error("overloaded: {reason}; retry after {} ms", retry_after.as_millis())]
    Overloaded {
        reason: &'static str,
        retry_after: Duration,
    },
    #[error("batch_id {0:?} is being stored by another request; retry it")]
    InFlight(String),
    #[error("auditd is starting (replaying its write-ahead log)")]
    Starting,
    /// The batch could not be made durable; it was not stored.
    #[error("not stored: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IngestError {
    /// A WAL thread's refusal of a request of `events` events.
    fn of_refusal(refused: Refused, events: usize) -> IngestError {
        match refused {
            Refused::NotStored(reason) => IngestError::Unavailable(reason),
            Refused::BatchIdReused(reason) => IngestError::Invalid(InvalidBatch {
                violations: vec![Violation {
                    index: None,
                    field: "batch_id",
                    reason,
                }],
                total: 1,
                invalid_events: 0,
                events,
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub limits: Limits,
    /// How long to wait for room before RESOURCE_EXHAUSTED.
    pub submit_timeout: Duration,
    /// How far (in the log's positions: bytes for the local log, records
    /// for JetStream) the log may run ahead of the index.
    pub lag_budget: u64,
    /// Make each event's leaf hash for the Merkle tree (`integrity.enabled`).
    pub leaves: bool,
    /// A node of a cluster (`[cluster] enabled`): what one node's log
    /// allows and a shared stream does not yet (erasure) is refused.
    pub in_cluster: bool,
    /// The node's role: one that takes no Ingest refuses clients' batches.
    pub role: crate::config::Role,
    /// A node of a cluster of several partitions: batches are published
    /// into the partitions (`cluster::front`) and indexed by their owners.
    pub partitioned: bool,
}

impl IngestSettings {
    pub fn new(limits: Limits, lag_budget: u64, submit_timeout: Duration) -> Self {
        IngestSettings {
            limits,
            submit_timeout,
            lag_budget,
            leaves: true,
            in_cluster: false,
            role: crate::config::Role::All,
            partitioned: false,
        }
    }
}

pub struct IngestService {
    settings: IngestSettings,
    wal: Sender<AppendRequest>,
    /// One permit per slot of the WAL queue: waiting for a permit is the
    /// async way to wait for room, with a timeout, without blocking a
    /// runtime thread. The WAL thread drops the permit when it takes the
    /// request.
    slots: Arc<Semaphore>,
    positions: Arc<WalPositions>,
    searchable: watch::Receiver<u64>,
    memo: Arc<Idempotency>,
    searcher: Searcher,
    status: Arc<PipelineStatus>,
    ids: Mutex<ulid::Generator>,
    retention: Arc<Retention>,
}

impl IngestService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: IngestSettings,
        wal: Sender<AppendRequest>,
        wal_slots: usize,
        positions: Arc<WalPositions>,
        searchable: watch::Receiver<u64>,
        memo: Arc<Idempotency>,
        searcher: Searcher,
        status: Arc<PipelineStatus>,
        retention: Arc<Retention>,
    ) -> Self {
        IngestService {
            settings,
            wal,
            slots: Arc::new(Semaphore::new(wal_slots)),
            positions,
            searchable,
            memo,
            searcher,
            status,
            ids: Mutex::new(ulid::Generator::new()),
            retention,
        }
    }

    /// Stores `request` all or nothing. Returns once the batch is durable
    /// (or, with `WAIT_FOR_SEARCHABLE`, visible to Search).
    pub async fn ingest(&self, mut request: IngestRequest) -> Result<IngestResponse, IngestError> {
        let started = Instant::now();
        // A degraded WAL refuses or takes the batch itself: each batch is
        // also how it learns that the disk works again.
        self.writable()?;
        let now = now_micros();
        let checked = validate_batch(&request.events, &self.settings.limits, now)
            .and_then(|()| self.not_dropped(&request.events, now));
        if let Err(invalid) = checked {
            metrics::counter!(m::BATCHES_REJECTED, "reason" => "invalid").increment(1);
            metrics::counter!(m::EVENTS_REJECTED).increment(request.events.len() as u64);
            return Err(IngestError::Invalid(invalid));
        }
        let wait_for = WaitFor::try_from(request.wait_for).unwrap_or(WaitFor::Durable);
        let batch_id = std::mem::take(&mut request.batch_id);
        let mut memo_guard = None;
        if !batch_id.is_empty() {
            if let Some(stored) = self.already_stored(&batch_id, &request, now).await? {
                metrics::counter!(m::BATCHES_DEDUPLICATED).increment(1);
                if wait_for == WaitFor::Searchable {
                    self.wait_searchable(stored.next_seq()).await?;
                }
                return Ok(response(stored));
            }
            memo_guard = Some(MemoGuard {
                memo: &self.memo,
                batch_id: &batch_id,
                done: false,
            });
        }

        let received = micros_to_timestamp(now);
        {
            let mut ids = self.ids.lock().expect("id generator lock");
            for event in &mut request.events {
                if event.id.is_empty() {
                    event.id = next_id(&mut ids, now);
                }
                event.received = Some(received);
                // The log gives every event its seq.
                event.seq = 0;
                // Event time is kept to the microsecond, as it is indexed.
                let time = event
                    .time
                    .as_ref()
                    .map_or(now, |t| timestamp_micros(Some(t)));
                event.time = Some(micros_to_timestamp(time));
            }
        }
        let ids: Vec<String> = request.events.iter().map(|e| e.id.clone()).collect();

        self.wait_for_room().await?;
        let permit = self.wal_slot().await?;
        // With the tree on, a batch big enough keeps one seed there in
        // place of a salt an event in the index (`integrity::seeds`). A
        // cluster node's batch goes to the stream as it is and comes back
        // to every node's tree by another path: it keeps a salt an event.
        let seeded = self.settings.leaves && !self.settings.in_cluster;
        let batch = match seeded && request.events.len() >= seeds::MIN_EVENTS {
            true => WalBatch::seeded(batch_id.clone(), request.events),
            false => WalBatch::salted(batch_id.clone(), request.events),
        };
        let leaves = if self.settings.leaves {
            batch.leaf_hashes().expect("a salted batch")
        } else {
            Vec::new()
        };
        let body = batch.encode_to_vec();
        self.check_record_size(&body, batch.events.len())?;
        let (reply, replied) = oneshot::channel();
        let append = AppendRequest {
            body,
            batch,
            leaves,
            reply,
            permit: Some(permit),
            change: None,
        };
        match self.wal.try_send(append) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(self.overloaded("the write-ahead log queue is full"))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(IngestError::Unavailable(
                    "the write-ahead log is closed".into(),
                ))
            }
        }
        let appended = replied
            .await
            .map_err(|_| IngestError::Unavailable("the write-ahead log thread stopped".into()))?
            .map_err(|refused| IngestError::of_refusal(refused, ids.len()))?;
        let stored = Stored {
            ids: appended.stored_ids.unwrap_or(ids),
            first_seq: appended.first_seq,
        };
        let mut answer = response(stored.clone());
        match appended.seqs {
            // Over partitions (each event its partition's seq): a retry is
            // answered by the stream's deduplication, not the window.
            Some(seqs) => answer.seqs = seqs,
            None => {
                if let Some(guard) = memo_guard.as_mut() {
                    guard.complete(stored, now);
                }
            }
        }
        if wait_for == WaitFor::Searchable {
            self.wait_searchable(appended.next_seq).await?;
        }
        metrics::counter!(m::BATCHES_INGESTED).increment(1);
        metrics::counter!(m::EVENTS_INGESTED).increment(answer.ids.len() as u64);
        metrics::histogram!(m::INGEST_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// Returns once every event with a seq below `next_seq` is searchable.
    /// What retention has dropped, and its rules.
    pub fn retention(&self) -> &Arc<Retention> {
        &self.retention
    }

    /// Whether this daemon is a node of a cluster.
    pub fn in_cluster(&self) -> bool {
        self.settings.in_cluster
    }

    /// Whether this node's cluster has several partitions.
    pub fn partitioned(&self) -> bool {
        self.settings.partitioned
    }

    /// This node's role in its cluster (`all` off a cluster).
    pub fn role(&self) -> crate::config::Role {
        self.settings.role
    }

    /// The log's shared positions (the acknowledged seq, what is trimmed).
    pub fn positions(&self) -> &Arc<WalPositions> {
        &self.positions
    }

    /// Waits until every event acknowledged so far is searchable.
    pub async fn wait_all_searchable(&self) -> Result<(), IngestError> {
        let acknowledged = self.positions.next_seq.load(Ordering::Acquire);
        self.wait_searchable(acknowledged).await
    }

    /// Refuses events of a day retention has dropped: they would be kept
    /// past their rule, or fill a partition whose events are gone.
    fn not_dropped(&self, events: &[AuditEvent], now: i64) -> Result<(), InvalidBatch> {
        if !self.retention.any_dropped() {
            return Ok(());
        }
        let mut violations = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let time = event
                .time
                .as_ref()
                .map_or(now, |t| timestamp_micros(Some(t)));
            if let Some(reason) = self.retention.refusal(day_of(time)) {
                violations.push(Violation {
                    index: Some(i),
                    field: "time",
                    reason,
                });
            }
        }
        if violations.is_empty() {
            return Ok(());
        }
        let total = violations.len();
        violations.truncate(MAX_REPORTED_VIOLATIONS);
        Err(InvalidBatch {
            violations,
            total,
            invalid_events: total,
            events: events.len(),
        })
    }

    /// Appends a retention change to the log and waits until the indexer
    /// has applied it: what it did (or why it could not), and where its
    /// record is.
    pub async fn change_retention(
        &self,
        record: RetentionRecord,
    ) -> Result<(Applied, Span), IngestError> {
        self.writable()?;
        let permit = self.wal_slot().await?;
        let (reply, replied) = oneshot::channel();
        let (done, applied) = oneshot::channel();
        let append = AppendRequest {
            body: record.encode_to_vec(),
            batch: WalBatch::default(),
            leaves: Vec::new(),
            reply,
            permit: Some(permit),
            change: Some(RetentionChange {
                record,
                done: Some(done),
            }),
        };
        self.wal.try_send(append).map_err(|e| match e {
            TrySendError::Full(_) => self.overloaded("the write-ahead log queue is full"),
            TrySendError::Disconnected(_) => {
                IngestError::Unavailable("the write-ahead log is closed".into())
            }
        })?;
        let appended = replied
            .await
            .map_err(|_| IngestError::Unavailable("the write-ahead log thread stopped".into()))?
            .map_err(|refused| IngestError::of_refusal(refused, 0))?;
        let applied = applied
            .await
            .map_err(|_| IngestError::Unavailable("the indexer stopped before applying it".into()))?
            .map_err(IngestError::Unavailable)?;
        Ok((applied, appended.span))
    }

    /// Writes go on while degraded, not while starting or failed.
    fn writable(&self) -> Result<(), IngestError> {
        match self.status.health() {
            Health::Serving | Health::Degraded(_) => Ok(()),
            Health::Starting => Err(IngestError::Starting),
            Health::Failed(reason) => Err(IngestError::Unavailable(reason)),
        }
    }

    /// A slot of the bounded WAL queue, waited for at most
    /// `submit_timeout`.
    async fn wal_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, IngestError> {
        tokio::time::timeout(
            self.settings.submit_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| self.overloaded("the write-ahead log queue is full"))?
        .map_err(|_| IngestError::Unavailable("shutting down".into()))
    }

    async fn wait_searchable(&self, next_seq: u64) -> Result<(), IngestError> {
        let mut searchable = self.searchable.clone();
        searchable
            .wait_for(|indexed| *indexed >= next_seq)
            .await
            .map(|_| ())
            .map_err(|_| {
                IngestError::Unavailable(
                    "stored, but the indexer stopped before it was searchable".into(),
                )
            })
    }

    /// Where an earlier batch with this id went, from memory or the index.
    async fn already_stored(
        &self,
        batch_id: &str,
        request: &IngestRequest,
        now: i64,
    ) -> Result<Option<Stored>, IngestError> {
        match self.memo.begin(batch_id, now) {
            Begin::Done(stored) => return Ok(Some(stored)),
            Begin::InFlight => {
                metrics::counter!(m::BATCHES_REJECTED, "reason" => "in_flight").increment(1);
                return Err(IngestError::InFlight(batch_id.to_owned()));
            }
            Begin::New => {}
        }
        if !self.memo.index_may_hold(now) {
            return Ok(None);
        }
        // A retry carries the same events, so the days they fall on are the
        // partitions that would hold the first attempt.
        let mut days: Vec<i64> = request
            .events
            .iter()
            .map(|e| day_of(e.time.as_ref().map_or(now, |t| timestamp_micros(Some(t)))))
            .collect();
        days.sort_unstable();
        days.dedup();
        let searcher = self.searcher.clone();
        let id = batch_id.to_owned();
        let found = tokio::task::spawn_blocking(move || searcher.find_batch(&id, &days))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))
            .and_then(|r| r.map_err(|e| IngestError::Internal(e.to_string())));
        match found {
            Ok(Some((stored, received))) if now - received <= self.memo.window_micros() => {
                self.memo.complete(batch_id, stored.clone(), received);
                Ok(Some(stored))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                self.memo.abort(batch_id);
                Err(e)
            }
        }
    }

    /// Waits, at most `submit_timeout`, while the WAL is further ahead of
    /// the index than the lag budget.
    async fn wait_for_room(&self) -> Result<(), IngestError> {
        let budget = self.settings.lag_budget;
        let positions = &self.positions;
        let over = || {
            let end = positions.end.load(Ordering::Acquire);
            let indexed = positions.checkpoint.load(Ordering::Acquire);
            end.saturating_sub(indexed) > budget
        };
        if !over() {
            return Ok(());
        }
        let mut indexed = self.searchable.clone();
        let waited = tokio::time::timeout(self.settings.submit_timeout, async {
            while over() {
                if indexed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        match waited {
            Ok(()) if !over() => Ok(()),
            _ => Err(self
                .overloaded("the index is behind the write-ahead log by more than its lag budget")),
        }
    }

    /// Refuses a batch larger than the log takes (a NATS server's
    /// `max_payload`), naming both sizes, before it reaches the log.
    fn check_record_size(&self, body: &[u8], events: usize) -> Result<(), IngestError> {
        let max = self.positions.max_record_bytes.load(Ordering::Acquire);
        let size = (body.len() + crate::record::HEADER_LEN) as u64;
        if size <= max {
            return Ok(());
        }
        Err(IngestError::Invalid(InvalidBatch {
            violations: vec![Violation {
                index: None,
                field: "events",
                reason: format!(
                    "the batch takes {size} bytes in the log, which takes at most {max} \
                     (the NATS servers' max_payload): send fewer events per batch"
                ),
            }],
            total: 1,
            invalid_events: 0,
            events,
        }))
    }

    fn overloaded(&self, reason: &'static str) -> IngestError {
        metrics::counter!(m::BATCHES_REJECTED, "reason" => "overloaded").increment(1);
        IngestError::Overloaded {
            reason,
            retry_after: self.settings.submit_timeout / 2,
        }
    }
}

fn response(stored: Stored) -> IngestResponse {
    IngestResponse {
        accepted: stored.ids.len() as u32,
        seqs: stored.seqs(),
        ids: stored.ids,
    }
}

/// A time-sortable id: a ULID, monotonic within the same millisecond.
fn next_id(generator: &mut ulid::Generator, now_micros: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_micros(now_micros.max(0) as u64);
    match generator.generate_from_datetime(at) {
        Ok(id) => id.to_string(),
        // 2^80 ids in one millisecond: fall back to a fresh random one.
        Err(_) => ulid::Ulid::from_datetime(at).to_string(),
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Forgets an in-flight `batch_id` unless the batch was stored, so a
/// failed attempt can be retried.
struct MemoGuard<'a> {
    memo: &'a Idempotency,
    batch_id: &'a str,
    done: bool,
}

impl MemoGuard<'_> {
    fn complete(&mut self, stored: Stored, received: i64) {
        self.memo.complete(self.batch_id, stored, received);
        self.done = true;
    }
}

impl Drop for MemoGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.memo.abort(self.batch_id);
        }
    }
}

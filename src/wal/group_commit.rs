//! The WAL thread: owns the log, appends what the ingest handlers send it,
//! syncs once per group, acknowledges, and hands each durable batch to the
//! indexer queue in log order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Log, LogPosition, SyncPolicy, WalError};
use crate::integrity::store::TreeStore;
use crate::messages::{AppendRequest, Appended, IndexBatch, Refused, ToIndexer};
use crate::metrics as m;
use crate::record::{self, RecordKind};
use crate::status::{PipelineStatus, WorkerGuard};

/// Most records one group writes before it syncs. Bounds the latency of the
/// first batch in a group when producers never pause.
pub const MAX_GROUP_RECORDS: usize = 256;

/// How often an idle WAL thread wakes to delete indexed segments.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// An idle log whose records are all indexed swaps its active segment for
/// an empty one once that holds this much (`Log::retire_indexed`):
/// below it the disk saved is not worth a new file.
const IDLE_RETIRE_BYTES: u64 = 1 << 20;

/// Shared positions the rest of the pipeline reads without a lock (the
/// log positions as their numbers; `end` and `checkpoint` read them back).
#[derive(Debug)]
pub struct WalPositions {
    /// End of the log: every record below it is appended (and, but for
    /// `SyncPolicy::Never`, synced).
    pub end: AtomicU64,
    /// The indexed checkpoint: segments wholly below it may go.
    pub checkpoint: AtomicU64,
    /// The seq after the last acknowledged event.
    pub next_seq: AtomicU64,
    /// The log position the durable Merkle tree reaches (`tree.json`):
    /// the log is not trimmed past it, so replay can bring the tree up to
    /// the log. `u64::MAX` when there is no tree.
    pub tree_durable: AtomicU64,
    /// Every record below this is gone from the log (trimmed).
    pub trimmed: AtomicU64,
    /// The largest record the log takes (`Log::max_record_bytes`; set once
    /// it is open, `u64::MAX` when it has no limit).
    pub max_record_bytes: AtomicU64,
}

impl Default for WalPositions {
    fn default() -> Self {
        WalPositions {
            end: AtomicU64::new(0),
            checkpoint: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            tree_durable: AtomicU64::new(u64::MAX),
            trimmed: AtomicU64::new(0),
            max_record_bytes: AtomicU64::new(u64::MAX),
        }
    }
}

impl WalPositions {
    pub fn end(&self) -> LogPosition {
        LogPosition::new(self.end.load(Ordering::Acquire))
    }

    pub fn checkpoint(&self) -> LogPosition {
        LogPosition::new(self.checkpoint.load(Ordering::Acquire))
    }

    pub fn set_checkpoint(&self, position: LogPosition) {
        self.checkpoint.store(position.get(), Ordering::Release);
    }

    /// How far the log may be trimmed: what the index and the tree both
    /// hold.
    pub fn trimmable(&self) -> LogPosition {
        let tree = LogPosition::new(self.tree_durable.load(Ordering::Acquire));
        self.checkpoint().min(tree)
    }

    pub(crate) fn set_end(&self, position: LogPosition) {
        self.end.store(position.get(), Ordering::Release);
    }
}

type Pending = (Appended, AppendRequest);

/// While degraded and idle, how often the WAL thread checks whether the
/// disk works again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A failed write, sync or rotation the thread is working its way out of.
struct Fault {
    /// Whether the log is cut back to the acknowledged end (`Log::repair`);
    /// until then nothing may be appended.
    repaired: bool,
    last_probe: Instant,
}

/// Starts the thread. It stops, after finishing what it has, when every
/// sender of `requests` is dropped. `next_seq` is the seq the first event
/// it appends takes: the thread is the one appender, so each batch's events
/// get the next seqs in log order, and a batch that fails gives its seqs
/// back to the next one (no gap among acknowledged events).
///
/// A failed write, sync or rotation fails the batches it touched (their
/// clients get UNAVAILABLE; nothing of them is acknowledged), marks the
/// pipeline degraded, and cuts the log back to what was acknowledged. The
/// thread then goes on: the next batch that syncs, or an idle probe, clears
/// the fault, so ingest resumes by itself once the disk does.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    mut wal: Box<dyn Log>,
    policy: SyncPolicy,
    tree: Option<Arc<TreeStore>>,
    next_seq: u64,
    requests: Receiver<AppendRequest>,
    indexer: Sender<ToIndexer>,
    positions: Arc<WalPositions>,
    status: Arc<PipelineStatus>,
) -> std::io::Result<JoinHandle<Result<Box<dyn Log>, WalError>>> {
    positions.set_end(wal.end());
    positions.next_seq.store(next_seq, Ordering::Release);
    metrics::gauge!(m::WAL_SEGMENTS).set(wal.pieces() as f64);
    std::thread::Builder::new()
        .name("auditd-wal".into())
        .spawn(move || {
            let guard = WorkerGuard::new(status.clone(), "wal");
            let result = run(
                &mut *wal,
                policy,
                tree.as_deref(),
                next_seq,
                &requests,
                &indexer,
                &positions,
                &status,
            );
            if result.is_ok() {
                guard.defuse();
            }
            // The log goes back to its owner, which trims it once the
            // indexer's last commit is done.
            result.map(|()| wal)
        })
}

#[allow(clippy::too_many_arguments)]
fn run(
    wal: &mut dyn Log,
    policy: SyncPolicy,
    tree: Option<&TreeStore>,
    mut next_seq: u64,
    requests: &Receiver<AppendRequest>,
    indexer: &Sender<ToIndexer>,
    positions: &WalPositions,
    status: &PipelineStatus,
) -> Result<(), WalError> {
    let mut pending: Vec<Pending> = Vec::new();
    let mut last_sync = Instant::now();
    let mut trimmed = LogPosition::START;
    let mut fault: Option<Fault> = None;
    // The end of what was acknowledged: a repair cuts the log back to it,
    // and the seqs of what it cuts are given out again.
    let acknowledged = |positions: &WalPositions| positions.end();
    let acknowledged_seq = |positions: &WalPositions| positions.next_seq.load(Ordering::Acquire);
    loop {
        let timeout = match policy {
            SyncPolicy::Interval(every) if !pending.is_empty() => {
                every.saturating_sub(last_sync.elapsed())
            }
            _ => IDLE_WAKE,
        };
        let mut closed = false;
        let mut idle = false;
        match requests.recv_timeout(timeout) {
            Ok(first) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP_RECORDS {
                    match requests.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                if let Some(f) = &mut fault {
                    if !f.repaired {
                        match wal.repair(acknowledged(positions)) {
                            Ok(()) => f.repaired = true,
                            Err(error) => {
                                count_error("repair");
                                refuse(group, &error);
                                continue;
                            }
                        }
                    }
                }
                let mut group = group.into_iter();
                let mut failed = None;
                for mut request in group.by_ref() {
                    drop(request.permit.take());
                    let first_seq = next_seq;
                    let kind = match &request.change {
                        Some(change) => {
                            if change.starts_piece() {
                                if let Err(error) = wal.start_piece() {
                                    let _ = request.reply.send(Err(refusal(&error)));
                                    failed = Some(error);
                                    break;
                                }
                            }
                            RecordKind::Retention
                        }
                        None => RecordKind::Batch,
                    };
                    let header = record::header(kind, first_seq);
                    match wal.append(&[&header, &request.body]) {
                        Ok(span) => {
                            next_seq += request.batch.events.len() as u64;
                            let appended = Appended {
                                span,
                                first_seq,
                                next_seq,
                                stored_ids: None,
                                seqs: None,
                            };
                            pending.push((appended, request));
                        }
                        Err(error) => {
                            // Only a rotation fails here: it syncs the old
                            // segment and creates the next.
                            let _ = request.reply.send(Err(refusal(&error)));
                            failed = Some(error);
                            break;
                        }
                    }
                }
                if let Some(error) = failed {
                    count_error("rotate");
                    refuse(group, &error);
                    fail_all(&mut pending, &error);
                    next_seq = acknowledged_seq(positions);
                    fault = Some(enter_fault(wal, acknowledged(positions), &error, status));
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => idle = true,
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }

        if !pending.is_empty() {
            let due = match policy {
                SyncPolicy::Always => true,
                SyncPolicy::Never => false,
                SyncPolicy::Interval(every) => closed || last_sync.elapsed() >= every,
            };
            let started = Instant::now();
            let written = if due { wal.sync() } else { wal.flush() };
            if let Err(error) = written {
                count_error(if due { "sync" } else { "write" });
                fail_all(&mut pending, &error);
                next_seq = acknowledged_seq(positions);
                fault = Some(enter_fault(wal, acknowledged(positions), &error, status));
                if closed {
                    return Ok(());
                }
                continue;
            }
            if due {
                last_sync = Instant::now();
                metrics::histogram!(m::WAL_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
            }
            let ready = due || policy == SyncPolicy::Never;
            if ready {
                if fault.take().is_some() {
                    status.set_fault("wal", None);
                }
                positions.set_end(wal.end());
                positions.next_seq.store(next_seq, Ordering::Release);
                metrics::gauge!(m::WAL_END_POSITION).set(wal.end().get() as f64);
                for (appended, request) in pending.drain(..) {
                    let (span, first_seq) = (appended.span, appended.first_seq);
                    // The record's own bytes: the log's positions are
                    // bytes on the local log but records on JetStream.
                    let bytes = record::HEADER_LEN + request.body.len();
                    metrics::counter!(m::WAL_BYTES).increment(bytes as u64);
                    // In the tree before it is acknowledged.
                    if let Some(tree) = tree {
                        if let Some(seed) = request.batch.seed() {
                            tree.seeds()
                                .add(first_seq, request.batch.events.len(), seed);
                        }
                        tree.append(&request.leaves, span.end);
                    }
                    let _ = request.reply.send(Ok(appended));
                    // Blocks while the indexer queue is full: that
                    // stalls this thread, fills the request queue,
                    // and Ingest answers RESOURCE_EXHAUSTED.
                    let next = match request.change {
                        Some(change) => ToIndexer::Retention(span, change),
                        None => ToIndexer::Batch(IndexBatch {
                            span,
                            first_seq,
                            batch: request.batch,
                        }),
                    };
                    if indexer.send(next).is_err() {
                        return Err(WalError::IndexerGone);
                    }
                }
            }
        } else if let Some(f) = &mut fault {
            // Idle while degraded: find out whether the disk works again.
            if f.last_probe.elapsed() >= PROBE_EVERY {
                f.last_probe = Instant::now();
                let healed = if f.repaired {
                    wal.probe()
                } else {
                    wal.repair(acknowledged(positions))
                };
                match healed {
                    Ok(()) if f.repaired => {
                        fault = None;
                        status.set_fault("wal", None);
                    }
                    Ok(()) => f.repaired = true,
                    Err(error) => {
                        count_error("probe");
                        status.set_fault("wal", Some(error.to_string()));
                    }
                }
            }
        }

        let checkpoint = positions.trimmable();
        if checkpoint > trimmed {
            // Not fatal: the segments stay, and the next pass tries again.
            match wal.trim(checkpoint) {
                Ok(_) => {
                    trimmed = checkpoint;
                    positions.trimmed.store(checkpoint.get(), Ordering::Release);
                }
                Err(error) => {
                    count_error("remove");
                    tracing::warn!(%error, "could not remove indexed WAL segments; will retry");
                }
            }
            metrics::gauge!(m::WAL_SEGMENTS).set(wal.pieces() as f64);
        }
        if idle && pending.is_empty() && fault.is_none() {
            // Not fatal either: the segment stays until the next try.
            match wal.retire_indexed(trimmed, IDLE_RETIRE_BYTES) {
                Ok(true) => metrics::gauge!(m::WAL_SEGMENTS).set(wal.pieces() as f64),
                Ok(false) => {}
                Err(error) => {
                    count_error("rotate");
                    tracing::warn!(%error, "could not retire the indexed WAL segment; will retry");
                }
            }
        }
        if closed && pending.is_empty() {
            return Ok(());
        }
    }
}

/// Marks the log degraded and tries a first repair at once.
fn enter_fault(
    wal: &mut dyn Log,
    acknowledged: LogPosition,
    error: &WalError,
    status: &PipelineStatus,
) -> Fault {
    status.set_fault("wal", Some(error.to_string()));
    let repaired = match wal.repair(acknowledged) {
        Ok(()) => true,
        Err(repair) => {
            count_error("repair");
            tracing::warn!(error = %repair, "could not cut the WAL back yet; will retry");
            false
        }
    };
    Fault {
        repaired,
        last_probe: Instant::now(),
    }
}

fn count_error(op: &'static str) {
    metrics::counter!(m::WAL_ERRORS, "op" => op).increment(1);
}

/// What a client whose batch could not be made durable is told.
fn refusal(error: &WalError) -> Refused {
    Refused::NotStored(format!(
        "the write-ahead log could not make the batch durable: {error}"
    ))
}

fn refuse(requests: impl IntoIterator<Item = AppendRequest>, error: &WalError) {
    for mut request in requests {
        drop(request.permit.take());
        let _ = request.reply.send(Err(refusal(error)));
    }
}

fn fail_all(pending: &mut Vec<Pending>, error: &WalError) {
    tracing::error!(%error, batches = pending.len(), "wal write failed; failing the batches it held");
    refuse(pending.drain(..).map(|(_, request)| request), error);
}

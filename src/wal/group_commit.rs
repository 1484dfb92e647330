//! The WAL thread: owns the log, appends what the ingest handlers send it,
//! syncs once per group, acknowledges, and hands each durable batch to the
//! indexer queue in log order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Span, SyncPolicy, Wal, WalError};
use crate::messages::{AppendRequest, IndexBatch, ToIndexer};
use crate::metrics as m;
use crate::status::{PipelineStatus, WorkerGuard};

/// Most records one group writes before it syncs. Bounds the latency of the
/// first batch in a group when producers never pause.
pub const MAX_GROUP_RECORDS: usize = 256;

/// How often an idle WAL thread wakes to delete indexed segments.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// Shared positions the rest of the pipeline reads without a lock.
#[derive(Debug, Default)]
pub struct WalPositions {
    /// End of the log: every record below it is appended (and, but for
    /// `SyncPolicy::Never`, synced).
    pub end: AtomicU64,
    /// The indexed checkpoint: segments wholly below it may go.
    pub checkpoint: AtomicU64,
}

type Pending = (Span, AppendRequest);

/// Starts the thread. It stops, after finishing what it has, when every
/// sender of `requests` is dropped; it stops early, failing what it holds,
/// when a write or sync fails, since the page cache can no longer be
/// trusted after a failed fsync.
pub fn spawn(
    mut wal: Wal,
    policy: SyncPolicy,
    requests: Receiver<AppendRequest>,
    indexer: Sender<ToIndexer>,
    positions: Arc<WalPositions>,
    status: Arc<PipelineStatus>,
) -> std::io::Result<JoinHandle<Result<(), WalError>>> {
    positions.end.store(wal.end(), Ordering::Release);
    metrics::gauge!(m::WAL_SEGMENTS).set(wal.segment_count() as f64);
    std::thread::Builder::new()
        .name("auditd-wal".into())
        .spawn(move || {
            let guard = WorkerGuard::new(status, "wal");
            let result = run(&mut wal, policy, &requests, &indexer, &positions);
            if result.is_ok() {
                guard.defuse();
            }
            result
        })
}

fn run(
    wal: &mut Wal,
    policy: SyncPolicy,
    requests: &Receiver<AppendRequest>,
    indexer: &Sender<ToIndexer>,
    positions: &WalPositions,
) -> Result<(), WalError> {
    let mut pending: Vec<Pending> = Vec::new();
    let mut last_sync = Instant::now();
    let mut trimmed = 0u64;
    loop {
        let timeout = match policy {
            SyncPolicy::Interval(every) if !pending.is_empty() => {
                every.saturating_sub(last_sync.elapsed())
            }
            _ => IDLE_WAKE,
        };
        let mut closed = false;
        match requests.recv_timeout(timeout) {
            Ok(first) => {
                let mut group = vec![first];
                while group.len() < MAX_GROUP_RECORDS {
                    match requests.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                for mut request in group {
                    drop(request.permit.take());
                    let span = wal.append(&request.payload)?;
                    pending.push((span, request));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
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
                fail_all(&mut pending, &error);
                return Err(error);
            }
            if due {
                last_sync = Instant::now();
                metrics::histogram!(m::WAL_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
            }
            let ready = due || policy == SyncPolicy::Never;
            if ready {
                positions.end.store(wal.end(), Ordering::Release);
                metrics::gauge!(m::WAL_END_POSITION).set(wal.end() as f64);
                for (span, request) in pending.drain(..) {
                    metrics::counter!(m::WAL_BYTES).increment(span.end - span.start);
                    let _ = request.reply.send(Ok(span));
                    // Blocks while the indexer queue is full: that
                    // stalls this thread, fills the request queue,
                    // and Ingest answers RESOURCE_EXHAUSTED.
                    let batch = IndexBatch {
                        span,
                        batch: request.batch,
                    };
                    if indexer.send(ToIndexer::Batch(batch)).is_err() {
                        return Err(WalError::IndexerGone);
                    }
                }
            }
        }

        let checkpoint = positions.checkpoint.load(Ordering::Acquire);
        if checkpoint > trimmed {
            wal.remove_below(checkpoint)?;
            trimmed = checkpoint;
            metrics::gauge!(m::WAL_SEGMENTS).set(wal.segment_count() as f64);
        }
        if closed && pending.is_empty() {
            return Ok(());
        }
    }
}

fn fail_all(pending: &mut Vec<Pending>, error: &WalError) {
    tracing::error!(%error, batches = pending.len(), "wal write failed; failing the batches it held");
    for (_, request) in pending.drain(..) {
        let _ = request.reply.send(Err(error.to_string()));
    }
}

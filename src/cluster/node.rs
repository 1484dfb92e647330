//! The WAL thread of a cluster node (`[cluster] enabled`): in place of
//! `wal::group_commit`, it publishes this node's writes into the stream's
//! partition and indexes the partition as every node writes it
//! (docs/cluster.md, "One partition, several nodes").
//!
//! ```text
//! ingest ──AppendRequest──▶ publish (compare-and-set) ──▶ stream
//!                                                           │
//!        ◀────Appended───── follow (read back, in order) ◀──┘──▶ tree, indexer
//! ```
//!
//! Every record, this node's and the others', reaches the tree and the
//! indexer the same way: read back from the stream in its order. A
//! request is answered once its own record has been read back, so, as on
//! one node, an acknowledged event is in the tree before its client hears
//! of it; a repeat of a batch the stream already held is answered with
//! the first copy's ids and seqs. Nothing here deletes from the stream:
//! other nodes index it too, and its own limits (`max_bytes`, or an age
//! set on the stream) bound it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::mpsc;

use super::follow::{Follower, Resume};
use super::publish::{Published, Publisher};
use super::{ClusterError, Layout};
use crate::idempotency::{Idempotency, Stored};
use crate::integrity::store::TreeStore;
use crate::messages::{AppendRequest, Appended, IndexBatch, RetentionChange, ToIndexer};
use crate::record::{LogRecord, RecordKind};
use crate::schema::timestamp_micros;
use crate::status::{PipelineStatus, WorkerGuard};
use crate::wal::group_commit::WalPositions;
use crate::wal::{Log, Span, WalError};

/// How long the follower waits for a record before it looks at requests
/// again (they also wake it).
const FOLLOW_WAIT: Duration = Duration::from_millis(200);

/// How long a follower may go without a record while records this node
/// published (so surely in the stream) wait to be read back, before the
/// node takes its consumer for stuck and follows again. The client's own
/// heartbeat check notices a lost consumer only after tens of seconds.
const STALL: Duration = Duration::from_secs(2);

/// How long a node waits before it follows the partition again after
/// losing it (a server lost, a stream leader elected).
const REFOLLOW_PAUSE: Duration = Duration::from_millis(250);

/// How long a stopping node waits to read back what it published; past
/// it those requests are answered with an error (their records are in
/// the stream, and a retry is answered from them).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A request whose record is published, waiting to be read back.
struct Waiting {
    request: AppendRequest,
    published: Published,
    /// When it was published.
    since: std::time::Instant,
}

/// Starts the thread. `resume` is where start-up replay ended; `log`
/// (the JetStream log replay read, never written here) is handed back
/// when the thread ends, as the local WAL thread's is.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    layout: Layout,
    partition: u32,
    resume: Resume,
    log: Box<dyn Log>,
    tree: Option<Arc<TreeStore>>,
    memo: Arc<Idempotency>,
    requests: Receiver<AppendRequest>,
    indexer: Sender<ToIndexer>,
    positions: Arc<WalPositions>,
    status: Arc<PipelineStatus>,
) -> std::io::Result<JoinHandle<Result<Box<dyn Log>, WalError>>> {
    positions.set_end(resume.after);
    positions.next_seq.store(resume.next_seq, Ordering::Release);
    // The requests come over a crossbeam channel (the ingest side is the
    // local WAL thread's); a small thread hands them to the async loop.
    let (forward, forwarded) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("auditd-cluster-in".into())
        .spawn(move || {
            for request in requests.iter() {
                if forward.blocking_send(request).is_err() {
                    break;
                }
            }
        })?;
    std::thread::Builder::new()
        .name("auditd-cluster".into())
        .spawn(move || {
            let guard = WorkerGuard::new(status.clone(), "wal");
            let runtime = thread_runtime(&layout)?;
            let node = Node {
                partition,
                status: status.clone(),
                tree,
                memo,
                indexer,
                positions,
                waiting: BTreeMap::new(),
            };
            let result = runtime.block_on(node.run(layout, resume, forwarded));
            if result.is_ok() {
                guard.defuse();
            }
            result.map(|()| log)
        })
}

struct Node {
    /// The partition this thread publishes to and follows.
    partition: u32,
    status: Arc<PipelineStatus>,
    tree: Option<Arc<TreeStore>>,
    memo: Arc<Idempotency>,
    indexer: Sender<ToIndexer>,
    positions: Arc<WalPositions>,
    /// Published records not read back yet, by stream sequence.
    waiting: BTreeMap<u64, Vec<Waiting>>,
}

impl Node {
    async fn run(
        mut self,
        layout: Layout,
        mut resume: Resume,
        mut requests: mpsc::Receiver<AppendRequest>,
    ) -> Result<(), WalError> {
        let publisher = Publisher::open(layout.clone()).await.map_err(remote)?;
        let mut follower = Some(
            Follower::open(publisher.stream(), &layout, self.partition, resume)
                .await
                .map_err(remote)?,
        );
        let mut open = true;
        let mut closed_at = None;
        let mut last_read = std::time::Instant::now();
        loop {
            if !open {
                let since = *closed_at.get_or_insert_with(std::time::Instant::now);
                if self.waiting.is_empty() {
                    return Ok(());
                }
                if since.elapsed() > STOP_WAIT {
                    for waiting in std::mem::take(&mut self.waiting).into_values().flatten() {
                        let _ = waiting.request.reply.send(Err(
                            "stopping before the stream gave the record back; retry the batch"
                                .into(),
                        ));
                    }
                    return Ok(());
                }
            }
            if let Some(reading) = follower.as_mut() {
                let read_back = reading.resume().after;
                tokio::select! {
                    request = requests.recv(), if open => match request {
                        Some(request) => self.publish(&publisher, read_back, request).await,
                        // Stopping: what is published is still read back.
                        None => open = false,
                    },
                    record = reading.next(FOLLOW_WAIT) => match record {
                        Ok(Some(record)) => {
                            last_read = std::time::Instant::now();
                            self.take(record)?;
                        }
                        // Counted from the later of the last record read and
                        // the oldest record waiting, so that a node idle for
                        // long does not take a slow first delivery for a stall.
                        Ok(None) if self.stalled(last_read) => {
                            tracing::warn!(
                                waiting = self.waiting.len(),
                                "the partition's consumer gives nothing back; following it again"
                            );
                            self.status.set_fault("wal", Some("following the partition again".into()));
                            resume = reading.resume();
                            follower = None;
                        }
                        Ok(None) => {}
                        Err(error @ ClusterError::Corrupt { .. }) => return Err(remote(error)),
                        // The consumer or its server went away: follow again
                        // from where it stopped, degraded meanwhile.
                        Err(error) => {
                            tracing::warn!(%error, "lost the partition; following it again");
                            self.status.set_fault("wal", Some(error.to_string()));
                            resume = reading.resume();
                            follower = None;
                        }
                    },
                }
                continue;
            }
            tokio::select! {
                request = requests.recv(), if open => match request {
                    Some(request) => self.publish(&publisher, resume.after, request).await,
                    None => open = false,
                },
                () = tokio::time::sleep(REFOLLOW_PAUSE) => {
                    match Follower::open(publisher.stream(), &layout, self.partition, resume).await {
                        Ok(reading) => {
                            follower = Some(reading);
                            last_read = std::time::Instant::now();
                            self.status.set_fault("wal", None);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot follow the partition yet; will retry");
                        }
                    }
                }
            }
        }
    }

    /// Whether records this node published have waited more than
    /// [`STALL`] with nothing read since.
    fn stalled(&self, last_read: std::time::Instant) -> bool {
        let oldest = self.waiting.values().flatten().map(|w| w.since).min();
        oldest.is_some_and(|oldest| oldest.max(last_read).elapsed() > STALL)
    }

    /// Publishes a request's record; it is answered when read back.
    async fn publish(
        &mut self,
        publisher: &Publisher,
        read_back: crate::wal::LogPosition,
        mut request: AppendRequest,
    ) {
        drop(request.permit.take());
        let (kind, count, message_id) = match &request.change {
            Some(_) => (RecordKind::Retention, 0, None),
            None => {
                let id = &request.batch.batch_id;
                let message_id = (!id.is_empty()).then(|| format!("{id}/{}", self.partition));
                (
                    RecordKind::Batch,
                    request.batch.events.len() as u64,
                    message_id,
                )
            }
        };
        let published = publisher
            .publish_record(
                self.partition,
                kind,
                &request.body,
                count,
                message_id.as_deref(),
            )
            .await;
        let published = match published {
            Ok(published) => published,
            Err(error) => {
                let _ =
                    request.reply.send(Err(
                        format!("the stream did not take the batch: {error}").into()
                    ));
                return;
            }
        };
        if published.stream_seq <= read_back.get() {
            // A repeat of a record already read back: in the tree already.
            let end = crate::wal::LogPosition::new(published.stream_seq);
            let span = Span { start: end, end };
            let count = published
                .stored_ids
                .as_ref()
                .map_or(0, |ids| ids.len() as u64);
            let _ = request.reply.send(Ok(Appended {
                span,
                first_seq: published.first_seq,
                next_seq: published.first_seq + count,
                stored_ids: published.stored_ids,
                seqs: None,
            }));
            return;
        }
        self.waiting
            .entry(published.stream_seq)
            .or_default()
            .push(Waiting {
                request,
                published,
                since: std::time::Instant::now(),
            });
    }

    /// A record read back: into the tree, its waiting requests answered,
    /// then on to the indexer (blocking while its queue is full: that
    /// stalls this loop, the request queue fills, and Ingest answers
    /// RESOURCE_EXHAUSTED).
    fn take(&mut self, record: LogRecord) -> Result<(), WalError> {
        let span = record.span();
        let waiting = self.waiting.remove(&span.end.get()).unwrap_or_default();
        let next = match record {
            LogRecord::Batch(batch) => {
                if let Some(tree) = &self.tree {
                    // This node's own batch: its leaves were made on the
                    // request's task, from the same events and salts.
                    let own = waiting
                        .iter()
                        .find(|w| w.published.stored_ids.is_none())
                        .map(|w| &w.request.leaves)
                        .filter(|l| l.len() == batch.batch.events.len());
                    match own {
                        Some(leaves) if tree.size() == batch.first_seq => {
                            tree.append(leaves, span.end)
                        }
                        _ => crate::server::grow_tree(tree, &batch, false).map_err(|reason| {
                            WalError::BadRecord {
                                path: PathBuf::from("nats"),
                                offset: span.end.get(),
                                reason,
                            }
                        })?,
                    }
                }
                self.remember(&batch, &waiting);
                self.advance(span, batch.next_seq());
                for waiting in waiting {
                    let count = match &waiting.published.stored_ids {
                        Some(ids) => ids.len() as u64,
                        None => waiting.request.batch.events.len() as u64,
                    };
                    let first_seq = waiting.published.first_seq;
                    let _ = waiting.request.reply.send(Ok(Appended {
                        span,
                        first_seq,
                        next_seq: first_seq + count,
                        stored_ids: waiting.published.stored_ids,
                        seqs: None,
                    }));
                }
                ToIndexer::Batch(batch)
            }
            LogRecord::Retention(span, record) => {
                let next_seq = self.positions.next_seq.load(Ordering::Acquire);
                self.advance(span, next_seq);
                let mut done = None;
                for mut waiting in waiting {
                    done = done.or(waiting.request.change.take().and_then(|c| c.done));
                    let _ = waiting.request.reply.send(Ok(Appended {
                        span,
                        first_seq: next_seq,
                        next_seq,
                        stored_ids: None,
                        seqs: None,
                    }));
                }
                ToIndexer::Retention(span, RetentionChange { record, done })
            }
            LogRecord::Skip(span) => {
                let next_seq = self.positions.next_seq.load(Ordering::Acquire);
                self.advance(span, next_seq);
                return Ok(());
            }
        };
        self.indexer.send(next).map_err(|_| WalError::IndexerGone)
    }

    /// Another node's batch id goes into the idempotency window, so that
    /// a retry here is answered from it (this node's own are put there by
    /// the request that sent them).
    fn remember(&self, batch: &IndexBatch, waiting: &[Waiting]) {
        let id = &batch.batch.batch_id;
        if id.is_empty() || waiting.iter().any(|w| w.published.stored_ids.is_none()) {
            return;
        }
        let received = batch
            .batch
            .events
            .first()
            .map_or(0, |e| timestamp_micros(e.received.as_ref()));
        let stored = Stored {
            ids: batch.batch.events.iter().map(|e| e.id.clone()).collect(),
            first_seq: batch.first_seq,
        };
        self.memo.complete(id, stored, received);
    }

    fn advance(&self, span: Span, next_seq: u64) {
        self.positions.set_end(span.end);
        self.positions
            .next_seq
            .fetch_max(next_seq, Ordering::AcqRel);
    }
}

/// A cluster error as the log's.
/// The runtime of a cluster WAL thread (this one, or `cluster::front`).
pub(crate) fn thread_runtime(layout: &Layout) -> Result<tokio::runtime::Runtime, WalError> {
    let name = PathBuf::from(format!("nats:{}", layout.jetstream.stream));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WalError::io(&name, e))
}

pub(crate) fn remote(error: ClusterError) -> WalError {
    match error {
        ClusterError::Remote { stream, reason } | ClusterError::Corrupt { stream, reason } => {
            WalError::Remote { stream, reason }
        }
        ClusterError::Config { field, reason } => WalError::Remote {
            stream: field.into(),
            reason,
        },
        reused @ ClusterError::BatchIdReused { .. } => WalError::Remote {
            stream: "batch_id".into(),
            reason: reused.to_string(),
        },
    }
}

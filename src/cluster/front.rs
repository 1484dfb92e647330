//! The WAL thread of a node of a cluster of several partitions
//! (`cluster.partitions > 1`; docs/cluster.md): every write the node
//! takes (its clients' batches, the trail events of its audited reads) is
//! published into the partitions of its events' subjects, one message a
//! partition (`Publisher::publish`), and answered once JetStream has
//! acknowledged every message: with `replicas = 3`, once a quorum of
//! servers holds it. Nothing is indexed here: each partition's owner
//! indexes it (`cluster::owner`), and reads fan out to them.
//!
//! A retry of a batch, on this node or another, is stored once (the
//! stream's deduplication, `Nats-Msg-Id = <batch id>/<p>`) and answered
//! with the first copy's ids and seqs. Retention changes (holds, locks)
//! are refused here: they would have to reach every partition, which is
//! not built yet.
//!
//! Batches are published one after another, each batch's partitions at
//! once; the queue in front of this thread is the ingest service's
//! bounded WAL queue, so a slow stream fills it and Ingest answers
//! RESOURCE_EXHAUSTED.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use super::publish::Publisher;
use super::ClusterError;
use super::Layout;
use crate::messages::{AppendRequest, Appended, Refused};
use crate::status::{PipelineStatus, WorkerGuard};
use crate::wal::{Log, LogPosition, Span, WalError};

/// Starts the thread; `log` (an empty one: this node replays nothing) is
/// handed back when it ends, as the other WAL threads hand theirs.
pub fn spawn(
    layout: Layout,
    log: Box<dyn Log>,
    requests: Receiver<AppendRequest>,
    status: Arc<PipelineStatus>,
) -> std::io::Result<JoinHandle<Result<Box<dyn Log>, WalError>>> {
    std::thread::Builder::new()
        .name("auditd-front".into())
        .spawn(move || {
            let guard = WorkerGuard::new(status.clone(), "wal");
            let runtime = super::node::thread_runtime(&layout)?;
            let publisher = runtime
                .block_on(Publisher::open(layout))
                .map_err(super::node::remote)?;
            for request in requests.iter() {
                runtime.block_on(publish(&publisher, &status, request));
            }
            guard.defuse();
            Ok(log)
        })
}

/// Publishes one request and answers it.
async fn publish(publisher: &Publisher, status: &PipelineStatus, mut request: AppendRequest) {
    drop(request.permit.take());
    if request.change.is_some() {
        let _ = request.reply.send(Err(
            "retention changes are not taken yet on a cluster of several partitions \
             (docs/cluster.md)"
                .into(),
        ));
        return;
    }
    match publisher.publish(request.batch).await {
        Ok(placed) => {
            status.set_fault("wal", None);
            let nowhere = Span {
                start: LogPosition::START,
                end: LogPosition::START,
            };
            let _ = request.reply.send(Ok(Appended {
                span: nowhere,
                first_seq: placed.first().map_or(0, |p| p.seq),
                next_seq: 0,
                stored_ids: Some(placed.iter().map(|p| p.id.clone()).collect()),
                seqs: Some(placed.iter().map(|p| p.seq).collect()),
            }));
        }
        Err(reused @ ClusterError::BatchIdReused { .. }) => {
            let _ = request
                .reply
                .send(Err(Refused::BatchIdReused(reused.to_string())));
        }
        Err(error) => {
            let _ = request.reply.send(Err(
                format!("the stream did not take the batch: {error}").into()
            ));
        }
    }
}

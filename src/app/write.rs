//! Writes: one batch, or a long-lived stream of them, within what the
//! caller's token may write.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppError, Routes};
use crate::auth::Caller;
use crate::cluster::{fanout, partition_of};
use crate::ingest::IngestService;
use crate::proto::{IngestRequest, IngestResponse, WaitFor};

/// Replies an ingest stream may have waiting for a slow reader before it
/// stops reading requests.
pub const STREAM_REPLY_BUFFER: usize = 4;

/// How long-lived streams end, and where their tasks are counted: after
/// `idle_timeout` without a request, or once `stop` is cancelled at
/// shutdown, so neither an idle producer nor a SIGTERM keeps one open for
/// ever; shutdown waits for every task `tasks` tracks.
#[derive(Clone)]
pub struct StreamSettings {
    pub idle_timeout: Duration,
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
}

/// How long `wait_for = SEARCHABLE` waits for the partitions' owners on
/// a cluster of several partitions; past it the batch (stored) is
/// answered DEADLINE_EXCEEDED.
pub const SEARCHABLE_WAIT: Duration = Duration::from_secs(30);

pub struct WriteService {
    ingest: Arc<IngestService>,
    streams: StreamSettings,
    /// How a node of several partitions reaches each partition's owner.
    routes: Arc<OnceLock<Routes>>,
}

impl WriteService {
    pub fn new(ingest: Arc<IngestService>, streams: StreamSettings) -> Self {
        let routes = Arc::new(OnceLock::new());
        WriteService {
            ingest,
            streams,
            routes,
        }
    }

    /// Waits for searchability through `routes` (a node of several
    /// partitions; set once).
    pub fn route_through(&self, routes: Routes) {
        let _ = self.routes.set(routes);
    }

    /// Stores one batch, all or nothing, once the caller may write every
    /// event of it. Returns once it is durable (or searchable, as asked).
    pub async fn ingest(
        &self,
        caller: &Caller,
        request: IngestRequest,
    ) -> Result<IngestResponse, AppError> {
        caller.check_write(&request.events)?;
        self.takes_ingest()?;
        if self.ingest.partitioned() && request.wait_for == WaitFor::Searchable as i32 {
            return self.ingest_searchable(request).await;
        }
        Ok(self.ingest.ingest(request).await?)
    }

    /// SEARCHABLE on a node of several partitions: the batch stored as
    /// DURABLE, then each partition it went to waited for at its owner,
    /// up to the batch's highest seq there, at most [`SEARCHABLE_WAIT`].
    async fn ingest_searchable(
        &self,
        mut request: IngestRequest,
    ) -> Result<IngestResponse, AppError> {
        let readers = match self.routes.get() {
            Some(routes) => routes(),
            None => return Err(AppError::Starting),
        };
        let partitions = readers.len() as u32;
        let placed: Vec<u32> = request
            .events
            .iter()
            .map(|e| partition_of(&e.subject, partitions))
            .collect();
        request.wait_for = WaitFor::Durable as i32;
        let stored = self.ingest.ingest(request).await?;
        let mut highest = BTreeMap::new();
        for (p, seq) in placed.into_iter().zip(&stored.seqs) {
            let top = highest.entry(p).or_insert(*seq);
            *top = (*top).max(*seq);
        }
        let reached = fanout::reach(&readers, &highest, SEARCHABLE_WAIT).await;
        reached.map_err(|error| AppError::StoredNotSearchable {
            waited: SEARCHABLE_WAIT,
            reason: error.to_string(),
        })?;
        Ok(stored)
    }

    /// Refuses Ingest on a node whose role takes none.
    fn takes_ingest(&self) -> Result<(), AppError> {
        match self.ingest.role() {
            role if role.takes_ingest() => Ok(()),
            role => Err(AppError::NotThisRole(role)),
        }
    }

    /// Stores each batch `inbound` yields, in order, and yields one reply
    /// per batch. The first error, the transport's own (`E`) or ours,
    /// ends the stream; so do idleness and shutdown, between batches only:
    /// a batch taken is always answered.
    pub fn ingest_stream<E, S>(
        &self,
        caller: Caller,
        mut inbound: S,
    ) -> Result<impl Stream<Item = Result<IngestResponse, E>> + Send + 'static, AppError>
    where
        E: From<AppError> + Send + 'static,
        S: Stream<Item = Result<IngestRequest, E>> + Send + Unpin + 'static,
    {
        caller.check_write(&[])?;
        self.takes_ingest()?;
        let writes = WriteService {
            ingest: self.ingest.clone(),
            streams: self.streams.clone(),
            routes: self.routes.clone(),
        };
        let StreamSettings {
            idle_timeout, stop, ..
        } = self.streams.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_REPLY_BUFFER);
        self.streams.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = tx.try_send(Err(AppError::ShuttingDown.into()));
                        break;
                    }
                    next = tokio::time::timeout(idle_timeout, inbound.next()) => next,
                };
                let request = match next {
                    Ok(Some(Ok(request))) => request,
                    Ok(None) => break,
                    Ok(Some(Err(error))) => {
                        let _ = tx.send(Err(error)).await;
                        break;
                    }
                    Err(_idle) => {
                        let _ = tx.try_send(Err(AppError::StreamIdle(idle_timeout).into()));
                        break;
                    }
                };
                let reply = writes.ingest(&caller, request).await.map_err(E::from);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

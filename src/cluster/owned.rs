//! A partition this node owns (docs/cluster.md, item 5a): its pipeline,
//! in a data directory of its own, `<data_dir>/partitions/<p>/` (index,
//! tree, checkpoints), replayed from its checkpoint, then following the
//! partition as it grows, exactly as a one-partition node follows
//! partition 0: the same `Pipeline`, on the partition's subject, with the
//! node's tokens. Its searcher is what a fan-out reads, in this process
//! ([`OwnedPartition::reader`]) or, through `remote`, from another node.
//!
//! A new owner of a partition it never held rebuilds its index from the
//! stream (the stream is never purged in a cluster); one that held it
//! before resumes after its checkpoint: the stream sequence in its
//! index's commit payload, so each event is indexed once either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fanout::{LocalPartition, Reader};
use super::Layout;
use crate::app::trail::Trail;
use crate::app::{RetentionService, StreamSettings};
use crate::auth::TokenStore;
use crate::search::Searcher;
use crate::server::{LogChoice, Pipeline, ServerError, Tokens};
use crate::Config;

/// Partition `partition`'s directory under a node's data directory.
pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join("partitions").join(partition.to_string())
}

/// One owned partition's running pipeline.
pub struct OwnedPartition {
    partition: u32,
    pipeline: Pipeline,
    streams: StreamSettings,
    /// Its retention: changes through its log, sweeps of its days, drops
    /// on the node's trail.
    retention: Arc<RetentionService>,
}

impl OwnedPartition {
    /// Opens partition `partition`'s directory under `config.data_dir`,
    /// replays the partition from its checkpoint and follows it. Returns
    /// once what the stream held at start is searchable. Given the
    /// node's `trail` and retention rules, it sweeps the partition every
    /// `retention.sweep_interval_ms` from then on, each drop on that
    /// trail (`None`: never, for a pipeline run alone).
    pub async fn start(
        config: &Config,
        layout: Layout,
        partition: u32,
        tokens: Arc<TokenStore>,
        trail: Option<Trail>,
    ) -> Result<OwnedPartition, ServerError> {
        let mut config = config.clone();
        config.data_dir = partition_dir(&config.data_dir, partition);
        let streams = StreamSettings {
            idle_timeout: Duration::from_millis(config.limits.stream_idle_timeout_ms),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let log = LogChoice::Cluster(layout, partition);
        let mut pipeline = Pipeline::start(&config, streams.clone(), log, Tokens::Given(tokens))?;
        if let Err(error) = pipeline.replay(&config).await {
            if let Err(also) = pipeline.stop().await {
                tracing::error!(partition, error = %also, "while stopping a partition that did not start");
            }
            return Err(error);
        }
        // Its proofs need a checkpoint of what it rebuilt: the checkpointer
        // signs one within an interval of replay's end.
        let interval = Duration::from_millis(config.integrity.checkpoint_interval_ms);
        if !pipeline.signed_so_far(interval * 3).await {
            tracing::warn!(
                partition,
                "no checkpoint of the rebuilt tree yet; answering anyway"
            );
        }
        pipeline.status.set_ready();
        tracing::info!(partition, "following the partition");
        let retention = match &trail {
            Some(trail) => Arc::new(pipeline.app().retention.with_trail(trail.clone())),
            None => pipeline.app().retention.clone(),
        };
        if trail.is_some() && retention.retention().policy().shortest().is_some() {
            let (sweeper, stop) = (retention.clone(), streams.stop.clone());
            let every = Duration::from_millis(config.retention.sweep_interval_ms);
            streams
                .tasks
                .spawn(async move { sweeper.run_sweeper(every, stop).await });
        }
        Ok(OwnedPartition {
            partition,
            pipeline,
            streams,
            retention,
        })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The partition's index.
    pub fn searcher(&self) -> Searcher {
        self.pipeline.app().reads.searcher().clone()
    }

    /// The partition, as a fan-out in this process reads it.
    pub fn reader(&self) -> Reader {
        Arc::new(self.local())
    }

    /// The partition, as this node's `Partitions` service answers for it.
    pub fn local(&self) -> LocalPartition {
        LocalPartition {
            partition: self.partition,
            searcher: self.searcher(),
            retention: Some(Arc::downgrade(&self.retention)),
            integrity: Some(Arc::downgrade(&self.pipeline.app().integrity)),
        }
    }

    /// Stops following, after the indexer's last commit.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.streams.stop.cancel();
        self.streams.tasks.close();
        self.streams.tasks.wait().await;
        // Its ingest's WAL sender goes with it: the WAL thread ends once
        // every sender is gone (readers hold it weakly).
        drop(self.retention);
        self.pipeline.stop().await
    }
}

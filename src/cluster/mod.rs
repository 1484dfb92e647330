//! The cluster (issue 21; docs/cluster.md): events partitioned by
//! subject over one JetStream stream, each partition with a dense seq of
//! its own.
//!
//! Partition `p` of `N` is the stream subject `<prefix>.<p>`, and an event
//! belongs to partition [`partition_of`] its `subject`. The stream's
//! subjects are its layout: `N` is fixed when the stream is created, and
//! a node configured with another `N` refuses to start on it
//! ([`Layout`]).
//!
//! - [`publish::Publisher`]: any number of nodes publish batches into the
//!   partitions; every event gets the next seq of its partition with no
//!   gap and no repeat, and a batch retried on any node is stored once.
//! - [`follow::Follower`]: one partition read in order as it grows, those
//!   promises checked.
//! - [`node`]: a daemon's WAL thread when `[cluster] enabled`: its writes
//!   published, the partition followed into its tree and index. With one
//!   partition every node indexes everything.
//! - [`lease::Leases`] and [`owner`]: with several partitions, one owner
//!   per partition at a time, each running [`owned::OwnedPartition`]'s
//!   pipeline, handed over without a read gap when a node joins.
//! - [`fanout`] and [`scan`]: a search, an aggregate, a get, an export
//!   merged over partitions, each read by its owner, in this process or
//!   on another node ([`remote`]).

pub mod channels;
pub mod fanout;
pub mod follow;
pub mod front;
pub mod lease;
pub mod node;
pub mod owned;
pub mod owner;
pub mod publish;
pub mod remote;
pub mod scan;
pub mod settings;
pub mod tokens;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sha2::{Digest, Sha256};

use crate::wal::jetstream::JetStreamConfig;

/// The most partitions a stream may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The partition of an event whose `subject` is `subject`, among
/// `partitions`: the first 8 bytes of `SHA-256(subject)` (UTF-8, no
/// length prefix) as a big-endian u64, modulo `partitions`. An event
/// without a subject hashes the empty string. Every node, and any client
/// that wants to know where its events go, computes the same.
pub fn partition_of(subject: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(subject.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % u64::from(partitions.max(1))) as u32
}

/// Where the partitions live, and how to reach them.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The connection and the stream: `stream`, `replicas`, `max_bytes`,
    /// the servers, credentials, TLS and `timeout_ms`. Its `subject` is
    /// the partitions' prefix: partition `p` is `<subject>.<p>`.
    pub jetstream: JetStreamConfig,
    /// `N`, used when the stream is created; on an existing stream it must
    /// match the stream's subjects.
    pub partitions: u32,
    /// JetStream's duplicate window (`Nats-Msg-Id`): a batch retried
    /// within it, on any node, is stored once. The idempotency window.
    pub duplicate_window: Duration,
    /// The cluster's checkpoint key (`settings::integrity_key`), set once
    /// the node has read the cluster's settings: every tree of the
    /// cluster is signed with it. `None`: each data directory's own key
    /// (a pipeline run alone, in tests).
    pub signer: Option<crate::integrity::note::NoteSigner>,
}

/// Why the partitioned stream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting the stream cannot work with, by name.
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// NATS refused, failed or did not answer in time: nothing of what
    /// was asked is known to be done, and a retry is safe.
    #[error("stream {stream}: {reason}")]
    Remote { stream: String, reason: String },
    /// The stream holds what auditd did not write, or not in order: no
    /// retry helps, and nothing past it is taken.
    #[error("stream {stream}: {reason}")]
    Corrupt { stream: String, reason: String },
    /// A batch id the stream already holds for a batch of other events.
    #[error(
        "{batch_id:?} was used for another batch: partition {partition} holds {stored} \
         events of it, this batch puts {sent} there (a batch id names one batch; this \
         batch's events for other partitions may have been stored under it)"
    )]
    BatchIdReused {
        batch_id: String,
        partition: u32,
        stored: usize,
        sent: usize,
    },
}

impl Layout {
    /// The subject of partition `p`.
    pub fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.jetstream.subject)
    }

    fn subjects(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.subject(p)).collect()
    }

    fn remote(&self, reason: String) -> ClusterError {
        ClusterError::Remote {
            stream: self.jetstream.stream.clone(),
            reason,
        }
    }

    /// What is wrong with the settings.
    pub fn check(&self) -> Result<(), ClusterError> {
        self.jetstream
            .check()
            .map_err(|(field, reason)| ClusterError::Config { field, reason })?;
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(ClusterError::Config {
                field: "cluster.partitions",
                reason: format!("1 to {MAX_PARTITIONS}"),
            });
        }
        if self.duplicate_window.is_zero() {
            return Err(ClusterError::Config {
                field: "cluster.duplicate_window",
                reason: "must be at least a second".into(),
            });
        }
        Ok(())
    }

    /// Connects, creates the stream when it is missing, and checks that an
    /// existing one has this layout.
    pub async fn open(
        &self,
    ) -> Result<(async_nats::Client, jetstream::Context, stream::Stream), ClusterError> {
        self.check()?;
        let (client, context) = crate::wal::jetstream::connect(&self.jetstream)
            .await
            .map_err(|reason| self.remote(reason))?;
        let config = &self.jetstream;
        let mut stream = context
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: self.subjects(),
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                discard: stream::DiscardPolicy::New,
                max_bytes: config.max_bytes,
                allow_direct: true,
                duplicate_window: self.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| self.remote(format!("cannot open or create the stream: {e}")))?;
        let info = stream
            .info()
            .await
            .map_err(|e| self.remote(format!("stream info: {e}")))?;
        self.matches(&info.config)?;
        Ok((client, context, stream))
    }

    /// Whether an existing stream has this layout.
    fn matches(&self, existing: &stream::Config) -> Result<(), ClusterError> {
        let mut has = existing.subjects.clone();
        let mut wants = self.subjects();
        has.sort();
        wants.sort();
        if has != wants {
            return Err(ClusterError::Config {
                field: "cluster.partitions",
                reason: format!(
                    "the stream {} exists with the subjects {:?}, not those of the {} \
                     partition(s) configured ({}.0 to {}.{}); the partition count is fixed \
                     when the stream is created",
                    existing.name,
                    existing.subjects,
                    self.partitions,
                    self.jetstream.subject,
                    self.jetstream.subject,
                    self.partitions - 1
                ),
            });
        }
        if !existing.allow_direct {
            return Err(
                self.remote("the stream exists without allow_direct, which reads need".into())
            );
        }
        if existing.duplicate_window < self.duplicate_window {
            return Err(ClusterError::Config {
                field: "cluster.duplicate_window",
                reason: format!(
                    "the stream {} deduplicates over {:?}, less than the {:?} configured: \
                     retries after it would be stored twice",
                    existing.name, existing.duplicate_window, self.duplicate_window
                ),
            });
        }
        Ok(())
    }
}

/// Opens the KV bucket `bucket`, creating its stream as a KV bucket is
/// made (history 1, roll-ups, direct reads) when it is missing; `max_age`
/// zero keeps keys forever. The stream is made here rather than by the
/// client's `create_key_value`, whose account query Debian's nats-server
/// 2.9 answers in a form the client does not read.
pub(crate) async fn open_kv(
    context: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<jetstream::kv::Store, String> {
    let duplicate_window = match max_age.is_zero() {
        true => Duration::from_secs(120),
        false => max_age.min(Duration::from_secs(120)),
    };
    context
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    context
        .get_key_value(bucket)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors docs/cluster.md gives, so that a client can check its
    /// own implementation.
    #[test]
    fn partition_of_matches_the_documented_vectors() {
        // docs/cluster.md: the first 8 bytes of SHA-256, and p for N = 32.
        for (subject, partition) in [("", 20), ("emma", 28), ("user-1", 18)] {
            assert_eq!(partition_of(subject, 32), partition, "{subject:?}");
        }
        assert_eq!(partition_of("emma", 1), 0);
    }

    #[test]
    fn a_layout_out_of_bounds_is_refused_naming_the_setting() {
        let layout = |partitions, window| Layout {
            jetstream: JetStreamConfig::default(),
            partitions,
            duplicate_window: Duration::from_secs(window),
            signer: None,
        };
        let field = |layout: Layout| match layout.check() {
            Err(ClusterError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(layout(0, 60)), "cluster.partitions");
        assert_eq!(field(layout(MAX_PARTITIONS + 1, 60)), "cluster.partitions");
        assert_eq!(field(layout(32, 0)), "cluster.duplicate_window");
        assert!(layout(32, 60).check().is_ok());
    }

    #[test]
    fn partitions_spread_subjects() {
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[partition_of(&format!("user-{i}"), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1_200).contains(&c)),
            "{counts:?}"
        );
    }
}

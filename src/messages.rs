//! The messages that pass between pipeline stages.
//!
//! ```text
//! ingest ──AppendRequest──▶ wal::group_commit ──IndexBatch──▶ indexer
//!        ◀────Appended─────┘                                 └─▶ Checkpoint
//! ```

use tokio::sync::oneshot;

use crate::integrity::leaf::{
    event_leaf_hash, new_salt, salt_from_bytes, LeafScratch, Salt, Version, SALT_LEN,
};
use crate::integrity::merkle::Hash;
use crate::integrity::opening::Opening;
use crate::integrity::seeds;
use crate::proto::AuditEvent;
use crate::retention::{Applied, RetentionRecord};
use crate::wal::{LogPosition, Span};

/// What one `Batch` record holds: a validated batch, ids and `received`
/// set (`record.rs` puts the envelope around it). Encoded with prost, so
/// the log shares the API's schema evolution rules.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WalBatch {
    #[prost(string, tag = "1")]
    pub batch_id: String,
    #[prost(message, repeated, tag = "2")]
    pub events: Vec<AuditEvent>,
    /// Each event's salt (`integrity::leaf`), [`SALT_LEN`] bytes an event,
    /// in event order. Empty in records of data format 2, which had none.
    #[prost(bytes = "vec", tag = "3")]
    pub salts: Vec<u8>,
    /// The version of its events' leaves (`integrity::leaf::Version`); 0
    /// in records written before version 2, whose leaves are version 1.
    #[prost(uint32, tag = "4")]
    pub leaf_version: u32,
    /// The seed its salts were made from (`integrity::seeds`), 16 bytes;
    /// empty when each salt was drawn alone. `salts` holds them as well.
    #[prost(bytes = "vec", tag = "5")]
    pub salt_seed: Vec<u8>,
}

impl WalBatch {
    /// A batch of `events`, each given a fresh salt.
    pub fn salted(batch_id: String, events: Vec<AuditEvent>) -> WalBatch {
        let mut salts = vec![0u8; events.len() * SALT_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut salts);
        WalBatch {
            batch_id,
            events,
            salts,
            leaf_version: Version::CURRENT.byte().into(),
            salt_seed: Vec::new(),
        }
    }

    /// A batch of `events` whose salts are made from one fresh seed
    /// (`integrity::seeds`): the tree keeps the seed, and the index no
    /// salt of its own an event.
    pub fn seeded(batch_id: String, events: Vec<AuditEvent>) -> WalBatch {
        let seed = new_salt();
        WalBatch {
            batch_id,
            salts: seeds::expand(&seed, events.len()).concat(),
            events,
            leaf_version: Version::CURRENT.byte().into(),
            salt_seed: seed.to_vec(),
        }
    }

    /// The seed its salts were made from, if they were.
    pub fn seed(&self) -> Option<Salt> {
        salt_from_bytes(&self.salt_seed)
    }

    /// Its leaves' version; `None` for one this binary does not know.
    pub fn version(&self) -> Option<Version> {
        match self.leaf_version {
            0 => Some(Version::V1),
            n => Version::from_byte(u8::try_from(n).ok()?),
        }
    }

    /// What event `i`'s leaf is rebuilt from: its salt and the leaf
    /// version (`None` without salts, or in an unknown version).
    pub fn opening(&self, i: usize) -> Option<Opening> {
        Some(Opening::Salt(self.version()?, self.salt(i)?))
    }

    /// Event `i`'s salt; `None` when the batch has no salts (format 2).
    pub fn salt(&self, i: usize) -> Option<Salt> {
        let start = i.checked_mul(SALT_LEN)?;
        salt_from_bytes(self.salts.get(start..start + SALT_LEN)?)
    }

    /// Whether every event has its salt.
    pub fn is_salted(&self) -> bool {
        self.salts.len() == self.events.len() * SALT_LEN
    }

    /// The leaf hashes of its events, in order (`None` without salts, or
    /// in an unknown leaf version).
    pub fn leaf_hashes(&self) -> Option<Vec<Hash>> {
        let version = self.version()?;
        if !self.is_salted() {
            return None;
        }
        let mut scratch = LeafScratch::default();
        Some(
            self.events
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    let salt = self.salt(i).expect("salted");
                    event_leaf_hash(version, event, &salt, &mut scratch)
                })
                .collect(),
        )
    }
}

/// Why a WAL thread did not store a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The log failed, or is stopping: nothing stored; retry.
    NotStored(String),
    /// The request's `batch_id` was used before for a batch of other
    /// events (a cluster of several partitions finds out when a
    /// partition's copy holds another count of events).
    BatchIdReused(String),
}

impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused::NotStored(reason)
    }
}

impl From<&str> for Refused {
    fn from(reason: &str) -> Refused {
        Refused::NotStored(reason.to_owned())
    }
}

/// An ingest handler's request to the WAL thread. `body` is `batch`
/// encoded, done on the handler's task so the WAL thread only writes the
/// record's header (with the batch's first seq) and the body.
pub struct AppendRequest {
    pub body: Vec<u8>,
    pub batch: WalBatch,
    /// The leaf hash of each event (`integrity::leaf`), made on the
    /// handler's task: the WAL thread only adds them to the tree.
    pub leaves: Vec<Hash>,
    /// `Ok` once the record is as durable as the sync policy makes it.
    pub reply: oneshot::Sender<Result<Appended, Refused>>,
    /// A slot of the bounded WAL queue, given back when the WAL thread
    /// takes the request.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Set for a `Retention` record (`body` is the change, `batch` is
    /// empty): the indexer applies it once it is durable.
    pub change: Option<RetentionChange>,
}

/// A retention change on its way through the log to the indexer, which
/// applies it in log order.
#[derive(Debug)]
pub struct RetentionChange {
    pub record: RetentionRecord,
    /// Told what applying it did (`None` on replay).
    pub done: Option<oneshot::Sender<Result<Applied, String>>>,
}

impl RetentionChange {
    /// An erasure starts a new piece of the log: the pieces before it,
    /// which may hold what it erases, can then go whole.
    pub fn starts_piece(&self) -> bool {
        matches!(self.record.change, Some(crate::retention::Change::Erase(_)))
    }
}

/// Where an appended batch landed: its record's place in the log, and the
/// seq of its first event (its events take `first_seq..next_seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub span: Span,
    pub first_seq: u64,
    pub next_seq: u64,
    /// A batch a cluster's stream already held under its batch id (a retry
    /// through another node): the ids it was stored with, to answer with
    /// instead of the request's. `None` on one node, whose idempotency
    /// window answers retries before they reach the log.
    pub stored_ids: Option<Vec<String>>,
    /// Each event's seq, in request order, when they are not
    /// `first_seq..next_seq`: a batch over several partitions of a cluster
    /// (`cluster::front`), each event with its partition's seq.
    pub seqs: Option<Vec<u64>>,
}

/// What the indexer queue carries.
#[derive(Debug)]
pub enum ToIndexer {
    Batch(IndexBatch),
    /// Commit now instead of at the next interval, and say so on the
    /// sender once a commit has covered everything before this message:
    /// start-up sends it after replay, so the daemon serves only once the
    /// replayed events are searchable (their seqs may all be below the
    /// index's, after `auditd recover`, so a seq cannot tell).
    Commit(oneshot::Sender<()>),
    /// A durable retention change and its record's place in the log.
    Retention(Span, RetentionChange),
}

/// A durable batch on its way to the indexer, with its place in the log
/// and its first event's seq.
#[derive(Debug)]
pub struct IndexBatch {
    pub span: Span,
    pub first_seq: u64,
    pub batch: WalBatch,
}

impl IndexBatch {
    /// The seq after this batch's last event.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.batch.events.len() as u64
    }
}

/// The most events one batch may hold.
pub const MAX_EVENTS_PER_RECORD: usize = 1 << 16;

/// What each partition commit records as its Tantivy payload: every
/// record that starts below `log` and holds events of the partition's day
/// is in it, and so is every such event with a seq below `seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitPayload {
    /// A record boundary.
    pub log: LogPosition,
    /// The seq after the last event the commit covers.
    pub seq: u64,
}

impl CommitPayload {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("two integers serialize")
    }

    /// `None` for anything else, a format-1 payload (a bare position)
    /// included.
    pub fn parse(payload: &str) -> Option<CommitPayload> {
        serde_json::from_str(payload).ok()
    }
}

/// The indexed checkpoint: every WAL record that starts below `wal_position`
/// is committed to the index, and so is every event with a seq below
/// `next_seq`. Written atomically after each commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub wal_position: LogPosition,
    /// The seq the next event indexed after the checkpoint takes, at the
    /// least: with the log's records and the partitions' payloads, where
    /// start-up takes the next seq from.
    #[serde(default)]
    pub next_seq: u64,
    /// What each partition held at that commit, keyed by day
    /// (`2026-11-23`). A copy kept outside the index on purpose: when a
    /// partition's own files are damaged, `auditd recover` still knows how
    /// many events it held, so it can say exactly how many the WAL cannot
    /// give back.
    #[serde(default)]
    pub partitions: std::collections::BTreeMap<String, PartitionLedger>,
}

/// One partition as of a commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionLedger {
    /// Events (documents) it held.
    pub events: u64,
    /// Its commit payload's log position: every record that starts below
    /// this and holds events of its day is in it.
    pub committed: LogPosition,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_payloads_round_trip_and_a_bare_position_is_refused() {
        let payload = CommitPayload {
            log: LogPosition::new(1234),
            seq: 56,
        };
        assert_eq!(CommitPayload::parse(&payload.encode()), Some(payload));
        assert_eq!(payload.encode(), r#"{"log":1234,"seq":56}"#);
        assert_eq!(CommitPayload::parse("1234"), None);
        assert_eq!(CommitPayload::parse("twelve"), None);
    }
}

//! The messages that pass between pipeline stages.
//!
//! ```text
//! ingest ──AppendRequest──▶ wal::group_commit ──IndexBatch──▶ indexer
//!        ◀──────Span───────┘                                 └─▶ Checkpoint
//! ```

use tokio::sync::oneshot;

use crate::proto::AuditEvent;
use crate::wal::{Record, Span, WalError};

/// What one WAL record holds: a validated batch, ids and `received` set.
/// Encoded with prost, so the log shares the API's schema evolution rules.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WalBatch {
    #[prost(string, tag = "1")]
    pub batch_id: String,
    #[prost(message, repeated, tag = "2")]
    pub events: Vec<AuditEvent>,
}

/// An ingest handler's request to the WAL thread. `payload` is `batch`
/// encoded, done on the handler's task so the WAL thread only writes.
pub struct AppendRequest {
    pub payload: Vec<u8>,
    pub batch: WalBatch,
    /// `Ok` once the record is as durable as the sync policy makes it.
    pub reply: oneshot::Sender<Result<Span, String>>,
    /// A slot of the bounded WAL queue, given back when the WAL thread
    /// takes the request.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the indexer queue carries.
#[derive(Debug)]
pub enum ToIndexer {
    Batch(IndexBatch),
    /// Commit now instead of at the next interval: start-up sends it after
    /// replay, so the daemon serves only once the replayed events are
    /// searchable.
    Commit,
}

/// A durable batch on its way to the indexer, with its place in the log.
#[derive(Debug)]
pub struct IndexBatch {
    pub span: Span,
    pub batch: WalBatch,
}

impl IndexBatch {
    /// Decodes a WAL record read back (replay at start-up, or the indexer
    /// re-reading after a failed commit).
    /// A skip record (damaged bytes `auditd recover` wrote over) decodes
    /// as an empty batch: nothing to index, but its span still moves the
    /// indexed position on.
    pub fn decode(record: Record<'_>) -> Result<IndexBatch, WalError> {
        let batch = if crate::wal::frame::is_skip(record.payload) {
            WalBatch::default()
        } else {
            <WalBatch as prost::Message>::decode(record.payload).map_err(|e| {
                WalError::BadRecord {
                    position: record.start,
                    reason: e.to_string(),
                }
            })?
        };
        Ok(IndexBatch {
            span: Span {
                start: record.start,
                end: record.end,
            },
            batch,
        })
    }
}

/// Bits of an event's sequence number given to its index inside its batch.
/// `seq = record_start << SEQ_BATCH_BITS | index`: unique, increasing in log
/// order, and the same on every replay.
pub const SEQ_BATCH_BITS: u32 = 16;

/// The most events one batch may hold, so that the index fits its bits.
pub const MAX_EVENTS_PER_RECORD: usize = 1 << SEQ_BATCH_BITS;

pub fn event_seq(record_start: u64, index: usize) -> u64 {
    debug_assert!(index < MAX_EVENTS_PER_RECORD);
    (record_start << SEQ_BATCH_BITS) | index as u64
}

/// The indexed checkpoint: every WAL record that starts below `wal_position`
/// is committed to the index. Written atomically after each commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub wal_position: u64,
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
    /// Its commit payload: every record that starts below this and holds
    /// events of its day is in it.
    pub committed: u64,
}

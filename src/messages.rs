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

/// The most events one batch may hold.
pub const MAX_EVENTS_PER_RECORD: usize = 1 << 16;

/// An event's sequence number: its WAL record's start plus the event's
/// share of the record's bytes, `start + index * len / events`.
///
/// Unique and increasing in log order (a record holds more bytes than
/// events, so the steps are at least 1 and stay below the next record's
/// start), the same on every replay, and below a record boundary `p` (a
/// position the indexer publishes) exactly for the events of records
/// that start below `p`: a position is a search snapshot as it is.
///
/// Why not `start << 16 | index`, as before: that jumps by about 2^34
/// from one record to the next, which Tantivy's linear column codecs
/// stored at 3.6 bytes an event (1 M events); spread over the record's
/// bytes the column is nearly linear.
pub fn event_seq(record: &Span, events: usize, index: usize) -> u64 {
    let len = u128::from(record.end - record.start);
    debug_assert!(index < events && events as u128 <= len);
    record.start + (index as u128 * len / events as u128) as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records back to back, from as short as they can be (a byte an
    /// event) to long ones: every seq is unique, increasing, inside its
    /// record, and below a record boundary exactly when its record starts
    /// below it.
    #[test]
    fn seqs_increase_stay_in_their_record_and_a_position_is_a_snapshot() {
        let shapes = [
            (1, 1),
            (3, 3),
            (1000, 1000),
            (1000, 301_234),
            (7, 9),
            (65_536, 1 << 26),
        ];
        let mut start = 17;
        let mut seqs = Vec::new();
        let mut positions = Vec::new();
        for (events, len) in shapes {
            let record = Span {
                start,
                end: start + len,
            };
            for i in 0..events {
                let seq = event_seq(&record, events, i);
                assert!(record.start <= seq && seq < record.end);
                seqs.push((seq, record.start));
            }
            positions.extend([record.start, record.end]);
            start = record.end;
        }
        assert!(seqs.windows(2).all(|w| w[0].0 < w[1].0));
        for position in positions {
            for &(seq, record_start) in &seqs {
                assert_eq!(
                    seq < position,
                    record_start < position,
                    "{seq} at {position}"
                );
            }
        }
    }
}

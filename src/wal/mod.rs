//! The write-ahead log: the [`Log`] trait the pipeline uses, and its
//! implementations. The local one is built in layers: a checksummed
//! `frame`, `segment` files, and the `log` that appends and replays them.
//! `memory` keeps records in memory, for tests. `group_commit` is the
//! thread that owns a `Log` and makes one sync serve every batch that
//! arrived while the last one ran.
//!
//! A log knows only bytes; what a record holds is `record`'s business
//! (a typed envelope around `messages::WalBatch`).
//!
//! `jetstream` puts the records on a NATS JetStream stream.
//!
//! Positions are [`LogPosition`]s, ordered and opaque: a byte offset for
//! the local log, a stream sequence for the JetStream one
//! (ARCHITECTURE.md, "The log").

pub mod frame;
pub mod group_commit;
pub mod jetstream;
pub mod log;
pub mod memory;
pub mod segment;

use std::path::{Path, PathBuf};

pub use log::{read_range, skip_damage, Record, Recovery, ReplayReport, SkippedDamage, Wal};

/// A place in a log: ordered, and meaningful only to the log that gave it
/// out (a byte offset in the local log, a stream sequence in a replicated
/// one). Serialized as its number.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct LogPosition(u64);

impl LogPosition {
    /// The start of an empty log.
    pub const START: LogPosition = LogPosition(0);

    /// The position a log numbers `raw`: for log implementations, and for
    /// what reads positions back (checkpoints, reports).
    pub const fn new(raw: u64) -> LogPosition {
        LogPosition(raw)
    }

    /// The log's own number for this position (reports, metrics).
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A record's place in the log: from `start` up to `end`, where the next
/// record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: LogPosition,
    pub end: LogPosition,
}

/// What the pipeline needs of a log. One thread owns it (`group_commit`),
/// so every method may block; readers beside the owner go through
/// [`Log::reader`].
pub trait Log: Send {
    /// Buffers one record whose payload is `parts` one after the other,
    /// and returns its place. Nothing is durable before `sync`.
    fn append(&mut self, parts: &[&[u8]]) -> Result<Span, WalError>;
    /// Hands buffered records to the storage without waiting for
    /// durability (`SyncPolicy::Never`). On failure every record since the
    /// last good flush is dropped.
    fn flush(&mut self) -> Result<(), WalError>;
    /// Flushes, then makes everything appended durable.
    fn sync(&mut self) -> Result<(), WalError>;
    /// The position after the last appended record.
    fn end(&self) -> LogPosition;
    /// After a failed write or sync: brings the log back to `keep`, the end
    /// of what was acknowledged, so appending can go on. Nothing past
    /// `keep` is trusted or synced again.
    fn repair(&mut self, keep: LogPosition) -> Result<(), WalError>;
    /// Checks, without appending, whether the storage works again.
    fn probe(&self) -> Result<(), WalError>;
    /// Lets go of records below `position` (every one of them is indexed).
    /// May keep some (the local log frees whole segments). Returns how
    /// many storage pieces went.
    fn trim(&mut self, position: LogPosition) -> Result<usize, WalError>;
    /// When every record is indexed (`checkpoint` at the end) and what is
    /// kept holds at least `min_bytes`, lets go of all of it; positions go
    /// on from the end. Returns whether it did.
    fn retire_indexed(&mut self, checkpoint: LogPosition, min_bytes: u64)
        -> Result<bool, WalError>;
    /// Makes the next record the first of a new storage piece, so that
    /// trimming below it lets go of every older record (an erasure, whose
    /// older records may hold what it erases). The local log starts a new
    /// segment unless the active one is empty; a log that trims record by
    /// record has nothing to do.
    fn start_piece(&mut self) -> Result<(), WalError>;
    /// Storage pieces held (segments, for the local log), for metrics.
    fn pieces(&self) -> usize;
    /// The largest record the storage takes, when it has a limit (NATS
    /// servers' `max_payload`): Ingest refuses a larger batch up front.
    fn max_record_bytes(&self) -> Option<u64> {
        None
    }
    /// A reader of acknowledged records, for a thread beside the owner.
    fn reader(&self) -> Box<dyn LogReader>;
}

/// Reads acknowledged records, beside the log's owner: the owner neither
/// rewrites nor trims what is not yet indexed, so a range below the
/// acknowledged end and at or after the checkpoint stays readable.
pub trait LogReader: Send {
    /// Hands every record in `[from, to)` to `visit`, in order. `from`
    /// must be a record boundary. Any damage in the range, or a range the
    /// log no longer holds, is an error.
    fn read(
        &self,
        from: LogPosition,
        to: LogPosition,
        visit: &mut dyn FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(), WalError>;
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wal is damaged in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("wal record in {path} at offset {offset}: {reason}")]
    BadRecord {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the indexer stopped while the wal was replayed")]
    IndexerGone,
    /// A reader's `visit` asked to stop; it keeps its own error.
    #[error("the reader stopped")]
    Stopped,
    #[error("the log no longer holds position {0}")]
    Trimmed(LogPosition),
    /// The JetStream log: NATS refused, failed or did not answer in time.
    #[error("the log stream {stream}: {reason}")]
    Remote { stream: String, reason: String },
}

impl WalError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// How the log is made durable before a batch is acknowledged. The reply to
/// a client never claims more than the policy gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before every acknowledgement (group commit shares one fsync
    /// between the batches that arrived together). The default.
    Always,
    /// fsync at most once per interval; acknowledgements wait for the fsync
    /// that covers them, so they still mean "durable", at a higher latency.
    Interval(std::time::Duration),
    /// Never fsync; acknowledge once the bytes are in the OS page cache.
    /// Survives a process crash, not a power loss. For benchmarks.
    Never,
}

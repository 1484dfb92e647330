//! The write-ahead log, in layers: a checksummed `frame`, `segment` files,
//! the `log` that appends and replays them, and `group_commit`, the thread
//! that owns the log and makes one fsync serve every batch that arrived
//! while the last one ran.
//!
//! The log knows only bytes; what a record holds is the ingest layer's
//! business (`messages::WalBatch`).

pub mod frame;
pub mod group_commit;
pub mod log;
pub mod segment;

use std::path::{Path, PathBuf};

pub use log::{read_range, skip_damage, Record, Recovery, ReplayReport, SkippedDamage, Span, Wal};

/// Where the log lives inside the data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
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
    #[error("wal record at position {position} does not decode: {reason}")]
    BadRecord { position: u64, reason: String },
    #[error("the indexer stopped while the wal was replayed")]
    IndexerGone,
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

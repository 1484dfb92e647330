//! Typed log records: what the bytes of one WAL record mean.
//!
//! ```text
//! +-------------+----------+------------------+------------------------+
//! | version: u8 | kind: u8 | first_seq: u64LE | body (by kind)         |
//! +-------------+----------+------------------+------------------------+
//! ```
//!
//! `first_seq` is the seq of the record's first event (a `Batch`'s events
//! take `first_seq`, `first_seq + 1`, …; other kinds take none). The WAL
//! thread, the one appender, writes the header, so seqs have no gap and
//! no repeat. `Retention` records (kind 2) carry no events; erasure gets
//! its own kind when it comes.
//!
//! A first byte of 0 is a skip frame (`auditd recover` wrote it over
//! damaged bytes). A first byte of 8 or more is a record of data format 1
//! (a bare prost `WalBatch`, whose first byte is a field tag, never below
//! 8): `auditd migrate` rewrites those.

use crate::messages::{IndexBatch, WalBatch};
use crate::retention::RetentionRecord;
use crate::wal::{frame, Record, Span, WalError};

/// The envelope version this binary writes and the newest it reads.
pub const RECORD_VERSION: u8 = 1;

/// Bytes before a record's body.
pub const HEADER_LEN: usize = 10;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A validated batch of events (body: prost `WalBatch`).
    Batch = 1,
    /// A retention change: a drop, the compliance floor, a legal hold or
    /// its release (body: prost `retention::RetentionRecord`; no events).
    Retention = 2,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Batch),
            2 => Some(RecordKind::Retention),
            _ => None,
        }
    }
}

/// The header of a record of `kind` whose first event is `first_seq`.
pub fn header(kind: RecordKind, first_seq: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0] = RECORD_VERSION;
    out[1] = kind as u8;
    out[2..].copy_from_slice(&first_seq.to_le_bytes());
    out
}

/// A record read back, by kind.
#[derive(Debug)]
pub enum LogRecord {
    /// Damaged bytes `auditd recover` wrote over: nothing to index, but
    /// its span still moves the indexed position on.
    Skip(Span),
    Batch(IndexBatch),
    Retention(Span, RetentionRecord),
}

impl LogRecord {
    pub fn span(&self) -> Span {
        match self {
            LogRecord::Skip(span) => *span,
            LogRecord::Batch(batch) => batch.span,
            LogRecord::Retention(span, _) => *span,
        }
    }
}

/// Reads one record. An unknown kind, a newer version than this binary
/// knows, or a record of the old format is an error naming the file, the
/// offset and the versions: replay stops there rather than guess.
pub fn decode(record: Record<'_>) -> Result<LogRecord, WalError> {
    let span = Span {
        start: record.start,
        end: record.end,
    };
    let bad = |reason: String| WalError::BadRecord {
        path: record.path.to_owned(),
        offset: record.offset,
        reason,
    };
    let payload = record.payload;
    if frame::is_skip(payload) {
        return Ok(LogRecord::Skip(span));
    }
    let version = payload[0];
    if version >= 8 {
        return Err(bad(
            "a record of data format 1 (before typed records); `auditd migrate` rewrites the data directory"
                .into(),
        ));
    }
    if version > RECORD_VERSION {
        return Err(bad(format!(
            "record version {version} is newer than this auditd reads (up to {RECORD_VERSION}); run a newer auditd"
        )));
    }
    if payload.len() < HEADER_LEN {
        return Err(bad(format!(
            "a record of {} bytes is shorter than its header ({HEADER_LEN})",
            payload.len()
        )));
    }
    let first_seq = u64::from_le_bytes(payload[2..HEADER_LEN].try_into().expect("8 bytes"));
    let body = &payload[HEADER_LEN..];
    match RecordKind::from_byte(payload[1]) {
        Some(RecordKind::Batch) => {
            let batch = <WalBatch as prost::Message>::decode(body)
                .map_err(|e| bad(format!("batch record does not decode: {e}")))?;
            Ok(LogRecord::Batch(IndexBatch {
                span,
                first_seq,
                batch,
            }))
        }
        Some(RecordKind::Retention) => {
            let change = <RetentionRecord as prost::Message>::decode(body)
                .map_err(|e| bad(format!("retention record does not decode: {e}")))?;
            Ok(LogRecord::Retention(span, change))
        }
        None => Err(bad(format!(
            "unknown record kind {} (record version {version}; this auditd knows kinds 1, batch, and 2, retention)",
            payload[1]
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::LogPosition;
    use std::path::Path;

    fn record(payload: &[u8]) -> Record<'_> {
        Record {
            start: LogPosition::new(100),
            end: LogPosition::new(100 + payload.len() as u64),
            payload,
            path: Path::new("wal-00000000000000000100.log"),
            offset: 8,
        }
    }

    #[test]
    fn a_batch_round_trips_with_its_first_seq() {
        let batch = WalBatch::salted("b1".into(), vec![Default::default(); 3]);
        let mut payload = header(RecordKind::Batch, 41).to_vec();
        payload.extend(prost::Message::encode_to_vec(&batch));
        let LogRecord::Batch(read) = decode(record(&payload)).unwrap() else {
            panic!("a batch")
        };
        assert_eq!(read.first_seq, 41);
        assert_eq!(read.next_seq(), 44);
        assert_eq!(read.batch, batch);
    }

    #[test]
    fn what_this_binary_cannot_read_is_named_with_file_offset_and_versions() {
        let message = |payload: &[u8]| decode(record(payload)).unwrap_err().to_string();
        let newer = message(&[RECORD_VERSION + 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(newer.contains("wal-00000000000000000100.log"), "{newer}");
        assert!(newer.contains("offset 8"), "{newer}");
        assert!(
            newer.contains(&format!("version {}", RECORD_VERSION + 1)),
            "{newer}"
        );
        assert!(
            newer.contains(&format!("up to {RECORD_VERSION}")),
            "{newer}"
        );
        let kind = message(&[RECORD_VERSION, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(kind.contains("unknown record kind 9"), "{kind}");
        let old = message(b"\x0a\x02b1");
        assert!(old.contains("auditd migrate"), "{old}");
        assert!(matches!(
            decode(record(&[0, 0, 0])).unwrap(),
            LogRecord::Skip(_)
        ));
    }
}

//! The log against a plain model (mrecordlog's `proptests.rs` idea):
//! random runs of append, flush, sync, crash-and-reopen, trim, retire and
//! read-from, on the local segment files and on the in-memory log, each
//! checked step by step against a `Vec` of records.
//!
//! The model: records are appended at the end, each `HEADER_LEN` bytes
//! plus its payload long (both logs number positions so); what was flushed
//! survives a crash, and of what was only appended, a prefix may (the
//! local log flushes when it rotates); a read from any record boundary at
//! or past the last trim gives exactly the records from there on.

use std::sync::Arc;

use auditd::wal::frame::HEADER_LEN;
use auditd::wal::memory::{MemoryLog, MemoryStore};
use auditd::wal::{Log, LogPosition, Record, Recovery, Span, Wal, WalError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Flush,
    Sync,
    Crash,
    /// Trim at the n-th (mod count) record boundary of what is flushed.
    Trim(usize),
    Retire,
    /// Read from the n-th (mod count) readable record boundary.
    ReadFrom(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(1u8..=255, 0..60).prop_map(Op::Append),
        1 => Just(Op::Flush),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
        1 => any::<usize>().prop_map(Op::Trim),
        1 => Just(Op::Retire),
        2 => any::<usize>().prop_map(Op::ReadFrom),
    ]
}

#[derive(Default)]
struct Model {
    flushed: Vec<(Span, Vec<u8>)>,
    buffered: Vec<(Span, Vec<u8>)>,
    end: LogPosition,
    /// Records below this may be gone.
    trimmed: LogPosition,
}

impl Model {
    fn readable(&self) -> Vec<&(Span, Vec<u8>)> {
        self.flushed
            .iter()
            .filter(|(s, _)| s.start >= self.trimmed)
            .collect()
    }

    /// Record boundaries a read or a reopen may start at.
    fn boundaries(&self) -> Vec<LogPosition> {
        let mut out: Vec<LogPosition> = self.readable().iter().map(|(s, _)| s.start).collect();
        out.push(
            self.flushed
                .last()
                .map_or(self.trimmed, |(s, _)| s.end)
                .max(self.trimmed),
        );
        out
    }
}

/// A record as the model and the logs' replays see it.
type Seen = Vec<(Span, Vec<u8>)>;

/// A record read back, as the model holds it.
fn owned(r: Record<'_>) -> (Span, Vec<u8>) {
    (
        Span {
            start: r.start,
            end: r.end,
        },
        r.payload.to_vec(),
    )
}

/// How a run opens its log again: the local files, or the memory store.
trait Opener {
    fn open(&self, from: LogPosition) -> Result<(Box<dyn Log>, Seen), WalError>;
}

struct Files(tempfile::TempDir);

impl Opener for Files {
    fn open(&self, from: LogPosition) -> Result<(Box<dyn Log>, Seen), WalError> {
        let mut seen = Vec::new();
        // Small segments: rotations, and trims that free whole ones.
        let (wal, _) = Wal::open(self.0.path(), from, 120, Recovery::Strict, |r| {
            seen.push(owned(r));
            Ok(())
        })?;
        Ok((Box::new(wal), seen))
    }
}

struct Memory(Arc<MemoryStore>);

impl Opener for Memory {
    fn open(&self, from: LogPosition) -> Result<(Box<dyn Log>, Seen), WalError> {
        let mut seen = Vec::new();
        let log = MemoryLog::open(self.0.clone(), from, |r| {
            seen.push(owned(r));
            Ok(())
        })?;
        Ok((Box::new(log), seen))
    }
}

fn run(opener: &dyn Opener, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let (mut log, seen) = opener.open(LogPosition::START).unwrap();
    prop_assert!(seen.is_empty());
    for op in ops {
        match op {
            Op::Append(payload) => {
                let span = log.append(&[payload]).unwrap();
                // Both logs number a record as its frame's bytes.
                let expected = Span {
                    start: model.end,
                    end: LogPosition::new(model.end.get() + (HEADER_LEN + payload.len()) as u64),
                };
                prop_assert_eq!(span, expected);
                model.end = span.end;
                model.buffered.push((span, payload.clone()));
            }
            Op::Flush | Op::Sync => {
                if matches!(op, Op::Flush) {
                    log.flush().unwrap();
                } else {
                    log.sync().unwrap();
                }
                let buffered = std::mem::take(&mut model.buffered);
                model.flushed.extend(buffered);
            }
            Op::Crash => {
                drop(log);
                let from = model.boundaries()[0];
                let (reopened, seen) = opener.open(from).unwrap();
                log = reopened;
                let expected: Vec<(Span, Vec<u8>)> = model
                    .readable()
                    .into_iter()
                    .chain(model.buffered.iter())
                    .filter(|(s, _)| s.start >= from)
                    .cloned()
                    .collect();
                // What was flushed, then a prefix of what was buffered.
                let flushed = model
                    .readable()
                    .iter()
                    .filter(|(s, _)| s.start >= from)
                    .count();
                prop_assert!(seen.len() >= flushed && seen.len() <= expected.len());
                prop_assert_eq!(&seen[..], &expected[..seen.len()]);
                let survived = seen.len() - flushed;
                let buffered = std::mem::take(&mut model.buffered);
                model.flushed.extend(buffered.into_iter().take(survived));
                model.end = model.flushed.last().map_or(from, |(s, _)| s.end).max(from);
                prop_assert_eq!(log.end(), model.end);
            }
            Op::Trim(n) => {
                let boundaries = model.boundaries();
                let at = boundaries[n % boundaries.len()];
                log.trim(at).unwrap();
                model.trimmed = model.trimmed.max(at);
            }
            Op::Retire => {
                if model.buffered.is_empty() {
                    log.retire_indexed(model.end, 1).unwrap();
                    // Whether it did depends on what it holds; either
                    // way, nothing below the end need be readable now.
                    model.trimmed = model.end;
                }
            }
            Op::ReadFrom(n) => {
                let boundaries = model.boundaries();
                let from = boundaries[n % boundaries.len()];
                let to = *boundaries.last().unwrap();
                let mut seen = Vec::new();
                log.reader()
                    .read(from, to, &mut |r| {
                        seen.push(owned(r));
                        Ok(())
                    })
                    .unwrap();
                let expected: Vec<(Span, Vec<u8>)> = model
                    .readable()
                    .into_iter()
                    .filter(|(s, _)| s.start >= from)
                    .cloned()
                    .collect();
                prop_assert_eq!(seen, expected);
            }
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("LOG_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_local_log_follows_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&Files(tempfile::tempdir().unwrap()), &ops)?;
    }

    #[test]
    fn the_memory_log_follows_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&Memory(Arc::new(MemoryStore::default())), &ops)?;
    }
}

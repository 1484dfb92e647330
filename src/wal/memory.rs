//! A log in memory, for tests: the same positions as the local log (a
//! record takes its payload's bytes plus a frame header), and the same
//! durability steps, so the pipeline and the model-based test can run on
//! it. A [`MemoryStore`] outlives the logs opened on it, which is how a
//! test restarts the daemon "on the same disk": what was flushed is there
//! after a drop (a crash), what was only appended is not.

use std::sync::{Arc, Mutex};

use super::frame::HEADER_LEN;
use super::{Log, LogPosition, LogReader, Record, Span, WalError};

/// The storage behind memory logs: the flushed records, in order.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Stored>,
}

#[derive(Debug, Default)]
struct Stored {
    records: Vec<(Span, Vec<u8>)>,
    /// Where positions go on when no record is kept (after a retire).
    end: LogPosition,
}

/// A log whose storage is a [`MemoryStore`].
pub struct MemoryLog {
    store: Arc<MemoryStore>,
    buffered: Vec<(Span, Vec<u8>)>,
    end: LogPosition,
}

fn memory_path() -> &'static std::path::Path {
    std::path::Path::new("<memory>")
}

impl MemoryLog {
    /// Opens a log on `store` and hands every record at or after `from`
    /// to `visit`, in order, as `Wal::open` does.
    pub fn open(
        store: Arc<MemoryStore>,
        from: LogPosition,
        mut visit: impl FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<MemoryLog, WalError> {
        let end = {
            let stored = store.inner.lock().expect("memory log lock");
            for (span, payload) in stored.records.iter().filter(|(s, _)| s.start >= from) {
                visit(record(span, payload))?;
            }
            stored
                .records
                .last()
                .map_or(stored.end, |(s, _)| s.end)
                .max(from)
        };
        Ok(MemoryLog {
            store,
            buffered: Vec::new(),
            end,
        })
    }
}

fn record<'a>(span: &Span, payload: &'a [u8]) -> Record<'a> {
    Record {
        start: span.start,
        end: span.end,
        payload,
        path: memory_path(),
        offset: span.start.get(),
    }
}

impl Log for MemoryLog {
    fn append(&mut self, parts: &[&[u8]]) -> Result<Span, WalError> {
        let payload: Vec<u8> = parts.concat();
        // Numbered as the local log numbers its frames.
        let span = Span {
            start: self.end,
            end: LogPosition::new(self.end.get() + (HEADER_LEN + payload.len()) as u64),
        };
        self.end = span.end;
        self.buffered.push((span, payload));
        Ok(span)
    }

    fn flush(&mut self) -> Result<(), WalError> {
        let mut stored = self.store.inner.lock().expect("memory log lock");
        stored.records.append(&mut self.buffered);
        stored.end = self.end;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.flush()
    }

    fn end(&self) -> LogPosition {
        self.end
    }

    fn repair(&mut self, keep: LogPosition) -> Result<(), WalError> {
        self.buffered.clear();
        let mut stored = self.store.inner.lock().expect("memory log lock");
        stored.records.retain(|(s, _)| s.end <= keep);
        stored.end = keep;
        self.end = keep;
        Ok(())
    }

    fn probe(&self) -> Result<(), WalError> {
        Ok(())
    }

    fn trim(&mut self, position: LogPosition) -> Result<usize, WalError> {
        let mut stored = self.store.inner.lock().expect("memory log lock");
        let before = stored.records.len();
        stored.records.retain(|(s, _)| s.end > position);
        Ok(before - stored.records.len())
    }

    fn start_piece(&mut self) -> Result<(), WalError> {
        // Records are trimmed one by one: nothing older shares a piece.
        Ok(())
    }

    fn retire_indexed(
        &mut self,
        checkpoint: LogPosition,
        min_bytes: u64,
    ) -> Result<bool, WalError> {
        let mut stored = self.store.inner.lock().expect("memory log lock");
        let held: u64 = stored
            .records
            .iter()
            .map(|(s, _)| s.end.get() - s.start.get())
            .sum();
        if !self.buffered.is_empty() || checkpoint < self.end || held < min_bytes.max(1) {
            return Ok(false);
        }
        stored.records.clear();
        stored.end = self.end;
        Ok(true)
    }

    fn pieces(&self) -> usize {
        usize::from(
            !self
                .store
                .inner
                .lock()
                .expect("memory log lock")
                .records
                .is_empty(),
        )
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(self.store.clone())
    }
}

impl LogReader for Arc<MemoryStore> {
    fn read(
        &self,
        from: LogPosition,
        to: LogPosition,
        visit: &mut dyn FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(), WalError> {
        let stored = self.inner.lock().expect("memory log lock");
        let mut position = from;
        for (span, payload) in stored.records.iter().filter(|(s, _)| s.start >= from) {
            if span.start >= to {
                break;
            }
            if span.start != position {
                return Err(WalError::Trimmed(position));
            }
            visit(record(span, payload))?;
            position = span.end;
        }
        if position < to {
            return Err(WalError::Trimmed(position));
        }
        Ok(())
    }
}

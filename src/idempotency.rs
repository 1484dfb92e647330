//! `batch_id` idempotency: a retried batch gets its first ids back and
//! stores nothing twice.
//!
//! Recent batches live in a bounded map, rebuilt from the WAL on start-up;
//! older ones are found in the index (every document carries its batch id),
//! so the window survives a restart without a file of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What `begin` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// Stored before: the ids it got.
    Done(Vec<String>),
    /// Another request is storing this batch right now.
    InFlight,
    /// Not seen in memory; the caller stores it (after checking the index)
    /// and then calls `complete` or `abort`.
    New,
}

enum Entry {
    InFlight,
    Done { ids: Vec<String>, received: i64 },
}

pub struct Idempotency {
    window_micros: i64,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Completed batch ids, oldest first, for expiry and the capacity bound.
    order: VecDeque<(i64, String)>,
}

impl Idempotency {
    pub fn new(window_secs: u64, capacity: usize) -> Self {
        Idempotency {
            window_micros: window_secs as i64 * 1_000_000,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn window_micros(&self) -> i64 {
        self.window_micros
    }

    /// Looks `batch_id` up and, when new, marks it in flight.
    pub fn begin(&self, batch_id: &str, now: i64) -> Begin {
        let mut inner = self.inner.lock().expect("idempotency lock");
        self.expire(&mut inner, now);
        match inner.entries.get(batch_id) {
            Some(Entry::Done { ids, received }) if now - received <= self.window_micros => {
                Begin::Done(ids.clone())
            }
            Some(Entry::InFlight) => Begin::InFlight,
            _ => {
                inner.entries.insert(batch_id.to_owned(), Entry::InFlight);
                Begin::New
            }
        }
    }

    /// Records the ids a batch got; also used by WAL replay.
    pub fn complete(&self, batch_id: &str, ids: Vec<String>, received: i64) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        inner
            .entries
            .insert(batch_id.to_owned(), Entry::Done { ids, received });
        inner.order.push_back((received, batch_id.to_owned()));
        while inner.order.len() > self.capacity {
            let (_, old) = inner.order.pop_front().expect("non-empty");
            if matches!(inner.entries.get(&old), Some(Entry::Done { .. })) {
                inner.entries.remove(&old);
            }
        }
    }

    /// The batch was not stored: a retry may try again.
    pub fn abort(&self, batch_id: &str) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if matches!(inner.entries.get(batch_id), Some(Entry::InFlight)) {
            inner.entries.remove(batch_id);
        }
    }

    fn expire(&self, inner: &mut Inner, now: i64) {
        while let Some((received, _)) = inner.order.front() {
            if now - received <= self.window_micros {
                break;
            }
            let (_, old) = inner.order.pop_front().expect("non-empty");
            if matches!(inner.entries.get(&old), Some(Entry::Done { received, .. }) if now - received > self.window_micros)
            {
                inner.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_window_and_capacity() {
        let ids = vec!["a".to_string()];
        let memo = Idempotency::new(10, 2);
        assert_eq!(memo.begin("b1", 0), Begin::New);
        assert_eq!(memo.begin("b1", 0), Begin::InFlight);
        memo.complete("b1", ids.clone(), 0);
        assert_eq!(memo.begin("b1", 5_000_000), Begin::Done(ids.clone()));
        // Past the window it is forgotten.
        assert_eq!(memo.begin("b1", 11_000_000), Begin::New);
        memo.abort("b1");
        // Capacity: the oldest completed id goes first.
        for (i, b) in ["x", "y", "z"].iter().enumerate() {
            assert_eq!(memo.begin(b, i as i64), Begin::New);
            memo.complete(b, ids.clone(), i as i64);
        }
        assert_eq!(memo.begin("x", 3), Begin::New);
        assert_eq!(memo.begin("z", 3), Begin::Done(ids));
    }
}

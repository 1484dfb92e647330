//! `batch_id` idempotency: a retried batch gets its first ids back and
//! stores nothing twice.
//!
//! Recent batches live in a bounded map, rebuilt from the WAL on start-up;
//! older ones are found in the index (every document carries its batch id),
//! so the window survives a restart without a file of its own.
//!
//! The index is asked only while it can hold a batch the map has not:
//! one received before this start (the index's latest `received`, given
//! at start-up) or one the capacity bound pushed out, still inside the
//! window. A fresh store, or one up for a window past its last restart,
//! asks nothing of the index: that look-up was a tenth of the request
//! path in a `perf` profile (docs/benchmarks-history.md).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Where a stored batch went: its events' ids, in request order, and the
/// seq of the first (a batch's events take consecutive seqs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub ids: Vec<String>,
    pub first_seq: u64,
}

impl Stored {
    /// The seqs, in request order.
    pub fn seqs(&self) -> Vec<u64> {
        (self.first_seq..self.next_seq()).collect()
    }

    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.ids.len() as u64
    }
}

/// What `begin` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// Stored before: where.
    Done(Stored),
    /// Another request is storing this batch right now.
    InFlight,
    /// Not seen in memory; the caller stores it (after checking the index)
    /// and then calls `complete` or `abort`.
    New,
}

enum Entry {
    InFlight,
    Done { stored: Stored, received: i64 },
}

pub struct Idempotency {
    window_micros: i64,
    capacity: usize,
    inner: Mutex<Inner>,
    /// The latest `received` (µs) of a batch that may be in the index but
    /// not in the map; `i64::MIN` when there is none.
    index_only_until: AtomicI64,
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
            index_only_until: AtomicI64::new(i64::MIN),
        }
    }

    /// Batches received up to `received` (µs) may be in the index only:
    /// at start-up, the index's latest `received`.
    pub fn index_holds_until(&self, received: i64) {
        self.index_only_until.fetch_max(received, Ordering::AcqRel);
    }

    /// Whether a batch the map does not know may still be in the index
    /// within the window, so that the caller must look there.
    pub fn index_may_hold(&self, now: i64) -> bool {
        self.index_only_until.load(Ordering::Acquire) >= now.saturating_sub(self.window_micros)
    }

    pub fn window_micros(&self) -> i64 {
        self.window_micros
    }

    /// Looks `batch_id` up and, when new, marks it in flight.
    pub fn begin(&self, batch_id: &str, now: i64) -> Begin {
        let mut inner = self.inner.lock().expect("idempotency lock");
        self.expire(&mut inner, now);
        match inner.entries.get(batch_id) {
            Some(Entry::Done { stored, received }) if now - received <= self.window_micros => {
                Begin::Done(stored.clone())
            }
            Some(Entry::InFlight) => Begin::InFlight,
            _ => {
                inner.entries.insert(batch_id.to_owned(), Entry::InFlight);
                Begin::New
            }
        }
    }

    /// Records where a batch went; also used by WAL replay.
    pub fn complete(&self, batch_id: &str, stored: Stored, received: i64) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        inner
            .entries
            .insert(batch_id.to_owned(), Entry::Done { stored, received });
        inner.order.push_back((received, batch_id.to_owned()));
        while inner.order.len() > self.capacity {
            let (_, old) = inner.order.pop_front().expect("non-empty");
            if let Some(Entry::Done { received, .. }) = inner.entries.get(&old) {
                // Still inside the window, perhaps: from now on only the
                // index knows it.
                self.index_holds_until(*received);
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
        let ids = Stored {
            ids: vec!["a".to_string()],
            first_seq: 7,
        };
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

    #[test]
    fn the_index_is_asked_while_it_may_hold_what_the_map_lacks() {
        let ids = Stored {
            ids: vec!["a".to_string()],
            first_seq: 0,
        };
        let window = 10_000_000;
        // A fresh store: nothing is only in the index.
        let memo = Idempotency::new(10, 2);
        assert!(!memo.index_may_hold(0));
        // After a restart, until the index's latest batch leaves the window.
        memo.index_holds_until(1_000_000);
        assert!(memo.index_may_hold(1_000_000 + window));
        assert!(!memo.index_may_hold(1_000_001 + window));
        // A batch pushed out by the capacity bound is then only in the index.
        let memo = Idempotency::new(10, 1);
        memo.complete("x", ids.clone(), 5_000_000);
        assert!(!memo.index_may_hold(5_000_000));
        memo.complete("y", ids, 6_000_000);
        assert!(memo.index_may_hold(5_000_000 + window));
        assert!(!memo.index_may_hold(5_000_001 + window));
    }
}

//! The events of the last commits, as stored, kept in memory: a follower
//! (Tail) reads what a commit just made searchable from here rather than
//! from the doc store, whose blocks it would otherwise decompress and
//! whose documents it would deserialize, on the same two cores as ingest.
//!
//! The index still says which events match (and so what a token may
//! see); this only hands over the body of an event the index named, by
//! seq. An event that is not here (older than the budget, or after a
//! change that rewrote the index) is read from the index as before, so
//! what a caller gets never depends on what is cached.
//!
//! Bounded by `index.recent_events_bytes`: the indexer's uncommitted
//! entries and the committed ones each stay under it, the oldest going
//! first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::proto::AuditEvent;

/// One event as its document stores it: the body `schema::encode_body`
/// wrote, its times (microseconds, as the fast fields hold them) and seq.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub time: i64,
    pub received: i64,
    pub body: Arc<[u8]>,
}

impl StoredEvent {
    /// What the budget counts for it.
    fn cost(&self) -> usize {
        self.body.len() + std::mem::size_of::<StoredEvent>()
    }

    /// The event, as a read from the index gives it.
    pub fn event(&self) -> Result<AuditEvent, prost::DecodeError> {
        crate::schema::decode_stored(&self.body, self.time, self.received, self.seq)
    }
}

/// Entries in ascending seq order, under a byte budget.
#[derive(Debug, Default)]
pub struct RecentRun {
    entries: VecDeque<StoredEvent>,
    bytes: usize,
}

impl RecentRun {
    /// Appends `entry`, dropping the oldest entries past `budget` bytes.
    /// A seq not above the last one (the log replayed below the index)
    /// starts the run again, so that it stays in order.
    pub fn push(&mut self, entry: StoredEvent, budget: usize) {
        if self
            .entries
            .back()
            .is_some_and(|last| last.seq >= entry.seq)
        {
            self.clear();
        }
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.bytes > budget {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.cost(),
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, seq: u64) -> Option<&StoredEvent> {
        let (first, last) = (self.entries.front()?, self.entries.back()?);
        if seq < first.seq || seq > last.seq {
            return None;
        }
        let at = self.entries.partition_point(|e| e.seq < seq);
        self.entries.get(at).filter(|e| e.seq == seq)
    }
}

/// The committed events the indexer handed over last, shared with the
/// searcher.
#[derive(Debug)]
pub struct RecentEvents {
    budget: usize,
    run: Mutex<RecentRun>,
}

impl RecentEvents {
    /// Keeps at most `budget` bytes of events; 0 keeps none.
    pub fn new(budget: usize) -> RecentEvents {
        RecentEvents {
            budget,
            run: Mutex::new(RecentRun::default()),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn run(&self) -> MutexGuard<'_, RecentRun> {
        // A panic elsewhere leaves entries that are still whole.
        self.run
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds the entries of a commit, in seq order, once they are
    /// searchable.
    pub fn extend(&self, committed: &mut RecentRun) {
        let mut run = self.run();
        for entry in committed.entries.drain(..) {
            run.push(entry, self.budget);
        }
        committed.bytes = 0;
    }

    /// Forgets everything: a change rewrote or dropped indexed events.
    pub fn clear(&self) {
        self.run().clear();
    }

    /// The entry of each seq, where there is one.
    pub fn lookup(&self, seqs: impl Iterator<Item = u64>) -> Vec<Option<StoredEvent>> {
        let run = self.run();
        seqs.map(|seq| run.get(seq).cloned()).collect()
    }

    /// Entries and bytes held.
    pub fn held(&self) -> (usize, usize) {
        let run = self.run();
        (run.len(), run.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, len: usize) -> StoredEvent {
        StoredEvent {
            seq,
            time: seq as i64,
            received: seq as i64,
            body: vec![7u8; len].into(),
        }
    }

    #[test]
    fn the_budget_drops_the_oldest_first_and_is_never_passed() {
        let cost = entry(0, 100).cost();
        let recent = RecentEvents::new(cost * 3 + cost / 2);
        let mut pending = RecentRun::default();
        for seq in 0..10 {
            pending.push(entry(seq, 100), recent.budget());
            assert!(pending.bytes() <= recent.budget());
        }
        // The uncommitted run keeps its newest three too.
        assert_eq!(pending.len(), 3);
        recent.extend(&mut pending);
        assert!(pending.is_empty() && pending.bytes() == 0);
        assert_eq!(recent.held(), (3, cost * 3));
        let found = recent.lookup(0..12);
        let present: Vec<u64> = found.iter().flatten().map(|e| e.seq).collect();
        assert_eq!(present, vec![7, 8, 9]);
    }

    #[test]
    fn lookup_finds_seqs_across_gaps_and_a_seq_going_back_starts_again() {
        let recent = RecentEvents::new(1 << 20);
        let mut pending = RecentRun::default();
        for seq in [3, 4, 8, 9, 15] {
            pending.push(entry(seq, 10), recent.budget());
        }
        recent.extend(&mut pending);
        let found = recent.lookup([15, 3, 5, 9, 2, 16].into_iter());
        let seqs: Vec<Option<u64>> = found.iter().map(|e| e.as_ref().map(|e| e.seq)).collect();
        assert_eq!(seqs, vec![Some(15), Some(3), None, Some(9), None, None]);
        // Replayed below what it holds: only the new run stays.
        pending.push(entry(5, 10), recent.budget());
        recent.extend(&mut pending);
        assert_eq!(recent.held().0, 1);
        assert!(recent.lookup([15].into_iter())[0].is_none());
        assert!(recent.lookup([5].into_iter())[0].is_some());
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let recent = RecentEvents::new(0);
        let mut pending = RecentRun::default();
        pending.push(entry(1, 10), recent.budget());
        assert!(pending.is_empty());
        recent.extend(&mut pending);
        assert_eq!(recent.held(), (0, 0));
    }
}

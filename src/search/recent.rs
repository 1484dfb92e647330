//! The newest events, as stored, kept in memory for Tail, in two runs:
//!
//! - **committed**: what the last commits made searchable. A follower
//!   reads a commit's events from here rather than from the doc store,
//!   whose blocks it would otherwise decompress and whose documents it
//!   would deserialize, on the same two cores as ingest. The index still
//!   says which events match (and so what a token may see); this only
//!   hands over the body of an event the index named, by seq. An event
//!   that is not here (older than the budget, or after a change that
//!   rewrote the index) is read from the index as before.
//! - **live**: what the indexer added since the last commit, every entry
//!   durable in the log, in an unbroken run of seqs. A follower whose
//!   filter can be matched in memory (`search/live.rs`) takes new events
//!   from here as soon as they are added, rather than waiting up to a
//!   commit interval and a commit for them to become searchable. A commit
//!   moves the run into the committed one.
//!
//! Bounded by `index.recent_events_bytes`: each run stays under it, the
//! oldest entries going first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::watch;

use crate::proto::AuditEvent;

/// One event as its document stores it: the body `schema::encode_body`
/// wrote, its times (microseconds, as the fast fields hold them) and seq.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub time: i64,
    pub received: i64,
    pub body: Arc<[u8]>,
    /// The event decoded by the first live follower that read it, shared
    /// with the others (`None`: it does not decode): each follower then
    /// matches it without decoding it again. Not counted in the budget:
    /// only live entries a follower read have one, dropped when a commit
    /// moves the entry (so at most one per live entry). Boxed, so that
    /// the cell every entry carries stays small.
    decoded: Arc<OnceLock<Option<Box<AuditEvent>>>>,
}

impl StoredEvent {
    pub fn new(seq: u64, time: i64, received: i64, body: Arc<[u8]>) -> StoredEvent {
        StoredEvent {
            seq,
            time,
            received,
            body,
            decoded: Arc::default(),
        }
    }

    /// What the budget counts for it.
    fn cost(&self) -> usize {
        self.body.len() + std::mem::size_of::<StoredEvent>()
    }

    /// The event, as a read from the index gives it.
    pub fn event(&self) -> Result<AuditEvent, prost::DecodeError> {
        crate::schema::decode_stored(&self.body, self.time, self.received, self.seq)
    }

    /// The event, decoded once for every reader of this entry.
    pub fn shared(&self) -> Option<&AuditEvent> {
        self.decoded
            .get_or_init(|| self.event().ok().map(Box::new))
            .as_deref()
    }
}

/// Entries in ascending seq order, under a byte budget.
#[derive(Debug, Default)]
struct RecentRun {
    entries: VecDeque<StoredEvent>,
    bytes: usize,
}

impl RecentRun {
    /// Appends `entry`, dropping the oldest entries past `budget` bytes.
    /// A seq not above the last one (the log replayed below the index)
    /// starts the run again, so that it stays in order.
    fn push(&mut self, entry: StoredEvent, budget: usize) {
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

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The seq after the last entry, if there is one.
    fn end(&self) -> Option<u64> {
        self.entries.back().map(|last| last.seq + 1)
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

/// The events the indexer handed over last, committed and live, shared
/// with the searcher.
#[derive(Debug)]
pub struct RecentEvents {
    budget: usize,
    run: Mutex<RecentRun>,
    live: Mutex<RecentRun>,
    /// The seq after the last live entry, sent after each batch: what
    /// wakes a live follower.
    added: watch::Sender<u64>,
}

impl RecentEvents {
    /// Keeps at most `budget` bytes of events in each run; 0 keeps none.
    pub fn new(budget: usize) -> RecentEvents {
        RecentEvents {
            budget,
            run: Mutex::new(RecentRun::default()),
            live: Mutex::new(RecentRun::default()),
            added: watch::Sender::new(0),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn run(&self) -> MutexGuard<'_, RecentRun> {
        lock(&self.run)
    }

    fn live(&self) -> MutexGuard<'_, RecentRun> {
        lock(&self.live)
    }

    /// Adds one batch's entries, in seq order, once they are durable and
    /// in an index writer. An entry that does not follow the last one
    /// (the indexer skipped or re-read part of the log) starts the run
    /// again: the live run never has a hole.
    pub fn add(&self, entries: Vec<StoredEvent>) {
        if self.budget == 0 || entries.is_empty() {
            return;
        }
        let end = {
            let mut live = self.live();
            for entry in entries {
                if live.end().is_some_and(|end| end != entry.seq) {
                    live.clear();
                }
                live.push(entry, self.budget);
            }
            live.end()
        };
        if let Some(end) = end {
            self.added.send_replace(end);
        }
    }

    /// Moves the live entries into the committed run: a commit made them
    /// searchable.
    pub fn commit(&self) {
        let entries = std::mem::take(&mut *self.live());
        let mut run = self.run();
        for mut entry in entries.entries {
            // Unless a follower holds it this instant.
            if let Some(decoded) = Arc::get_mut(&mut entry.decoded) {
                decoded.take();
            }
            run.push(entry, self.budget);
        }
    }

    /// Forgets the live entries: the indexer dropped what it had not
    /// committed.
    pub fn clear_live(&self) {
        self.live().clear();
    }

    /// Forgets everything: a change rewrote or dropped indexed events.
    pub fn clear(&self) {
        self.clear_live();
        self.run().clear();
    }

    /// The committed entry of each seq, where there is one.
    pub fn lookup(&self, seqs: impl Iterator<Item = u64>) -> Vec<Option<StoredEvent>> {
        let run = self.run();
        seqs.map(|seq| run.get(seq).cloned()).collect()
    }

    /// The live entries from seq `from` on, at most `max`, if the live run
    /// holds `from`: then every seq from `from` to the last one returned
    /// is there. `None` otherwise (not added yet, or already committed or
    /// dropped: the index has it or will).
    pub fn live_from(&self, from: u64, max: usize) -> Option<Vec<StoredEvent>> {
        let live = self.live();
        let first = live.entries.front()?.seq;
        if from < first || from >= live.end()? {
            return None;
        }
        let at = (from - first) as usize;
        Some(live.entries.range(at..).take(max).cloned().collect())
    }

    /// Changes whenever live entries are added: the seq after the last.
    pub fn added(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }

    /// Entries and bytes held, both runs.
    pub fn held(&self) -> (usize, usize) {
        let (run, live) = (self.run(), self.live());
        (run.len() + live.len(), run.bytes() + live.bytes())
    }
}

fn lock(run: &Mutex<RecentRun>) -> MutexGuard<'_, RecentRun> {
    // A panic elsewhere leaves entries that are still whole.
    run.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, len: usize) -> StoredEvent {
        StoredEvent::new(seq, seq as i64, seq as i64, vec![7u8; len].into())
    }

    #[test]
    fn the_budget_drops_the_oldest_first_and_is_never_passed() {
        let cost = entry(0, 100).cost();
        let recent = RecentEvents::new(cost * 3 + cost / 2);
        recent.add((0..10).map(|seq| entry(seq, 100)).collect());
        // The live run keeps its newest three too.
        assert_eq!(recent.held(), (3, cost * 3));
        recent.commit();
        assert_eq!(recent.held(), (3, cost * 3));
        recent.add(vec![entry(10, 100)]);
        assert_eq!(recent.held(), (4, cost * 4));
        let found = recent.lookup(0..12);
        let present: Vec<u64> = found.iter().flatten().map(|e| e.seq).collect();
        assert_eq!(present, vec![7, 8, 9]);
    }

    #[test]
    fn lookup_finds_seqs_across_gaps_and_a_seq_going_back_starts_again() {
        let mut run = RecentRun::default();
        for seq in [3, 4, 8, 9, 15] {
            run.push(entry(seq, 10), 1 << 20);
        }
        let seqs: Vec<Option<u64>> = [15, 3, 5, 9, 2, 16]
            .iter()
            .map(|&seq| run.get(seq).map(|e| e.seq))
            .collect();
        assert_eq!(seqs, vec![Some(15), Some(3), None, Some(9), None, None]);
        // Replayed below what it holds: only the new run stays.
        run.push(entry(5, 10), 1 << 20);
        assert_eq!(run.len(), 1);
        assert!(run.get(15).is_none() && run.get(5).is_some());
    }

    #[test]
    fn the_live_run_has_no_hole_and_a_commit_moves_it() {
        let recent = RecentEvents::new(1 << 20);
        let mut added = recent.added();
        recent.add((3..6).map(|seq| entry(seq, 10)).collect());
        assert!(added.has_changed().unwrap());
        assert_eq!(*added.borrow_and_update(), 6);
        let seqs = |from, max| {
            recent
                .live_from(from, max)
                .map(|run| run.iter().map(|e| e.seq).collect::<Vec<_>>())
        };
        assert_eq!(seqs(3, 10), Some(vec![3, 4, 5]));
        assert_eq!(seqs(4, 1), Some(vec![4]));
        assert_eq!(seqs(2, 10), None);
        assert_eq!(seqs(6, 10), None);
        // A hole (7 and not 6) starts the run again.
        recent.add(vec![entry(7, 10), entry(8, 10)]);
        assert_eq!(seqs(3, 10), None);
        assert_eq!(seqs(7, 10), Some(vec![7, 8]));
        assert_eq!(*added.borrow_and_update(), 9);
        // Committed: no longer live, and found by lookup.
        recent.commit();
        assert_eq!(seqs(7, 10), None);
        assert!(recent
            .lookup([7, 8].into_iter())
            .iter()
            .all(Option::is_some));
        recent.add(vec![entry(9, 10)]);
        recent.clear_live();
        assert_eq!(seqs(9, 10), None);
        assert_eq!(recent.held().0, 2);
    }

    #[test]
    fn a_live_entry_is_decoded_once_and_the_commit_drops_the_copy() {
        let mut event = AuditEvent {
            id: "e1".into(),
            action: "auth.login".into(),
            time: Some(crate::schema::micros_to_timestamp(5)),
            received: Some(crate::schema::micros_to_timestamp(6)),
            ..Default::default()
        };
        let mut body = Vec::new();
        crate::schema::encode_body(&mut event, &mut body);
        let recent = RecentEvents::new(1 << 20);
        recent.add(vec![StoredEvent::new(3, 5, 6, body.into())]);
        let first = recent.live_from(3, 1).unwrap().remove(0);
        let again = recent.live_from(3, 1).unwrap().remove(0);
        let decoded = first.shared().expect("it decodes");
        assert_eq!(decoded, &first.event().unwrap());
        assert_eq!(decoded.action, "auth.login");
        // The second reader finds it decoded.
        assert!(again.decoded.get().is_some());
        drop((first, again));
        recent.commit();
        let committed = recent.lookup([3].into_iter()).remove(0).unwrap();
        assert!(committed.decoded.get().is_none());
        assert!(entry(9, 10).shared().is_none(), "garbage does not decode");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let recent = RecentEvents::new(0);
        recent.add(vec![entry(1, 10)]);
        recent.commit();
        assert_eq!(recent.held(), (0, 0));
        assert!(recent.live_from(1, 10).is_none());
    }
}

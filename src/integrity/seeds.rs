//! Where the salts of a batch of [`MIN_EVENTS`] or more come from (data
//! format 6): one random 16-byte seed a batch, kept beside the tree, not
//! 16 random bytes an event kept in the index (`docs/integrity.md` §2.1).
//!
//! The seed is the root of a binary tree of depth [`DEPTH`] (a GGM tree):
//! a node's children are the two halves of `SHA-256(0x04 || node)`, left
//! first, and event `i` of the batch (seq `first + i`) has the salt at
//! leaf `i`. Expanding a batch costs about one SHA-256 block an event.
//!
//! Erasure must forget an event's salt (§2.4) and keep its neighbours'.
//! It *cuts* the batch's key: the seed is replaced by the fewest nodes that
//! cover every other leaf (at most [`DEPTH`] for one erased event), so
//! that the erased salt can no longer be made from anything kept.
//!
//! On disk, under `tlog/`:
//!
//! ```text
//! seeds       32 bytes a seeded batch, in seq order: first seq (u64),
//!             count (u32), flags (u32; bit 0: cut), seed (16 bytes; zero
//!             once cut)
//! seeds.cut   the cut keys: per batch, first seq (u64), count (u32),
//!             nodes (u16), then each node: depth (u8), index (u32),
//!             value (16 bytes); all big-endian. Replaced whole.
//! ```
//!
//! The WAL thread adds a batch's seed with its leaves
//! ([`super::store::TreeStore::append`]); the tree's sync appends the new
//! records before it moves `tree.json`, so a seed is durable before the
//! log lets go of the record that carries it, and a record past
//! `tree.json` is dropped at open (replay adds it again).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sha2::{Digest, Sha256};

use super::leaf::{Salt, SALT_LEN};
use super::store::{io, StoreError};
use crate::datadir::write_atomically;

/// The depth of a batch's salt tree: 2^16 leaves, the most events a log
/// record holds (`messages::MAX_EVENTS_PER_RECORD`).
pub const DEPTH: u8 = 16;
/// The fewest events of a batch given a seed: a smaller one keeps each
/// event's own salt in the index (a seed's record would cost more than
/// one byte an event).
pub const MIN_EVENTS: usize = 32;
/// The first byte hashed to make a node's children.
const NODE_FORM: u8 = 0x04;
const SEEDS_FILE: &str = "seeds";
const CUTS_FILE: &str = "seeds.cut";
const RECORD_LEN: usize = 32;
const CUT: u32 = 1;
const NODE_LEN: usize = 1 + 4 + SALT_LEN;

/// A node of a batch's salt tree: depth 0 is the seed, depth [`DEPTH`]
/// the salts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub depth: u8,
    pub index: u32,
    pub value: Salt,
}

impl Node {
    fn root(seed: Salt) -> Node {
        Node {
            depth: 0,
            index: 0,
            value: seed,
        }
    }

    /// The leaves below it: `[start, end)`.
    fn leaves(&self) -> (u64, u64) {
        let span = u32::from(DEPTH - self.depth);
        let start = u64::from(self.index) << span;
        (start, start + (1u64 << span))
    }

    fn children(&self) -> [Node; 2] {
        let [left, right] = children(&self.value);
        let (depth, index) = (self.depth + 1, self.index * 2);
        [
            Node {
                depth,
                index,
                value: left,
            },
            Node {
                depth,
                index: index + 1,
                value: right,
            },
        ]
    }
}

/// The two children of a node: the halves of `SHA-256(0x04 || node)`.
fn children(node: &Salt) -> [Salt; 2] {
    let hash = Sha256::new()
        .chain_update([NODE_FORM])
        .chain_update(node)
        .finalize();
    let mut left = [0u8; SALT_LEN];
    let mut right = [0u8; SALT_LEN];
    left.copy_from_slice(&hash[..SALT_LEN]);
    right.copy_from_slice(&hash[SALT_LEN..]);
    [left, right]
}

/// The salts of events `0..n` of the batch whose seed is `seed`.
pub fn expand(seed: &Salt, n: usize) -> Vec<Salt> {
    if n == 0 {
        return Vec::new();
    }
    let mut level = vec![*seed];
    for depth in 1..=u32::from(DEPTH) {
        // The nodes of this depth that have a leaf below `n`.
        let width = n.div_ceil(1 << (u32::from(DEPTH) - depth));
        let mut next = Vec::with_capacity(width + 1);
        for node in &level {
            next.extend(children(node));
        }
        next.truncate(width);
        level = next;
    }
    level
}

/// The salt of leaf `position` from `nodes` (a seed, or a cut key);
/// `None` when no node covers it (it was cut out).
pub fn derive(nodes: &[Node], position: u64) -> Option<Salt> {
    let mut salt = None;
    derive_range(nodes, position, position.saturating_add(1), &mut |_, s| {
        salt = Some(s)
    });
    salt
}

/// Each salt below `nodes` at a leaf of `[lo, hi)`, with its position,
/// in order: one walk down to the range, about one SHA-256 block a salt
/// where [`derive`] costs [`DEPTH`].
fn derive_range(nodes: &[Node], lo: u64, hi: u64, each: &mut impl FnMut(u64, Salt)) {
    fn walk(node: Node, lo: u64, hi: u64, each: &mut impl FnMut(u64, Salt)) {
        let (start, end) = node.leaves();
        if end <= lo || start >= hi {
            return;
        }
        if node.depth == DEPTH {
            each(start, node.value);
            return;
        }
        for child in node.children() {
            walk(child, lo, hi, each);
        }
    }
    for node in nodes {
        walk(*node, lo, hi, each);
    }
}

/// `nodes` (covering leaves `0..count`) with the leaves of `positions`
/// cut out: the fewest nodes that cover every other leaf below `count`.
pub fn cut(nodes: &[Node], positions: &BTreeSet<u64>, count: u64) -> Vec<Node> {
    fn walk(node: Node, positions: &BTreeSet<u64>, count: u64, out: &mut Vec<Node>) {
        let (start, end) = node.leaves();
        if start >= count {
            return;
        }
        if positions.range(start..end).next().is_none() {
            out.push(node);
        } else if node.depth < DEPTH {
            for child in node.children() {
                walk(child, positions, count, out);
            }
        }
    }
    let mut out = Vec::new();
    for node in nodes {
        walk(*node, positions, count, &mut out);
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Record {
    first: u64,
    count: u32,
    cut: bool,
    seed: Salt,
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut bytes = [0u8; RECORD_LEN];
        bytes[..8].copy_from_slice(&self.first.to_be_bytes());
        bytes[8..12].copy_from_slice(&self.count.to_be_bytes());
        let flags = if self.cut { CUT } else { 0 };
        bytes[12..16].copy_from_slice(&flags.to_be_bytes());
        if !self.cut {
            bytes[16..].copy_from_slice(&self.seed);
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Record {
        let word = |range: std::ops::Range<usize>| -> u32 {
            u32::from_be_bytes(bytes[range].try_into().expect("4 bytes"))
        };
        Record {
            first: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            count: word(8..12),
            cut: word(12..16) & CUT != 0,
            seed: bytes[16..RECORD_LEN].try_into().expect("16 bytes"),
        }
    }

    fn holds(&self, seq: u64) -> bool {
        (self.first..self.first + u64::from(self.count)).contains(&seq)
    }
}

/// The salts of a range of seqs, from [`SaltSeeds::salts`].
pub struct RangeSalts {
    from: u64,
    salts: Vec<Option<Salt>>,
}

impl RangeSalts {
    /// The salt of `seq`: `None` outside the range, or where
    /// [`SaltSeeds::salt`] would give none.
    pub fn get(&self, seq: u64) -> Option<Salt> {
        *self
            .salts
            .get(usize::try_from(seq.checked_sub(self.from)?).ok()?)?
    }
}

struct Inner {
    /// Every seeded batch, in seq order; `[..written]` are in the file.
    records: Vec<Record>,
    written: usize,
    /// The cut keys, by first seq.
    cuts: BTreeMap<u64, Vec<Node>>,
}

/// The seeds of the tree's seeded batches (see the module).
pub struct SaltSeeds {
    dir: PathBuf,
    /// Read by every fetch that needs a salt; written by the WAL thread,
    /// the tree's sync and erasure.
    inner: RwLock<Inner>,
}

impl SaltSeeds {
    /// Reads the seeds under `dir` (the tree's folder), dropping the
    /// records of batches at or past `durable` leaves (and a torn one).
    pub fn open(dir: &Path, durable: u64) -> Result<SaltSeeds, StoreError> {
        let path = dir.join(SEEDS_FILE);
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(io(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let mut records: Vec<Record> = bytes
            .chunks_exact(RECORD_LEN)
            .map(Record::decode)
            .take_while(|r| r.first < durable)
            .collect();
        let keep = (records.len() * RECORD_LEN) as u64;
        if keep != bytes.len() as u64 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            file.set_len(keep).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let cuts = read_cuts(&dir.join(CUTS_FILE))?;
        let seeds = SaltSeeds {
            dir: dir.to_owned(),
            inner: RwLock::new(Inner {
                written: records.len(),
                records: std::mem::take(&mut records),
                cuts,
            }),
        };
        // A cut made but not yet marked in `seeds` (a crash between the
        // two writes): finish it.
        let unmarked: Vec<u64> = {
            let inner = seeds.read();
            inner
                .records
                .iter()
                .filter(|r| !r.cut && inner.cuts.contains_key(&r.first))
                .map(|r| r.first)
                .collect()
        };
        if !unmarked.is_empty() {
            let mut inner = seeds.lock();
            seeds.mark_cut(&mut inner, &unmarked)?;
        }
        Ok(seeds)
    }

    fn lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("seeds lock")
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("seeds lock")
    }

    /// Adds the seed of the batch of `count` events from seq `first`,
    /// unless that batch is there already (a replay). A batch replayed
    /// after its key was cut stays cut.
    pub fn add(&self, first: u64, count: usize, seed: Salt) {
        let mut inner = self.lock();
        if inner.records.last().is_some_and(|r| r.first >= first) {
            return;
        }
        let cut = inner.cuts.contains_key(&first);
        inner.records.push(Record {
            first,
            count: count as u32,
            cut,
            seed: if cut { [0; SALT_LEN] } else { seed },
        });
    }

    /// The salt of the event of `seq`: `None` when its batch has no seed,
    /// or when erasure cut it out. [`DEPTH`] SHA-256 blocks.
    pub fn salt(&self, seq: u64) -> Option<Salt> {
        self.salts(seq, seq.saturating_add(1)).get(seq)
    }

    /// The salts of the seeded events of seqs `[from, to)`, made at once:
    /// what reading a range back (the full audit) asks for, at about one
    /// SHA-256 block an event where [`SaltSeeds::salt`] costs [`DEPTH`].
    pub fn salts(&self, from: u64, to: u64) -> RangeSalts {
        let mut salts = RangeSalts {
            from,
            salts: vec![None; to.saturating_sub(from) as usize],
        };
        // The keys are copied out: the hashing is done without the lock.
        let keys: Vec<(u64, u32, Vec<Node>)> = {
            let inner = self.read();
            let at = inner
                .records
                .partition_point(|r| r.first + u64::from(r.count) <= from);
            inner.records[at..]
                .iter()
                .take_while(|r| r.first < to)
                .filter_map(|r| match r.cut {
                    false => Some((r.first, r.count, vec![Node::root(r.seed)])),
                    true => inner
                        .cuts
                        .get(&r.first)
                        .map(|key| (r.first, r.count, key.clone())),
                })
                .collect()
        };
        for (first, count, key) in keys {
            let (lo, hi) = (
                from.saturating_sub(first),
                (to - first).min(u64::from(count)),
            );
            derive_range(&key, lo, hi, &mut |position, salt| {
                salts.salts[(first + position - from) as usize] = Some(salt);
            });
        }
        salts
    }

    /// Appends the records added since the last call to `tlog/seeds`
    /// (the caller makes them durable).
    pub fn write_new(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.written == inner.records.len() {
            return Ok(());
        }
        let bytes: Vec<u8> = inner.records[inner.written..]
            .iter()
            .flat_map(|r| r.encode())
            .collect();
        let path = self.dir.join(SEEDS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(&bytes).map_err(io(&path))?;
        inner.written = inner.records.len();
        Ok(())
    }

    /// Forgets the salts of `seqs` (those in seeded batches; the others
    /// are not here): cuts their batches' keys and writes them, durably,
    /// before the seeds go. Returns how many were cut.
    pub fn cut(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let mut by_batch: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        for &seq in seqs {
            let at = inner.records.partition_point(|r| r.first <= seq);
            let Some(i) = at.checked_sub(1) else { continue };
            let record = inner.records[i];
            if record.holds(seq) {
                by_batch.entry(i).or_default().insert(seq - record.first);
            }
        }
        let mut done = 0;
        let mut firsts = Vec::new();
        for (i, positions) in &by_batch {
            let record = inner.records[*i];
            let key = match record.cut {
                true => inner.cuts.get(&record.first).cloned().unwrap_or_default(),
                false => vec![Node::root(record.seed)],
            };
            let cut = cut(&key, positions, u64::from(record.count));
            if record.cut && cut == key {
                continue;
            }
            done += positions.len() as u64;
            inner.cuts.insert(record.first, cut);
            firsts.push(record.first);
        }
        if firsts.is_empty() {
            return Ok(0);
        }
        let path = self.dir.join(CUTS_FILE);
        write_atomically(&path, &encode_cuts(&inner.records, &inner.cuts), false)
            .map_err(io(&path))?;
        self.mark_cut(&mut inner, &firsts)?;
        Ok(done)
    }

    /// Marks the batches of `firsts` cut, and zeroes their seeds in
    /// `tlog/seeds` where they are written already.
    fn mark_cut(&self, inner: &mut Inner, firsts: &[u64]) -> Result<(), StoreError> {
        let path = self.dir.join(SEEDS_FILE);
        let mut file = None;
        for first in firsts {
            let i = inner.records.partition_point(|r| r.first < *first);
            let Some(record) = inner.records.get_mut(i).filter(|r| r.first == *first) else {
                continue;
            };
            record.cut = true;
            record.seed = [0; SALT_LEN];
            if i < inner.written {
                if file.is_none() {
                    let opened = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    file = Some(opened);
                }
                let f = file.as_mut().expect("opened");
                f.seek(SeekFrom::Start((i * RECORD_LEN) as u64))
                    .map_err(io(&path))?;
                f.write_all(&record.encode()).map_err(io(&path))?;
            }
        }
        if let Some(f) = file {
            f.sync_all().map_err(io(&path))?;
        }
        Ok(())
    }
}

fn encode_cuts(records: &[Record], cuts: &BTreeMap<u64, Vec<Node>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (first, nodes) in cuts {
        let at = records.partition_point(|r| r.first < *first);
        let count = records
            .get(at)
            .filter(|r| r.first == *first)
            .map_or(0, |r| r.count);
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&(nodes.len() as u16).to_be_bytes());
        for node in nodes {
            out.push(node.depth);
            out.extend_from_slice(&node.index.to_be_bytes());
            out.extend_from_slice(&node.value);
        }
    }
    out
}

fn read_cuts(path: &Path) -> Result<BTreeMap<u64, Vec<Node>>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let damaged = || StoreError::Damaged {
        path: path.to_owned(),
        reason: "a cut key runs past the end of the file".into(),
    };
    let mut cuts = BTreeMap::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let head = rest.get(..14).ok_or_else(damaged)?;
        let first = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let n = u16::from_be_bytes(head[12..14].try_into().expect("2 bytes")) as usize;
        let body = rest.get(14..14 + n * NODE_LEN).ok_or_else(damaged)?;
        let nodes = body
            .chunks_exact(NODE_LEN)
            .map(|b| Node {
                depth: b[0],
                index: u32::from_be_bytes(b[1..5].try_into().expect("4 bytes")),
                value: b[5..].try_into().expect("16 bytes"),
            })
            .collect();
        cuts.insert(first, nodes);
        rest = &rest[14 + n * NODE_LEN..];
    }
    Ok(cuts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(n: u8) -> Salt {
        [n; SALT_LEN]
    }

    #[test]
    fn expanding_a_batch_gives_each_leaf_as_derived_alone() {
        for n in [1usize, 2, 3, 31, 32, 1000, 1 << 16] {
            let salts = expand(&seed(7), n);
            assert_eq!(salts.len(), n);
            for position in [0, n / 2, n - 1] {
                assert_eq!(
                    derive(&[Node::root(seed(7))], position as u64),
                    Some(salts[position]),
                    "n = {n}, position {position}"
                );
            }
        }
        let salts = expand(&seed(7), 1000);
        let distinct: BTreeSet<Salt> = salts.iter().copied().collect();
        assert_eq!(distinct.len(), 1000);
    }

    #[test]
    fn the_vectors_of_docs_integrity_md() {
        let seed = *b"auditd-vector-01";
        let salts = expand(&seed, 1 << 16);
        let want = [
            (0, "4f9554b8a70f629219a62a6013016ce8"),
            (1, "c37e6f9ec52279fdd47eafaceec8751d"),
            (2, "54445984c46ed49c6c667d559eab2c53"),
            (999, "8f5c10ae8932639f47cd917b9f59ca21"),
            (65535, "14f88cab5e413317374e394bbfbc01c9"),
        ];
        for (position, salt) in want {
            assert_eq!(hex::encode(salts[position]), salt, "position {position}");
        }
    }

    #[test]
    fn a_cut_key_gives_every_salt_but_the_cut_ones() {
        let count = 1000u64;
        let salts = expand(&seed(3), count as usize);
        let mut key = vec![Node::root(seed(3))];
        let mut gone = BTreeSet::new();
        for round in [vec![0u64, 517], vec![999, 518, 3]] {
            let positions: BTreeSet<u64> = round.into_iter().collect();
            key = cut(&key, &positions, count);
            gone.extend(positions);
            assert!(
                key.iter().all(|n| n.depth > 0),
                "the seed is not kept: {key:?}"
            );
            for position in 0..count {
                let expected = (!gone.contains(&position)).then_some(salts[position as usize]);
                assert_eq!(derive(&key, position), expected, "position {position}");
            }
        }
        // One erased event costs at most DEPTH nodes.
        let one = cut(&[Node::root(seed(3))], &BTreeSet::from([5]), 1 << 16);
        assert_eq!(one.len(), usize::from(DEPTH));
    }

    #[test]
    fn seeds_survive_a_reopen_and_cuts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = SaltSeeds::open(dir.path(), 0).unwrap();
        seeds.add(10, 40, seed(1));
        seeds.add(50, 100, seed(2));
        seeds.add(50, 100, seed(9)); // a replay: ignored
        seeds.write_new().unwrap();
        seeds.add(150, 64, seed(3)); // pending
        let expected = expand(&seed(2), 100);
        assert_eq!(seeds.salt(60), Some(expected[10]));
        assert_eq!(seeds.salt(9), None);
        assert_eq!(seeds.salt(150), Some(expand(&seed(3), 1)[0]));
        assert_eq!(seeds.cut(&[60, 61, 5, 151]).unwrap(), 3);
        assert_eq!(seeds.salt(60), None);
        assert_eq!(seeds.salt(62), Some(expected[12]));
        assert_eq!(seeds.salt(151), None);
        seeds.write_new().unwrap();
        drop(seeds);

        let file = std::fs::read(dir.path().join(SEEDS_FILE)).unwrap();
        assert_eq!(file.len(), 3 * RECORD_LEN);
        assert!(
            !file.windows(SALT_LEN).any(|w| w == seed(2)),
            "the cut seed is gone from the file"
        );
        // A torn record and one past the durable tree are dropped.
        let mut torn = file.clone();
        torn.extend_from_slice(&[1, 2, 3]);
        std::fs::write(dir.path().join(SEEDS_FILE), &torn).unwrap();
        let seeds = SaltSeeds::open(dir.path(), 150).unwrap();
        assert_eq!(seeds.salt(62), Some(expected[12]));
        assert_eq!(seeds.salt(60), None);
        assert_eq!(seeds.salt(11), Some(expand(&seed(1), 2)[1]));
        assert_eq!(seeds.salt(152), None, "past the durable tree");
        assert_eq!(
            std::fs::metadata(dir.path().join(SEEDS_FILE))
                .unwrap()
                .len(),
            2 * RECORD_LEN as u64
        );
    }

    #[test]
    fn a_range_s_salts_are_each_seq_s_salt() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = SaltSeeds::open(dir.path(), 0).unwrap();
        // Seqs 0..10 and 150..160 have no seed; 110 and 40..42 are cut.
        let batches = [
            (10u64, 40usize, seed(1)),
            (50, 100, seed(2)),
            (160, 1000, seed(3)),
        ];
        for (first, count, seed) in batches {
            seeds.add(first, count, seed);
        }
        let cut = [40, 41, 110];
        assert_eq!(seeds.cut(&cut).unwrap(), 3);
        // Each salt as the whole batch's expansion gives it.
        let expanded: Vec<Vec<Salt>> = batches.iter().map(|(_, n, s)| expand(s, *n)).collect();
        let expected = |seq: u64| {
            let at = batches
                .iter()
                .position(|(first, count, _)| (*first..first + *count as u64).contains(&seq))?;
            (!cut.contains(&seq)).then(|| expanded[at][(seq - batches[at].0) as usize])
        };
        let ranges = [
            (0, 1200),
            (5, 12),
            (45, 55),
            (100, 170),
            (161, 162),
            (900, 2000),
        ];
        for (from, to) in ranges {
            let salts = seeds.salts(from, to);
            for seq in from.saturating_sub(3)..to + 3 {
                let want = (from..to).contains(&seq).then(|| expected(seq)).flatten();
                assert_eq!(salts.get(seq), want, "seq {seq} of {from}..{to}");
                assert_eq!(seeds.salt(seq), expected(seq), "seq {seq} alone");
            }
        }
        assert_eq!(seeds.salts(0, 1200).get(110), None);
        assert!(seeds.salts(0, 1200).get(111).is_some());
        assert!(seeds.salts(7, 7).get(7).is_none());
    }

    #[test]
    fn a_batch_replayed_after_its_cut_stays_cut() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = SaltSeeds::open(dir.path(), 0).unwrap();
        seeds.add(0, 64, seed(5));
        // Cut before the tree's sync wrote it; then a crash.
        seeds.cut(&[3]).unwrap();
        drop(seeds);
        let seeds = SaltSeeds::open(dir.path(), 0).unwrap();
        seeds.add(0, 64, seed(5)); // the replay
        assert_eq!(seeds.salt(3), None);
        assert_eq!(seeds.salt(4), Some(expand(&seed(5), 5)[4]));
    }

    #[test]
    fn a_cut_written_but_not_marked_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = SaltSeeds::open(dir.path(), 0).unwrap();
        seeds.add(0, 64, seed(4));
        seeds.write_new().unwrap();
        let before = std::fs::read(dir.path().join(SEEDS_FILE)).unwrap();
        seeds.cut(&[7]).unwrap();
        drop(seeds);
        // As if the crash came before the seed was zeroed.
        std::fs::write(dir.path().join(SEEDS_FILE), &before).unwrap();
        let seeds = SaltSeeds::open(dir.path(), 64).unwrap();
        assert_eq!(seeds.salt(7), None);
        assert_eq!(seeds.salt(8), Some(expand(&seed(4), 9)[8]));
        let after = std::fs::read(dir.path().join(SEEDS_FILE)).unwrap();
        assert!(!after.windows(SALT_LEN).any(|w| w == seed(4)));
    }
}

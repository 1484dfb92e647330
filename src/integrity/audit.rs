//! The full audit: every stored event's leaf recomputed and held against
//! the tree, and the tree held against a signed checkpoint.
//!
//! Window by window (`AUDIT_WINDOW` seqs), the stored events of the
//! window are read from the index and their leaves recomputed; the
//! tree's level-0 tiles give the leaves it holds. For each seq:
//!
//! - no stored event: `missing` (an event lost to damaged log bytes, whose
//!   leaf is the lost leaf, says so);
//! - an event whose leaf is another seq's: `reordered`;
//! - an event whose leaf is nobody's: `modified`;
//! - a second event with the same seq: `unexpected` (a forged one);
//! - no stored event, and retention dropped its day: `expired`, lawful
//!   (one problem per run of such seqs, naming the drop).
//!
//! The tiles are checked too: each full level-0 tile must hash up to the
//! node the level above holds, and the leaves of `[0, size)` must give the
//! checkpoint's signed root. A leaf hash changed in a tile shows as
//! `modified` at its seq, the detail naming the tile.

use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;

use super::compact::{fingerprint, pick_leaves, Fingerprint, LeafSource};
use super::leaf::lost_leaf_hash;
use super::merkle::{leaf_hash, Frontier, Hash};
use super::opening::Opening;
use super::seeds::SaltSeeds;
use super::store::{tile_root, HeldTile, SnapshotError, TreeSnapshot};
use super::tiles::{TileId, TILE_HEIGHT, TILE_WIDTH};
use crate::partition::Day;
use crate::proto::AuditEvent;
use crate::retention::{expired_at, Expired};
use crate::search::{SearchError, Searcher};

/// The index as the tree's [`LeafSource`]: where a compacted tile is
/// read back from.
pub struct IndexLeaves(pub Searcher);

impl LeafSource for IndexLeaves {
    fn indexed(&self) -> u64 {
        *self.0.searchable().borrow()
    }

    fn seq_days(&self, from: u64, to: u64) -> Result<Vec<(u64, Day)>, String> {
        self.0.seq_days(from, to).map_err(|e| e.to_string())
    }

    /// A tile's events in two runs, one a core: in runs of 8, the
    /// hand-offs cost more than the leaves.
    fn leaves(&self, from: u64, to: u64) -> Result<Vec<(u64, Option<Hash>)>, String> {
        let run = (to.saturating_sub(from) as usize).div_ceil(2);
        self.0
            .map_stored_range(from, to, run, |event, opening| {
                let leaf = opening.map(|o| leaf_of(&event, &o, &mut Vec::new()));
                (event.seq, leaf)
            })
            .map_err(|e| e.to_string())
    }
}

/// The leaf hash `event` gives with `opening`.
fn leaf_of(event: &AuditEvent, opening: &Opening, scratch: &mut Vec<u8>) -> Hash {
    leaf_hash(&opening.leaf_bytes(event, scratch))
}

/// Seqs read and checked at once by a full audit: bounds the events held
/// in memory (tens of megabytes of decoded events), and how far apart two
/// swapped events can be and still be named `reordered`. A window is a
/// multiple of the tile width, so no tile straddles two.
pub const AUDIT_WINDOW: u64 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the index: {0}")]
    Search(#[from] SearchError),
    #[error("the Merkle tree: {0}")]
    Tree(#[from] SnapshotError),
}

/// One seq that does not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub seq: u64,
    pub kind: &'static str,
    pub detail: String,
}

/// Kinds that report a lawful removal, not a fault.
pub const LAWFUL: [&str; 2] = ["expired", "erased"];

impl Problem {
    pub fn is_lawful(&self) -> bool {
        LAWFUL.contains(&self.kind)
    }
}

/// What the audit has done so far: reported after every window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub checked: u64,
    pub total: u64,
    /// The problems found in the window just checked.
    pub problems: Vec<Problem>,
    pub done: bool,
}

/// Audits `seqs` of the tree in `snapshot`, whose first `signed.0`
/// leaves a checkpoint signed with root `signed.1`, `window` seqs at a
/// time (a multiple of the tile width; [`AUDIT_WINDOW`] for a full
/// audit). `report` gets the progress after each window and may stop the
/// audit by answering `false`.
pub fn audit(
    searcher: &Searcher,
    snapshot: &TreeSnapshot,
    signed: (u64, Hash),
    expired: &[Expired],
    seqs: Range<u64>,
    window: u64,
    mut report: impl FnMut(Progress) -> bool,
) -> Result<(), AuditError> {
    assert!(
        window > 0 && window.is_multiple_of(TILE_WIDTH),
        "an audit window is whole tiles"
    );
    let (signed_size, signed_root) = signed;
    let to = seqs.end.min(snapshot.size());
    let from = seqs.start.min(to);
    let total = to - from;
    // The root is rebuilt from the tiles' leaves when the audit starts at
    // 0 and covers the signed size.
    let mut frontier = (from == 0 && to >= signed_size).then(Frontier::default);
    let mut checked = 0;
    // A changed level-0 tile also changes the root its leaves give: that
    // is reported once, at the tile.
    let mut tiles_damaged = false;
    let mut start = from - from % window;
    while start < to {
        let end = (start + window).min(snapshot.size());
        let (lo, hi) = (start.max(from), end.min(to));
        // Whole tiles' events: a compacted tile is checked as a whole.
        let tiles_lo = lo - lo % TILE_WIDTH;
        let tiles_hi = hi.div_ceil(TILE_WIDTH).saturating_mul(TILE_WIDTH).min(end);
        let stored = searcher.stored_range(tiles_lo, tiles_hi)?;
        let computed = computed_leaves(&stored);
        let seeds = searcher.seeds();
        let held = held_leaves(
            snapshot,
            start,
            end,
            &computed,
            signed_size,
            &mut frontier,
            seeds,
        )?;
        // Tile findings first: for the same seq, theirs is the detail kept.
        let mut problems = check_tiles(snapshot, start, &held, &computed)?;
        problems.extend(held.problems);
        tiles_damaged |= !problems.is_empty();
        let inside = seqs_within(&computed, lo, hi);
        problems.extend(check_window(
            start,
            &held.leaves,
            lo,
            hi,
            inside,
            expired,
            seeds,
        ));
        problems.sort_by_key(|p| p.seq);
        problems.dedup_by(|a, b| a.seq == b.seq && a.kind == b.kind);
        checked += hi - lo;
        let last = hi >= to;
        if last {
            if let Some(frontier) = &frontier {
                if frontier.size() == signed_size
                    && frontier.root() != signed_root
                    && !tiles_damaged
                {
                    problems.push(Problem {
                        seq: signed_size.saturating_sub(1),
                        kind: "modified",
                        detail: format!(
                            "the tiles' leaves do not give the root signed for {signed_size} leaves"
                        ),
                    });
                }
            }
        }
        let going_on = report(Progress {
            checked,
            total,
            problems,
            done: last,
        });
        if !going_on {
            return Ok(());
        }
        start = end;
    }
    if total == 0 {
        report(Progress {
            checked: 0,
            total: 0,
            problems: Vec::new(),
            done: true,
        });
    }
    Ok(())
}

/// What the tree holds for a window, tile by tile.
struct HeldLeaves {
    /// A leaf hash for each seq: the stored tile's, or for a compacted
    /// tile what its events and fingerprints tell ([`compacted_leaves`]).
    leaves: Vec<Hash>,
    /// Which tiles (by position in the window) were stored, not compacted.
    stored: Vec<bool>,
    /// The compacted tiles' own findings.
    problems: Vec<Problem>,
}

/// The leaves the tree holds for `[start, end)`, pushing the tree's
/// nodes below `signed_size` into `frontier` (dropped where a compacted
/// tile that straddles the signed size does not check out).
fn held_leaves(
    snapshot: &TreeSnapshot,
    start: u64,
    end: u64,
    computed: &[Computed],
    signed_size: u64,
    frontier: &mut Option<Frontier>,
    seeds: Option<&SaltSeeds>,
) -> Result<HeldLeaves, AuditError> {
    let mut held = HeldLeaves {
        leaves: Vec::with_capacity((end - start) as usize),
        stored: Vec::new(),
        problems: Vec::new(),
    };
    for index in start / TILE_WIDTH..end.div_ceil(TILE_WIDTH) {
        let first = index * TILE_WIDTH;
        let (leaves, above) = match snapshot.held(index)? {
            HeldTile::Hashes(hashes) => (hashes, None),
            HeldTile::Compacted { above, prints } => {
                let (leaves, problem) = compacted_leaves(first, &above, &prints, computed, seeds);
                let intact = problem.is_none() && tile_root(&leaves) == above;
                held.problems.extend(problem);
                (leaves, Some((above, intact)))
            }
        };
        held.stored.push(above.is_none());
        let below_signed = signed_size.saturating_sub(first).min(leaves.len() as u64);
        match (frontier.as_mut(), above) {
            (Some(f), Some((above, _))) if below_signed == TILE_WIDTH => {
                f.push_subtree(above, TILE_HEIGHT)
            }
            (Some(_), Some((_, false))) if below_signed > 0 => *frontier = None,
            (Some(f), _) => leaves[..below_signed as usize]
                .iter()
                .for_each(|l| f.push(*l)),
            (None, _) => {}
        }
        held.leaves.extend(leaves);
    }
    Ok(held)
}

/// What a stored event gives: its seq, its leaf hash (`None`: it has no
/// salt) and the erasure request that removed parts of it, if any.
struct Computed<'a> {
    seq: u64,
    leaf: Option<Hash>,
    erased_by: Option<&'a str>,
    event: &'a AuditEvent,
    opening: Option<&'a Opening>,
}

/// How many seqs, nearest first, the audit tries as the one a seeded
/// event was moved from ([`leaf_at`]); farther, it is called modified.
const MOVED_CANDIDATES: usize = 64;

/// What gives the leaf `c`'s event would have at another seq, when its
/// salt is the seed's salt of the seq it is stored at
/// (`integrity::seeds`): an event of a seeded batch moved here from `at`
/// gives `at`'s leaf with `at`'s salt. `None` for any other event. Only
/// asked of an event whose own leaf did not match.
fn moved_leaves<'a>(
    c: &'a Computed,
    seeds: Option<&'a SaltSeeds>,
) -> Option<impl Fn(u64) -> Option<Hash> + 'a> {
    let seeds = seeds?;
    let Some(Opening::Salt(version, salt)) = c.opening else {
        return None;
    };
    (seeds.salt(c.seq) == Some(*salt)).then_some(move |at: u64| {
        let moved = Opening::Salt(*version, seeds.salt(at)?);
        Some(leaf_of(c.event, &moved, &mut Vec::new()))
    })
}

/// The seq among `unmatched` (sorted; seqs whose held leaf no stored
/// event gives) that `c`, stored at another seq, is the event of: the
/// [`MOVED_CANDIDATES`] nearest are tried.
fn moved_from(
    c: &Computed,
    unmatched: &[u64],
    leaf_held: impl Fn(u64) -> Hash,
    seeds: Option<&SaltSeeds>,
) -> Option<u64> {
    let leaf_at = moved_leaves(c, seeds)?;
    let at = unmatched.partition_point(|t| *t < c.seq);
    let below = unmatched[..at]
        .iter()
        .rev()
        .map(Some)
        .chain(std::iter::repeat(None));
    let above = unmatched[at..]
        .iter()
        .map(Some)
        .chain(std::iter::repeat(None));
    below
        .zip(above)
        .take_while(|(a, b)| a.is_some() || b.is_some())
        .flat_map(|(a, b)| a.into_iter().chain(b))
        .copied()
        .filter(|t| *t != c.seq)
        .take(MOVED_CANDIDATES)
        .find(|t| leaf_at(*t) == Some(leaf_held(*t)))
}

/// `0..len` but `at`, nearest to `at` first.
fn nearest(at: usize, len: usize) -> impl Iterator<Item = usize> {
    (1..len)
        .flat_map(move |d| [at.checked_sub(d), Some(at + d).filter(|j| *j < len)])
        .flatten()
}

/// Each stored event's leaf, computed once for every check (in seq
/// order, as `stored` is).
fn computed_leaves(stored: &[(AuditEvent, Option<Opening>)]) -> Vec<Computed<'_>> {
    stored
        .par_iter()
        .map_init(Vec::new, |scratch, (event, opening)| Computed {
            seq: event.seq,
            leaf: opening.as_ref().map(|o| leaf_of(event, o, scratch)),
            erased_by: opening.as_ref().and_then(Opening::erased_by),
            event,
            opening: opening.as_ref(),
        })
        .collect()
}

/// The events of `[lo, hi)` among `computed` (in seq order).
fn seqs_within<'a, 'b>(computed: &'a [Computed<'b>], lo: u64, hi: u64) -> &'a [Computed<'b>] {
    let a = computed.partition_point(|c| c.seq < lo);
    let b = computed.partition_point(|c| c.seq < hi);
    &computed[a..b]
}

/// A hash no event gives: what a compacted tile "held" at a seq whose
/// leaf its events do not tell.
fn unknown_leaf(seq: u64) -> Hash {
    leaf_hash(format!("auditd: no leaf is known for seq {seq}").as_bytes())
}

/// The leaves of the compacted tile starting at `first` (node above it
/// `above`, fingerprints `prints`), as far as its stored events tell.
/// When they hash up to `above`, they are its leaves. Otherwise each seq
/// holds its event's leaf where that carries the seq's fingerprint, the
/// leaf of an event found at another seq where it carries this one's
/// (so the window check calls the two reordered), and a leaf nobody gives
/// for the rest (so it calls them modified or missing). When no seq is
/// left to blame, the tile itself is the problem.
fn compacted_leaves(
    first: u64,
    above: &Hash,
    prints: &[Fingerprint],
    computed: &[Computed],
    seeds: Option<&SaltSeeds>,
) -> (Vec<Hash>, Option<Problem>) {
    let end = first + TILE_WIDTH;
    let leaves: Vec<(u64, Option<Hash>)> = seqs_within(computed, first, end)
        .iter()
        .map(|c| (c.seq, c.leaf))
        .collect();
    let picked = pick_leaves(first, &leaves, prints);
    if let Some(all) = picked.iter().copied().collect::<Option<Vec<Hash>>>() {
        if tile_root(&all) == *above {
            return (all, None);
        }
    }
    let fits = |at: usize, leaf: &Hash| fingerprint(leaf) == prints[at];
    let mut held: Vec<Hash> = (0..TILE_WIDTH as usize)
        .map(|at| match picked[at] {
            Some(leaf) if fits(at, &leaf) => leaf,
            _ => unknown_leaf(first + at as u64),
        })
        .collect();
    for c in seqs_within(computed, first, end) {
        let (at, Some(leaf)) = ((c.seq - first) as usize, c.leaf) else {
            continue;
        };
        if fits(at, &leaf) {
            continue;
        }
        let unknown = |j: usize| j != at && held[j] == unknown_leaf(first + j as u64);
        // Moved here from `j`: its leaf, or for a seeded event the leaf
        // it gives with `j`'s salt, carries `j`'s fingerprint.
        let moved = (0..held.len())
            .find(|&j| unknown(j) && fits(j, &leaf))
            .map(|j| (j, leaf))
            .or_else(|| {
                let leaf_at = moved_leaves(c, seeds)?;
                nearest(at, held.len())
                    .filter(|&j| unknown(j))
                    .take(MOVED_CANDIDATES)
                    .find_map(|j| {
                        let moved = leaf_at(first + j as u64)?;
                        fits(j, &moved).then_some((j, moved))
                    })
            });
        if let Some((j, leaf)) = moved {
            held[j] = leaf;
        }
    }
    let blamed = (0..held.len()).any(|at| held[at] == unknown_leaf(first + at as u64));
    let problem = (!blamed && !leaves.is_empty()).then(|| Problem {
        seq: first,
        kind: "modified",
        detail: format!(
            "the stored events of seqs {first} to {} carry their leaves' fingerprints but do \
             not hash up to the node above them (level-1 tile {}): that node, or an event \
             together with its 12-bit fingerprint, was changed",
            end - 1,
            TileId {
                level: 1,
                index: first / TILE_WIDTH / TILE_WIDTH,
                width: TILE_WIDTH,
            }
            .path()
        ),
    });
    (held, problem)
}

/// Each seq of `[lo, hi)` against the stored events of the window that
/// starts at `start` and whose held leaves are `held`.
fn check_window(
    start: u64,
    held: &[Hash],
    lo: u64,
    hi: u64,
    computed: &[Computed],
    expired: &[Expired],
    seeds: Option<&SaltSeeds>,
) -> Vec<Problem> {
    let owner: HashMap<Hash, u64> = held
        .iter()
        .enumerate()
        .map(|(i, h)| (*h, start + i as u64))
        .collect();
    let leaf_held = |seq: u64| held[(seq - start) as usize];
    // The seqs no stored event gives the held leaf of: where a moved
    // seeded event may come from.
    let mut matched = vec![false; (hi - lo) as usize];
    for c in computed {
        if (lo..hi).contains(&c.seq) && c.leaf == Some(leaf_held(c.seq)) {
            matched[(c.seq - lo) as usize] = true;
        }
    }
    let unmatched: Vec<u64> = (lo..hi).filter(|t| !matched[(t - lo) as usize]).collect();
    let mut problems = Vec::new();
    // Lawfully gone: dropped by retention, or erased on request.
    let mut gone: Vec<(u64, &str)> = Vec::new();
    let mut erased: Vec<(u64, &str)> = Vec::new();
    let mut next = lo;
    let mut i = 0;
    while next < hi || i < computed.len() {
        // The stored events of seq `next` (computed is in seq order).
        let mut found = Vec::new();
        let mut erased_by = Vec::new();
        let here = i;
        while i < computed.len() && computed[i].seq == next {
            found.push(computed[i].leaf);
            erased_by.push(computed[i].erased_by);
            i += 1;
        }
        let docs = &computed[here..i];
        if next >= hi {
            break;
        }
        let want = held[(next - start) as usize];
        let matched = found.iter().position(|h| *h == Some(want));
        match (found.is_empty(), matched) {
            (true, _) if expired_at(expired, next).is_some() => {
                gone.push((next, &expired_at(expired, next).expect("checked").detail));
            }
            (true, _) if want == lost_leaf_hash() => problems.push(Problem {
                seq: next,
                kind: "missing",
                detail: "lost to damaged log bytes before its leaf was made (auditd recover)"
                    .into(),
            }),
            (true, _) => problems.push(Problem {
                seq: next,
                kind: "missing",
                detail: "no stored event has this seq".into(),
            }),
            (false, Some(at)) => {
                if let Some(request) = erased_by[at] {
                    erased.push((next, request));
                }
            }
            (false, None) => {
                let first = found[0];
                let moved = || {
                    docs.iter()
                        .find_map(|c| moved_from(c, &unmatched, leaf_held, seeds))
                };
                let (kind, detail) = match first.and_then(|h| owner.get(&h).copied()).or_else(moved)
                {
                    Some(other) => (
                        "reordered",
                        format!("the stored event here is the one of seq {other}"),
                    ),
                    None if first.is_none() => ("modified", "the stored event has no salt".into()),
                    None => (
                        "modified",
                        "the stored event does not give the leaf the tree holds".into(),
                    ),
                };
                problems.push(Problem {
                    seq: next,
                    kind,
                    detail,
                });
            }
        }
        if found.len() > 1 {
            problems.push(Problem {
                seq: next,
                kind: "unexpected",
                detail: format!("{} stored events share this seq", found.len()),
            });
        }
        next += 1;
    }
    problems.extend(lawful_runs("expired", &gone, |detail| detail.to_owned()));
    problems.extend(lawful_runs("erased", &erased, |request| {
        format!("personal fields erased by request {request}; the rest still gives its leaf")
    }));
    problems
}

/// One problem of `kind` per run of consecutive seqs (in order) with the
/// same detail source, described by `describe`.
fn lawful_runs(
    kind: &'static str,
    seqs: &[(u64, &str)],
    describe: impl Fn(&str) -> String,
) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let (first, source) = seqs[i];
        let mut last = first;
        while i + 1 < seqs.len() && seqs[i + 1].0 == last + 1 && seqs[i + 1].1 == source {
            i += 1;
            last += 1;
        }
        out.push(Problem {
            seq: first,
            kind,
            detail: format!(
                "{} event(s), seqs {first} to {last}: {}",
                last - first + 1,
                describe(source)
            ),
        });
        i += 1;
    }
    out
}

/// Each full level-0 tile of the window against the node above it. A
/// tile that no longer hashes up to it was changed: the leaves whose
/// stored event's hash, put back in the tile, make it hash up again are
/// named (one leaf alone, else all that differ); if none do, the tile is.
fn check_tiles(
    snapshot: &TreeSnapshot,
    start: u64,
    held: &HeldLeaves,
    computed: &[Computed],
) -> Result<Vec<Problem>, AuditError> {
    let mut problems = Vec::new();
    for (t, tile) in held.leaves.chunks(TILE_WIDTH as usize).enumerate() {
        if tile.len() as u64 != TILE_WIDTH || !held.stored[t] {
            continue;
        }
        let index = start / TILE_WIDTH + t as u64;
        let above = snapshot
            .nodes()
            .try_node(TILE_HEIGHT, index)
            .map_err(SnapshotError::from)?;
        if tile_root(tile) == above {
            continue;
        }
        let first = index * TILE_WIDTH;
        let path = TileId {
            level: 0,
            index,
            width: TILE_WIDTH,
        }
        .path();
        // Where the stored events make other hashes than the tile holds.
        let mut differ: Vec<(usize, Hash)> = Vec::new();
        for c in seqs_within(computed, first, first + TILE_WIDTH) {
            let Some(hash) = c.leaf else {
                continue;
            };
            let at = (c.seq - first) as usize;
            if hash != tile[at] && !differ.iter().any(|(p, _)| *p == at) {
                differ.push((at, hash));
            }
        }
        let fixes = |repairs: &[(usize, Hash)]| {
            let mut repaired = tile.to_vec();
            for (at, hash) in repairs {
                repaired[*at] = *hash;
            }
            tile_root(&repaired) == above
        };
        let changed: Vec<usize> = match differ.iter().find(|d| fixes(std::slice::from_ref(d))) {
            Some((at, _)) => vec![*at],
            None if !differ.is_empty() && fixes(&differ) => differ.iter().map(|d| d.0).collect(),
            None => Vec::new(),
        };
        for at in &changed {
            problems.push(Problem {
                seq: first + *at as u64,
                kind: "modified",
                detail: format!(
                    "the hash tile {path} was changed at this leaf (the stored event is intact)"
                ),
            });
        }
        if changed.is_empty() {
            problems.push(Problem {
                seq: first,
                kind: "modified",
                detail: format!("the hash tile {path} does not hash up to the tree above it"),
            });
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::leaf::{Salt, Version};

    /// A compacted tile's 256 stored events (seqs from `first`), its node
    /// above and its fingerprints. The salts are fixed, so that a 12-bit
    /// fingerprint that happens to match another seq's (1 in 4,096) is
    /// either always there or never.
    type Stored = Vec<(AuditEvent, Option<Opening>)>;

    fn tile_of_events(first: u64) -> (Stored, Hash, Vec<Fingerprint>) {
        let stored: Stored = (first..first + TILE_WIDTH)
            .map(|seq| {
                let event = AuditEvent {
                    id: format!("event-{seq}"),
                    seq,
                    action: "events.get".into(),
                    ..Default::default()
                };
                let salt: Salt = [seq as u8; 16];
                (event, Some(Opening::Salt(Version::CURRENT, salt)))
            })
            .collect();
        let leaves: Vec<Hash> = stored
            .iter()
            .map(|(e, o)| leaf_of(e, o.as_ref().unwrap(), &mut Vec::new()))
            .collect();
        let prints = leaves.iter().map(fingerprint).collect();
        (stored, tile_root(&leaves), prints)
    }

    fn blamed(first: u64, held: &[Hash]) -> Vec<u64> {
        (0..held.len() as u64)
            .filter(|at| held[*at as usize] == unknown_leaf(first + at))
            .map(|at| first + at)
            .collect()
    }

    #[test]
    fn a_compacted_tile_names_the_changed_and_the_swapped_seqs_by_their_fingerprints() {
        let first = 512;
        let (stored, above, prints) = tile_of_events(first);
        let (held, problem) =
            compacted_leaves(first, &above, &prints, &computed_leaves(&stored), None);
        assert_eq!((tile_root(&held), problem), (above, None), "intact");

        // One changed, two swapped, one gone.
        let mut tampered = stored.clone();
        tampered[5].0.status = 599;
        tampered[7].0.seq = first + 9;
        tampered[9].0.seq = first + 7;
        tampered.remove(20);
        tampered.sort_by_key(|(e, _)| e.seq);
        let tampered = computed_leaves(&tampered);
        let (held, problem) = compacted_leaves(first, &above, &prints, &tampered, None);
        assert_eq!(problem, None, "every mismatch is named by a seq");
        assert_eq!(blamed(first, &held), vec![first + 5, first + 20]);
        let window = check_window(
            first,
            &held,
            first,
            first + TILE_WIDTH,
            &tampered,
            &[],
            None,
        );
        let kinds: Vec<(u64, &str)> = window.iter().map(|p| (p.seq - first, p.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (5, "modified"),
                (7, "reordered"),
                (9, "reordered"),
                (20, "missing")
            ]
        );

        // Nothing stored: the window check says missing (or expired).
        let (held, problem) = compacted_leaves(first, &above, &prints, &[], None);
        assert_eq!(
            (blamed(first, &held).len(), problem),
            (TILE_WIDTH as usize, None)
        );
    }

    #[test]
    fn the_seqs_tried_for_a_moved_event_go_out_from_it() {
        assert_eq!(nearest(2, 5).collect::<Vec<_>>(), vec![1, 3, 0, 4]);
        assert_eq!(nearest(0, 3).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(nearest(0, 1).count(), 0);
    }

    #[test]
    fn a_node_above_that_its_intact_events_do_not_give_is_the_tiles_problem() {
        let first = 0;
        let (stored, _, prints) = tile_of_events(first);
        let (held, problem) =
            compacted_leaves(first, &[7; 32], &prints, &computed_leaves(&stored), None);
        assert!(blamed(first, &held).is_empty());
        let problem = problem.expect("a problem at the tile");
        assert_eq!((problem.seq, problem.kind), (0, "modified"));
        assert!(problem.detail.contains("tile/1/000"), "{problem:?}");
    }
}

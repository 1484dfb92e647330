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

use rayon::prelude::*;

use super::leaf::lost_leaf_hash;
use super::merkle::{leaf_hash, Frontier, Hash};
use super::opening::Opening;
use super::store::{tile_root, SnapshotError, TreeSnapshot};
use super::tiles::{TileId, TILE_HEIGHT, TILE_WIDTH};
use crate::proto::AuditEvent;
use crate::retention::{expired_at, Expired};
use crate::search::{SearchError, Searcher};

/// Seqs read and checked at once: bounds the events held in memory (a
/// multiple of the tile width, so no tile straddles two windows).
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

/// Audits seqs `[from, to)` of the tree in `snapshot`, whose first
/// `signed.0` leaves a checkpoint signed with root `signed.1`. `report`
/// gets the progress after each window and may stop the audit by
/// answering `false`.
pub fn audit(
    searcher: &Searcher,
    snapshot: &TreeSnapshot,
    signed: (u64, Hash),
    expired: &[Expired],
    from: u64,
    to: u64,
    mut report: impl FnMut(Progress) -> bool,
) -> Result<(), AuditError> {
    let (signed_size, signed_root) = signed;
    let to = to.min(snapshot.size());
    let from = from.min(to);
    let total = to - from;
    // The root is rebuilt from the tiles' leaves when the audit starts at
    // 0 and covers the signed size.
    let mut frontier = (from == 0 && to >= signed_size).then(Frontier::default);
    let mut checked = 0;
    // A changed level-0 tile also changes the root its leaves give: that
    // is reported once, at the tile.
    let mut tiles_damaged = false;
    let mut start = from - from % AUDIT_WINDOW;
    while start < to {
        let end = (start + AUDIT_WINDOW).min(snapshot.size());
        let held = tile_leaves(snapshot, start, end)?;
        if let Some(frontier) = &mut frontier {
            for hash in held.iter().take(signed_size.saturating_sub(start) as usize) {
                frontier.push(*hash);
            }
        }
        let (lo, hi) = (start.max(from), end.min(to));
        let stored = searcher.stored_range(lo, hi)?;
        // Tile findings first: for the same seq, theirs is the detail kept.
        let mut problems = check_tiles(snapshot, start, &held, &stored)?;
        tiles_damaged |= !problems.is_empty();
        problems.extend(check_window(start, &held, lo, hi, &stored, expired));
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

/// The leaf hashes the tree holds for `[start, end)`, tile by tile.
fn tile_leaves(snapshot: &TreeSnapshot, start: u64, end: u64) -> Result<Vec<Hash>, AuditError> {
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut tile = start / TILE_WIDTH;
    while tile * TILE_WIDTH < end {
        let hashes = snapshot
            .nodes()
            .fetch_tile(0, tile)
            .map_err(SnapshotError::from)?;
        let first = tile * TILE_WIDTH;
        for (i, hash) in hashes.iter().enumerate() {
            let seq = first + i as u64;
            if (start..end).contains(&seq) {
                out.push(*hash);
            }
        }
        tile += 1;
    }
    Ok(out)
}

/// Each seq of `[lo, hi)` against the stored events of the window that
/// starts at `start` and whose held leaves are `held`.
fn check_window(
    start: u64,
    held: &[Hash],
    lo: u64,
    hi: u64,
    stored: &[(AuditEvent, Option<Opening>)],
    expired: &[Expired],
) -> Vec<Problem> {
    let owner: HashMap<Hash, u64> = held
        .iter()
        .enumerate()
        .map(|(i, h)| (*h, start + i as u64))
        .collect();
    let computed: Vec<(u64, Option<Hash>, Option<&str>)> = stored
        .par_iter()
        .map(|(event, salt)| {
            let hash = salt
                .as_ref()
                .map(|opening| leaf_hash(&opening.leaf_bytes(event, &mut Vec::new())));
            let erased = salt.as_ref().and_then(Opening::erased_by);
            (event.seq, hash, erased)
        })
        .collect();
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
        while i < computed.len() && computed[i].0 == next {
            found.push(computed[i].1);
            erased_by.push(computed[i].2);
            i += 1;
        }
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
                let (kind, detail) = match first.and_then(|h| owner.get(&h)) {
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
    held: &[Hash],
    stored: &[(AuditEvent, Option<Opening>)],
) -> Result<Vec<Problem>, AuditError> {
    let mut problems = Vec::new();
    for (t, tile) in held.chunks(TILE_WIDTH as usize).enumerate() {
        if tile.len() as u64 != TILE_WIDTH {
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
        for (event, salt) in stored {
            let (Some(salt), true) = (salt, (first..first + TILE_WIDTH).contains(&event.seq))
            else {
                continue;
            };
            let at = (event.seq - first) as usize;
            let hash = leaf_hash(&salt.leaf_bytes(event, &mut Vec::new()));
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

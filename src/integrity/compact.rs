//! Level-0 tiles the index stands in for.
//!
//! A level-0 tile holds 32 bytes a leaf: a quarter of the index again
//! (BENCHMARKS.md, issue 19). Yet every leaf can be recomputed from its
//! stored event (`leaf`, `opening`), and the tile's root is held one level
//! up. So once the index has committed a whole level-1 tile's span of
//! leaves ([`BLOCK_LEAVES`]), the auditd-tlog thread *compacts* it:
//!
//! 1. It writes the block's *fingerprints*, the first 12 bits of each
//!    leaf hash, read from its level-0 tiles, to
//!    `tlog/fingerprints/<block>` (1.5 bytes a leaf, made durable).
//! 2. It lets go of each level-0 tile whose 256 seqs each have exactly
//!    one stored event, all in the same day partition. Retention drops
//!    whole days, so such a tile's events go together or not at all; a
//!    tile that mixes days, misses an event (lost to damaged log bytes)
//!    or holds a forged second one gets a file of its own
//!    (`tile/0/<N>`), and then the block's file of tiles (`leaves/<b>`)
//!    is removed.
//!
//! Reading a removed tile (a proof, `/tlog/tile/0/…`) recomputes its
//! leaves from the stored events, picking, where a seq has more than one,
//! the one whose fingerprint matches, and refuses the result unless it
//! hashes up to the node above. The fingerprints add no trust: the node
//! above does. They let the full audit name which seq of a compacted tile
//! was changed, where otherwise it could only name the tile.

use std::path::{Path, PathBuf};

use super::merkle::Hash;
use super::store::{
    io, leaves_path, read_level0, sync_filesystem, tile_path, write_tile, StoreError,
};
use super::tiles::{TileId, TILE_WIDTH};
use crate::datadir::write_atomically;
use crate::partition::Day;

/// Leaves a fingerprint file covers, and the unit of compaction: one
/// full level-1 tile's span.
pub const BLOCK_LEAVES: u64 = TILE_WIDTH * TILE_WIDTH;
/// Under `tlog/`.
pub const FINGERPRINT_DIR: &str = "fingerprints";
/// The first bytes of a fingerprint file: its format and version. A
/// version 2 file packs two 12-bit fingerprints into 3 bytes; version 1
/// (data formats 3 to 6) held the first 16 bits of each leaf hash in 2
/// bytes, of which the first 12 are read.
const FINGERPRINT_MAGIC: &[u8; 4] = b"afp2";
const FINGERPRINT_MAGIC_V1: &[u8; 4] = b"afp1";
/// A fingerprint file's length: the magic, then 1.5 bytes a leaf (2 in
/// version 1).
const FINGERPRINT_FILE_BYTES: u64 = 4 + BLOCK_LEAVES * 3 / 2;
const FINGERPRINT_FILE_BYTES_V1: u64 = 4 + BLOCK_LEAVES * 2;
/// How many blocks were compacted, so a restart resumes after them.
const DONE_FILE: &str = "compacted.json";

/// A leaf hash's first 12 bits, big-endian: enough to locate a changed
/// event in its tile but for 1 in 4,096 (the node above, not the
/// fingerprint, is what detects the change).
pub type Fingerprint = u16;
/// The bits of a leaf hash a fingerprint keeps.
pub const FINGERPRINT_BITS: u32 = 12;

pub fn fingerprint(hash: &Hash) -> Fingerprint {
    u16::from_be_bytes([hash[0], hash[1]]) >> (16 - FINGERPRINT_BITS)
}

/// What the tree reads its compacted tiles back from: the index.
pub trait LeafSource: Send + Sync {
    /// Seqs below this are committed to the index.
    fn indexed(&self) -> u64;
    /// The seq and day of every stored event in `[from, to)`, in seq order.
    fn seq_days(&self, from: u64, to: u64) -> Result<Vec<(u64, Day)>, String>;
    /// The leaf hash each stored event in `[from, to)` gives (`None`:
    /// the event has no salt), in seq order; more than one a seq where a
    /// document was forged.
    fn leaves(&self, from: u64, to: u64) -> Result<Vec<(u64, Option<Hash>)>, String>;
}

fn fingerprint_path(dir: &Path, block: u64) -> PathBuf {
    dir.join(FINGERPRINT_DIR).join(block.to_string())
}

/// The fingerprints of level-0 tile `index`, read from its block's file
/// (only the tile's part of it), or `None` when the block was not
/// compacted.
pub fn tile_fingerprints(dir: &Path, index: u64) -> Result<Option<Vec<Fingerprint>>, StoreError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = fingerprint_path(dir, index * TILE_WIDTH / BLOCK_LEAVES);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let damaged = |reason: String| StoreError::Damaged {
        path: path.clone(),
        reason,
    };
    let length = file.metadata().map_err(io(&path))?.len();
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(io(&path))?;
    let version_1 = match (&magic, length) {
        (FINGERPRINT_MAGIC, FINGERPRINT_FILE_BYTES) => false,
        (FINGERPRINT_MAGIC_V1, FINGERPRINT_FILE_BYTES_V1) => true,
        _ => {
            return Err(damaged(format!(
                "not a fingerprint file: {length} bytes starting {magic:?}, not \
                 {FINGERPRINT_FILE_BYTES} starting {FINGERPRINT_MAGIC:?} (or \
                 {FINGERPRINT_FILE_BYTES_V1} starting {FINGERPRINT_MAGIC_V1:?})"
            )))
        }
    };
    // A tile's 256 leaves are a whole number of bytes in both versions.
    let tile_bytes = match version_1 {
        true => TILE_WIDTH * 2,
        false => TILE_WIDTH * 3 / 2,
    };
    let mut bytes = vec![0u8; tile_bytes as usize];
    let offset = FINGERPRINT_MAGIC.len() as u64 + index % TILE_WIDTH * tile_bytes;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(io(&path))?;
    Ok(Some(match version_1 {
        true => bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) >> (16 - FINGERPRINT_BITS))
            .collect(),
        false => unpack(&bytes),
    }))
}

/// Two 12-bit fingerprints to 3 bytes, big-endian.
fn pack(prints: &[Fingerprint]) -> Vec<u8> {
    prints
        .chunks(2)
        .flat_map(|pair| {
            let (a, b) = (pair[0], pair.get(1).copied().unwrap_or(0));
            [(a >> 4) as u8, ((a & 0xf) << 4 | b >> 8) as u8, b as u8]
        })
        .collect()
}

fn unpack(bytes: &[u8]) -> Vec<Fingerprint> {
    bytes
        .chunks(3)
        .flat_map(|c| {
            let (x, y, z) = (u16::from(c[0]), u16::from(c[1]), u16::from(c[2]));
            [x << 4 | y >> 4, (y & 0xf) << 8 | z]
        })
        .collect()
}

fn write_fingerprints(dir: &Path, block: u64, prints: &[Fingerprint]) -> Result<(), StoreError> {
    let folder = dir.join(FINGERPRINT_DIR);
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let mut bytes = FINGERPRINT_MAGIC.to_vec();
    bytes.extend(pack(prints));
    let path = fingerprint_path(dir, block);
    write_atomically(&path, &bytes, false).map_err(io(&path))
}

/// Blocks compacted so far.
pub fn compacted_blocks(dir: &Path) -> Result<u64, StoreError> {
    let path = dir.join(DONE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Done>(&bytes)
            .map(|d| d.blocks)
            .map_err(|e| StoreError::Damaged {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(&path)(e)),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Done {
    blocks: u64,
}

/// Compacts each block after the first `*done` that the durable tree
/// (`durable_size` leaves) and the index both hold whole, moving `*done`
/// on; returns the tiles removed. Each step may be repeated after a
/// crash: fingerprints are written (from the tiles) before any tile goes,
/// and read back when they are there.
pub fn compact(
    dir: &Path,
    durable_size: u64,
    source: &dyn LeafSource,
    done: &mut u64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        let block = *done;
        let (lo, hi) = (block * BLOCK_LEAVES, (block + 1) * BLOCK_LEAVES);
        if hi > durable_size || hi > source.indexed() {
            return Ok(removed);
        }
        // Written atomically: there means whole.
        if !fingerprint_path(dir, block).exists() {
            let mut prints = Vec::with_capacity(BLOCK_LEAVES as usize);
            for index in lo / TILE_WIDTH..hi / TILE_WIDTH {
                let bytes = level0(dir, index)?;
                prints.extend(
                    bytes
                        .chunks(32)
                        .map(|c| fingerprint(&c.try_into().expect("32 bytes"))),
                );
            }
            write_fingerprints(dir, block, &prints)?;
        }
        let found = source
            .seq_days(lo, hi)
            .map_err(|reason| StoreError::Damaged {
                path: dir.to_owned(),
                reason: format!("reading the stored seqs of block {block}: {reason}"),
            })?;
        let replaced = replaceable(&found);
        // The tiles that stay get files of their own, durable before the
        // block's file goes.
        let block_file = leaves_path(dir, block);
        if block_file.exists() {
            for index in lo / TILE_WIDTH..hi / TILE_WIDTH {
                if replaced.binary_search(&index).is_err() {
                    let bytes = level0(dir, index)?;
                    let hashes: Vec<Hash> = bytes
                        .chunks(32)
                        .map(|c| c.try_into().expect("32-byte chunks"))
                        .collect();
                    write_tile(dir, full_tile(index), &hashes)?;
                }
            }
            sync_filesystem(dir)?;
        }
        let mut gone = vec![block_file];
        // Tiles written one a file by an auditd before block files.
        gone.extend(replaced.iter().map(|i| tile_path(dir, full_tile(*i))));
        for path in gone {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        removed += replaced.len() as u64;
        *done += 1;
        let path = dir.join(DONE_FILE);
        let bytes = serde_json::to_vec(&Done { blocks: *done }).expect("serializes");
        write_atomically(&path, &bytes, false).map_err(io(&path))?;
    }
}

/// Full level-0 tile `index` of a block not yet compacted: on disk.
fn level0(dir: &Path, index: u64) -> Result<Vec<u8>, StoreError> {
    read_level0(dir, index)?.ok_or_else(|| StoreError::Damaged {
        path: leaves_path(dir, index * TILE_WIDTH / BLOCK_LEAVES),
        reason: format!("level-0 tile {index} is not on disk"),
    })
}

pub(super) fn full_tile(index: u64) -> TileId {
    TileId {
        level: 0,
        index,
        width: TILE_WIDTH,
    }
}

/// The level-0 tiles among `found` (seq and day of stored events, in seq
/// order) whose every seq has exactly one event, all of one day.
fn replaceable(found: &[(u64, Day)]) -> Vec<u64> {
    let mut out = Vec::new();
    for run in found.chunk_by(|a, b| a.0 / TILE_WIDTH == b.0 / TILE_WIDTH) {
        let first = run[0].0 / TILE_WIDTH * TILE_WIDTH;
        let whole = run.len() as u64 == TILE_WIDTH
            && run
                .iter()
                .enumerate()
                .all(|(i, (seq, day))| *seq == first + i as u64 && *day == run[0].1);
        if whole {
            out.push(first / TILE_WIDTH);
        }
    }
    out
}

/// The leaf each seq of the tile starting at `first` takes from
/// `stored` (its events' leaves, in seq order): the only one, or where a
/// seq has several, the one `prints` (the tile's fingerprints) names.
/// `None` where a seq has none that fits.
pub fn pick_leaves(
    first: u64,
    stored: &[(u64, Option<Hash>)],
    prints: &[Fingerprint],
) -> Vec<Option<Hash>> {
    let width = prints.len();
    let mut fitting: Vec<Option<Hash>> = vec![None; width];
    let mut only: Vec<(usize, Option<Hash>)> = vec![(0, None); width];
    for (seq, leaf) in stored {
        let Some(at) = seq.checked_sub(first).filter(|at| *at < width as u64) else {
            continue;
        };
        let at = at as usize;
        only[at] = (only[at].0 + 1, *leaf);
        if leaf.is_some_and(|l| fingerprint(&l) == prints[at]) && fitting[at].is_none() {
            fitting[at] = *leaf;
        }
    }
    fitting
        .into_iter()
        .zip(only)
        .map(|(fits, (count, leaf))| fits.or(if count == 1 { leaf } else { None }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::merkle::leaf_hash;

    #[test]
    fn a_tile_is_replaceable_only_when_each_seq_has_one_event_of_one_day() {
        let (day, other): (Day, Day) = (20_425, 20_426);
        let mut found: Vec<(u64, Day)> = (0..3 * TILE_WIDTH).map(|s| (s, day)).collect();
        // Tile 1 has a seq of another day, tile 2 misses one; tile 3 has a
        // forged second event.
        found[(TILE_WIDTH + 7) as usize].1 = other;
        found.remove((2 * TILE_WIDTH + 9) as usize);
        found.extend((3 * TILE_WIDTH..4 * TILE_WIDTH).map(|s| (s, day)));
        found.insert((3 * TILE_WIDTH) as usize, (3 * TILE_WIDTH, day));
        found.extend((4 * TILE_WIDTH..5 * TILE_WIDTH).map(|s| (s, other)));
        assert_eq!(replaceable(&found), vec![0, 4]);
    }

    #[test]
    fn a_fingerprint_file_of_either_version_gives_each_leafs_first_12_bits() {
        let dir = tempfile::tempdir().unwrap();
        let hashes: Vec<Hash> = (0..BLOCK_LEAVES)
            .map(|i| leaf_hash(&i.to_be_bytes()))
            .collect();
        let prints: Vec<Fingerprint> = hashes.iter().map(fingerprint).collect();
        assert_eq!(fingerprint(&[0xab; 32]), 0xaba);
        write_fingerprints(dir.path(), 0, &prints).unwrap();
        let written = std::fs::metadata(fingerprint_path(dir.path(), 0)).unwrap();
        assert_eq!(written.len(), 98_308);
        // Block 1 in version 1, as data formats 3 to 6 wrote it.
        let mut v1 = FINGERPRINT_MAGIC_V1.to_vec();
        v1.extend(hashes.iter().flat_map(|h| [h[0], h[1]]));
        std::fs::write(fingerprint_path(dir.path(), 1), v1).unwrap();
        for tile in [0, 3, 255] {
            let want = &prints[(tile * TILE_WIDTH) as usize..][..TILE_WIDTH as usize];
            for block in [0, 1] {
                let read = tile_fingerprints(dir.path(), block * TILE_WIDTH + tile).unwrap();
                assert_eq!(read.as_deref(), Some(want), "block {block}, tile {tile}");
            }
        }
        assert_eq!(tile_fingerprints(dir.path(), 2 * TILE_WIDTH).unwrap(), None);
        std::fs::write(fingerprint_path(dir.path(), 2), b"afp2").unwrap();
        assert!(tile_fingerprints(dir.path(), 2 * TILE_WIDTH).is_err());
    }

    #[test]
    fn a_forged_second_event_is_passed_over_by_its_fingerprint() {
        let genuine = leaf_hash(b"genuine");
        let forged = leaf_hash(b"forged");
        let prints = vec![fingerprint(&genuine), fingerprint(&genuine)];
        for stored in [
            vec![(10, Some(forged)), (10, Some(genuine)), (11, Some(genuine))],
            vec![(10, Some(genuine)), (10, Some(forged)), (11, Some(genuine))],
        ] {
            assert_eq!(
                pick_leaves(10, &stored, &prints),
                vec![Some(genuine), Some(genuine)]
            );
        }
        // Alone, an event is taken even when it does not fit (the node
        // above then refuses it); a seq with none has none.
        assert_eq!(
            pick_leaves(10, &[(10, Some(forged))], &prints),
            vec![Some(forged), None]
        );
    }
}

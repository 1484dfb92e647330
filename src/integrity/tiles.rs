//! The C2SP `tlog-tiles` layout of the tree's hashes: tiles of height 8,
//! so a tile at tile level `L` holds up to 256 consecutive node hashes of
//! tree level `8·L`; a full tile holds 256, the last one of a level may
//! be partial. Served at `tile/<L>/<N>[.p/<W>]`, where `N` is written in
//! groups of three digits, every group but the last prefixed with `x`
//! (`1234067` → `x001/x234/067`).
//!
//! [`tile`] cuts a tile out of any [`Nodes`]; [`TileNodes`] is the other
//! way round: the `Nodes` of a tree known only by its tiles, which is how
//! a client checks proofs against tiles it fetched.

use std::cell::RefCell;
use std::collections::HashMap;

use super::merkle::{node_hash, Hash, Nodes};

/// Tree levels per tile.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// One tile: its tile level, its index in that level, and how many hashes
/// it holds (1..=256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileId {
    pub level: u32,
    pub index: u64,
    pub width: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    #[error("not a tile path: {0}")]
    Path(String),
    #[error("the tree of {size} leaves has no tile {level}/{index} of width {width}")]
    Absent {
        size: u64,
        level: u32,
        index: u64,
        width: u64,
    },
    #[error("a tile could not be read: {0}")]
    Unreadable(String),
    /// A compacted tile whose stored events no longer give the tree's
    /// hashes: evidence of a change, not a fault of the daemon.
    #[error("{0}")]
    Mismatch(String),
    #[error("tile {level}/{index} holds {got} bytes, not {want}")]
    Length {
        level: u32,
        index: u64,
        got: usize,
        want: usize,
    },
}

impl TileId {
    /// The tile's path under the log's prefix: `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        let digits = format!("{:03}", self.index);
        // Groups of three from the right; all but the last get an `x`.
        let pad = (3 - digits.len() % 3) % 3;
        let padded = format!("{}{digits}", "0".repeat(pad));
        let groups: Vec<&str> = (0..padded.len() / 3)
            .map(|g| &padded[g * 3..g * 3 + 3])
            .collect();
        let mut n = String::new();
        for (i, group) in groups.iter().enumerate() {
            if i + 1 < groups.len() {
                n.push('x');
                n.push_str(group);
                n.push('/');
            } else {
                n.push_str(group);
            }
        }
        if self.width == TILE_WIDTH {
            format!("tile/{}/{n}", self.level)
        } else {
            format!("tile/{}/{n}.p/{}", self.level, self.width)
        }
    }

    /// Reads a path that [`TileId::path`] writes (without a prefix).
    pub fn parse(path: &str) -> Result<TileId, TileError> {
        let bad = || TileError::Path(path.to_owned());
        let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
        let (level, rest) = rest.split_once('/').ok_or_else(bad)?;
        let level: u32 = level.parse().map_err(|_| bad())?;
        if level > 63 / TILE_HEIGHT {
            return Err(bad());
        }
        let (n, width) = match rest.split_once(".p/") {
            Some((n, w)) => {
                let width: u64 = w.parse().map_err(|_| bad())?;
                if width == 0 || width >= TILE_WIDTH || w != width.to_string() {
                    return Err(bad());
                }
                (n, width)
            }
            None => (rest, TILE_WIDTH),
        };
        let groups: Vec<&str> = n.split('/').collect();
        let mut index: u64 = 0;
        for (i, group) in groups.iter().enumerate() {
            let digits = if i + 1 < groups.len() {
                group.strip_prefix('x').ok_or_else(bad)?
            } else {
                group
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            index = index
                .checked_mul(1000)
                .and_then(|i| i.checked_add(digits.parse::<u64>().ok()?))
                .ok_or_else(bad)?;
        }
        let id = TileId {
            level,
            index,
            width,
        };
        // One spelling per tile: no leading `x000/` groups.
        if id.path() != path {
            return Err(bad());
        }
        Ok(id)
    }
}

/// How many node hashes tree level `level` has in a tree of `size`
/// leaves: its complete nodes.
fn nodes_at(size: u64, level: u32) -> u64 {
    size.checked_shr(level).unwrap_or(0)
}

/// Every tile of the tree of `size` leaves, level by level.
pub fn tiles_for(size: u64) -> Vec<TileId> {
    let mut out = Vec::new();
    let mut level = 0;
    loop {
        let count = nodes_at(size, level * TILE_HEIGHT);
        if count == 0 {
            return out;
        }
        for index in 0..count / TILE_WIDTH {
            out.push(TileId {
                level,
                index,
                width: TILE_WIDTH,
            });
        }
        if !count.is_multiple_of(TILE_WIDTH) {
            out.push(TileId {
                level,
                index: count / TILE_WIDTH,
                width: count % TILE_WIDTH,
            });
        }
        level += 1;
    }
}

/// The bytes of tile `id` of the tree of `size` leaves: its hashes, in
/// order. A tile the tree does not hold yet (or no longer holds at that
/// width: a partial tile of a smaller width is still served) is absent.
pub fn tile(nodes: &impl Nodes, size: u64, id: TileId) -> Result<Vec<u8>, TileError> {
    let count = nodes_at(size, id.level * TILE_HEIGHT);
    let first = id.index.saturating_mul(TILE_WIDTH);
    if id.width == 0 || id.width > TILE_WIDTH || first.saturating_add(id.width) > count {
        return Err(TileError::Absent {
            size,
            level: id.level,
            index: id.index,
            width: id.width,
        });
    }
    let mut bytes = Vec::with_capacity(id.width as usize * 32);
    for i in 0..id.width {
        bytes.extend_from_slice(&nodes.node(id.level * TILE_HEIGHT, first + i));
    }
    Ok(bytes)
}

/// The `Nodes` of a tree of `size` leaves known only by its tiles, fetched
/// through `fetch` as they are needed (and kept). A node between two tile
/// levels is hashed up from the tile below it.
pub struct TileNodes<F> {
    size: u64,
    fetch: F,
    tiles: RefCell<HashMap<TileId, Vec<Hash>>>,
}

impl<F> TileNodes<F>
where
    F: Fn(TileId) -> Result<Vec<u8>, TileError>,
{
    pub fn new(size: u64, fetch: F) -> Self {
        TileNodes {
            size,
            fetch,
            tiles: RefCell::new(HashMap::new()),
        }
    }

    /// Tile `tile_index` of tile level `tile_level`, at the width the
    /// tree's size gives it.
    fn tile_id(&self, tile_level: u32, tile_index: u64) -> TileId {
        let count = nodes_at(self.size, tile_level * TILE_HEIGHT);
        let width = (count - tile_index * TILE_WIDTH).min(TILE_WIDTH);
        TileId {
            level: tile_level,
            index: tile_index,
            width,
        }
    }

    /// The hashes of a level-`tile_level` tile, fetched now and not kept
    /// (a pass over every leaf must not hold them all).
    pub fn fetch_tile(&self, tile_level: u32, tile_index: u64) -> Result<Vec<Hash>, TileError> {
        let id = self.tile_id(tile_level, tile_index);
        let bytes = (self.fetch)(id)?;
        if bytes.len() != id.width as usize * 32 {
            return Err(TileError::Length {
                level: id.level,
                index: id.index,
                got: bytes.len(),
                want: id.width as usize * 32,
            });
        }
        Ok(bytes
            .chunks(32)
            .map(|c| c.try_into().expect("32-byte chunks"))
            .collect())
    }

    /// Node `index` of tile level `tile_level`'s own tree level.
    fn stored(&self, tile_level: u32, index: u64) -> Result<Hash, TileError> {
        let id = self.tile_id(tile_level, index / TILE_WIDTH);
        if let Some(hashes) = self.tiles.borrow().get(&id) {
            return Ok(hashes[(index % TILE_WIDTH) as usize]);
        }
        let hashes = self.fetch_tile(tile_level, id.index)?;
        let hash = hashes[(index % TILE_WIDTH) as usize];
        self.tiles.borrow_mut().insert(id, hashes);
        Ok(hash)
    }

    /// The hash of the complete node at (`level`, `index`), or the error
    /// of the tile it needs.
    pub fn try_node(&self, level: u32, index: u64) -> Result<Hash, TileError> {
        let base = level / TILE_HEIGHT * TILE_HEIGHT;
        if level == base {
            return self.stored(level / TILE_HEIGHT, index);
        }
        // Hash 2^(level - base) stored nodes up to this level.
        let span = 1u64 << (level - base);
        let mut row: Vec<Hash> = (index * span..(index + 1) * span)
            .map(|i| self.stored(level / TILE_HEIGHT, i))
            .collect::<Result<_, _>>()?;
        while row.len() > 1 {
            row = row.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
        }
        Ok(row[0])
    }
}

impl<F> Nodes for TileNodes<F>
where
    F: Fn(TileId) -> Result<Vec<u8>, TileError>,
{
    /// Panics when a tile cannot be had: use [`TileNodes::try_node`] (or
    /// fetch every tile first) where that can happen.
    fn node(&self, level: u32, index: u64) -> Hash {
        self.try_node(level, index)
            .unwrap_or_else(|e| panic!("tile for node {level}/{index}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::merkle::{consistency_proof, inclusion_proof, leaf_hash, root, MemoryTree};
    use super::*;

    #[test]
    fn paths_are_written_and_read_as_c2sp_spells_them() {
        for (id, path) in [
            ((0, 0, 256), "tile/0/000"),
            ((0, 1_234_067, 256), "tile/0/x001/x234/067"),
            ((1, 7, 3), "tile/1/007.p/3"),
            ((2, 1000, 255), "tile/2/x001/000.p/255"),
        ] {
            let id = TileId {
                level: id.0,
                index: id.1,
                width: id.2,
            };
            assert_eq!(id.path(), path);
            assert_eq!(TileId::parse(path).unwrap(), id);
        }
        for bad in [
            "tile/0/1",
            "tile/0/x000/001",
            "tile/0/001.p/0",
            "tile/0/001.p/256",
            "tile/0/001.p/07",
            "tile/00/001",
            "tile/0/x1/001",
            "tiles/0/001",
            "tile/9/001",
        ] {
            assert!(TileId::parse(bad).is_err(), "{bad}");
        }
    }

    /// A tree of 70,000 leaves (two tile levels, partial tiles on both)
    /// cut into tiles and read back through them gives the same heads and
    /// proofs as the tree itself, at its size and at smaller ones.
    #[test]
    fn a_tree_read_back_from_its_tiles_gives_the_same_proofs() {
        let size = 70_000u64;
        let mut tree = MemoryTree::new();
        for i in 0..size {
            tree.push(leaf_hash(&i.to_be_bytes()));
        }
        let tiles = tiles_for(size);
        assert_eq!(
            tiles.iter().filter(|t| t.level == 1).count(),
            2,
            "273 level-8 nodes: one full tile and a partial one"
        );
        let stored: HashMap<TileId, Vec<u8>> = tiles
            .iter()
            .map(|&id| (id, tile(&tree, size, id).unwrap()))
            .collect();
        for at in [size, 65_536, 65_535, 257, 1] {
            let fetched = RefCell::new(0);
            let from_tiles = TileNodes::new(at, |id: TileId| {
                *fetched.borrow_mut() += 1;
                // A smaller tree's partial tile is a prefix of the
                // bigger tree's tile of the same index.
                let full = TileId {
                    width: tiles
                        .iter()
                        .find(|t| t.level == id.level && t.index == id.index)
                        .map(|t| t.width)
                        .unwrap_or(0),
                    ..id
                };
                stored
                    .get(&full)
                    .map(|b| b[..id.width as usize * 32].to_vec())
                    .ok_or(TileError::Absent {
                        size: at,
                        level: id.level,
                        index: id.index,
                        width: id.width,
                    })
            });
            assert_eq!(root(&from_tiles, at), root(&tree, at), "head of {at}");
            for index in [0, at / 2, at - 1] {
                assert_eq!(
                    inclusion_proof(&from_tiles, index, at).unwrap(),
                    inclusion_proof(&tree, index, at).unwrap()
                );
            }
            if at > 1 {
                assert_eq!(
                    consistency_proof(&from_tiles, at / 3 + 1, at).unwrap(),
                    consistency_proof(&tree, at / 3 + 1, at).unwrap()
                );
            }
            assert!(*fetched.borrow() > 0);
        }
        assert!(tile(
            &tree,
            size,
            TileId {
                level: 0,
                index: 273,
                width: 112
            }
        )
        .is_ok());
        assert!(tile(
            &tree,
            size,
            TileId {
                level: 0,
                index: 273,
                width: 113
            }
        )
        .is_err());
        assert!(tile(
            &tree,
            size,
            TileId {
                level: 2,
                index: 0,
                width: 1
            }
        )
        .is_ok());
        assert!(tile(
            &tree,
            size,
            TileId {
                level: 3,
                index: 0,
                width: 1
            }
        )
        .is_err());
    }
}

//! The tree on disk, in the C2SP `tlog-tiles` layout under
//! `<data_dir>/tlog/`:
//!
//! ```text
//! tlog/
//!   tree.json            the durable tree head: size, root, and the log
//!                        position after the record of its last leaf
//!   leaves/<b>           the full level-0 tiles of block b, 256 of them
//!   tile/<L>/<N>         a full tile (256 hashes of tree level 8·L) of
//!                        level L > 0, or a level-0 one compaction kept
//!   tile/<L>/<N>.p/<W>   the partial last tile of level L, as of tree.json
//!   fingerprints/<b>     a compacted block's leaf fingerprints (`compact`)
//!   compacted.json       how many blocks were compacted
//!   seeds, seeds.cut     the salt seeds of seeded batches (`seeds`)
//! ```
//!
//! The WAL thread, which gives out seqs, appends each acknowledged
//! batch's leaf hashes in memory ([`TreeStore::append`]): the last,
//! partial tile of each level (the *edge*) and the full tiles not yet
//! written. [`TreeStore::sync`] (the checkpointer's, once an interval, and
//! at stop) writes the new tiles, makes them durable with one `syncfs`,
//! then replaces `tree.json`. So what `tree.json` names is always on disk,
//! and what came after it is still in the log: the WAL thread trims the
//! log no further than `tree.json`'s position, and replay re-appends from
//! there. Readers take a [`TreeSnapshot`]; every complete node of the tree
//! is immutable, so a snapshot stays right while the tree grows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use std::cell::RefCell;

use super::compact::{self, full_tile, pick_leaves, Fingerprint, LeafSource, BLOCK_LEAVES};
use super::merkle::{self, node_hash, root, Hash, Nodes, ProofError};
use super::seeds::SaltSeeds;
use super::tiles::{TileError, TileId, TileNodes, TILE_HEIGHT, TILE_WIDTH};
use crate::datadir::write_atomically;
use crate::wal::LogPosition;

/// Where the tree lives under the data directory.
pub const TLOG_DIR: &str = "tlog";
const HEAD_FILE: &str = "tree.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A tree head as `tree.json` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeHead {
    pub size: u64,
    #[serde(with = "base64_hash")]
    pub root: Hash,
    /// The log position after the record holding leaf `size - 1`: replay
    /// starts here at the latest to bring the tree up to the log.
    pub log: LogPosition,
}

mod base64_hash {
    use super::*;

    pub fn serialize<S: serde::Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(hash))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        STANDARD
            .decode(&text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("not 32 bytes of base64"))
    }
}

/// A full tile's hashes.
type Tile = Arc<[Hash]>;

struct Inner {
    size: u64,
    log_end: LogPosition,
    /// Per tile level: the hashes of its partial last tile.
    edge: Vec<Vec<Hash>>,
    /// Full tiles not on disk yet, by (level, index).
    unwritten: BTreeMap<(u32, u64), Tile>,
    durable: TreeHead,
}

/// The tree: in memory at its edge, on disk in tiles, the level-0 ones
/// of a compacted block in the index ([`compact`]).
pub struct TreeStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Set once the index is open.
    leaves: OnceLock<Arc<dyn LeafSource>>,
    /// Blocks compacted so far; held while compacting.
    compacted: Mutex<u64>,
    /// The seeds of seeded batches' salts, written with the tiles.
    seeds: Arc<SaltSeeds>,
    /// Held while syncing: the checkpointer and an erasure may both.
    syncing: Mutex<()>,
}

impl TreeStore {
    /// Opens the tree under `data_dir` (empty when there is none yet) and
    /// checks that its tiles give the root `tree.json` names.
    pub fn open(data_dir: &Path) -> Result<TreeStore, StoreError> {
        let dir = data_dir.join(TLOG_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let head_path = dir.join(HEAD_FILE);
        let head = match std::fs::read(&head_path) {
            Ok(bytes) => {
                serde_json::from_slice::<TreeHead>(&bytes).map_err(|e| StoreError::Damaged {
                    path: head_path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TreeHead {
                size: 0,
                root: super::merkle::empty_root(),
                log: LogPosition::START,
            },
            Err(e) => return Err(io(&head_path)(e)),
        };
        let mut edge = Vec::new();
        for level in 0.. {
            let count = head.size.checked_shr(level * TILE_HEIGHT).unwrap_or(0);
            if count == 0 {
                break;
            }
            let width = count % TILE_WIDTH;
            if width == 0 {
                edge.push(Vec::new());
                continue;
            }
            let id = TileId {
                level,
                index: count / TILE_WIDTH,
                width,
            };
            let bytes = read_tile(&dir, id)?;
            edge.push(hashes_of(&bytes));
        }
        let compacted = compact::compacted_blocks(&dir)?;
        let seeds = Arc::new(SaltSeeds::open(&dir, head.size)?);
        let store = TreeStore {
            seeds,
            syncing: Mutex::new(()),
            dir,
            leaves: OnceLock::new(),
            compacted: Mutex::new(compacted),
            inner: Mutex::new(Inner {
                size: head.size,
                log_end: head.log,
                edge,
                unwritten: BTreeMap::new(),
                durable: head,
            }),
        };
        let found = store.snapshot().root().map_err(|e| StoreError::Damaged {
            path: store.dir.clone(),
            reason: e.to_string(),
        })?;
        if found != head.root {
            return Err(StoreError::Damaged {
                path: head_path,
                reason: format!(
                    "the tiles give another root for {} leaves than tree.json names",
                    head.size
                ),
            });
        }
        Ok(store)
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.lock().size
    }

    /// What `tree.json` says now.
    pub fn durable(&self) -> TreeHead {
        self.lock().durable
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("tree lock")
    }

    /// Appends `leaves` (leaf hashes, in seq order), which end a log
    /// record that ends at `log_end`.
    pub fn append(&self, leaves: &[Hash], log_end: LogPosition) {
        let mut inner = self.lock();
        for leaf in leaves {
            inner.size += 1;
            let size = inner.size;
            push(&mut inner, 0, *leaf, size);
        }
        inner.log_end = log_end;
    }

    /// The seeds of the seeded batches' salts.
    pub fn seeds(&self) -> &Arc<SaltSeeds> {
        &self.seeds
    }

    /// A consistent view of the tree as it is now.
    pub fn snapshot(&self) -> TreeSnapshot {
        let inner = self.lock();
        TreeSnapshot::new(TileSource {
            dir: self.dir.clone(),
            size: inner.size,
            edge: inner.edge.clone(),
            unwritten: inner.unwritten.clone(),
            leaves: self.leaves.get().cloned(),
        })
    }

    /// Where compacted tiles are read back from, once the index is open;
    /// until then a compacted tile cannot be read and nothing is
    /// compacted.
    pub fn set_leaf_source(&self, leaves: Arc<dyn LeafSource>) {
        let _ = self.leaves.set(leaves);
    }

    /// Compacts what the durable tree and the index both hold whole
    /// ([`compact`]); returns the level-0 tiles removed.
    pub fn compact(&self) -> Result<u64, StoreError> {
        let Some(leaves) = self.leaves.get() else {
            return Ok(0);
        };
        let mut done = self.compacted.lock().expect("compaction lock");
        let durable = self.durable().size;
        compact::compact(&self.dir, durable, leaves.as_ref(), &mut done)
    }

    /// Writes what is new, makes it durable, and moves `tree.json` to it.
    pub fn sync(&self) -> Result<TreeHead, StoreError> {
        let _syncing = self.syncing.lock().expect("sync lock");
        let (size, log, edge, unwritten) = {
            let inner = self.lock();
            if inner.durable.size == inner.size {
                return Ok(inner.durable);
            }
            (
                inner.size,
                inner.log_end,
                inner.edge.clone(),
                inner.unwritten.clone(),
            )
        };
        for ((level, index), hashes) in &unwritten {
            let id = TileId {
                level: *level,
                index: *index,
                width: TILE_WIDTH,
            };
            match level {
                0 => write_level0(&self.dir, *index, hashes)?,
                _ => write_tile(&self.dir, id, hashes)?,
            }
        }
        let mut partials = Vec::new();
        for (level, hashes) in edge.iter().enumerate() {
            if hashes.is_empty() {
                continue;
            }
            let id = TileId {
                level: level as u32,
                index: size.checked_shr(level as u32 * TILE_HEIGHT).unwrap_or(0) / TILE_WIDTH,
                width: hashes.len() as u64,
            };
            write_tile(&self.dir, id, hashes)?;
            partials.push(id);
        }
        self.seeds.write_new()?;
        sync_filesystem(&self.dir)?;
        let snapshot = TreeSnapshot::new(TileSource {
            dir: self.dir.clone(),
            size,
            edge,
            unwritten: unwritten.clone(),
            leaves: None,
        });
        let root = snapshot.root().map_err(|e| StoreError::Damaged {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let head = TreeHead { size, root, log };
        let head_path = self.dir.join(HEAD_FILE);
        let bytes = serde_json::to_vec(&head).expect("a tree head serializes");
        write_atomically(&head_path, &bytes, false).map_err(io(&head_path))?;
        {
            let mut inner = self.lock();
            for key in unwritten.keys() {
                inner.unwritten.remove(key);
            }
            inner.durable = head;
        }
        // Partial tiles of older widths are no longer needed; best effort.
        for (level, index) in unwritten.keys() {
            remove_partials(&self.dir, *level, *index, None);
        }
        for id in partials {
            remove_partials(&self.dir, id.level, id.index, Some(id.width));
        }
        Ok(head)
    }
}

/// Adds `hash` to tile level `level`'s edge; a full tile moves to the
/// unwritten ones and its root goes up a level. `size` is the tree's new
/// size, which numbers the tile.
fn push(inner: &mut Inner, level: u32, hash: Hash, size: u64) {
    let l = level as usize;
    if inner.edge.len() <= l {
        inner.edge.push(Vec::new());
    }
    inner.edge[l].push(hash);
    if inner.edge[l].len() as u64 == TILE_WIDTH {
        let hashes = std::mem::take(&mut inner.edge[l]);
        let count = size >> (level * TILE_HEIGHT);
        let index = count / TILE_WIDTH - 1;
        let up = tile_root(&hashes);
        inner.unwritten.insert((level, index), hashes.into());
        push(inner, level + 1, up, size);
    }
}

/// The root of a full tile's 256 hashes: the node 8 levels up.
pub(crate) fn tile_root(hashes: &[Hash]) -> Hash {
    let mut row: Vec<Hash> = hashes.to_vec();
    while row.len() > 1 {
        row = row.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    row[0]
}

fn hashes_of(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks(32)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect()
}

/// Where full level-0 tiles are written: a block's 256 in one file,
/// `leaves/<b>`, tile `i` at byte `8192 · (i mod 256)`. One file a block,
/// where a file a tile made 256 files to create and, once compaction
/// replaced them (`compact`), to remove again: most of the auditd-tlog
/// thread's time, in the file system.
const LEAVES_DIR: &str = "leaves";
const TILE_BYTES: u64 = TILE_WIDTH * 32;

pub(super) fn leaves_path(dir: &Path, block: u64) -> PathBuf {
    dir.join(LEAVES_DIR).join(block.to_string())
}

fn write_level0(dir: &Path, index: u64, hashes: &[Hash]) -> Result<(), StoreError> {
    use std::io::{Seek, SeekFrom, Write};
    let folder = dir.join(LEAVES_DIR);
    std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    let path = leaves_path(dir, index * TILE_WIDTH / BLOCK_LEAVES);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    file.seek(SeekFrom::Start(index % TILE_WIDTH * TILE_BYTES))
        .and_then(|_| file.write_all(&hashes.concat()))
        .map_err(io(&path))
}

/// Full level-0 tile `index` as stored: in its block's file, or in a
/// file of its own (a tile compaction kept, or one written by an auditd
/// before block files); `None` when it is in neither.
pub(super) fn read_level0(dir: &Path, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = leaves_path(dir, index * TILE_WIDTH / BLOCK_LEAVES);
    match std::fs::File::open(&path) {
        Ok(mut file) => {
            let offset = index % TILE_WIDTH * TILE_BYTES;
            let length = file.metadata().map_err(io(&path))?.len();
            if length >= offset + TILE_BYTES {
                let mut bytes = vec![0u8; TILE_BYTES as usize];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(&mut bytes))
                    .map_err(io(&path))?;
                return Ok(Some(bytes));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    match read_tile(dir, full_tile(index)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn tile_path(dir: &Path, id: TileId) -> PathBuf {
    dir.join(id.path())
}

pub(super) fn read_tile(dir: &Path, id: TileId) -> Result<Vec<u8>, StoreError> {
    let path = tile_path(dir, id);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    if bytes.len() as u64 != id.width * 32 {
        return Err(StoreError::Damaged {
            path,
            reason: format!("{} bytes, not {}", bytes.len(), id.width * 32),
        });
    }
    Ok(bytes)
}

pub(super) fn write_tile(dir: &Path, id: TileId, hashes: &[Hash]) -> Result<(), StoreError> {
    let path = tile_path(dir, id);
    let parent = path.parent().expect("a tile path has folders");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    std::fs::write(&path, hashes.concat()).map_err(io(&path))
}

/// Removes the partial files of tile (`level`, `index`) but the one of
/// width `keep`.
fn remove_partials(dir: &Path, level: u32, index: u64, keep: Option<u64>) {
    let folder = tile_path(
        dir,
        TileId {
            level,
            index,
            width: TILE_WIDTH,
        },
    )
    .with_extension("p");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if keep.is_some_and(|w| name.to_str() == Some(w.to_string().as_str())) {
            continue;
        }
        let _ = std::fs::remove_file(entry.path());
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir(&folder);
    }
}

/// One `syncfs(2)` for every tile written since the last: a tile a second
/// per 256 events makes one `fsync` each far too many.
pub(super) fn sync_filesystem(dir: &Path) -> Result<(), StoreError> {
    let folder = std::fs::File::open(dir).map_err(io(dir))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the whole call.
        if unsafe { libc::syncfs(folder.as_raw_fd()) } != 0 {
            return Err(io(dir)(std::io::Error::last_os_error()));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Elsewhere: every file under the folder, one by one.
        fn walk(path: &Path) -> std::io::Result<()> {
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    walk(&entry.path())?;
                }
                std::fs::File::open(entry.path())?.sync_all()?;
            }
            Ok(())
        }
        drop(folder);
        walk(dir).map_err(io(dir))
    }
}

/// Where a snapshot's tiles come from.
pub type FetchTile = Box<dyn Fn(TileId) -> Result<Vec<u8>, TileError> + Send>;

/// What a snapshot reads its tiles from: the edge and the unwritten
/// tiles in memory, the rest from the tile files, and a compacted level-0
/// tile recomputed from the stored events.
struct TileSource {
    dir: PathBuf,
    size: u64,
    edge: Vec<Vec<Hash>>,
    unwritten: BTreeMap<(u32, u64), Tile>,
    leaves: Option<Arc<dyn LeafSource>>,
}

/// A tile as a snapshot finds it.
enum Stored {
    Bytes(Vec<u8>),
    /// A compacted level-0 tile: its leaves' fingerprints.
    Compacted(Vec<Fingerprint>),
}

impl TileSource {
    /// The tile as stored: its bytes, or a compacted level-0 tile's
    /// fingerprints.
    fn stored(&self, id: TileId) -> Result<Stored, TileError> {
        if id.width < TILE_WIDTH {
            let hashes = self.edge.get(id.level as usize).ok_or(TileError::Absent {
                size: self.size,
                level: id.level,
                index: id.index,
                width: id.width,
            })?;
            return Ok(Stored::Bytes(hashes.concat()));
        }
        if let Some(hashes) = self.unwritten.get(&(id.level, id.index)) {
            return Ok(Stored::Bytes(hashes.concat()));
        }
        let unreadable = |e: StoreError| TileError::Unreadable(e.to_string());
        if id.level > 0 {
            return read_tile(&self.dir, id)
                .map(Stored::Bytes)
                .map_err(unreadable);
        }
        if let Some(bytes) = read_level0(&self.dir, id.index).map_err(unreadable)? {
            return Ok(Stored::Bytes(bytes));
        }
        match compact::tile_fingerprints(&self.dir, id.index).map_err(unreadable)? {
            Some(prints) => Ok(Stored::Compacted(prints)),
            None => Err(TileError::Unreadable(format!(
                "{}: not on disk, and its block was not compacted",
                id.path()
            ))),
        }
    }

    /// The node above level-0 tile `index`, from the level-1 tile.
    fn above(&self, index: u64) -> Result<Hash, TileError> {
        let id = TileId {
            level: 1,
            index: index / TILE_WIDTH,
            width: TILE_WIDTH,
        };
        let Stored::Bytes(bytes) = self.stored(id)? else {
            unreachable!("only level-0 tiles are compacted")
        };
        let at = (index % TILE_WIDTH * 32) as usize;
        Ok(bytes[at..at + 32].try_into().expect("32 bytes"))
    }

    /// The tile's bytes, a compacted one recomputed.
    fn fetch(&self, id: TileId) -> Result<Vec<u8>, TileError> {
        match self.stored(id)? {
            Stored::Bytes(bytes) => Ok(bytes),
            Stored::Compacted(prints) => Ok(self.recompute(id.index, &prints)?.concat()),
        }
    }

    /// Compacted level-0 tile `index` (fingerprints `prints`) from the
    /// stored events, checked against the node above.
    fn recompute(&self, index: u64, prints: &[Fingerprint]) -> Result<Vec<Hash>, TileError> {
        let (first, end) = (index * TILE_WIDTH, (index + 1) * TILE_WIDTH);
        let path = full_tile(index).path();
        let Some(leaves) = &self.leaves else {
            return Err(TileError::Unreadable(format!(
                "{path} was compacted and the index is not open to recompute it"
            )));
        };
        let stored = leaves
            .leaves(first, end)
            .map_err(|e| TileError::Unreadable(format!("{path}: the index: {e}")))?;
        let hashes: Vec<Hash> = pick_leaves(first, &stored, prints)
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| {
                TileError::Mismatch(format!(
                    "{path} was compacted and an event of seqs {first} to {} is not in the index",
                    end - 1
                ))
            })?;
        if tile_root(&hashes) != self.above(index)? {
            return Err(TileError::Mismatch(format!(
                "{path} was compacted and the stored events of seqs {first} to {} no longer \
                 hash up to the tree (auditctl verify --full names them)",
                end - 1
            )));
        }
        Ok(hashes)
    }
}

/// Level-0 tile `index` as the tree keeps it, for the full audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldTile {
    /// Its hashes, stored.
    Hashes(Vec<Hash>),
    /// Compacted: the node above it and its leaves' fingerprints.
    Compacted {
        above: Hash,
        prints: Vec<Fingerprint>,
    },
}

/// The tree as it was at one moment: its size, and a way to every
/// complete node.
pub struct TreeSnapshot {
    size: u64,
    source: Arc<TileSource>,
    nodes: TileNodes<FetchTile>,
}

impl TreeSnapshot {
    fn new(source: TileSource) -> TreeSnapshot {
        let size = source.size;
        let source = Arc::new(source);
        let fetching = source.clone();
        TreeSnapshot {
            size,
            source,
            nodes: TileNodes::new(size, Box::new(move |id| fetching.fetch(id))),
        }
    }

    /// Level-0 tile `index` as the tree keeps it.
    pub fn held(&self, index: u64) -> Result<HeldTile, SnapshotError> {
        let width = self.size.saturating_sub(index * TILE_WIDTH).min(TILE_WIDTH);
        if width == 0 {
            return Err(SnapshotError::Tile(TileError::Absent {
                size: self.size,
                level: 0,
                index,
                width: TILE_WIDTH,
            }));
        }
        let id = TileId {
            level: 0,
            index,
            width,
        };
        Ok(match self.source.stored(id)? {
            Stored::Bytes(bytes) => HeldTile::Hashes(hashes_of(&bytes)),
            Stored::Compacted(prints) => HeldTile::Compacted {
                above: self.source.above(index)?,
                prints,
            },
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its nodes, for proofs.
    pub fn nodes(&self) -> &TileNodes<FetchTile> {
        &self.nodes
    }

    /// The tree head of the first `size` leaves (at most the snapshot's).
    pub fn root_of(&self, size: u64) -> Result<Hash, SnapshotError> {
        self.checked(|nodes| Ok(root(&nodes, size)))
    }

    /// The head of the whole snapshot.
    pub fn root(&self) -> Result<Hash, SnapshotError> {
        self.root_of(self.size)
    }

    /// The hash of leaf `index` as the tree holds it.
    pub fn leaf(&self, index: u64) -> Result<Hash, SnapshotError> {
        if index >= self.size {
            return Err(SnapshotError::Proof(ProofError::IndexOutOfRange {
                index,
                size: self.size,
            }));
        }
        Ok(self.nodes.try_node(0, index)?)
    }

    /// The bytes of tile `id` as the C2SP `tlog-tiles` layout serves it:
    /// a full tile, or a partial one of any width the tree has reached.
    pub fn tile(&self, id: TileId) -> Result<Vec<u8>, TileError> {
        let absent = || TileError::Absent {
            size: self.size,
            level: id.level,
            index: id.index,
            width: id.width,
        };
        let level = id.level * TILE_HEIGHT;
        let count = self.size.checked_shr(level).unwrap_or(0);
        let first = id.index.checked_mul(TILE_WIDTH).ok_or_else(absent)?;
        if first.checked_add(id.width).is_none_or(|end| end > count) {
            return Err(absent());
        }
        let mut bytes = Vec::with_capacity(id.width as usize * 32);
        for i in 0..id.width {
            bytes.extend_from_slice(&self.nodes.try_node(level, first + i)?);
        }
        Ok(bytes)
    }

    /// The audit path of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, SnapshotError> {
        self.within(size)?;
        self.checked(|nodes| merkle::inclusion_proof(&nodes, index, size))
    }

    /// The proof that the tree of `first` leaves is a prefix of the tree
    /// of `second`.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, SnapshotError> {
        self.within(second)?;
        self.checked(|nodes| merkle::consistency_proof(&nodes, first, second))
    }

    fn within(&self, size: u64) -> Result<(), SnapshotError> {
        if size > self.size {
            return Err(SnapshotError::Beyond {
                size,
                holds: self.size,
            });
        }
        Ok(())
    }

    /// Runs `work` over the tree's nodes once every node it asks for is
    /// known to be readable: a dry run over a recorder finds which (the
    /// nodes a proof needs depend on indices only, never on hashes), then
    /// each is fetched, so a missing or short tile is an error, not a
    /// panic inside [`Nodes`].
    fn checked<T>(
        &self,
        work: impl Fn(&dyn DynNodes) -> Result<T, ProofError>,
    ) -> Result<T, SnapshotError> {
        let recorder = Recorder::default();
        work(&recorder)?;
        for (level, index) in recorder.asked.into_inner() {
            self.nodes.try_node(level, index)?;
        }
        Ok(work(&self.nodes)?)
    }
}

/// Why a snapshot cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Tile(#[from] TileError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("the tree holds {holds} leaves, not {size}")]
    Beyond { size: u64, holds: u64 },
}

/// [`Nodes`] as a trait object, so that one closure serves the recorder
/// and the tiles.
pub trait DynNodes {
    fn dyn_node(&self, level: u32, index: u64) -> Hash;
}

impl<N: Nodes> DynNodes for N {
    fn dyn_node(&self, level: u32, index: u64) -> Hash {
        self.node(level, index)
    }
}

impl Nodes for &dyn DynNodes {
    fn node(&self, level: u32, index: u64) -> Hash {
        // Through the trait object (`self` itself is a `DynNodes` too).
        (**self).dyn_node(level, index)
    }
}

/// Answers zeros and writes down what was asked.
#[derive(Default)]
struct Recorder {
    asked: RefCell<Vec<(u32, u64)>>,
}

impl Nodes for Recorder {
    fn node(&self, level: u32, index: u64) -> Hash {
        self.asked.borrow_mut().push((level, index));
        [0; 32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::compact::BLOCK_LEAVES;
    use crate::integrity::merkle::{inclusion_proof, leaf_hash, verify_inclusion, MemoryTree};
    use crate::integrity::tiles::TILE_WIDTH;

    fn leaf(i: u64) -> Hash {
        leaf_hash(&i.to_be_bytes())
    }

    #[test]
    fn the_store_agrees_with_the_memory_tree_across_syncs_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = MemoryTree::new();
        let mut next = 0u64;
        // Sizes around tile edges at levels 0 and 1.
        for step in [1u64, 254, 1, 1, 300, 65_000, 536, 1] {
            let store = TreeStore::open(dir.path()).unwrap();
            assert_eq!(store.size(), next);
            let leaves: Vec<Hash> = (next..next + step).map(leaf).collect();
            for l in &leaves {
                memory.push(*l);
            }
            store.append(&leaves, LogPosition::new(next + step));
            next += step;
            let snapshot = store.snapshot();
            assert_eq!(
                snapshot.root().unwrap(),
                memory.root(),
                "before sync, {next}"
            );
            let head = store.sync().unwrap();
            assert_eq!(head.size, next);
            assert_eq!(head.root, memory.root());
            assert_eq!(head.log, LogPosition::new(next));
            let snapshot = store.snapshot();
            for index in [0, next / 2, next - 1] {
                let proof = inclusion_proof(snapshot.nodes(), index, next).unwrap();
                verify_inclusion(&leaf(index), index, next, &proof, &memory.root()).unwrap();
            }
        }
        let reopened = TreeStore::open(dir.path()).unwrap();
        assert_eq!(reopened.durable().root, memory.root());
        // Partial tiles of older widths are gone.
        let partials = std::fs::read_dir(dir.path().join("tlog/tile/0"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".p"))
            .map(|e| std::fs::read_dir(e.path()).unwrap().count())
            .sum::<usize>();
        assert_eq!(
            partials, 1,
            "one partial level-0 tile, of the current width"
        );
    }

    /// An index as the tree sees it: the leaf of each seq, one day each.
    struct Stored(Mutex<BTreeMap<u64, (Hash, crate::partition::Day)>>);

    impl LeafSource for Stored {
        fn indexed(&self) -> u64 {
            self.0.lock().unwrap().keys().max().map_or(0, |s| s + 1)
        }
        fn seq_days(&self, from: u64, to: u64) -> Result<Vec<(u64, i64)>, String> {
            let map = self.0.lock().unwrap();
            Ok(map.range(from..to).map(|(s, (_, d))| (*s, *d)).collect())
        }
        fn leaves(&self, from: u64, to: u64) -> Result<Vec<(u64, Option<Hash>)>, String> {
            let map = self.0.lock().unwrap();
            Ok(map
                .range(from..to)
                .map(|(s, (l, _))| (*s, Some(*l)))
                .collect())
        }
    }

    fn tlog_bytes(dir: &Path) -> u64 {
        fn walk(path: &Path) -> u64 {
            std::fs::read_dir(path)
                .unwrap()
                .flatten()
                .map(|e| match e.file_type().unwrap().is_dir() {
                    true => walk(&e.path()),
                    false => e.metadata().unwrap().len(),
                })
                .sum()
        }
        walk(&dir.join(TLOG_DIR))
    }

    #[test]
    fn compacted_tiles_are_read_back_from_the_index_and_refused_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * BLOCK_LEAVES + 300;
        let mut memory = MemoryTree::new();
        let leaves: Vec<Hash> = (0..size).map(leaf).collect();
        leaves.iter().for_each(|l| memory.push(*l));
        // Seq 700 (tile 2) never reached the index; tile 5 mixes two days.
        let mut index: BTreeMap<u64, (Hash, i64)> =
            (0..size).map(|s| (s, (leaf(s), 20_000))).collect();
        index.remove(&700);
        index.get_mut(&(5 * TILE_WIDTH + 3)).unwrap().1 = 20_001;
        let source = Arc::new(Stored(Mutex::new(index)));

        let store = TreeStore::open(dir.path()).unwrap();
        store.append(&leaves, LogPosition::new(size));
        store.sync().unwrap();
        let before = tlog_bytes(dir.path());
        assert_eq!(store.compact().unwrap(), 0, "no index yet, nothing goes");
        store.set_leaf_source(source.clone());
        // Two whole blocks; tiles 2 and 5 stay.
        assert_eq!(store.compact().unwrap(), 2 * TILE_WIDTH - 2);
        assert_eq!(store.compact().unwrap(), 0, "done once");
        let kept: Vec<bool> = [0u64, 2, 5, 300]
            .iter()
            .map(|i| tile_path(&store.dir, full_tile(*i)).exists())
            .collect();
        assert_eq!(kept, vec![false, true, true, false]);
        let after = tlog_bytes(dir.path());
        assert!(after * 10 < before, "{after} bytes of {before}");

        // Proofs and tiles read through the index are the tree's.
        let snapshot = store.snapshot();
        for index in [0, 700, 5 * TILE_WIDTH + 3, BLOCK_LEAVES + 17, size - 1] {
            let proof = snapshot.inclusion_proof(index, size).unwrap();
            assert_eq!(proof, inclusion_proof(&memory, index, size).unwrap());
            assert_eq!(snapshot.leaf(index).unwrap(), leaf(index));
        }
        assert_eq!(
            snapshot.tile(full_tile(300)).unwrap(),
            crate::integrity::tiles::tile(&memory, size, full_tile(300)).unwrap()
        );
        assert!(matches!(
            snapshot.held(0).unwrap(),
            HeldTile::Compacted { .. }
        ));
        assert!(matches!(snapshot.held(2).unwrap(), HeldTile::Hashes(_)));

        // A reopened store compacts no more and reads the same.
        drop((store, snapshot));
        let store = TreeStore::open(dir.path()).unwrap();
        store.set_leaf_source(source.clone());
        assert_eq!(store.compact().unwrap(), 0);
        assert_eq!(store.snapshot().leaf(9).unwrap(), leaf(9));

        // A changed stored event makes its compacted tile unreadable.
        source.0.lock().unwrap().get_mut(&9).unwrap().0 = leaf(1_000_000);
        let error = store.snapshot().leaf(9).unwrap_err().to_string();
        assert!(error.contains("no longer hash up"), "{error}");
        assert_eq!(store.snapshot().leaf(TILE_WIDTH).unwrap(), leaf(TILE_WIDTH));
    }

    #[test]
    fn what_was_not_synced_is_not_there_after_a_reopen_and_a_damaged_tile_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = TreeStore::open(dir.path()).unwrap();
        let leaves: Vec<Hash> = (0..600).map(leaf).collect();
        store.append(&leaves[..300], LogPosition::new(300));
        store.sync().unwrap();
        store.append(&leaves[300..], LogPosition::new(600));
        drop(store);
        let store = TreeStore::open(dir.path()).unwrap();
        assert_eq!(store.size(), 300);
        assert_eq!(store.durable().log, LogPosition::new(300));
        drop(store);

        // The root reads the partial tiles (a full tile's damage shows in
        // the full audit, which rehashes every tile).
        let tile = dir.path().join("tlog/tile/0/001.p/44");
        let mut bytes = std::fs::read(&tile).unwrap();
        bytes[7] ^= 1;
        std::fs::write(&tile, bytes).unwrap();
        let error = TreeStore::open(dir.path()).err().expect("a flipped byte");
        assert!(error.to_string().contains("another root"), "{error}");
    }
}

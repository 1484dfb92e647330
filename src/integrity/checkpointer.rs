//! Signed checkpoints: the signing key, the checkpoints kept, and the
//! thread (`auditd-tlog`) that makes the tree durable and signs a
//! checkpoint of it once an interval while events arrive, and at stop.
//!
//! ```text
//! <data_dir>/integrity.key        the note signer key, owner-only, made on first start
//! <data_dir>/integrity.pub        its verifier key, for operators to copy
//! <data_dir>/tlog/checkpoints.ndjson  every checkpoint kept, one JSON line each
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::note::{checkpoint_body, NoteError, NoteSigner};
use super::store::{StoreError, TreeHead, TreeStore, TLOG_DIR};
use crate::datadir::write_atomically;
use crate::status::{PipelineStatus, WorkerGuard};
use crate::wal::group_commit::WalPositions;

const KEY_FILE: &str = "integrity.key";
const PUBLIC_KEY_FILE: &str = "integrity.pub";
const CHECKPOINTS_FILE: &str = "checkpoints.ndjson";

/// Checkpoints younger than this are all kept; of older ones, the first
/// of each minute.
const KEEP_ALL_FOR_MICROS: i64 = 3_600_000_000;
const THIN_TO_MICROS: i64 = 60_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: NoteError },
    #[error("{path}: line {line}: {reason}")]
    Kept {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A new signing key named `origin` (or `auditd/<8 random hex>`).
pub fn new_key(origin: &str) -> Result<NoteSigner, super::note::NoteError> {
    let name = if origin.is_empty() {
        format!("auditd/{:08x}", rand::random::<u32>())
    } else {
        origin.to_owned()
    };
    NoteSigner::generate(&name, rand::random())
}

/// Writes `signer`'s verifier key to `<data_dir>/integrity.pub` (where
/// `auditctl verify` looks by default) unless it is there already.
pub fn write_verifier_key(data_dir: &Path, signer: &NoteSigner) -> Result<(), CheckpointError> {
    let public = data_dir.join(PUBLIC_KEY_FILE);
    let line = format!("{}\n", signer.verifier_key());
    if std::fs::read_to_string(&public).is_ok_and(|held| held == line) {
        return Ok(());
    }
    write_atomically(&public, line.as_bytes(), false).map_err(io(&public))
}

/// The signing key: read from `integrity.key`, or made and written there
/// (owner-only) on first start, named `origin` (or `auditd/<8 random
/// hex>`). Returns the signer and whether it is new.
pub fn load_or_create_key(
    data_dir: &Path,
    origin: &str,
) -> Result<(NoteSigner, bool), CheckpointError> {
    let path = data_dir.join(KEY_FILE);
    let key_error = |source| CheckpointError::Key {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((
            NoteSigner::from_text(text.trim()).map_err(key_error)?,
            false,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = new_key(origin).map_err(key_error)?;
            write_atomically(&path, format!("{}\n", signer.to_text()).as_bytes(), true)
                .map_err(io(&path))?;
            write_verifier_key(data_dir, &signer)?;
            Ok((signer, true))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// One checkpoint as kept and published.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedCheckpoint {
    pub size: u64,
    /// When it was signed, in microseconds since the epoch.
    pub time: i64,
    /// The whole signed note.
    pub note: String,
    #[serde(skip)]
    pub root: super::merkle::Hash,
}

/// The checkpoints kept, by size, in memory and in `checkpoints.ndjson`.
pub struct Checkpoints {
    path: PathBuf,
    kept: Mutex<BTreeMap<u64, SignedCheckpoint>>,
}

impl Checkpoints {
    /// Reads the file (none: none kept yet).
    pub fn open(data_dir: &Path) -> Result<Checkpoints, CheckpointError> {
        let path = data_dir.join(TLOG_DIR).join(CHECKPOINTS_FILE);
        let mut kept = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    if line.is_empty() {
                        continue;
                    }
                    let bad = |reason: String| CheckpointError::Kept {
                        path: path.clone(),
                        line: i + 1,
                        reason,
                    };
                    let mut checkpoint: SignedCheckpoint =
                        serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                    let body = checkpoint.note.split("\n\n").next().unwrap_or_default();
                    let (_, size, root) =
                        super::note::parse_checkpoint(body).map_err(|e| bad(e.to_string()))?;
                    if size != checkpoint.size {
                        return Err(bad(format!(
                            "size {} but its note says {size}",
                            checkpoint.size
                        )));
                    }
                    checkpoint.root = root;
                    kept.insert(checkpoint.size, checkpoint);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        Ok(Checkpoints {
            path,
            kept: Mutex::new(kept),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, SignedCheckpoint>> {
        self.kept.lock().expect("checkpoints lock")
    }

    /// The newest.
    pub fn latest(&self) -> Option<SignedCheckpoint> {
        self.lock().values().next_back().cloned()
    }

    /// The one of exactly `size` leaves, if kept.
    pub fn of_size(&self, size: u64) -> Option<SignedCheckpoint> {
        self.lock().get(&size).cloned()
    }

    /// Keeps `checkpoint`: appended to the file, and once an hour the file
    /// is rewritten without the thinned ones.
    fn add(&self, checkpoint: SignedCheckpoint) -> Result<(), CheckpointError> {
        let mut kept = self.lock();
        let line = serde_json::to_string(&checkpoint).expect("a checkpoint serializes");
        let oldest_unthinned = kept.values().next().map_or(checkpoint.time, |c| c.time);
        kept.insert(checkpoint.size, checkpoint.clone());
        if checkpoint.time - oldest_unthinned > 2 * KEEP_ALL_FOR_MICROS
            && thin(&mut kept, checkpoint.time)
        {
            let mut text = String::new();
            for kept in kept.values() {
                text.push_str(&serde_json::to_string(kept).expect("a checkpoint serializes"));
                text.push('\n');
            }
            return write_atomically(&self.path, text.as_bytes(), false).map_err(io(&self.path));
        }
        append_line(&self.path, &line)
    }
}

/// Drops, among checkpoints older than an hour before `now`, all but the
/// first of each minute; says whether it dropped any.
fn thin(kept: &mut BTreeMap<u64, SignedCheckpoint>, now: i64) -> bool {
    let mut last_minute = None;
    let before = kept.len();
    kept.retain(|_, c| {
        if now - c.time <= KEEP_ALL_FOR_MICROS {
            return true;
        }
        let minute = c.time.div_euclid(THIN_TO_MICROS);
        let first = last_minute != Some(minute);
        last_minute = Some(minute);
        first
    });
    kept.len() != before
}

fn append_line(path: &Path, line: &str) -> Result<(), CheckpointError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(io(path))
}

/// What the checkpointer works with.
pub struct Integrity {
    pub tree: Arc<TreeStore>,
    /// The checkpoints' origin line: the key's name, or a partition's
    /// origin under it (`combined::partition_origin`).
    pub origin: String,
    pub signer: NoteSigner,
    pub checkpoints: Checkpoints,
    pub publish_file: Option<PathBuf>,
    pub publish_url: Option<super::publish::UrlPublisher>,
}

impl Integrity {
    /// Makes the tree durable and, when it grew since the last one, signs
    /// a checkpoint of it, keeps it and publishes it.
    pub fn checkpoint(&self, now_micros: i64) -> Result<TreeHead, CheckpointError> {
        let head = self.tree.sync()?;
        let latest = self.checkpoints.latest().map(|c| c.size);
        if latest == Some(head.size) {
            return Ok(head);
        }
        let body = checkpoint_body(&self.origin, head.size, &head.root);
        let note = self
            .signer
            .sign(&body)
            .expect("a checkpoint body is a valid note text");
        let checkpoint = SignedCheckpoint {
            size: head.size,
            time: now_micros,
            note,
            root: head.root,
        };
        self.checkpoints.add(checkpoint.clone())?;
        if let Some(path) = &self.publish_file {
            let line = serde_json::to_string(&checkpoint).expect("a checkpoint serializes");
            append_line(path, &line)?;
        }
        if let Some(url) = &self.publish_url {
            url.publish(checkpoint.note);
        }
        Ok(head)
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Starts `auditd-tlog`: every `interval`, when the tree grew, it makes
/// it durable, tells the WAL thread how far the log may now be trimmed,
/// and signs a checkpoint. When `stop` is dropped it does so once more
/// and exits. A failure marks integrity degraded and is retried at the
/// next tick (meanwhile the log is not trimmed past the durable tree).
pub fn spawn(
    integrity: Arc<Integrity>,
    interval: Duration,
    positions: Arc<WalPositions>,
    status: Arc<PipelineStatus>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<Result<(), CheckpointError>>> {
    std::thread::Builder::new()
        .name("auditd-tlog".into())
        .spawn(move || {
            let guard = WorkerGuard::new(status.clone(), "integrity");
            let mut failing = false;
            let mut compact_error: Option<String> = None;
            loop {
                let last = matches!(
                    stop.recv_timeout(interval),
                    Err(RecvTimeoutError::Disconnected) | Ok(())
                );
                match integrity.checkpoint(now_micros()) {
                    Ok(head) => {
                        positions
                            .tree_durable
                            .store(head.log.get(), Ordering::Release);
                        if failing {
                            failing = false;
                            status.set_fault("integrity", None);
                        }
                    }
                    Err(error) if last => return Err(error),
                    Err(error) => {
                        tracing::warn!(%error, "could not make the tree durable; will retry");
                        failing = true;
                        status.set_fault("integrity", Some(error.to_string()));
                    }
                }
                // Level-0 tiles the index now holds whole: a failure
                // costs disk, not evidence, and is tried again next time
                // (said once, not every tick).
                match integrity.tree.compact() {
                    Ok(removed) => {
                        metrics::counter!(crate::metrics::TILES_COMPACTED).increment(removed);
                        compact_error = None;
                    }
                    Err(error) if compact_error.as_ref() != Some(&error.to_string()) => {
                        tracing::warn!(%error, "could not compact the tree's level-0 tiles; will retry");
                        compact_error = Some(error.to_string());
                    }
                    Err(_) => {}
                }
                if last {
                    guard.defuse();
                    return Ok(());
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::merkle::leaf_hash;
    use crate::integrity::note::verify;
    use crate::wal::LogPosition;

    #[test]
    fn a_checkpoint_is_signed_kept_published_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, new) = load_or_create_key(dir.path(), "").unwrap();
        assert!(new);
        assert!(signer.name().starts_with("auditd/"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, new) = load_or_create_key(dir.path(), "ignored/now").unwrap();
        assert!(!new);
        assert_eq!(again.verifier_key(), signer.verifier_key());
        let published = dir.path().join("published.ndjson");
        let tree = Arc::new(TreeStore::open(dir.path()).unwrap());
        let integrity = Integrity {
            tree: tree.clone(),
            origin: signer.name().to_owned(),
            signer,
            checkpoints: Checkpoints::open(dir.path()).unwrap(),
            publish_file: Some(published.clone()),
            publish_url: None,
        };
        tree.append(&[leaf_hash(b"a"), leaf_hash(b"b")], LogPosition::new(10));
        let head = integrity.checkpoint(1_000).unwrap();
        assert_eq!(head.size, 2);
        // Nothing new: no second checkpoint.
        integrity.checkpoint(2_000).unwrap();
        tree.append(&[leaf_hash(b"c")], LogPosition::new(20));
        integrity.checkpoint(3_000).unwrap();

        let kept = Checkpoints::open(dir.path()).unwrap();
        let latest = kept.latest().unwrap();
        assert_eq!(latest.size, 3);
        assert_eq!(kept.of_size(2).unwrap().root, head.root);
        assert!(kept.of_size(1).is_none());
        let text = verify(&latest.note, &integrity.signer.verifier_key()).unwrap();
        assert!(text.contains("\n3\n"), "{text}");
        let lines = std::fs::read_to_string(published).unwrap();
        assert_eq!(lines.lines().count(), 2);
    }

    #[test]
    fn old_checkpoints_thin_to_one_a_minute() {
        let checkpoint = |size, time| SignedCheckpoint {
            size,
            time,
            note: String::new(),
            root: [0; 32],
        };
        let now = 10 * KEEP_ALL_FOR_MICROS;
        let mut kept = BTreeMap::new();
        // Two hours ago, one every 10 s for five minutes; then the last hour.
        let start = now - 2 * KEEP_ALL_FOR_MICROS;
        for i in 0..30 {
            kept.insert(i, checkpoint(i, start + i as i64 * 10_000_000));
        }
        for i in 0..10 {
            kept.insert(100 + i, checkpoint(100 + i, now - i as i64 * 1_000_000));
        }
        assert!(thin(&mut kept, now));
        let minutes = (start / THIN_TO_MICROS..=(start + 290_000_000) / THIN_TO_MICROS).count();
        assert_eq!(kept.len(), minutes + 10);
        assert!(!thin(&mut kept, now));
    }
}

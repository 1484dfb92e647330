//! The data directory: the one type that names every file and folder in
//! it, its format version, and the one way files in it are replaced
//! atomically.
//!
//! ```text
//! <data_dir>/
//!   FORMAT             the data format version ("8")
//!   LOCK               held (flock) while a daemon or a tool works here
//!   admin.token        the first admin token, owner-only
//!   tokens.json        token hashes, owner-only
//!   checkpoint.json    what the index covers, and each partition's ledger
//!   wal/               write-ahead log segments (wal-<position>.log)
//!   index/<day>/       one Tantivy index per UTC day, with its events
//!                      store's dictionary (`events.dict`, `docstore`)
//!   damaged/           what `auditd recover` moved aside
//!   integrity.key      the checkpoint signing key, owner-only
//!   integrity.pub      its note verifier key
//!   tlog/              the Merkle tree (tiles, tree.json) and the
//!                      checkpoints kept (`integrity::store`, `checkpointer`)
//!   retention.json     the compliance floor, legal holds and drops done
//!                      (`retention`)
//!   pseudonym.key      the key of erasure's pseudonyms, owner-only,
//!                      made at the first `pseudonymise` (`erasure`)
//!   dense-terms.json   which terms' bit sets searches were using at the
//!                      last stop, made again at start (`search::dense`)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

/// The data format this binary writes and reads. Formats 3 to 7 are
/// read as they are and called format 8 from the first start on:
/// - format 3's events keep their version 1 leaves, which this binary
///   still rebuilds (format 4 brought version 2 leaves);
/// - the partitions of formats 3 and 4 keep their events in Tantivy's doc
///   store, which this binary still reads; partitions created since keep
///   them in the events store (`docstore`, format 5);
/// - events stored before format 6 each keep their salt in the index;
///   since, a batch of `integrity::seeds::MIN_EVENTS` or more keeps one
///   seed in `tlog/seeds` instead (an older binary would not find it);
/// - blocks compacted before format 7 keep 16-bit fingerprints
///   (`tlog/fingerprints/<b>`, `afp1`), read as 12-bit ones; blocks
///   compacted since keep 12 bits a leaf (`afp2`, which an older binary
///   calls damaged);
/// - events stored before format 8 keep their version 2 (or 1) leaves;
///   since, new events get version 3 leaves (`integrity::leaf`), whose
///   openings an older binary cannot read.
///
/// Older ones are migrated by `auditd migrate`: format 1 (before typed
/// records and dense seqs, no `FORMAT` file) and format 2 (no salts, no
/// Merkle tree). A newer one is refused.
pub const FORMAT: u32 = 8;

/// The older formats read as they are (see [`FORMAT`]).
pub const OPENS_IN_PLACE: [u32; 5] = [3, 4, 5, 6, 7];

/// The layout of one data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

/// What a data directory's format says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Nothing there yet: this binary's format is written on first start.
    Fresh,
    /// This binary's format.
    Current,
    /// An older format this binary reads as it is; the first start
    /// writes this binary's format over it.
    InPlace(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "data directory {path} holds data format {found}, older than this auditd's \
         (format {FORMAT}). Stop every auditd using it, then run \
         `auditd migrate --data-dir {path}` (README: \"Upgrading\")"
    )]
    Older { path: PathBuf, found: u32 },
    #[error(
        "data directory {path} holds data format {found}, newer than this auditd reads \
         ({FORMAT}); run the auditd that wrote it, or a newer one"
    )]
    Newer { path: PathBuf, found: u32 },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "data directory {path} was indexed from the log {was}, and log.kind (or \
         log.jetstream.stream) now names {now}: the index's checkpoint is a position in \
         the first one, meaningless in the other. Go back to {was}, or start a new data \
         directory on {now} (README: \"On NATS JetStream\")"
    )]
    OtherLog {
        path: PathBuf,
        was: String,
        now: String,
    },
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn format_file(&self) -> PathBuf {
        self.root.join("FORMAT")
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }

    pub fn admin_token(&self) -> PathBuf {
        self.root.join(crate::auth::ADMIN_TOKEN_FILE)
    }

    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens.json")
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.json")
    }

    pub fn wal(&self) -> PathBuf {
        self.root.join("wal")
    }

    pub fn index(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Which terms' bit sets searches were using when the daemon last
    /// stopped (`search/dense/remembered.rs`): a hint, never data.
    pub fn dense_terms(&self) -> PathBuf {
        self.root.join("dense-terms.json")
    }

    pub fn retention(&self) -> PathBuf {
        self.root.join("retention.json")
    }

    pub fn damaged(&self) -> PathBuf {
        self.root.join("damaged")
    }

    /// Reads the format version. A directory with no `FORMAT` file is
    /// fresh when it holds no log, index or checkpoint, and format 1
    /// otherwise.
    pub fn format(&self) -> Result<Format, FormatError> {
        let path = self.format_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let found: u32 = text.trim().parse().map_err(|_| FormatError::Unreadable {
                    path: path.clone(),
                    reason: format!("{:?} is not a format version", text.trim()),
                })?;
                match found.cmp(&FORMAT) {
                    std::cmp::Ordering::Equal => Ok(Format::Current),
                    std::cmp::Ordering::Greater => Err(FormatError::Newer {
                        path: self.root.clone(),
                        found,
                    }),
                    std::cmp::Ordering::Less if OPENS_IN_PLACE.contains(&found) => {
                        Ok(Format::InPlace(found))
                    }
                    std::cmp::Ordering::Less => Err(FormatError::Older {
                        path: self.root.clone(),
                        found,
                    }),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let old = [self.wal(), self.index(), self.checkpoint()]
                    .iter()
                    .any(|p| p.exists());
                if old {
                    Err(FormatError::Older {
                        path: self.root.clone(),
                        found: 1,
                    })
                } else {
                    Ok(Format::Fresh)
                }
            }
            Err(e) => Err(FormatError::Unreadable {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Ties the directory to the log named `log` (`local`,
    /// `jetstream:<stream>`): its index positions are that log's. Written
    /// on the first start; a directory from before the file existed was
    /// on the local log. Another log is refused.
    pub fn bind_log(&self, log: &str) -> Result<(), FormatError> {
        let path = self.root.join("LOG");
        let was = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = !self.wal().exists() && !self.checkpoint().exists();
                if fresh || log == "local" {
                    return write_atomically(&path, format!("{log}\n").as_bytes(), false).map_err(
                        |e| FormatError::Unreadable {
                            path,
                            reason: e.to_string(),
                        },
                    );
                }
                "local".to_owned()
            }
            Err(e) => {
                return Err(FormatError::Unreadable {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        if was == log {
            return Ok(());
        }
        Err(FormatError::OtherLog {
            path: self.root.clone(),
            was,
            now: log.to_owned(),
        })
    }

    /// Records that the directory holds this binary's format.
    pub fn write_format(&self) -> std::io::Result<()> {
        write_atomically(&self.format_file(), format!("{FORMAT}\n").as_bytes(), false)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old
/// file or the new one: write a temporary file beside it, fsync, rename
/// over, fsync the directory. `private` makes the file readable by its
/// owner only (tokens).
pub fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        crate::wal::segment::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_current_older_and_newer_directories() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.format().unwrap(), Format::Fresh);
        data.write_format().unwrap();
        assert_eq!(data.format().unwrap(), Format::Current);

        std::fs::write(data.format_file(), format!("{}\n", FORMAT + 1)).unwrap();
        let newer = data.format().unwrap_err().to_string();
        assert!(newer.contains(&format!("format {}", FORMAT + 1)), "{newer}");

        std::fs::remove_file(data.format_file()).unwrap();
        std::fs::create_dir(data.wal()).unwrap();
        let older = data.format().unwrap_err().to_string();
        assert!(older.contains("format 1"), "{older}");
        assert!(older.contains("auditd migrate --data-dir"), "{older}");

        for old in OPENS_IN_PLACE {
            std::fs::write(data.format_file(), format!("{old}\n")).unwrap();
            assert_eq!(data.format().unwrap(), Format::InPlace(old));
        }

        std::fs::write(data.format_file(), "2\n").unwrap();
        let two = data.format().unwrap_err().to_string();
        assert!(two.contains("format 2"), "{two}");
        assert!(two.contains("auditd migrate --data-dir"), "{two}");
    }

    #[test]
    fn a_directory_keeps_to_the_log_it_was_indexed_from() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.bind_log("jetstream:A").unwrap();
        data.bind_log("jetstream:A").unwrap();
        let other = data.bind_log("jetstream:B").unwrap_err().to_string();
        assert!(
            other.contains("jetstream:A") && other.contains("jetstream:B"),
            "{other}"
        );
        assert!(data.bind_log("local").is_err());

        // A directory from before the file was on the local log.
        let old = tempfile::tempdir().unwrap();
        let data = DataDir::new(old.path());
        std::fs::create_dir(data.wal()).unwrap();
        let moved = data.bind_log("jetstream:A").unwrap_err().to_string();
        assert!(moved.contains("log local"), "{moved}");
        data.bind_log("local").unwrap();
        assert!(data.bind_log("jetstream:A").is_err());
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        write_atomically(&path, b"first, longer", true).unwrap();
        write_atomically(&path, b"second", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

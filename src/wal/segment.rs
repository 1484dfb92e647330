//! Segment files: the WAL is a run of files, each named for the global
//! position of its first frame, so the position of any byte is known from
//! the file name and the offset alone.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Every segment file starts with this, so a stray file is never replayed.
pub const MAGIC: &[u8; 8] = b"AUDWAL01";

const PREFIX: &str = "wal-";
const SUFFIX: &str = ".log";

/// A segment on disk: its first global position and its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub start: u64,
    pub path: PathBuf,
}

pub fn path_for(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{start:020}{SUFFIX}"))
}

/// The segments in `dir`, oldest first. Files that are not segments are
/// left alone.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(start) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(SegmentFile {
            start,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|s| s.start);
    Ok(segments)
}

/// Creates a new, empty segment holding only the magic header, and makes
/// its directory entry durable.
pub fn create(dir: &Path, start: u64) -> io::Result<File> {
    use std::io::Write;
    let path = path_for(dir, start);
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// fsync on a directory makes creations, renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

//! `auditd recover`: the way out when start-up refuses a damaged index.
//!
//! Start-up checks every partition (its files against their checksums, its
//! commit payload) and stops at the first damage rather than serve wrong or
//! partial answers. This offline pass, run with the daemon stopped:
//!
//! 1. finds every damaged partition, with the reason;
//! 2. writes a skip record over damaged bytes before the log's tail (the
//!    segment as it was is copied aside first), so start-up no longer
//!    refuses the log and every record after the damage keeps its place;
//! 3. reads the whole write-ahead log, counting the events of each damaged
//!    day it still holds (the log is trimmed below each checkpoint, so it
//!    may no longer hold all of them);
//! 4. moves each damaged partition, untouched, to `<data_dir>/damaged/`;
//! 5. lowers the checkpoint to the start of the log, so the next start
//!    replays all of it: a fresh partition takes back every event of its
//!    day the log holds, and the healthy partitions skip what their own
//!    commit payloads say they have;
//! 6. reports, per partition, how many events it held (from the copy of
//!    the ledger in the checkpoint, which lives outside the damaged files),
//!    how many the log gives back, and exactly how many are lost.
//!
//! Nothing is deleted: the moved-aside directory keeps the damaged files
//! for forensics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::indexer::{read_checkpoint, write_checkpoint, IndexError};
use crate::messages::{Checkpoint, CommitPayload};
use crate::partition::{day_of, format_day, parse_day, verify_partition, Day};
use crate::record::LogRecord;
use crate::schema::{timestamp_micros, AuditSchema};
use crate::server::ServerError;
use crate::wal::LogPosition;
use crate::wal::{SkippedDamage, Wal, WalError};

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    DataDir(#[from] ServerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] IndexError),
    #[error(
        "the write-ahead log: {0}. Nothing was changed past the damage; keep the data \
         directory as it is and restore it from a backup"
    )]
    Wal(#[from] WalError),
}

/// What `recover` found and did.
#[derive(Debug, Default)]
pub struct RecoverReport {
    /// Damaged log bytes a skip record now covers.
    pub wal_skipped: Vec<SkippedDamage>,
    pub partitions_checked: usize,
    pub damaged: Vec<DamagedPartition>,
    /// The log's first and last positions: what it can give back.
    pub wal_start: LogPosition,
    pub wal_end: LogPosition,
    /// The checkpoint before and after (lowered only when something was
    /// moved aside).
    pub checkpoint_before: LogPosition,
    pub checkpoint_after: LogPosition,
}

impl RecoverReport {
    /// Events lost over every damaged partition; `None` when a partition's
    /// count is unknown (no ledger entry and unreadable metadata).
    pub fn lost(&self) -> Option<u64> {
        self.damaged.iter().map(|d| d.lost).sum()
    }
}

#[derive(Debug)]
pub struct DamagedPartition {
    pub day: String,
    pub reason: String,
    pub moved_to: PathBuf,
    /// Events it held at its last commit, and where that number came from.
    pub held: Option<u64>,
    pub held_source: &'static str,
    /// Events of its day in log records below its last commit: it held
    /// them, and the next start re-indexes them.
    pub given_back: u64,
    /// Events of its day in log records at or after its last commit: not
    /// yet indexed anywhere, re-indexed at the next start as usual.
    pub not_yet_indexed: u64,
    /// `held - given_back`: events only the damaged files had.
    pub lost: Option<u64>,
}

/// Runs the recovery on `config.data_dir`. Refuses while a daemon holds
/// the data directory.
pub fn recover(config: &Config) -> Result<RecoverReport, RecoverError> {
    let data_dir = &config.data_dir;
    let _lock = crate::server::lock_data_dir(data_dir)?;
    let layout = crate::datadir::DataDir::new(data_dir);
    layout.format().map_err(ServerError::from)?;
    let checkpoint = read_checkpoint(data_dir)?;
    let mut report = RecoverReport {
        checkpoint_before: checkpoint.wal_position,
        checkpoint_after: checkpoint.wal_position,
        ..RecoverReport::default()
    };

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = layout.damaged();
    let wal_dir = layout.wal();
    report.wal_skipped = crate::wal::skip_damage(&wal_dir, &aside.join(format!("wal-{stamp}")))?;

    let schema = AuditSchema::new();
    let root = layout.index();
    let mut damaged: BTreeMap<Day, (PathBuf, String)> = BTreeMap::new();
    for (day, path) in partition_dirs(&root)? {
        report.partitions_checked += 1;
        if let Err(error) = verify_partition(&path, day, &schema) {
            tracing::warn!(path = %path.display(), %error, "damaged partition");
            damaged.insert(day, (path, error.to_string()));
        }
    }

    // Count, per damaged day, the events the log still holds, split at
    // the partition's last commit. Opening the log is what start-up does
    // too: a torn tail is cut (and logged), damage before it is an error.
    let wal_start = crate::wal::segment::list(&wal_dir)
        .map_err(|source| RecoverError::Io {
            path: wal_dir.clone(),
            source,
        })?
        .first()
        .map_or(checkpoint.wal_position, |s| LogPosition::new(s.start));
    // What each damaged partition held, and up to which log position:
    // from the ledger in the checkpoint (outside the damaged files), else
    // from its own metadata if that still parses.
    let known: BTreeMap<Day, Known> = damaged
        .iter()
        .map(|(day, (path, _))| {
            let known = match checkpoint.partitions.get(&format_day(*day)) {
                Some(entry) => Known {
                    held: Some((entry.events, entry.committed)),
                    source: "checkpoint ledger",
                },
                None => match metadata_ledger(path) {
                    Some(held) => Known {
                        held: Some(held),
                        source: "partition metadata",
                    },
                    None => Known {
                        held: None,
                        source: "unknown: no ledger entry and unreadable metadata",
                    },
                },
            };
            (*day, known)
        })
        .collect();
    let mut below: BTreeMap<Day, u64> = BTreeMap::new();
    let mut above: BTreeMap<Day, u64> = BTreeMap::new();
    let (wal, _) = Wal::open(
        &wal_dir,
        wal_start,
        config.wal.segment_bytes,
        config.wal.recovery,
        |record| {
            if known.is_empty() {
                return Ok(());
            }
            let LogRecord::Batch(batch) = crate::record::decode(record)? else {
                return Ok(());
            };
            for event in &batch.batch.events {
                let day = day_of(timestamp_micros(event.time.as_ref()));
                if let Some(known) = known.get(&day) {
                    let held = known.held.is_some_and(|(_, c)| record.start < c);
                    *if held { &mut below } else { &mut above }
                        .entry(day)
                        .or_default() += 1;
                }
            }
            Ok(())
        },
    )?;
    report.wal_start = wal_start;
    report.wal_end = wal.end();
    drop(wal);

    if damaged.is_empty() {
        return Ok(report);
    }

    std::fs::create_dir_all(&aside).map_err(|source| RecoverError::Io {
        path: aside.clone(),
        source,
    })?;
    let mut ledger = checkpoint.partitions.clone();
    for (day, (path, reason)) in damaged {
        let name = format_day(day);
        ledger.remove(&name);
        let known = &known[&day];
        let held = known.held.map(|(events, _)| events);
        let given_back = below.get(&day).copied().unwrap_or(0);
        let moved_to = aside.join(format!("{name}-{stamp}"));
        std::fs::rename(&path, &moved_to).map_err(|source| RecoverError::Io {
            path: path.clone(),
            source,
        })?;
        report.damaged.push(DamagedPartition {
            day: name,
            reason,
            moved_to,
            held,
            held_source: known.source,
            given_back,
            not_yet_indexed: above.get(&day).copied().unwrap_or(0),
            // The log can only give back what the partition held.
            lost: held.map(|h| h.saturating_sub(given_back)),
        });
    }
    for dir in [&aside, &root] {
        crate::wal::segment::sync_dir(dir).map_err(|source| RecoverError::Io {
            path: dir.clone(),
            source,
        })?;
    }

    report.checkpoint_after = checkpoint.wal_position.min(wal_start);
    write_checkpoint(
        &layout.checkpoint(),
        &Checkpoint {
            wal_position: report.checkpoint_after,
            next_seq: checkpoint.next_seq,
            partitions: ledger,
        },
    )?;
    Ok(report)
}

/// Every `YYYY-MM-DD` directory under the index root.
fn partition_dirs(root: &Path) -> Result<Vec<(Day, PathBuf)>, RecoverError> {
    let io = |source| RecoverError::Io {
        path: root.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        if let Some(day) = entry.file_name().to_str().and_then(parse_day) {
            dirs.push((day, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// What a damaged partition held: events, and the log position its last
/// commit covers.
struct Known {
    held: Option<(u64, LogPosition)>,
    source: &'static str,
}

/// The document count and commit payload the partition's own `meta.json`
/// records, when both still parse: the fallback for a partition the ledger
/// does not know (a checkpoint written before the ledger existed).
fn metadata_ledger(path: &Path) -> Option<(u64, LogPosition)> {
    let index = tantivy::Index::open_in_dir(path).ok()?;
    let metas = index.load_metas().ok()?;
    let committed = metas
        .payload
        .as_deref()
        .map_or(Some(LogPosition::START), |p| {
            CommitPayload::parse(p).map(|c| c.log)
        })?;
    let events = metas.segments.iter().map(|s| u64::from(s.num_docs())).sum();
    Some((events, committed))
}

impl std::fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for skip in &self.wal_skipped {
            writeln!(
                f,
                "write-ahead log {} at offset {}: {} ({} bytes, log positions [{}, {})): \
                 replaced by a skip record; the segment as it was is in {}",
                skip.path.display(),
                skip.offset,
                skip.reason,
                skip.len,
                skip.start,
                skip.end,
                skip.copy.display()
            )?;
            if skip.end <= self.checkpoint_before {
                writeln!(f, "  already indexed before the damage: nothing lost")?;
            } else {
                writeln!(
                    f,
                    "  acknowledged but not yet indexed: the events in these bytes are lost, \
                     and their number cannot be read from damaged bytes"
                )?;
            }
        }
        writeln!(
            f,
            "checked {} partition(s); the write-ahead log holds [{}, {})",
            self.partitions_checked, self.wal_start, self.wal_end
        )?;
        if self.damaged.is_empty() {
            return writeln!(f, "no damaged partition");
        }
        for d in &self.damaged {
            writeln!(f, "partition {}: {}", d.day, d.reason)?;
            writeln!(f, "  moved aside to {}", d.moved_to.display())?;
            match d.held {
                Some(n) => writeln!(f, "  events it held: {n} (from the {})", d.held_source)?,
                None => writeln!(f, "  events it held: {}", d.held_source)?,
            }
            writeln!(f, "  given back by the log: {}", d.given_back)?;
            writeln!(
                f,
                "  not yet indexed, re-indexed as usual: {}",
                d.not_yet_indexed
            )?;
            match d.lost {
                Some(n) => writeln!(f, "  events lost: {n}")?,
                None => writeln!(f, "  events lost: unknown")?,
            }
        }
        match self.lost() {
            Some(n) => writeln!(f, "events lost in all: {n}")?,
            None => writeln!(f, "events lost in all: unknown (see above)")?,
        }
        writeln!(
            f,
            "checkpoint lowered from {} to {}: the next start re-indexes the log",
            self.checkpoint_before, self.checkpoint_after
        )
    }
}

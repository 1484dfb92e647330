//! Keeping the index in the page cache: a search whose term dictionaries,
//! postings, columns or events are not there waits for the disk.
//!
//! On 100 M events (9.7 GB of index), evicted from the page cache and
//! started without the start's checksum read (`index.verify_on_start`,
//! which reads every file and so leaves them cached), the first pass of
//! the search mix had free text at 63.7 ms p99 and an IP address at 41.7
//! (14.8 and 2.4 in the second pass). Right after a 100 M ingest, whose
//! writes had pushed the older segments out of the page cache, free text
//! was at 23–37 ms (BENCHMARKS.md, issue 17).
//!
//! So a thread at the lowest CPU priority asks the kernel to read the
//! index ahead (`posix_fadvise(POSIX_FADV_WILLNEED)`, which reads in the
//! background and costs no memory that cannot be reclaimed), up to
//! `index.preload_bytes` and never more than half the machine's memory:
//! first the files every search reads ([`SEARCH_FILES`]) of every
//! partition, newest day first; then the events a page is fetched from
//! ([`BODY_FILES`]), newest day first. It does so at start, and again
//! once the big segments (merges, compaction, retention) have changed and
//! then stayed the same for [`QUIET`]: after an ingest has settled, not
//! throughout it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::index::SegmentId;

use crate::partition::{Day, Partitions};

/// What every search reads of a segment: term dictionaries, postings,
/// columns, field norms and positions.
pub const SEARCH_FILES: [&str; 5] = ["term", "idx", "fast", "fieldnorm", "pos"];
/// What a page's events are read from: the events store, and Tantivy's
/// doc store (the only one in a partition written before the events
/// store).
pub const BODY_FILES: [&str; 2] = ["events", "store"];
/// Segments smaller than this do not count as a change: the trail's own
/// commits make a small segment every few seconds while searches run.
pub const BIG_SEGMENT_DOCS: u32 = 1 << 16;
/// How often the thread looks at the segments, and how long they must
/// stay the same after a change before it reads them ahead again.
pub const QUIET: Duration = Duration::from_secs(10);
/// Bytes a single `WILLNEED` asks for: the kernel reads at most its
/// read-ahead window (often 128 KiB) a call, whatever the length.
const ADVICE_BYTES: u64 = 128 * 1024;

/// A partition's directory and its segments (id, documents), as its
/// searcher holds them now.
pub struct DaySegments {
    pub day: Day,
    pub dir: PathBuf,
    pub segments: Vec<(SegmentId, u32)>,
}

/// The files to read ahead, in order, with their bytes: `partitions`
/// newest first, their [`SEARCH_FILES`] and then their [`BODY_FILES`],
/// until the next file would pass `budget`. A file that is not there (a
/// segment merged away meanwhile) is passed over.
pub fn plan(partitions: &[DaySegments], budget: u64) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut total = 0;
    for kinds in [&SEARCH_FILES[..], &BODY_FILES[..]] {
        for partition in partitions {
            for (id, _) in &partition.segments {
                for kind in kinds {
                    let path = partition.dir.join(format!("{}.{kind}", id.uuid_string()));
                    let Ok(meta) = std::fs::metadata(&path) else {
                        continue;
                    };
                    if total + meta.len() > budget {
                        return files;
                    }
                    total += meta.len();
                    files.push((path, meta.len()));
                }
            }
        }
    }
    files
}

/// Asks the kernel to read `path`'s first `len` bytes into the page
/// cache, [`ADVICE_BYTES`] a call; returns when the reads are asked for.
pub fn advise(path: &Path, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let mut offset = 0;
    while offset < len {
        // SAFETY: a valid descriptor, held open for the call.
        let result = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                offset as libc::off_t,
                ADVICE_BYTES as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result));
        }
        offset += ADVICE_BYTES;
    }
    Ok(())
}

/// `configured`, but at most half the machine's memory (`MemTotal` in
/// `/proc/meminfo`, where there is one).
pub fn budget(configured: u64) -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    total.map_or(configured, |total| configured.min(total / 2))
}

/// When to read ahead again: the big segments seen at the last look and
/// at the last read-ahead.
#[derive(Default)]
pub struct Trigger {
    seen: Option<BTreeSet<(Day, SegmentId)>>,
    read: Option<BTreeSet<(Day, SegmentId)>>,
}

impl Trigger {
    /// Whether to read ahead now, given the big segments now: at the
    /// first look, and when they differ from the last read-ahead's and are
    /// the same as at the last look (a [`QUIET`] ago).
    pub fn due(&mut self, now: BTreeSet<(Day, SegmentId)>) -> bool {
        let first = self.seen.is_none();
        let settled = self.seen.as_ref() == Some(&now);
        self.seen = Some(now.clone());
        if (first || settled) && self.read.as_ref() != Some(&now) {
            self.read = Some(now);
            return true;
        }
        false
    }
}

impl Partitions {
    /// Each partition's segments, newest day first.
    pub fn segments(&self) -> Vec<DaySegments> {
        let newest_first = self.overlapping(None, None).into_iter().rev();
        newest_first
            .map(|partition| DaySegments {
                day: partition.day,
                dir: partition.path.clone(),
                segments: (partition.reader.searcher().segment_readers().iter())
                    .map(|r| (r.segment_id(), r.max_doc()))
                    .collect(),
            })
            .collect()
    }

    /// Starts the thread that reads the index ahead (module docs), within
    /// `bytes` (see [`budget`]). It ends once the partitions are dropped.
    pub fn preload_in_background(
        self: &Arc<Self>,
        bytes: u64,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let partitions = Arc::downgrade(self);
        let budget = budget(bytes);
        std::thread::Builder::new()
            .name("auditd-preload".into())
            .spawn(move || {
                crate::priority::lower_this_threads_priority("reading the index ahead");
                let mut trigger = Trigger::default();
                while let Some(partitions) = partitions.upgrade() {
                    let segments = partitions.segments();
                    drop(partitions);
                    if trigger.due(big_segments(&segments)) {
                        preload(&segments, budget);
                    }
                    std::thread::sleep(QUIET);
                }
            })
    }
}

/// The segments of [`BIG_SEGMENT_DOCS`] or more.
fn big_segments(partitions: &[DaySegments]) -> BTreeSet<(Day, SegmentId)> {
    let mut big = BTreeSet::new();
    for partition in partitions {
        for (id, docs) in &partition.segments {
            if *docs >= BIG_SEGMENT_DOCS {
                big.insert((partition.day, *id));
            }
        }
    }
    big
}

fn preload(segments: &[DaySegments], budget: u64) {
    let started = Instant::now();
    let files = plan(segments, budget);
    let mut bytes = 0;
    for (path, len) in &files {
        match advise(path, *len) {
            Ok(()) => bytes += len,
            // Merged away since the plan: the next change reads the new one.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "reading an index file ahead");
            }
        }
    }
    metrics::counter!(crate::metrics::PRELOADED_BYTES).increment(bytes);
    tracing::info!(
        files = files.len(),
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        "the index is read ahead into the page cache"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition directory with one file of `bytes` bytes for each of
    /// `kinds` of each of `segments` new segments.
    fn partition(
        root: &Path,
        day: Day,
        segments: usize,
        kinds: &[&str],
        bytes: usize,
    ) -> DaySegments {
        let dir = root.join(day.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let segments: Vec<_> = (0..segments)
            .map(|_| (SegmentId::generate_random(), BIG_SEGMENT_DOCS))
            .collect();
        for (id, _) in &segments {
            for kind in kinds {
                let path = dir.join(format!("{}.{kind}", id.uuid_string()));
                std::fs::write(path, vec![7u8; bytes]).unwrap();
            }
        }
        DaySegments { day, dir, segments }
    }

    fn named(files: &[(PathBuf, u64)]) -> Vec<String> {
        let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        files.iter().map(|(path, _)| name(path)).collect()
    }

    #[test]
    fn the_plan_reads_every_days_search_files_newest_first_then_their_events_within_the_budget() {
        let root = tempfile::tempdir().unwrap();
        let all = [&SEARCH_FILES[..], &BODY_FILES[..]].concat();
        let newest = partition(root.path(), 2, 1, &all, 10);
        let older = partition(root.path(), 1, 1, &["term", "idx", "events"], 10);
        let (new_id, old_id) = (newest.segments[0].0, older.segments[0].0);
        let file = |id: SegmentId, kind: &str| format!("{}.{kind}", id.uuid_string());
        let everything = plan(&[newest, older], u64::MAX);
        let mut expected: Vec<String> = SEARCH_FILES.iter().map(|k| file(new_id, k)).collect();
        expected.extend(["term", "idx"].map(|k| file(old_id, k)));
        expected.extend(BODY_FILES.iter().map(|k| file(new_id, k)));
        expected.push(file(old_id, "events"));
        assert_eq!(named(&everything), expected, "absent files passed over");
        assert!(everything.iter().all(|(_, bytes)| *bytes == 10));

        let newest = partition(root.path(), 4, 1, &all, 10);
        let older = partition(root.path(), 3, 1, &all, 10);
        let budget = 10 * (SEARCH_FILES.len() as u64 + 2) + 9;
        let cut = plan(&[newest, older], budget);
        assert_eq!(
            cut.len(),
            SEARCH_FILES.len() + 2,
            "up to the file that would pass it"
        );
        assert!(named(&cut).iter().all(|n| !n.ends_with(".events")));
        assert!(plan(&[], u64::MAX).is_empty());
    }

    #[test]
    fn a_read_ahead_is_due_at_the_first_look_and_once_a_change_has_settled() {
        let segment = |n: u8| {
            (
                1,
                SegmentId::from_uuid_string(&format!("{n:032x}")).unwrap(),
            )
        };
        let one: BTreeSet<_> = [segment(1)].into();
        let two: BTreeSet<_> = [segment(1), segment(2)].into();
        let merged: BTreeSet<_> = [segment(3)].into();
        let mut trigger = Trigger::default();
        let looks = [
            (one.clone(), true, "the first look"),
            (one.clone(), false, "nothing changed"),
            (two.clone(), false, "changed, not yet settled"),
            (merged.clone(), false, "changed again"),
            (merged.clone(), true, "settled"),
            (merged.clone(), false, "already read"),
            (one.clone(), false, "back to an older set: a change"),
            (one, true, "settled"),
        ];
        for (now, due, why) in looks {
            assert_eq!(trigger.due(now), due, "{why}");
        }
    }

    #[test]
    fn advice_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        std::fs::write(&path, vec![1u8; 3 * ADVICE_BYTES as usize + 1]).unwrap();
        advise(&path, 3 * ADVICE_BYTES + 1).unwrap();
        let missing = advise(&dir.path().join("gone.idx"), 1).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn the_budget_is_at_most_half_the_memory() {
        assert_eq!(budget(1 << 20), 1 << 20);
        let memory = budget(u64::MAX);
        if cfg!(target_os = "linux") {
            assert!(memory < u64::MAX / 2, "MemTotal read: {memory}");
        }
    }
}

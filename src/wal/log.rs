//! The log: segment files in a directory, appended to at the end, replayed
//! from a position on open, and trimmed at the front once indexed.
//!
//! Synchronous on purpose: one thread owns it (see `group_commit`).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::frame::{self, Decoded};
use super::segment::{self, SegmentFile, MAGIC};
use super::{LogPosition, Span, WalError};

/// What to do with a torn tail: a partial last record, which a crash during
/// a write leaves behind. Damage anywhere else always refuses to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// Cut the torn tail off, log file, offset and reason, and go on. The
    /// cut record was never acknowledged: acknowledgement follows the sync.
    #[default]
    TolerateTornTail,
    /// Refuse to open; an operator decides.
    Strict,
}

/// A record as replay hands it out: its global span, its bytes, and
/// where it lies (for messages that name the file and offset).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub start: LogPosition,
    pub end: LogPosition,
    pub payload: &'a [u8],
    pub path: &'a Path,
    /// The frame's offset in `path`.
    pub offset: u64,
}

/// What `open` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: u64,
    pub bytes: u64,
    /// `(file, offset, reason)` of a torn tail that was cut off.
    pub truncated: Option<(PathBuf, u64, &'static str)>,
}

pub struct Wal {
    dir: PathBuf,
    segments: Vec<SegmentFile>,
    active: File,
    /// Global position of the active segment's first frame.
    active_start: u64,
    /// End of what is in the file (written, maybe not synced).
    written: u64,
    /// End including what is still buffered.
    end: u64,
    segment_bytes: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Opens the log in `dir` (created when missing) and hands every record
    /// at or after `from` to `visit`, in order.
    ///
    /// `from` must be a record boundary: the position a previous run
    /// reported as indexed. Returns `Err` on damage before the tail, on a
    /// torn tail under `Recovery::Strict`, or when `visit` fails.
    pub fn open(
        dir: &Path,
        from: LogPosition,
        segment_bytes: u64,
        recovery: Recovery,
        mut visit: impl FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(Wal, ReplayReport), WalError> {
        fs::create_dir_all(dir).map_err(|source| WalError::io(dir, source))?;
        let mut segments = segment::list(dir).map_err(|source| WalError::io(dir, source))?;
        let mut report = ReplayReport::default();
        let from = from.get();

        // Segments wholly before `from` are already indexed: skip them.
        let first = segments.iter().rposition(|s| s.start <= from).unwrap_or(0);
        let mut end = from;
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate().skip(first) {
            let is_last = i + 1 == count;
            let data = read_file(&seg.path)?;
            let body = match body(&data) {
                Body::Whole(body) => body,
                Body::Unfinished if is_last => {
                    // A crash while the segment was being created.
                    truncate_tail(
                        &seg.path,
                        0,
                        "segment header never finished",
                        recovery,
                        &mut report,
                    )?;
                    fs::remove_file(&seg.path).map_err(|source| WalError::io(&seg.path, source))?;
                    break;
                }
                Body::Unfinished | Body::BadMagic => {
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason: "not a WAL segment (bad magic)",
                    })
                }
            };
            let offset = if seg.start <= from {
                let skip = from - seg.start;
                if skip > body.len() as u64 {
                    if is_last {
                        // The index covers more than the log holds: only
                        // possible when the log was not synced (sync =
                        // never) and the machine went down. New records
                        // must still land above `from`.
                        tracing::warn!(path = %seg.path.display(), from, wal_end = seg.start + body.len() as u64,
                            "the WAL ends before the indexed position; starting a new segment there");
                        break;
                    }
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: MAGIC.len() as u64 + body.len() as u64,
                        reason: "segment ends before the indexed position",
                    });
                }
                skip as usize
            } else {
                if seg.start != end {
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason: "gap between segments",
                    });
                }
                0
            };
            let mut frames = Frames::new(seg, body, offset);
            while let Some(next) = frames.next_record() {
                let damage = match next {
                    Ok(record) => {
                        report.records += 1;
                        report.bytes += record.end.get() - record.start.get();
                        visit(record)?;
                        continue;
                    }
                    Err(damage) => damage,
                };
                // Only the end of the log can be torn.
                if !frames.torn_tail(damage, is_last) {
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: (MAGIC.len() + damage.at) as u64,
                        reason: damage.reason,
                    });
                }
                truncate_tail(
                    &seg.path,
                    (MAGIC.len() + damage.at) as u64,
                    damage.reason,
                    recovery,
                    &mut report,
                )?;
                break;
            }
            end = seg.start + frames.at as u64;
        }

        // Append to the last segment when the log ends where replay ended;
        // otherwise (empty log, or a log that ends short of `from`) start a
        // fresh segment at the replay end.
        segments = segment::list(dir).map_err(|source| WalError::io(dir, source))?;
        let reuse = segments
            .last()
            .is_some_and(|last| last.start <= end && file_end(last).ok() == Some(end));
        let (active, active_start) = if reuse {
            let last = segments.last().expect("checked");
            let file = fs::OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(|source| WalError::io(&last.path, source))?;
            (file, last.start)
        } else {
            let file = segment::create(dir, end).map_err(|source| WalError::io(dir, source))?;
            segments.push(SegmentFile {
                start: end,
                path: segment::path_for(dir, end),
            });
            (file, end)
        };
        Ok((
            Wal {
                dir: dir.to_owned(),
                segments,
                active,
                active_start,
                written: end,
                end,
                segment_bytes,
                buf: Vec::new(),
            },
            report,
        ))
    }

    /// The position after the last appended record.
    pub fn end(&self) -> LogPosition {
        LogPosition::new(self.end)
    }

    /// Buffers one record, whose payload is `parts` one after the other;
    /// it reaches the file with `flush` or `sync`. Starts a new segment
    /// first when the active one is full.
    pub fn append(&mut self, parts: &[&[u8]]) -> Result<Span, WalError> {
        if self.end - self.active_start >= self.segment_bytes {
            self.rotate()?;
        }
        let start = self.end;
        frame::encode_parts(parts, &mut self.buf);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.end = start + (frame::HEADER_LEN + len) as u64;
        Ok(Span {
            start: LogPosition::new(start),
            end: LogPosition::new(self.end),
        })
    }

    /// Writes buffered records to the file (not synced). On failure every
    /// record appended since the last successful flush is dropped and the
    /// file is cut back to where it was.
    pub fn flush(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result =
            crate::failpoint::io("wal::write").and_then(|()| self.active.write_all(&self.buf));
        self.buf.clear();
        match result {
            Ok(()) => {
                self.written = self.end;
                Ok(())
            }
            Err(source) => {
                self.end = self.written;
                let keep = MAGIC.len() as u64 + (self.written - self.active_start);
                if let Err(cut) = self.active.set_len(keep) {
                    tracing::error!(error = %cut, "could not cut a failed WAL write back");
                }
                Err(WalError::io(&self.active_path(), source))
            }
        }
    }

    /// Flushes, then makes everything written durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.flush()?;
        crate::failpoint::io("wal::fsync")
            .and_then(|()| self.active.sync_data())
            .map_err(|source| WalError::io(&self.active_path(), source))
    }

    /// Brings the log back to `keep`, the end of what was acknowledged,
    /// after a failed write, sync or rotation, so that appending can go on.
    ///
    /// Everything past `keep` was never acknowledged. After a failed fsync
    /// the kernel may have dropped the dirty pages and marked them clean, so
    /// none of it is trusted or synced again: the segment holding `keep` is
    /// cut back to it, segments a rotation created past it are removed, and
    /// new records are written afresh. Fails (and may be called again) while
    /// the disk still fails.
    pub fn repair(&mut self, keep: LogPosition) -> Result<(), WalError> {
        let keep = keep.get();
        self.buf.clear();
        let dir = self.dir.clone();
        let dir_err = |source| WalError::io(&dir, source);
        let mut on_disk = segment::list(&dir).map_err(dir_err)?;
        // Segments past `keep`, and one half created at `keep`, hold nothing
        // acknowledged.
        while let Some(last) = on_disk.last() {
            let half_created = last.start == keep
                && fs::metadata(&last.path).map_or(true, |m| m.len() < MAGIC.len() as u64);
            if last.start < keep || (last.start == keep && !half_created) {
                break;
            }
            fs::remove_file(&last.path).map_err(|source| WalError::io(&last.path, source))?;
            on_disk.pop();
        }
        let (file, start) = match on_disk.last() {
            Some(base) => {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&base.path)
                    .map_err(|source| WalError::io(&base.path, source))?;
                let len = MAGIC.len() as u64 + (keep - base.start);
                let actual = file
                    .metadata()
                    .map_err(|source| WalError::io(&base.path, source))?
                    .len();
                if actual < len {
                    return Err(WalError::Corrupt {
                        path: base.path.clone(),
                        offset: actual,
                        reason: "acknowledged records are missing from the segment",
                    });
                }
                file.set_len(len)
                    .map_err(|source| WalError::io(&base.path, source))?;
                crate::failpoint::io("wal::fsync")
                    .and_then(|()| file.sync_all())
                    .map_err(|source| WalError::io(&base.path, source))?;
                (file, base.start)
            }
            None => {
                let file = segment::create(&dir, keep).map_err(dir_err)?;
                on_disk.push(SegmentFile {
                    start: keep,
                    path: segment::path_for(&dir, keep),
                });
                (file, keep)
            }
        };
        segment::sync_dir(&dir).map_err(dir_err)?;
        self.active = file;
        self.active_start = start;
        self.segments = on_disk;
        self.written = keep;
        self.end = keep;
        Ok(())
    }

    /// Writes and syncs a small scratch file beside the segments: a degraded
    /// log uses it, while no batch arrives, to learn that the disk works
    /// again.
    pub fn probe(&self) -> Result<(), WalError> {
        let path = self.dir.join("probe.tmp");
        let result = (|| {
            crate::failpoint::io("wal::write")?;
            let mut file = File::create(&path)?;
            file.write_all(&[0u8; 4096])?;
            crate::failpoint::io("wal::fsync")?;
            file.sync_all()
        })();
        let _ = fs::remove_file(&path);
        result.map_err(|source| WalError::io(&path, source))
    }

    /// Deletes every segment that holds only records before `position`.
    /// The active segment always stays.
    pub fn remove_below(&mut self, position: LogPosition) -> Result<usize, WalError> {
        let position = position.get();
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].start <= position {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(|source| WalError::io(&seg.path, source))?;
            removed += 1;
        }
        if removed > 0 {
            segment::sync_dir(&self.dir).map_err(|source| WalError::io(&self.dir, source))?;
        }
        Ok(removed)
    }

    /// When every record is indexed (`checkpoint` at the end) and the
    /// active segment holds at least `min_bytes` of them, starts a new,
    /// empty segment and deletes the old one. Returns whether it did.
    ///
    /// Why: `remove_below` keeps the active segment, so a daemon that went
    /// quiet kept up to `wal.segment_bytes` (64 MiB) of records already in
    /// the index, for as long as it stayed quiet (a benchmark run ended
    /// with more WAL than half its index: docs/benchmarks-history.md).
    pub fn retire_indexed_active(
        &mut self,
        checkpoint: LogPosition,
        min_bytes: u64,
    ) -> Result<bool, WalError> {
        let indexed = self.buf.is_empty() && checkpoint.get() >= self.end;
        if !indexed || self.end - self.active_start < min_bytes {
            return Ok(false);
        }
        self.rotate()?;
        self.remove_below(checkpoint)?;
        Ok(true)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active_path(&self) -> PathBuf {
        segment::path_for(&self.dir, self.active_start)
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        // The old segment must be whole on disk before the new one exists,
        // or replay could find a gap.
        self.sync()?;
        let start = self.end;
        self.active = crate::failpoint::io("wal::rotate")
            .and_then(|()| segment::create(&self.dir, start))
            .map_err(|source| WalError::io(&self.dir, source))?;
        self.segments.push(SegmentFile {
            start,
            path: segment::path_for(&self.dir, start),
        });
        self.active_start = start;
        metrics::counter!(crate::metrics::WAL_ROTATIONS).increment(1);
        Ok(())
    }
}

/// Whether an intact frame starts anywhere after the first byte of
/// `rest`. A crash tears only the last write, so a damaged record followed
/// by an intact one is corruption, not a torn tail; this also catches a
/// flipped bit in a length field that makes a record seem to run to the
/// end of the file.
/// Damaged bytes that [`skip_damage`] wrote a skip frame over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDamage {
    pub path: PathBuf,
    /// Offset in the file and length of the damaged bytes.
    pub offset: u64,
    pub len: u64,
    /// Global log positions of the damaged bytes.
    pub start: LogPosition,
    pub end: LogPosition,
    pub reason: &'static str,
    /// The segment as it was, copied aside before the change.
    pub copy: PathBuf,
}

/// For `auditd recover`: finds damage before the tail (which `Wal::open`
/// refuses), copies each damaged segment into `aside` untouched, and writes
/// a skip frame over the damaged bytes, up to the next point from which
/// intact frames run to the end of the segment. Every record after the
/// damage keeps its position, so checkpoints and commit payloads stay
/// valid; replay passes over the skip frame. A torn tail is left for
/// `Wal::open` to cut. The damaged bytes' events cannot be read back.
pub fn skip_damage(dir: &Path, aside: &Path) -> Result<Vec<SkippedDamage>, WalError> {
    let segments = segment::list(dir).map_err(|source| WalError::io(dir, source))?;
    let mut skipped = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let data = read_file(&seg.path)?;
        let body = match body(&data) {
            Body::Whole(body) => body,
            Body::Unfinished if is_last => continue, // its creation was cut short
            Body::Unfinished | Body::BadMagic => {
                return Err(WalError::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: "not a WAL segment (bad magic); recover cannot skip a whole segment",
                })
            }
        };
        // A segment ends where the next begins; a short one was cut.
        let body_len = match segments.get(i + 1) {
            Some(next) => (next.start - seg.start) as usize,
            None => body.len(),
        };
        // Damaged spans, each with where intact frames resume; the skip
        // frames go in once the scan is done (same lengths, so offsets
        // hold).
        let mut patches: Vec<(Damage, usize)> = Vec::new();
        let mut frames = Frames::new(seg, body, 0);
        frames.limit = body_len;
        while let Some(next) = frames.next_record() {
            let Err(damage) = next else { continue };
            if frames.torn_tail(damage, is_last) {
                break; // a torn tail: `Wal::open` cuts it
            }
            let offset = damage.at;
            // Resume where intact frames run to the segment's end; with
            // none, the damage reaches it (or the segment was cut short).
            let intact_end = body_len.min(body.len());
            let resume = (offset + 1..intact_end)
                .find(|&at| frames_run_to_end(&body[at..intact_end], is_last))
                .unwrap_or(body_len);
            if resume - offset < frame::HEADER_LEN {
                return Err(WalError::Corrupt {
                    path: seg.path.clone(),
                    offset: (MAGIC.len() + offset) as u64,
                    reason: "damaged span shorter than a frame header; recover cannot skip it",
                });
            }
            patches.push((damage, resume));
            frames.at = resume;
        }
        if patches.is_empty() {
            continue;
        }
        fs::create_dir_all(aside).map_err(|source| WalError::io(aside, source))?;
        let name = seg.path.file_name().expect("segment files have names");
        let copy = aside.join(name);
        fs::copy(&seg.path, &copy).map_err(|source| WalError::io(&copy, source))?;
        let mut patched = Vec::with_capacity(MAGIC.len() + body_len.max(body.len()));
        let mut kept_from = 0;
        for (damage, resume) in patches {
            let (offset, len) = (damage.at, resume - damage.at);
            patched.extend_from_slice(&data[kept_from..MAGIC.len() + offset]);
            frame::encode_skip(len, &mut patched);
            kept_from = (MAGIC.len() + resume).min(data.len());
            tracing::warn!(path = %seg.path.display(), offset = MAGIC.len() + offset, len, reason = damage.reason,
                "writing a skip record over damaged WAL bytes");
            skipped.push(SkippedDamage {
                path: seg.path.clone(),
                offset: (MAGIC.len() + offset) as u64,
                len: len as u64,
                start: LogPosition::new(seg.start + offset as u64),
                end: LogPosition::new(seg.start + resume as u64),
                reason: damage.reason,
                copy: copy.clone(),
            });
        }
        patched.extend_from_slice(&data[kept_from..]);
        crate::datadir::write_atomically(&seg.path, &patched, false)
            .map_err(|source| WalError::io(&seg.path, source))?;
    }
    Ok(skipped)
}

impl super::Log for Wal {
    fn append(&mut self, parts: &[&[u8]]) -> Result<Span, WalError> {
        Wal::append(self, parts)
    }

    fn flush(&mut self) -> Result<(), WalError> {
        Wal::flush(self)
    }

    fn sync(&mut self) -> Result<(), WalError> {
        Wal::sync(self)
    }

    fn end(&self) -> LogPosition {
        Wal::end(self)
    }

    fn repair(&mut self, keep: LogPosition) -> Result<(), WalError> {
        Wal::repair(self, keep)
    }

    fn probe(&self) -> Result<(), WalError> {
        Wal::probe(self)
    }

    fn trim(&mut self, position: LogPosition) -> Result<usize, WalError> {
        self.remove_below(position)
    }

    fn retire_indexed(
        &mut self,
        checkpoint: LogPosition,
        min_bytes: u64,
    ) -> Result<bool, WalError> {
        self.retire_indexed_active(checkpoint, min_bytes)
    }

    fn start_piece(&mut self) -> Result<(), WalError> {
        if self.end > self.active_start || !self.buf.is_empty() {
            self.rotate()?;
        }
        Ok(())
    }

    fn pieces(&self) -> usize {
        self.segment_count()
    }

    fn reader(&self) -> Box<dyn super::LogReader> {
        Box::new(FileReader {
            dir: self.dir.clone(),
        })
    }
}

/// Reads a local log's segment files beside its owner.
pub struct FileReader {
    pub dir: PathBuf,
}

impl super::LogReader for FileReader {
    fn read(
        &self,
        from: LogPosition,
        to: LogPosition,
        visit: &mut dyn FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(), WalError> {
        read_range(&self.dir, from, to, visit)
    }
}

/// Whether intact frames run from the start of `rest` to its end (or, in
/// the last segment, to a torn tail).
fn frames_run_to_end(rest: &[u8], is_last: bool) -> bool {
    let mut at = 0;
    while at < rest.len() {
        match frame::decode(&rest[at..]) {
            Decoded::Frame { len, .. } => at += len,
            _ => return is_last && at > 0 && !intact_frame_after(&rest[at..]),
        }
    }
    at == rest.len()
}

fn intact_frame_after(rest: &[u8]) -> bool {
    (1..rest.len()).any(|at| matches!(frame::decode(&rest[at..]), Decoded::Frame { .. }))
}

fn truncate_tail(
    path: &Path,
    offset: u64,
    reason: &'static str,
    recovery: Recovery,
    report: &mut ReplayReport,
) -> Result<(), WalError> {
    if recovery == Recovery::Strict {
        return Err(WalError::Corrupt {
            path: path.to_owned(),
            offset,
            reason,
        });
    }
    tracing::warn!(path = %path.display(), offset, reason, "cutting a torn WAL tail");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| WalError::io(path, source))?;
    file.set_len(offset)
        .map_err(|source| WalError::io(path, source))?;
    file.sync_all()
        .map_err(|source| WalError::io(path, source))?;
    report.truncated = Some((path.to_owned(), offset, reason));
    Ok(())
}

/// Hands every record in `[from, to)` to `visit`, read straight from the
/// segment files in `dir`: for a reader beside the log's owner (the indexer
/// re-reading what a failed commit lost). `from` must be a record boundary
/// and the range acknowledged, which the owner neither rewrites nor removes
/// while the checkpoint is below it; any damage in it is an error.
pub fn read_range<E: From<WalError>>(
    dir: &Path,
    from: LogPosition,
    to: LogPosition,
    mut visit: impl FnMut(Record<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let (from, to) = (from.get(), to.get());
    let segments = segment::list(dir).map_err(|source| WalError::io(dir, source))?;
    let mut position = from;
    for (i, seg) in segments.iter().enumerate() {
        let wholly_before = segments
            .get(i + 1)
            .is_some_and(|next| next.start <= position);
        if position >= to || wholly_before {
            continue;
        }
        let data = read_file(&seg.path)?;
        let corrupt = |offset: usize, reason| WalError::Corrupt {
            path: seg.path.clone(),
            offset: offset as u64,
            reason,
        };
        let body = match body(&data) {
            Body::Whole(body) if seg.start <= position => body,
            _ => {
                return Err(
                    corrupt(0, "segment missing or damaged before the indexed range").into(),
                )
            }
        };
        let mut frames = Frames::new(seg, body, (position - seg.start) as usize);
        while position < to {
            match frames.next_record() {
                None => break,
                Some(Ok(record)) => {
                    position = record.end.get();
                    visit(record)?;
                }
                Some(Err(damage)) => {
                    return Err(corrupt(MAGIC.len() + damage.at, damage.reason).into())
                }
            }
        }
    }
    if position < to {
        return Err(WalError::Corrupt {
            path: dir.to_owned(),
            offset: position,
            reason: "the log ends before the acknowledged position",
        }
        .into());
    }
    Ok(())
}

/// A segment file's bytes after its header, or why there are none.
enum Body<'a> {
    Whole(&'a [u8]),
    /// Shorter than the header and a prefix of it: a crash while the
    /// segment was being created.
    Unfinished,
    BadMagic,
}

fn body(data: &[u8]) -> Body<'_> {
    match data.strip_prefix(MAGIC.as_slice()) {
        Some(body) => Body::Whole(body),
        None if data.len() < MAGIC.len() && MAGIC.starts_with(data) => Body::Unfinished,
        None => Body::BadMagic,
    }
}

/// Damage where a frame should start.
#[derive(Debug, Clone, Copy)]
struct Damage {
    /// Offset in the body.
    at: usize,
    reason: &'static str,
}

/// The one reader of a segment's frames, which opening (replay and
/// torn-tail repair), `skip_damage` and `read_range` share: the intact
/// frames from an offset, each as a `Record`, up to the first damage.
struct Frames<'a> {
    seg: &'a SegmentFile,
    body: &'a [u8],
    at: usize,
    /// Frames may not run past this (the next segment's start, for
    /// `skip_damage`; the body's end otherwise).
    limit: usize,
}

impl<'a> Frames<'a> {
    fn new(seg: &'a SegmentFile, body: &'a [u8], at: usize) -> Frames<'a> {
        Frames {
            seg,
            body,
            at,
            limit: body.len(),
        }
    }

    /// The next intact record, `Err` at damage (the position stays on
    /// it), `None` at the limit.
    fn next_record(&mut self) -> Option<Result<Record<'a>, Damage>> {
        if self.at >= self.limit {
            return None;
        }
        let damage = |reason| {
            Some(Err(Damage {
                at: self.at,
                reason,
            }))
        };
        match frame::decode(self.body.get(self.at..).unwrap_or_default()) {
            Decoded::Frame { len, .. } if self.at + len > self.limit => {
                damage("record runs past the next segment's start")
            }
            Decoded::Frame { payload, len } => {
                let start = self.seg.start + self.at as u64;
                let record = Record {
                    start: LogPosition::new(start),
                    end: LogPosition::new(start + len as u64),
                    payload,
                    path: &self.seg.path,
                    offset: (MAGIC.len() + self.at) as u64,
                };
                self.at += len;
                Some(Ok(record))
            }
            Decoded::Incomplete => damage("incomplete record"),
            Decoded::Corrupt { reason } => damage(reason),
        }
    }

    /// Whether only a torn tail follows the damage: in the last segment,
    /// no intact frame after it (anything an intact record follows was
    /// damaged after it was written).
    fn torn_tail(&self, damage: Damage, is_last: bool) -> bool {
        is_last && !intact_frame_after(&self.body[damage.at..])
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, WalError> {
    let mut file = File::open(path).map_err(|source| WalError::io(path, source))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|source| WalError::io(path, source))?;
    Ok(data)
}

/// The global position just past the last byte of `seg`'s file.
fn file_end(seg: &SegmentFile) -> std::io::Result<u64> {
    let mut file = File::open(&seg.path)?;
    let len = file.seek(SeekFrom::End(0))?;
    Ok(seg.start + len.saturating_sub(MAGIC.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of one part.
    fn one(payload: &[u8]) -> [&[u8]; 1] {
        [payload]
    }

    /// A span as the local log numbers it: bytes, for the arithmetic of
    /// these tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct RawSpan {
        start: u64,
        end: u64,
    }

    fn raw(span: Span) -> RawSpan {
        RawSpan {
            start: span.start.get(),
            end: span.end.get(),
        }
    }

    fn open(dir: &Path, from: u64, segment_bytes: u64) -> (Wal, Vec<(u64, Vec<u8>)>) {
        let from = LogPosition::new(from);
        let mut seen = Vec::new();
        let (wal, _) = Wal::open(dir, from, segment_bytes, Recovery::TolerateTornTail, |r| {
            seen.push((r.start.get(), r.payload.to_vec()));
            Ok(())
        })
        .unwrap();
        (wal, seen)
    }

    #[test]
    fn records_span_segments_replay_from_any_boundary_and_old_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, seen) = open(dir.path(), 0, 100);
        assert!(seen.is_empty());
        let mut spans = Vec::new();
        for i in 0..20u8 {
            spans.push(raw(wal.append(&one(&[i; 30])).unwrap()));
            if i % 3 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        assert!(wal.segment_count() > 5, "rotated: {}", wal.segment_count());
        let end = wal.end().get();
        drop(wal);

        // Replay from every record boundary gives exactly the records after it.
        for (k, span) in spans.iter().enumerate() {
            let (wal, seen) = open(dir.path(), span.start, 100);
            let expected: Vec<(u64, Vec<u8>)> = spans[k..]
                .iter()
                .enumerate()
                .map(|(j, s)| (s.start, vec![(k + j) as u8; 30]))
                .collect();
            assert_eq!(seen, expected, "from record {k}");
            assert_eq!(wal.end().get(), end);
        }

        // Trimming keeps every segment that holds a record at or after
        // the position.
        let (mut wal, _) = open(dir.path(), 0, 100);
        let keep_from = spans[12].start;
        let before = wal.segment_count();
        assert!(wal.remove_below(LogPosition::new(keep_from)).unwrap() > 0);
        assert!(wal.segment_count() < before);
        drop(wal);
        let (_, seen) = open(dir.path(), keep_from, 100);
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn an_indexed_active_segment_is_retired_only_when_all_indexed_and_big_enough() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, 1 << 20);
        let first = raw(wal.append(&one(&[7; 100])).unwrap());
        let second = raw(wal.append(&one(&[8; 100])).unwrap());
        wal.sync().unwrap();
        // Not all indexed, or not big enough: nothing happens.
        assert!(!wal
            .retire_indexed_active(LogPosition::new(first.end), 1)
            .unwrap());
        assert!(!wal
            .retire_indexed_active(LogPosition::new(second.end), 1 << 10)
            .unwrap());
        // Buffered but not yet written: not retired either.
        let third = raw(wal.append(&one(&[9; 100])).unwrap());
        assert!(!wal
            .retire_indexed_active(LogPosition::new(third.end), 1)
            .unwrap());
        wal.sync().unwrap();

        assert!(wal
            .retire_indexed_active(LogPosition::new(third.end), 1)
            .unwrap());
        assert_eq!(wal.segment_count(), 1);
        assert_eq!(
            wal.end().get(),
            third.end,
            "positions go on where they were"
        );
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, segment::MAGIC.len() as u64);

        // The log goes on from there, and replays from the checkpoint.
        let fourth = raw(wal.append(&one(&[10; 100])).unwrap());
        assert_eq!(fourth.start, third.end);
        wal.sync().unwrap();
        drop(wal);
        let (wal, seen) = open(dir.path(), third.end, 1 << 20);
        assert_eq!(seen, vec![(third.end, vec![10; 100])]);
        assert_eq!(wal.end().get(), fourth.end);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail_and_strict_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, 1 << 20);
        let first = raw(wal.append(&one(b"first record")).unwrap());
        let last = raw(wal.append(&one(b"second record, torn")).unwrap());
        wal.sync().unwrap();
        drop(wal);
        let path = segment::list(dir.path()).unwrap()[0].path.clone();
        let whole = std::fs::read(&path).unwrap();
        let header = MAGIC.len() as u64;
        for cut in last.start + 1..last.end {
            std::fs::write(&path, &whole[..(header + cut) as usize]).unwrap();
            let strict = Wal::open(
                dir.path(),
                LogPosition::START,
                1 << 20,
                Recovery::Strict,
                |_| Ok(()),
            );
            assert!(
                matches!(strict, Err(WalError::Corrupt { .. })),
                "strict at {cut}"
            );
            let mut seen = 0;
            let (wal, report) = Wal::open(
                dir.path(),
                LogPosition::START,
                1 << 20,
                Recovery::TolerateTornTail,
                |_| {
                    seen += 1;
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen, 1, "cut at {cut}");
            assert_eq!(wal.end().get(), first.end);
            let (_, offset, _) = report.truncated.expect("reported");
            assert_eq!(offset, header + last.start);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), header + first.end);
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_an_error_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, 1 << 20);
        let spans: Vec<RawSpan> = (0..3)
            .map(|i| raw(wal.append(&one(&[i; 50])).unwrap()))
            .collect();
        wal.sync().unwrap();
        drop(wal);
        let path = segment::list(dir.path()).unwrap()[0].path.clone();
        let whole = std::fs::read(&path).unwrap();
        let header = MAGIC.len() as u64;
        for at in spans[0].start..spans[1].end {
            let mut damaged = whole.clone();
            damaged[(header + at) as usize] ^= 0x10;
            std::fs::write(&path, &damaged).unwrap();
            match Wal::open(
                dir.path(),
                LogPosition::START,
                1 << 20,
                Recovery::TolerateTornTail,
                |_| Ok(()),
            ) {
                Err(WalError::Corrupt {
                    path: p, offset, ..
                }) => {
                    assert_eq!(p, path);
                    let record = if at < spans[1].start {
                        spans[0]
                    } else {
                        spans[1]
                    };
                    assert_eq!(offset, header + record.start, "flip at {at}");
                }
                Err(other) => panic!("flip at {at}: {other}"),
                Ok(_) => panic!("flip at {at} went unnoticed"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing cut");
        }
    }

    #[test]
    fn every_flip_in_the_last_record_is_a_torn_tail_cut_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, 1 << 20);
        let first = raw(wal.append(&one(b"first record")).unwrap());
        let last = raw(wal.append(&one(b"second record, flipped")).unwrap());
        wal.sync().unwrap();
        drop(wal);
        let path = segment::list(dir.path()).unwrap()[0].path.clone();
        let whole = std::fs::read(&path).unwrap();
        let header = MAGIC.len() as u64;
        for at in last.start..last.end {
            let mut damaged = whole.clone();
            damaged[(header + at) as usize] ^= 0x04;
            std::fs::write(&path, &damaged).unwrap();
            let (wal, seen) = open(dir.path(), 0, 1 << 20);
            assert_eq!(seen.len(), 1, "flip at {at}");
            assert_eq!(wal.end().get(), first.end, "flip at {at}");
        }
    }

    #[test]
    fn skip_damage_covers_exactly_the_damaged_record_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0, 1 << 20);
        let spans: Vec<RawSpan> = (0..3)
            .map(|i| raw(wal.append(&one(&[i + 1; 40])).unwrap()))
            .collect();
        wal.sync().unwrap();
        drop(wal);
        let path = segment::list(dir.path()).unwrap()[0].path.clone();
        let whole = std::fs::read(&path).unwrap();
        let header = MAGIC.len() as u64;
        let aside = tempfile::tempdir().unwrap();
        for at in spans[0].start..spans[1].end {
            let hit = if at < spans[1].start { 0 } else { 1 };
            let mut damaged = whole.clone();
            damaged[(header + at) as usize] ^= 0x08;
            std::fs::write(&path, &damaged).unwrap();
            let skipped = skip_damage(dir.path(), aside.path()).unwrap();
            let [skip] = &skipped[..] else {
                panic!("flip at {at}: {skipped:?}")
            };
            assert_eq!(
                (skip.start.get(), skip.end.get()),
                (spans[hit].start, spans[hit].end)
            );
            assert_eq!(std::fs::read(&skip.copy).unwrap(), damaged);
            let (wal, seen) = open(dir.path(), 0, 1 << 20);
            assert_eq!(wal.end().get(), spans[2].end, "flip at {at}");
            let skips: Vec<bool> = seen.iter().map(|(_, p)| frame::is_skip(p)).collect();
            let mut expected = vec![false; 3];
            expected[hit] = true;
            assert_eq!(skips, expected, "flip at {at}");
            assert!(skip_damage(dir.path(), aside.path()).unwrap().is_empty());
        }
    }
}

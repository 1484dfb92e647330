//! The indexer thread: takes durable batches off the bounded queue in log
//! order, adds them to the partition writers, and every `commit_interval`
//! commits each touched partition with the WAL position it covers, reloads
//! its searcher, writes the checkpoint, and tells waiting clients.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tantivy::IndexWriter;
use tokio::sync::watch;

use crate::app::trail::TRAIL_TYPE;
use crate::datadir::DataDir;
use crate::erasure::PseudonymKey;
use crate::integrity::opening::seeded_form;
use crate::integrity::seeds::SaltSeeds;
use crate::integrity::store::TreeStore;
use crate::merge::{compaction_runs, SegmentTimes, TimeOrderedMergePolicy};
use crate::messages::{Checkpoint, CommitPayload, IndexBatch, PartitionLedger, ToIndexer};
use crate::metrics as m;
use crate::partition::{day_of, format_day, Day, Partition, PartitionError, Partitions};
use crate::record::LogRecord;
use crate::retention::record::EraseRequest;
use crate::retention::{
    runs, Applied, Change, Dropped, Retention, RetentionError, RetentionRecord, Verdict,
};
use crate::schema::{timestamp_micros, AuditSchema};
use crate::search::recent::{RecentEvents, StoredEvent};
use crate::status::{PipelineStatus, WorkerGuard};
use crate::wal::group_commit::WalPositions;
use crate::wal::{LogReader, Span, WalError};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("index error in {path}: {source}")]
    Tantivy {
        path: PathBuf,
        source: tantivy::TantivyError,
    },
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("re-reading the write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error(transparent)]
    Retention(#[from] RetentionError),
    #[error("the Merkle tree's salt seeds: {0}")]
    Seeds(#[from] crate::integrity::store::StoreError),
}

#[derive(Debug, Clone)]
pub struct IndexerSettings {
    pub commit_interval: Duration,
    /// See `IndexConfig::trail_commit_interval_ms`.
    pub trail_commit_interval: Duration,
    pub writer_threads: usize,
    pub writer_heap_bytes: usize,
    pub max_open_writers: usize,
    /// See `IndexConfig::compact_after_idle_ms`; `None`: never.
    pub compact_after_idle: Option<Duration>,
    /// See `IndexConfig::max_segment_docs`.
    pub max_segment_docs: u32,
    /// See `IndexConfig::compact_segment_docs`.
    pub compact_segment_docs: u32,
}

struct OpenWriter {
    partition: Arc<Partition>,
    writer: IndexWriter,
    /// Records whose first seq is below this are already in the partition
    /// (its last commit's payload): replay must not add them twice.
    skip_below: u64,
    /// The batch counter when it was last written to, for LRU closing.
    last_batch: u64,
    dirty: bool,
    /// When an event was last added: compaction waits for a quiet spell.
    last_write: Instant,
    /// Compacted since the last write.
    compacted: bool,
    /// The thread waiting for this writer's compaction merges; true if
    /// they all succeeded.
    compacting: Option<JoinHandle<bool>>,
    /// What the writer's merge policy orders segments by; noted after each
    /// reload of the partition's reader.
    segment_times: SegmentTimes,
}

pub struct Indexer {
    partitions: Arc<Partitions>,
    schema: AuditSchema,
    settings: IndexerSettings,
    checkpoint_path: PathBuf,
    /// Where `pseudonym.key` is.
    data_dir: PathBuf,
    /// Reads the log again after a failed commit (`None` only while a
    /// re-read holds it).
    log: Option<Box<dyn LogReader>>,
    writers: HashMap<Day, OpenWriter>,
    /// Every partition as of its last commit, written into the checkpoint.
    ledger: BTreeMap<Day, PartitionLedger>,
    /// Set after a failed add or commit: the writers were dropped with what
    /// they held, and `[committed, indexed)` is re-read from the WAL before
    /// the next commit. Meanwhile batches off the queue only move `indexed`
    /// on: they are in the WAL, and the re-read takes them too.
    rebuild: bool,
    /// End of the last record added to the writers, and the seq after its
    /// last event.
    indexed: CommitPayload,
    /// The same for the last record covered by a commit.
    committed: CommitPayload,
    batches: u64,
    /// See [`Indexer::with_integrity`].
    tree: Option<Arc<TreeStore>>,
    seeds: Option<Arc<SaltSeeds>>,
    positions: Arc<WalPositions>,
    /// The seq after the last searchable event, published after each
    /// commit: what Search takes as its snapshot and `WAIT_FOR_SEARCHABLE`
    /// waits for.
    searchable: watch::Sender<u64>,
    body: Vec<u8>,
    pending: Pending,
    /// The newest events as stored: live (added since the last commit,
    /// what a live follower reads) and committed.
    recent: Arc<RecentEvents>,
    /// Applies retention changes as their records come, in log order.
    retention: Arc<Retention>,
}

/// What the writers took since the last commit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pending {
    Nothing,
    /// Only the trail of reads, the first of it at this instant.
    TrailSince(Instant),
    Events,
}

impl Indexer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partitions: Arc<Partitions>,
        settings: IndexerSettings,
        data_dir: &Path,
        log: Box<dyn LogReader>,
        start: CommitPayload,
        positions: Arc<WalPositions>,
        searchable: watch::Sender<u64>,
        retention: Arc<Retention>,
        recent: Arc<RecentEvents>,
    ) -> Indexer {
        let ledger = partitions
            .overlapping(None, None)
            .iter()
            .map(|p| {
                let entry = PartitionLedger {
                    events: p.reader.searcher().num_docs(),
                    // Start-up has already refused a payload that does not
                    // parse; a partition created since has none.
                    committed: p.committed().unwrap_or_default().log,
                };
                (p.day, entry)
            })
            .collect();
        Indexer {
            ledger,
            schema: partitions.schema().clone(),
            partitions,
            settings,
            checkpoint_path: DataDir::new(data_dir).checkpoint(),
            data_dir: data_dir.to_owned(),
            log: Some(log),
            writers: HashMap::new(),
            pending: Pending::Nothing,
            rebuild: false,
            indexed: start,
            committed: start,
            batches: 0,
            positions,
            searchable,
            body: Vec::new(),
            recent,
            retention,
            tree: None,
            seeds: None,
        }
    }

    /// The same, with the Merkle tree (`None` with integrity off), and
    /// the salt seeds (`integrity::seeds`; those a former run kept, with
    /// integrity off): they make the salts of seeded batches, and erasure
    /// cuts them. Only with the tree are new batches stored seeded.
    pub fn with_integrity(
        mut self,
        tree: Option<Arc<TreeStore>>,
        seeds: Option<Arc<SaltSeeds>>,
    ) -> Indexer {
        self.tree = tree;
        self.seeds = seeds;
        self
    }

    /// Runs on a thread named `auditd-indexer` until every sender of
    /// `queue` is dropped, then commits what it holds and returns.
    ///
    /// A failed add or commit (a full disk, an I/O error) loses nothing:
    /// the batches are in the WAL, which is not trimmed past the last good
    /// commit. The indexer marks the pipeline degraded, drops its writers,
    /// and at each commit interval re-reads the WAL from the checkpoint and
    /// tries again; meanwhile the index falls behind, and past the lag
    /// budget Ingest answers RESOURCE_EXHAUSTED. Only a fault still there at
    /// shutdown ends the thread with an error.
    pub fn spawn(
        mut self,
        queue: Receiver<ToIndexer>,
        status: Arc<PipelineStatus>,
    ) -> std::io::Result<JoinHandle<Result<(), IndexError>>> {
        std::thread::Builder::new()
            .name("auditd-indexer".into())
            .spawn(move || {
                let guard = WorkerGuard::new(status.clone(), "indexer");
                let result = self.run(&queue, &status);
                if result.is_ok() {
                    guard.defuse();
                }
                result
            })
    }

    fn run(
        &mut self,
        queue: &Receiver<ToIndexer>,
        status: &PipelineStatus,
    ) -> Result<(), IndexError> {
        let mut next_commit = Instant::now() + self.settings.commit_interval;
        let mut pacer = CommitPacer::default();
        let mut commit_now = false;
        let mut committed_replies: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
        loop {
            match queue.recv_deadline(next_commit) {
                Ok(ToIndexer::Batch(batch)) => {
                    if let Err(error) = self.add(batch) {
                        self.fault(&error, status);
                    }
                    metrics::gauge!(m::QUEUE_DEPTH).set(queue.len() as f64);
                }
                Ok(ToIndexer::Retention(span, change)) => {
                    let applied = self.apply_retention(span, &change.record);
                    if let Err(error) = &applied {
                        self.fault(error, status);
                    }
                    if let Some(done) = change.done {
                        let _ = done.send(applied.map_err(|e| e.to_string()));
                    }
                }
                Ok(ToIndexer::Commit(reply)) => {
                    commit_now = true;
                    committed_replies.push(reply);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.commit(),
            }
            if commit_now || Instant::now() >= next_commit {
                let started = Instant::now();
                let result = match commit_now || !self.trail_can_wait() {
                    true => self.commit(),
                    false => Ok(()),
                };
                match result {
                    Ok(()) => {
                        status.set_fault("index", None);
                        for reply in committed_replies.drain(..) {
                            let _ = reply.send(());
                        }
                    }
                    Err(error) => self.fault(&error, status),
                }
                commit_now = false;
                next_commit = Instant::now()
                    + pacer.pause_after(self.settings.commit_interval, started.elapsed());
                // On the commit tick, not per batch: idleness is measured
                // in seconds.
                if let Some(idle) = self.settings.compact_after_idle {
                    self.compact_idle(idle);
                }
            }
            let lag = self
                .positions
                .end()
                .get()
                .saturating_sub(self.committed.log.get());
            metrics::gauge!(m::INDEX_LAG_BYTES).set(lag as f64);
        }
    }

    /// Only trail events came since the last commit, the oldest younger
    /// than `trail_commit_interval`: the commit tick may pass them by.
    fn trail_can_wait(&self) -> bool {
        let waiting = match self.pending {
            Pending::TrailSince(since) => since.elapsed() < self.settings.trail_commit_interval,
            Pending::Nothing | Pending::Events => false,
        };
        waiting && !self.rebuild
    }

    /// Drops the writers and what they held since the last commit; the next
    /// commit re-reads it from the WAL.
    fn fault(&mut self, error: &IndexError, status: &PipelineStatus) {
        metrics::counter!(m::INDEX_ERRORS).increment(1);
        status.set_fault("index", Some(error.to_string()));
        // Dropping an IndexWriter discards what it did not commit.
        self.writers.clear();
        self.recent.clear_live();
        self.rebuild = true;
    }

    /// Re-reads `[committed, indexed)` from the WAL into fresh writers.
    fn reread(&mut self) -> Result<(), IndexError> {
        let (from, to) = (self.committed, self.indexed);
        tracing::info!(
            from = from.log.get(),
            to = to.log.get(),
            "re-reading the write-ahead log into the index"
        );
        self.rebuild = false;
        self.indexed = from;
        let log = self.log.take().expect("one re-read at a time");
        let mut failed = None;
        let read = log.read(from.log, to.log, &mut |record| {
            let added = match crate::record::decode(record)? {
                LogRecord::Batch(batch) => self.add(batch),
                LogRecord::Skip(span) => {
                    self.indexed.log = span.end;
                    Ok(())
                }
                LogRecord::Retention(span, change) => self.apply_retention(span, &change).map(drop),
            };
            added.map_err(|error| {
                failed = Some(error);
                WalError::Stopped
            })
        });
        self.log = Some(log);
        let result = match (read, failed) {
            (_, Some(error)) => Err(error),
            (Err(error), None) => Err(error.into()),
            (Ok(()), None) => Ok(()),
        };
        if result.is_err() {
            self.writers.clear();
            self.recent.clear_live();
            self.rebuild = true;
            self.indexed = to;
        }
        result
    }

    /// Adds one durable batch to the partition writers of its events' days.
    pub fn add(&mut self, batch: IndexBatch) -> Result<(), IndexError> {
        let trail_only = batch.batch.events.iter().all(|e| e.r#type == TRAIL_TYPE);
        self.pending = match (self.pending, trail_only) {
            (Pending::Nothing, true) => Pending::TrailSince(Instant::now()),
            (Pending::TrailSince(since), true) => Pending::TrailSince(since),
            _ => Pending::Events,
        };
        let next = CommitPayload {
            log: batch.span.end,
            seq: batch.next_seq(),
        };
        if self.rebuild {
            self.indexed = next;
            return Ok(());
        }
        let added = self.add_events(batch);
        // Failed or not, the batch is below `indexed`: after a failure the
        // re-read of `[committed, indexed)` must take it. (Left behind, a
        // failed last batch before a commit was skipped for good: the
        // commit found nothing to do, and the next one moved past it.)
        self.indexed = next;
        added
    }

    /// Adds the events of one batch; `add` moves `indexed` past it.
    fn add_events(&mut self, batch: IndexBatch) -> Result<(), IndexError> {
        crate::failpoint::io("index::add").map_err(|e| IndexError::Tantivy {
            path: self.data_dir.join("index"),
            source: e.into(),
        })?;
        self.batches += 1;
        let IndexBatch {
            span,
            first_seq,
            mut batch,
        } = batch;
        let record_start = CommitPayload {
            log: span.start,
            seq: first_seq,
        };
        // What each event's leaf is rebuilt from, as the index keeps it: a
        // seeded batch's seed is in the tree, its events' salts nowhere.
        let seeded = match batch.version() {
            Some(version) if batch.seed().is_some() && self.tree.is_some() => seeded_form(version),
            _ => None,
        };
        let openings: Vec<Option<Vec<u8>>> = match seeded {
            Some(_) => Vec::new(),
            None => (0..batch.events.len())
                .map(|i| batch.opening(i).map(|opening| opening.to_bytes()))
                .collect(),
        };
        let mut live = Vec::new();
        for (i, event) in batch.events.iter_mut().enumerate() {
            let time = timestamp_micros(event.time.as_ref());
            let day = day_of(time);
            let salt = match seeded {
                Some(form) => Some(form),
                None => openings[i].as_deref(),
            };
            let body = &mut self.body;
            let writer = writer_for(
                &mut self.writers,
                &mut self.ledger,
                &self.partitions,
                &self.settings,
                day,
                self.batches,
                record_start,
            )?;
            if first_seq < writer.skip_below {
                continue;
            }
            let seq = first_seq + i as u64;
            let doc = self
                .schema
                .document(event, seq, &batch.batch_id, salt, body);
            writer
                .writer
                .add_document(doc)
                .map_err(|source| IndexError::Tantivy {
                    path: writer.partition.path.clone(),
                    source,
                })?;
            if self.recent.budget() > 0 {
                let stored = StoredEvent::new(
                    seq,
                    time,
                    timestamp_micros(event.received.as_ref()),
                    Arc::from(body.as_slice()),
                );
                live.push(stored);
            }
            writer.dirty = true;
            writer.last_batch = self.batches;
            writer.last_write = Instant::now();
            writer.compacted = false;
        }
        self.recent.add(live);
        Ok(())
    }

    /// Commits every touched partition with the indexed position as its
    /// payload, reloads their searchers, then writes the checkpoint. Only
    /// after that may the WAL below it go.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        if self.indexed == self.committed {
            self.rebuild = false;
            self.pending = Pending::Nothing;
            return Ok(());
        }
        if self.rebuild {
            self.reread()?;
        }
        let started = Instant::now();
        let position = self.indexed;
        for open in self.writers.values_mut().filter(|w| w.dirty) {
            commit_writer(open, position, &mut self.ledger)?;
        }
        write_checkpoint(
            &self.checkpoint_path,
            &Checkpoint {
                wal_position: position.log,
                next_seq: position.seq,
                partitions: self
                    .ledger
                    .iter()
                    .map(|(day, entry)| (format_day(*day), *entry))
                    .collect(),
            },
        )?;
        self.committed = position;
        self.pending = Pending::Nothing;
        self.positions.set_checkpoint(position.log);
        self.recent.commit();
        self.searchable.send_replace(position.seq);
        metrics::counter!(m::COMMITS).increment(1);
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::gauge!(m::INDEXED_POSITION).set(position.log.get() as f64);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            metrics::gauge!(m::LAST_COMMIT_SECONDS).set(now.as_secs_f64());
        }
        let docs: u64 = self
            .partitions
            .overlapping(None, None)
            .iter()
            .map(|p| p.reader.searcher().num_docs())
            .sum();
        metrics::gauge!(m::INDEX_DOCS).set(docs as f64);
        metrics::gauge!(m::RECENT_EVENTS_BYTES).set(self.recent.held().1 as f64);
        Ok(())
    }
}

impl Indexer {
    /// Applies one retention change, in its place in the log. A drop is
    /// judged again here, against everything logged before it: an event
    /// that came for the day since the sweep looked, or a hold placed
    /// since, keeps the partition.
    fn apply_retention(
        &mut self,
        span: Span,
        record: &RetentionRecord,
    ) -> Result<Applied, IndexError> {
        if let Some(Change::Drop(_) | Change::Erase(_)) = &record.change {
            // Before the index changes: what is cached must not outlive
            // what the change removes.
            self.recent.clear();
        }
        let applied = match (&record.change, self.rebuild) {
            (Some(Change::Drop(_) | Change::Erase(_)), true) => Ok(Applied::Unchanged(
                "the index is re-reading the log after a fault; the change is applied with it"
                    .into(),
            )),
            (Some(Change::Drop(day)), false) => self.drop_day(*day, record),
            (Some(Change::Erase(request)), false) => self.erase(record, request),
            _ => self.retention.apply(record).map_err(IndexError::from),
        };
        // Failed or not, it is behind: a failed drop is applied again by
        // the re-read after the fault.
        self.indexed.log = span.end;
        applied
    }

    fn drop_day(&mut self, day: Day, record: &RetentionRecord) -> Result<Applied, IndexError> {
        let name = format_day(day);
        // The partition as every record before this one left it.
        self.commit()?;
        if let Some(mut open) = self.writers.remove(&day) {
            if let Some(compacting) = open.compacting.take() {
                let _ = compacting.join();
            }
            wait_merging(open)?;
        }
        let Some(partition) = self.partitions.get(day) else {
            return Ok(Applied::Unchanged(format!("no partition for {name}")));
        };
        // Replay meets a drop already done: its partition was made again
        // from records logged before the drop, and goes again.
        let applied = if self.retention.dropped(&record.id) {
            Applied::Unchanged(format!("{name} was already dropped"))
        } else {
            let retention = &self.retention;
            let verdict = retention
                .policy()
                .judge(
                    &self.schema,
                    &partition,
                    retention.floor(),
                    &retention.holds(),
                    record.at_micros,
                )
                .map_err(|source| IndexError::Tantivy {
                    path: partition.path.clone(),
                    source,
                })?;
            let (days, rule) = match verdict {
                Verdict::Keep(why) => {
                    return Ok(Applied::Unchanged(format!("{name} is kept: {why}")))
                }
                Verdict::Drop { days, rule } => (days, rule),
            };
            let (mut seqs, bytes) = partition.seqs_and_bytes()?;
            let dropped = Dropped {
                id: record.id.clone(),
                day: name,
                at: record.at_micros,
                rule,
                days,
                events: seqs.len() as u64,
                bytes,
                seqs: runs(&mut seqs),
            };
            // Durable before the files go: replay finishes a drop cut
            // short by a crash.
            self.retention.record_drop(dropped.clone())?;
            Applied::Dropped(dropped)
        };
        self.partitions.remove(day)?;
        self.ledger.remove(&day);
        Ok(applied)
    }

    /// Rewrites the events an erasure names, partition by partition, each
    /// with a writer of its own that merges away the deleted documents
    /// before the next (`erasure::rewrite_partition`). Applied again (a
    /// replay after a crash), it rewrites only what it had not done.
    fn erase(
        &mut self,
        record: &RetentionRecord,
        request: &EraseRequest,
    ) -> Result<Applied, IndexError> {
        // The partitions as every record before this one left them.
        self.commit()?;
        let key = match request.mode {
            1 => PseudonymKey::load(&self.data_dir).map_err(|source| IndexError::Checkpoint {
                path: PseudonymKey::path(&self.data_dir),
                source,
            })?,
            _ => None,
        };
        let mut done = Vec::new();
        let mut forget = Vec::new();
        let seeds = self.seeds.as_deref();
        for &day in &request.days {
            let Some(partition) = self.partitions.get(day) else {
                continue;
            };
            if let Some(mut open) = self.writers.remove(&day) {
                if let Some(compacting) = open.compacting.take() {
                    let _ = compacting.join();
                }
                wait_merging(open)?;
            }
            let tantivy = |source| IndexError::Tantivy {
                path: partition.path.clone(),
                source,
            };
            let mut writer = partition
                .index
                .writer_with_num_threads(1, ERASURE_WRITER_HEAP_BYTES)
                .map_err(tantivy)?;
            writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
            let outcome = crate::erasure::rewrite_partition(
                &partition,
                &mut writer,
                &self.schema,
                &record.id,
                request,
                key.as_ref(),
                seeds,
                self.committed,
                &mut forget,
            )
            .map_err(tantivy)?;
            writer.wait_merging_threads().map_err(tantivy)?;
            crate::failpoint::crash("erasure::partition_done");
            done.push(outcome);
        }
        // The rewritten events no longer need their seeds' salts: cut them
        // out, and sync the tree so that no replay brings a seed back.
        if let Some(seeds) = &self.seeds {
            seeds.cut(&forget)?;
        }
        if let Some(tree) = &self.tree {
            tree.sync()?;
        }
        self.retention.scrub_holds(&request.scrub_holds)?;
        Ok(Applied::Erased(crate::erasure::total(done)))
    }

    /// Merges the partition of a day that is over, once idle for `idle`,
    /// down to one segment; and finishes a compaction that has ended.
    ///
    /// One compaction runs at a time. The merge itself runs on Tantivy's
    /// merge threads; a thread named `auditd-compact` only waits for it,
    /// so that the indexer never blocks on a merge that can take seconds.
    /// A merge Tantivy refuses (a segment is in a merge of the merge
    /// policy's own) is tried again on a later tick.
    fn compact_idle(&mut self, idle: Duration) {
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(Day::MAX, |d| day_of(d.as_micros() as i64));
        for open in self.writers.values_mut() {
            let Some(handle) = open.compacting.take_if(|h| h.is_finished()) else {
                continue;
            };
            if handle.join().unwrap_or(false) {
                // Only the writer deletes files: the merged-away segments
                // go now, not at the partition's next commit (if any).
                if let Err(error) = open.writer.garbage_collect_files().wait() {
                    tracing::warn!(%error, path = %open.partition.path.display(), "compaction: deleting merged files");
                }
                if let Err(error) = open.partition.reader.reload() {
                    tracing::warn!(%error, path = %open.partition.path.display(), "compaction: reloading the searcher");
                }
                note_segment_times(&open.partition, &open.segment_times);
                open.compacted = true;
                metrics::counter!(m::COMPACTIONS).increment(1);
            }
        }
        if self.writers.values().any(|w| w.compacting.is_some()) {
            return;
        }
        let candidate = self.writers.values_mut().find(|w| {
            !w.compacted && !w.dirty && w.partition.day < today && w.last_write.elapsed() >= idle
        });
        let Some(open) = candidate else {
            return;
        };
        // A reload first, so that no run names a segment a policy merge
        // has already replaced.
        let runs = open.partition.reader.reload().and_then(|()| {
            compaction_runs(
                &open.partition.reader.searcher(),
                self.settings.compact_segment_docs,
            )
        });
        let runs = match runs {
            Ok(runs) => runs,
            Err(error) => {
                tracing::warn!(%error, path = %open.partition.path.display(), "compaction: listing segments");
                open.compacted = true;
                return;
            }
        };
        if runs.is_empty() {
            open.compacted = true;
            return;
        }
        let merges: Vec<_> = runs.iter().map(|run| open.writer.merge(run)).collect();
        let path = open.partition.path.clone();
        let spawned = std::thread::Builder::new()
            .name("auditd-compact".into())
            .spawn(move || {
                let mut all = true;
                for merge in merges {
                    if let Err(error) = merge.wait() {
                        tracing::debug!(%error, path = %path.display(), "compaction: merge refused; will retry");
                        all = false;
                    }
                }
                all
            });
        match spawned {
            Ok(handle) => open.compacting = Some(handle),
            Err(error) => tracing::warn!(%error, "compaction: spawning its thread"),
        }
    }
}

/// The indexing heap of the writer an erasure rewrites a partition with
/// (Tantivy's least for one thread).
const ERASURE_WRITER_HEAP_BYTES: usize = 15_000_000;

/// Commits start every `commit_interval` (counted from the start of the
/// last one, so a commit's own duration does not stretch the interval),
/// but when the last `PACED_COMMITS` commits all took at least `t`, the
/// next one waits at least `COMMIT_SPACING * t` after the last ended:
/// under sustained load commits take at most a quarter of the indexer's
/// time.
///
/// Counting from the start: an event that just missed a commit waits
/// for the next one, so the time to searchable is at most the interval
/// plus one commit; counted from the end it was the interval plus two
/// (Tail's target is the interval plus 100 ms).
///
/// Why: a commit's cost grows with the events it flushes, and each commit
/// leaves segments that merges must re-read. A short interval keeps data
/// fresh at moderate load, but at full load a fixed short interval cost
/// throughput. A spacing of 3 kept the full rate and the half-rate time to
/// searchable both near their best; 4 bought a little rate for a worse
/// tail (the runs: docs/benchmarks-history.md; today's figures:
/// BENCHMARKS.md, Ingest).
const COMMIT_SPACING: u32 = 3;

/// How many recent commits must all be slow before commits space out.
///
/// Why not the last one alone: one commit slowed by the disk or a
/// neighbour (ten times its neighbours, seen at half rate on this
/// machine) then held the next one back three times as long, and the time
/// to searchable p99 grew fourfold in one run of four
/// (docs/benchmarks-history.md). Heavy load slows every commit, so the
/// shortest of the last three still sees it.
const PACED_COMMITS: usize = 3;

/// The last `PACED_COMMITS` commit durations, to pace the next commit.
#[derive(Debug, Default)]
struct CommitPacer {
    recent: [Duration; PACED_COMMITS],
    next: usize,
}

impl CommitPacer {
    /// Notes a commit that took `took`; returns the pause from its end to
    /// the start of the next one: what is left of the interval, or longer
    /// while commits are slow.
    fn pause_after(&mut self, interval: Duration, took: Duration) -> Duration {
        self.recent[self.next] = took;
        self.next = (self.next + 1) % PACED_COMMITS;
        let shortest = self.recent.iter().min().copied().unwrap_or_default();
        interval.saturating_sub(took).max(shortest * COMMIT_SPACING)
    }
}

/// The open writer for `day`, opening it (and closing the least recently
/// used one past the limit) when needed.
fn writer_for<'a>(
    writers: &'a mut HashMap<Day, OpenWriter>,
    ledger: &mut BTreeMap<Day, PartitionLedger>,
    partitions: &Partitions,
    settings: &IndexerSettings,
    day: Day,
    batch: u64,
    record_start: CommitPayload,
) -> Result<&'a mut OpenWriter, IndexError> {
    if !writers.contains_key(&day) {
        if writers.len() >= settings.max_open_writers {
            // Never close a writer the current batch wrote to: its payload
            // could not say which of the batch's events it holds.
            let lru = writers
                .iter()
                .filter(|(_, w)| w.last_batch < batch)
                .min_by_key(|(_, w)| w.last_batch)
                .map(|(d, _)| *d);
            if let Some(lru) = lru {
                let mut closing = writers.remove(&lru).expect("present");
                if closing.dirty {
                    // Everything before the current record is added.
                    commit_writer(&mut closing, record_start, ledger)?;
                }
                wait_merging(closing)?;
            }
        }
        let partition = partitions.get_or_create(day)?;
        let skip_below = partition.committed()?.seq;
        let writer = partition
            .index
            .writer_with_num_threads(settings.writer_threads, settings.writer_heap_bytes)
            .map_err(|source| IndexError::Tantivy {
                path: partition.path.clone(),
                source,
            })?;
        let segment_times = SegmentTimes::default();
        note_segment_times(&partition, &segment_times);
        writer.set_merge_policy(Box::new(TimeOrderedMergePolicy::new(
            settings.max_segment_docs,
            segment_times.clone(),
        )));
        writers.insert(
            day,
            OpenWriter {
                partition,
                writer,
                skip_below,
                last_batch: batch,
                dirty: false,
                last_write: Instant::now(),
                compacted: false,
                compacting: None,
                segment_times,
            },
        );
    }
    Ok(writers.get_mut(&day).expect("inserted above"))
}

/// Commits one partition with `position` as its payload, reloads its
/// searcher and notes what it now holds in `ledger`.
fn commit_writer(
    open: &mut OpenWriter,
    position: CommitPayload,
    ledger: &mut BTreeMap<Day, PartitionLedger>,
) -> Result<(), IndexError> {
    let path = open.partition.path.clone();
    let tantivy_err = |source| IndexError::Tantivy {
        path: path.clone(),
        source,
    };
    crate::failpoint::io("index::commit").map_err(|e| tantivy_err(e.into()))?;
    let mut prepared = open.writer.prepare_commit().map_err(tantivy_err)?;
    prepared.set_payload(&position.encode());
    prepared.commit().map_err(tantivy_err)?;
    open.partition.reader.reload().map_err(tantivy_err)?;
    note_segment_times(&open.partition, &open.segment_times);
    open.dirty = false;
    ledger.insert(
        open.partition.day,
        PartitionLedger {
            events: open.partition.reader.searcher().num_docs(),
            committed: position.log,
        },
    );
    Ok(())
}

/// Notes the partition's segments, as its reader now sees them, for its
/// writer's merge policy. A segment that cannot be read here is left out
/// of merges, not made an indexing fault: searches will report it.
///
/// The partition's view is not warmed here (`Partition::warm`): the
/// indexer thread is what a flood of ingest waits on, and what warming
/// after each reload would cost it is not measured
/// (docs/benchmarks-history.md, "2026-12-06").
fn note_segment_times(partition: &Partition, times: &SegmentTimes) {
    if let Err(error) = times.note(&partition.reader.searcher()) {
        tracing::warn!(%error, path = %partition.path.display(), "merge policy: reading segment times");
    }
}

fn wait_merging(open: OpenWriter) -> Result<(), IndexError> {
    let path = open.partition.path.clone();
    open.writer
        .wait_merging_threads()
        .map_err(|source| IndexError::Tantivy { path, source })
}

/// The checkpoint of the last run; position 0 when there is none.
pub fn read_checkpoint(data_dir: &Path) -> Result<Checkpoint, IndexError> {
    let path = DataDir::new(data_dir).checkpoint();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IndexError::Checkpoint {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(source) => Err(IndexError::Checkpoint { path, source }),
    }
}

/// Write to a temporary file, fsync, rename over, fsync the directory: a
/// crash leaves the old checkpoint or the new one, never half of either.
pub fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), IndexError> {
    let err = |source| IndexError::Checkpoint {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec(checkpoint).expect("a checkpoint serializes");
    crate::datadir::write_atomically(path, &bytes, false).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_commits_space_the_next_ones_out_but_one_slow_commit_does_not() {
        let interval = Duration::from_millis(500);
        let ms = Duration::from_millis;
        let mut pacer = CommitPacer::default();
        // Fast commits, then one slow one: the next starts an interval
        // after the last started (nothing left of it after the slow one).
        assert_eq!(pacer.pause_after(interval, ms(100)), ms(400));
        assert_eq!(pacer.pause_after(interval, ms(80)), ms(420));
        assert_eq!(pacer.pause_after(interval, ms(900)), ms(240));
        // Three slow ones in a row: spaced by the shortest of them.
        assert_eq!(pacer.pause_after(interval, ms(400)), ms(240));
        assert_eq!(pacer.pause_after(interval, ms(300)), ms(900));
        assert_eq!(pacer.pause_after(interval, ms(500)), ms(900));
        assert_eq!(pacer.pause_after(interval, ms(350)), ms(900));
        assert_eq!(pacer.pause_after(interval, ms(400)), ms(1050));
        // Load gone: back to the interval once one commit is fast.
        assert_eq!(pacer.pause_after(interval, ms(60)), ms(440));
    }
}

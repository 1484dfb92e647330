//! A subject's access package on a node of several partitions
//! (docs/cluster.md). Every event of a subject is in one partition (a
//! partition is a hash of the subject), so the package is that
//! partition's: its latest checkpoint once it covers what the owner has
//! made searchable, then the subject's events read from the owner a page
//! at a time (`cluster::scan`, oldest first, as on one node), each slice
//! with its receipts made by the owner (`Partitions.Integrity`,
//! `receipts`: the stored events checked against their leaves there).
//! The report's reads that named the subject are the daemon's trail,
//! which is spread over every partition: they are one fan-out search.

use std::time::Duration;

use super::integrity_partitions::{reader_of, unexpected};
use super::outbox::{Outbox, Sent};
use super::read::Routes;
use super::subject::{
    naming, opening_chunk, report_chunk, Tally, CHECKPOINT_WAIT, MAX_REPORT_ROWS,
    SUBJECT_SLICE_EVENTS,
};
use super::{AppError, ReadService, SubjectService};
use crate::auth::ReadScope;
use crate::cluster::fanout::{self, Bounds, IntegrityAnswer, IntegrityOp, Reader};
use crate::cluster::partition_of;
use crate::cluster::scan::MergedScan;
use crate::formats::Format;
use crate::integrity::checkpointer::SignedCheckpoint;
use crate::proto::{
    AuditEvent, Checkpoint, EventFilter, GetCheckpointRequest, PartitionReceiptsRequest,
    SubjectEventProof, SubjectExportChunk,
};
use crate::schema::timestamp_micros;
use crate::search::request_of;
use std::sync::Arc;

/// One subject's package under way on a node of several partitions.
pub(super) struct Spread {
    reads: Arc<ReadService>,
    routes: Routes,
    /// The subject's partition.
    partition: u32,
    scan: MergedScan,
    checkpoint: Option<SignedCheckpoint>,
    subject: String,
    format: Format,
}

impl SubjectService {
    /// The package of `subject` on a node of several partitions, ready to
    /// send: its partition's checkpoint is known (or waited for).
    pub(super) async fn spread(&self, subject: &str, format: Format) -> Result<Spread, AppError> {
        let routes = self.reads.partition_routes()?;
        let n = routes().len() as u32;
        let partition = partition_of(subject, n);
        let checkpoint = match self.integrity.is_some() {
            true => covering_checkpoint(&routes, partition).await?,
            false => None,
        };
        let filter = EventFilter {
            subjects: vec![subject.to_owned()],
            ..Default::default()
        };
        let scan = MergedScan::new(filter, true, ReadScope::All, n, "", "resume_token")?;
        Ok(Spread {
            reads: self.reads.clone(),
            routes,
            partition,
            scan,
            checkpoint,
            subject: subject.to_owned(),
            format,
        })
    }
}

impl Spread {
    /// Sends the whole package; the number of events sent.
    pub(super) async fn send<E: From<AppError> + Send + 'static>(
        mut self,
        outbox: &Outbox<SubjectExportChunk, E>,
    ) -> Result<u64, AppError> {
        let mut tally = Tally::default();
        let first = opening_chunk(self.checkpoint.as_ref(), self.format);
        if let Sent::Gone = outbox.send(first, "").await? {
            return Ok(0);
        }
        loop {
            let slice = self
                .scan
                .next(&(self.routes)(), SUBJECT_SLICE_EVENTS)
                .await?;
            if slice.events.is_empty() {
                break;
            }
            let proofs = self.receipts(&slice.events).await?;
            let mut chunk = SubjectExportChunk {
                events: slice.events.len() as u64,
                ..Default::default()
            };
            for (event, tlog_proof) in slice.events.iter().zip(proofs) {
                self.format.write(event, &mut chunk.data);
                chunk.proofs.push(SubjectEventProof {
                    id: event.id.clone(),
                    seq: event.seq,
                    tlog_proof,
                });
                tally.add(event);
            }
            if let Sent::Gone = outbox.send(chunk, "").await? {
                return Ok(tally.events);
            }
        }
        let readers = self.readers().await?;
        let last = report_chunk(&self.subject, &tally, self.checkpoint.as_ref(), &readers);
        outbox.send(last, "").await?;
        Ok(tally.events)
    }

    /// The receipts of `events` (in order) from their partition's owner;
    /// empty for an event past the checkpoint (it came after it) or with
    /// integrity off.
    async fn receipts(&self, events: &[AuditEvent]) -> Result<Vec<String>, AppError> {
        let mut proofs = vec![String::new(); events.len()];
        let Some(checkpoint) = &self.checkpoint else {
            return Ok(proofs);
        };
        let proven: Vec<usize> = (0..events.len())
            .filter(|i| events[*i].seq < checkpoint.size)
            .collect();
        if proven.is_empty() {
            return Ok(proofs);
        }
        let request = PartitionReceiptsRequest {
            tree_size: checkpoint.size,
            seqs: proven.iter().map(|i| events[*i].seq).collect(),
        };
        let reader = owner(&self.routes, self.partition)?;
        let answer = reader
            .integrity(ReadScope::All, IntegrityOp::Receipts(request))
            .await?;
        let IntegrityAnswer::Receipts(receipts) = answer else {
            return Err(unexpected(self.partition, &answer));
        };
        if receipts.tlog_proofs.len() != proven.len() {
            return Err(AppError::Internal(format!(
                "partition {}: {} receipts for {} events",
                self.partition,
                receipts.tlog_proofs.len(),
                proven.len()
            )));
        }
        for (i, proof) in proven.into_iter().zip(receipts.tlog_proofs) {
            proofs[i] = proof;
        }
        Ok(proofs)
    }

    /// The trail's reads that named the subject, newest first (at most
    /// `MAX_REPORT_ROWS`), and how many there were, over every partition.
    async fn readers(&self) -> Result<(Vec<AuditEvent>, u64), AppError> {
        let mut request = request_of(naming(&self.subject));
        request.limit = MAX_REPORT_ROWS as u32;
        request.exact_total = true;
        let searcher = self.reads.searcher();
        let bounds = Bounds {
            limit: searcher.limit_of(&request),
            count_up_to: searcher.count_up_to(&request),
        };
        let page = fanout::search(&(self.routes)(), &request, &ReadScope::All, bounds).await?;
        Ok((page.events, page.total_hits))
    }
}

/// Partition `p`'s reader now, or UNAVAILABLE naming it.
fn owner(routes: &Routes, p: u32) -> Result<Reader, AppError> {
    reader_of(&routes(), p)
}

/// Partition `p`'s latest checkpoint once it holds every event its owner
/// has made searchable (waited for up to `CHECKPOINT_WAIT`); `None` for a
/// partition with no event yet.
async fn covering_checkpoint(
    routes: &Routes,
    p: u32,
) -> Result<Option<SignedCheckpoint>, AppError> {
    let deadline = tokio::time::Instant::now() + CHECKPOINT_WAIT;
    loop {
        let reader = owner(routes, p)?;
        let all = EventFilter::default();
        let searchable = reader
            .log_page(all, ReadScope::All, None, 1, Duration::ZERO)
            .await?
            .to;
        let latest = IntegrityOp::Checkpoint(GetCheckpointRequest::default());
        let checkpoint = match reader.integrity(ReadScope::All, latest).await? {
            IntegrityAnswer::Checkpoint(checkpoint) => checkpoint,
            other => return Err(unexpected(p, &other)),
        };
        if checkpoint.size >= searchable {
            return signed(p, checkpoint);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AppError::NotCheckpointed {
                seq: searchable.saturating_sub(1),
                latest: checkpoint.size,
                retry_after: Duration::from_secs(1),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An owner's checkpoint as kept (`None`: the partition's empty tree).
fn signed(p: u32, checkpoint: Checkpoint) -> Result<Option<SignedCheckpoint>, AppError> {
    if checkpoint.note.is_empty() {
        return Ok(None);
    }
    let root = checkpoint.root_hash.as_slice().try_into().map_err(|_| {
        AppError::Internal(format!("partition {p}: a checkpoint root is not 32 bytes"))
    })?;
    Ok(Some(SignedCheckpoint {
        size: checkpoint.size,
        time: timestamp_micros(checkpoint.time.as_ref()),
        note: checkpoint.note,
        root,
    }))
}

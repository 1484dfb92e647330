//! Integrity on a node of several partitions (docs/cluster.md,
//! "Integrity over partitions"). Each partition's owner keeps its tree
//! (leaf index = the partition's seq) and signs its checkpoints, origin
//! `<name>/partition/<p>`, with the cluster's key; the node a client asks
//! passes each call on to the owner of the partition it is about
//! (`Partitions.Integrity`) and keeps the trail itself:
//!
//! - a checkpoint: a partition's (`partition` set), or, for the latest
//!   without one, the combined checkpoint: every partition's head read
//!   from its owner at once, checked against the cluster's key, and
//!   listed in one note this node signs ([`crate::integrity::combined`]);
//! - an inclusion proof: the event found by id inside the caller's scope
//!   (every partition asked, as GetEvent does), then proven by the owner
//!   of its subject's partition, which checks the stored event against
//!   its leaf first, as one node does;
//! - a consistency proof: of one partition's tree (`partition` required);
//! - the full audit: each partition's (or the one asked) at its owner,
//!   one after another, its progress passed on as it comes, with
//!   `checked` and `total` counted over the partitions audited so far
//!   and each problem naming its partition.
//!
//! - the `tlog-tiles` paths of one partition (`/tlog/partition/<p>/…`):
//!   its checkpoint and its tiles, from its owner. The paths without a
//!   partition serve one tree and are refused here (FAILED_PRECONDITION).

use futures::future::join_all;
use futures::StreamExt;

use super::integrity::{receipt_in, to_proto, AuditPlan};
use super::read::Routes;
use super::{AppError, IntegrityService};
use crate::auth::ReadScope;
use crate::cluster::fanout::{self, unowned, AuditProgress, IntegrityAnswer, IntegrityOp, Reader};
use crate::cluster::partition_of;
use crate::integrity::combined::{combined_body, partition_origin};
use crate::integrity::merkle::{empty_root, Hash};
use crate::integrity::note::{parse_checkpoint, verify};
use crate::proto::{
    AuditLogProgress, AuditLogRequest, Checkpoint, ConsistencyProof, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, InclusionProof, PartitionReceipts,
    PartitionReceiptsRequest,
};
use crate::search::EventRef;

/// The most receipts one `Partitions.Integrity` call asks for: a subject
/// export's slice.
pub const MAX_RECEIPTS_PER_CALL: usize = super::subject::SUBJECT_SLICE_EVENTS;
use crate::schema::micros_to_timestamp;

impl IntegrityService {
    /// What a partition's owner answers for it (`Partitions.Integrity`),
    /// on its own tree and with no trail event: the asking node stored it.
    /// A latest checkpoint asked of a partition with none yet is size 0
    /// with no note (the combined checkpoint lists it so).
    pub async fn at_partition(
        &self,
        scope: ReadScope,
        op: IntegrityOp,
    ) -> Result<IntegrityAnswer, AppError> {
        match op {
            IntegrityOp::Checkpoint(request) => {
                let latest = request.size == 0;
                match self.kept(request.size) {
                    Ok(kept) => Ok(IntegrityAnswer::Checkpoint(to_proto(kept))),
                    Err(AppError::NoCheckpointYet { .. }) if latest => {
                        Ok(IntegrityAnswer::Checkpoint(Checkpoint {
                            size: 0,
                            root_hash: empty_root().to_vec(),
                            ..Default::default()
                        }))
                    }
                    Err(error) => Err(error),
                }
            }
            IntegrityOp::Inclusion(request) => {
                let call = self.inclusion_call(scope, &request)?;
                let proof = self.prove_inclusion(call).await?;
                Ok(IntegrityAnswer::Inclusion(proof))
            }
            IntegrityOp::Consistency(request) => {
                let proof = self.consistency_here(request).await?;
                Ok(IntegrityAnswer::Consistency(proof))
            }
            IntegrityOp::Receipts(request) => {
                let tlog_proofs = self.receipts(request).await?;
                Ok(IntegrityAnswer::Receipts(PartitionReceipts { tlog_proofs }))
            }
            IntegrityOp::Tile(path) => Ok(IntegrityAnswer::Tile(self.tile_here(&path).await?)),
        }
    }

    /// A tile of partition `p`'s tree, from its owner.
    pub(super) async fn partition_tile(&self, p: u32, path: &str) -> Result<Vec<u8>, AppError> {
        let reader = reader_of(&self.readers()?, p)?;
        let op = IntegrityOp::Tile(path.to_owned());
        match reader.integrity(ReadScope::All, op).await? {
            IntegrityAnswer::Tile(bytes) => Ok(bytes),
            other => Err(unexpected(p, &other)),
        }
    }

    /// The receipts of this node's events at `request.seqs` against its
    /// kept checkpoint of `request.tree_size`, each stored event checked
    /// against its leaf (DATA_LOSS when it differs).
    async fn receipts(&self, request: PartitionReceiptsRequest) -> Result<Vec<String>, AppError> {
        if request.seqs.len() > MAX_RECEIPTS_PER_CALL {
            return Err(AppError::Invalid {
                field: "seqs",
                reason: format!("at most {MAX_RECEIPTS_PER_CALL} a call"),
            });
        }
        let integrity = self.enabled()?.clone();
        let checkpoint = self.kept(request.tree_size)?;
        let seqs = request.seqs;
        let stored = self
            .reads
            .blocking(move |s| {
                let mut stored = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    let event = s.stored_event(&EventRef::Seq(seq), &ReadScope::All)?;
                    stored.push((seq, event));
                }
                Ok(stored)
            })
            .await?;
        tokio::task::spawn_blocking(move || {
            let snapshot = integrity.tree.snapshot();
            stored
                .into_iter()
                .map(|(seq, event)| {
                    let (event, opening) =
                        event.ok_or_else(|| AppError::EventNotFound(format!("seq {seq}")))?;
                    Ok(receipt_in(&snapshot, &checkpoint, &event, opening)?.to_text())
                })
                .collect()
        })
        .await
        .map_err(|e| AppError::Internal(format!("receipts task: {e}")))?
    }

    /// A partition's checkpoint, or the combined one.
    pub(super) async fn partitioned_checkpoint(
        &self,
        request: GetCheckpointRequest,
    ) -> Result<Checkpoint, AppError> {
        let readers = self.readers()?;
        match (request.partition, request.size) {
            (Some(p), _) => {
                let reader = reader_of(&readers, p)?;
                let size = request.size;
                let op = IntegrityOp::Checkpoint(request);
                match reader.integrity(ReadScope::All, op).await? {
                    IntegrityAnswer::Checkpoint(c) if c.note.is_empty() => {
                        Err(AppError::NoCheckpointYet {
                            retry_after: self.checkpoint_interval,
                        })
                    }
                    IntegrityAnswer::Checkpoint(c) if size == 0 || c.size == size => Ok(c),
                    other => Err(unexpected(p, &other)),
                }
            }
            (None, 0) => self.combined(&readers).await,
            (None, size) => Err(AppError::Invalid {
                field: "partition",
                reason: format!(
                    "required for a kept checkpoint (size {size}): on a cluster of {} \
                     partitions each partition's tree has its own sizes",
                    readers.len()
                ),
            }),
        }
    }

    /// Every partition's latest head, each checked against the cluster's
    /// key and its origin, listed in one note signed here.
    async fn combined(&self, readers: &[Option<Reader>]) -> Result<Checkpoint, AppError> {
        let integrity = self.enabled()?;
        let (name, key) = (integrity.signer.name(), integrity.signer.verifier_key());
        let asked = readers.iter().enumerate().map(|(p, reader)| {
            let (p, reader) = (p as u32, reader.clone());
            async move {
                let reader = reader.ok_or_else(|| AppError::from(unowned(p)))?;
                let op = IntegrityOp::Checkpoint(GetCheckpointRequest::default());
                match reader.integrity(ReadScope::All, op).await? {
                    IntegrityAnswer::Checkpoint(c) => Ok::<_, AppError>((p, c)),
                    other => Err(unexpected(p, &other)),
                }
            }
        });
        let mut heads: Vec<(u64, Hash)> = Vec::with_capacity(readers.len());
        for answer in join_all(asked).await {
            let (p, checkpoint) = answer?;
            heads.push(head_of(p, &checkpoint, name, &key)?);
        }
        let body = combined_body(name, &heads);
        let note = integrity
            .signer
            .sign(&body)
            .map_err(|e| AppError::Internal(format!("signing the combined checkpoint: {e}")))?;
        Ok(Checkpoint {
            note,
            size: heads.iter().map(|(size, _)| size).sum(),
            // One root a partition, in the note: no single root.
            root_hash: Vec::new(),
            time: Some(micros_to_timestamp(crate::ingest::now_micros())),
        })
    }

    /// The inclusion proof of the event `request.id`, by the owner of its
    /// partition. A seq names an event only inside its partition, so it
    /// is refused here.
    pub(super) async fn partitioned_inclusion(
        &self,
        scope: ReadScope,
        request: GetInclusionProofRequest,
    ) -> Result<InclusionProof, AppError> {
        let readers = self.readers()?;
        if request.seq.is_some() {
            return Err(AppError::Invalid {
                field: "seq",
                reason: format!(
                    "a seq names an event only inside its partition: ask by id on a cluster \
                     of {} partitions",
                    readers.len()
                ),
            });
        }
        if request.id.is_empty() {
            return Err(AppError::Invalid {
                field: "id",
                reason: "required".into(),
            });
        }
        let event = fanout::get(&readers, &request.id, &scope)
            .await?
            .ok_or_else(|| AppError::EventNotFound(request.id.clone()))?;
        let p = partition_of(&event.subject, readers.len() as u32);
        let reader = reader_of(&readers, p)?;
        match reader
            .integrity(scope, IntegrityOp::Inclusion(request))
            .await?
        {
            IntegrityAnswer::Inclusion(proof) => Ok(proof),
            other => Err(unexpected(p, &other)),
        }
    }

    /// A consistency proof of one partition's tree.
    pub(super) async fn partitioned_consistency(
        &self,
        request: GetConsistencyProofRequest,
    ) -> Result<ConsistencyProof, AppError> {
        let readers = self.readers()?;
        let p = request.partition.ok_or_else(|| AppError::Invalid {
            field: "partition",
            reason: format!(
                "required on a cluster of {} partitions: each has its own tree",
                readers.len()
            ),
        })?;
        let reader = reader_of(&readers, p)?;
        let op = IntegrityOp::Consistency(request);
        match reader.integrity(ReadScope::All, op).await? {
            IntegrityAnswer::Consistency(proof) => Ok(proof),
            other => Err(unexpected(p, &other)),
        }
    }

    /// The partitions a full audit reads: `partition`, or all of them.
    pub(super) fn audit_plan(&self, partition: Option<u32>) -> Result<AuditPlan, AppError> {
        self.enabled()?;
        let routes = self.reads.partition_routes()?;
        let partitions = match partition {
            Some(p) => {
                reader_of(&routes(), p)?;
                vec![p]
            }
            None => (0..routes().len() as u32).collect(),
        };
        Ok(AuditPlan::Partitions(routes, partitions))
    }

    /// The full audit of `partitions`, one after another, each at its
    /// owner as `request` says (its seqs being the partition's), in one
    /// stream: `checked` and `total` summed over the partitions reached
    /// so far, `done` once the last one is, each problem naming its
    /// partition. A partition without owner, or whose audit fails or ends
    /// unfinished, ends the stream with its error.
    pub(super) fn audit_partitions(
        &self,
        routes: Routes,
        partitions: Vec<u32>,
        request: AuditLogRequest,
    ) -> AuditProgress {
        let (tx, rx) = tokio::sync::mpsc::channel(super::integrity::AUDIT_PROGRESS_BUFFER);
        let stop = self.reads.streams.stop.clone();
        self.reads.streams.tasks.spawn(async move {
            let last = partitions.last().copied();
            let mut before = (0, 0);
            for p in partitions {
                let audited = tokio::select! {
                    _ = stop.cancelled() => Err(AppError::ShuttingDown),
                    audited = audit_one(&routes, p, &request, before, Some(p) == last, &tx) => audited,
                };
                match audited {
                    Ok(Some(counts)) => before = counts,
                    // The reader hung up.
                    Ok(None) => return,
                    Err(error) => {
                        let _ = tx.send(Err(error)).await;
                        return;
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    /// The partitions' readers now.
    fn readers(&self) -> Result<Vec<Option<Reader>>, AppError> {
        self.enabled()?;
        Ok(self.reads.partition_routes()?())
    }
}

/// Partition `p`'s full audit at its owner, sent on `tx` with the
/// (checked, total) of the partitions `before` it added; returns the
/// sums after it, or `None` once the reader is gone.
async fn audit_one(
    routes: &Routes,
    p: u32,
    request: &AuditLogRequest,
    before: (u64, u64),
    last: bool,
    tx: &tokio::sync::mpsc::Sender<Result<AuditLogProgress, AppError>>,
) -> Result<Option<(u64, u64)>, AppError> {
    let reader = reader_of(&routes(), p)?;
    let asked = AuditLogRequest {
        partition: None,
        ..*request
    };
    let mut progress = reader.audit(asked).await?;
    let mut here = (0, 0);
    while let Some(next) = progress.next().await {
        let mut next = next?;
        here = (next.checked, next.total);
        let done = next.done;
        next.checked += before.0;
        next.total += before.1;
        next.done = done && last;
        for problem in &mut next.problems {
            problem.partition = Some(p);
        }
        if tx.send(Ok(next)).await.is_err() {
            return Ok(None);
        }
        if done {
            return Ok(Some((before.0 + here.0, before.1 + here.1)));
        }
    }
    Err(AppError::Owner {
        partition: p,
        kind: crate::app::ErrorKind::Unavailable,
        message: format!(
            "its audit ended after {} of {} events, unfinished",
            here.0, here.1
        ),
    })
}

/// Partition `p`'s reader: INVALID_ARGUMENT past the last partition,
/// UNAVAILABLE naming it without an owner.
pub(super) fn reader_of(readers: &[Option<Reader>], p: u32) -> Result<Reader, AppError> {
    match readers.get(p as usize) {
        None => Err(AppError::Invalid {
            field: "partition",
            reason: format!("{p}: the cluster has partitions 0 to {}", readers.len() - 1),
        }),
        Some(None) => Err(unowned(p).into()),
        Some(Some(reader)) => Ok(reader.clone()),
    }
}

/// Partition `p`'s head in `checkpoint`, once its note is known to be
/// signed by the cluster's key (`key`, named `name`) for that partition:
/// a node that signs otherwise (a data directory from before the
/// cluster's key) is an error, never listed.
fn head_of(
    p: u32,
    checkpoint: &Checkpoint,
    name: &str,
    key: &str,
) -> Result<(u64, Hash), AppError> {
    if checkpoint.note.is_empty() && checkpoint.size == 0 {
        return Ok((0, empty_root()));
    }
    let wrong = |reason: String| AppError::Owner {
        partition: p,
        kind: crate::app::ErrorKind::Internal,
        message: format!("its checkpoint cannot be combined: {reason}"),
    };
    let body = verify(&checkpoint.note, key)
        .map_err(|e| wrong(format!("{e} (the cluster's key is {key})")))?;
    let (origin, size, root) = parse_checkpoint(body).map_err(|e| wrong(e.to_string()))?;
    let expected = partition_origin(name, p);
    if origin != expected {
        return Err(wrong(format!("its origin is {origin}, not {expected}")));
    }
    Ok((size, root))
}

/// An owner's answer of another kind than asked.
pub(super) fn unexpected(partition: u32, answer: &IntegrityAnswer) -> AppError {
    AppError::Owner {
        partition,
        kind: crate::app::ErrorKind::Internal,
        message: format!("its owner answered another call: {answer:?}"),
    }
}

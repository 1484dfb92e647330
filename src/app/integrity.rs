//! Integrity: signed checkpoints, inclusion proofs (receipts) and
//! consistency proofs, for every transport. Proofs follow read scope: an
//! inclusion proof only for an event the caller may read. Checkpoints and
//! consistency proofs reveal no event data, so every read token may have
//! them. Every call is on the read trail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::trail;
use super::{AppError, Origin, ReadService};
use crate::auth::{Caller, ReadScope};
use crate::cluster::fanout::AuditProgress;
use crate::integrity::audit::{self, AUDIT_WINDOW};
use crate::integrity::checkpointer::{Integrity, SignedCheckpoint};
use crate::integrity::merkle::{leaf_hash, Hash};
use crate::integrity::opening::Opening;
use crate::integrity::receipt::Receipt;
use crate::integrity::store::{SnapshotError, TreeSnapshot};
use crate::integrity::tiles::{TileError, TileId};
use crate::proto::{
    AuditEvent, AuditLogProgress, AuditLogRequest, Checkpoint, ConsistencyProof,
    GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest, InclusionProof,
    LeafProblem,
};
use crate::retention::Retention;
use crate::schema::micros_to_timestamp;
use crate::search::EventRef;

/// Progress messages of a full audit waiting for a slow reader: while
/// they wait, the audit waits too.
pub(super) const AUDIT_PROGRESS_BUFFER: usize = 4;

pub struct IntegrityService {
    /// `None` when `integrity.enabled` is off.
    integrity: Option<Arc<Integrity>>,
    pub(super) reads: Arc<ReadService>,
    /// How soon a new event is in a checkpoint (`integrity.checkpoint_interval_ms`).
    pub(super) checkpoint_interval: Duration,
    /// What retention dropped: the audit reports it `expired`.
    retention: Arc<Retention>,
}

impl IntegrityService {
    pub fn new(
        integrity: Option<Arc<Integrity>>,
        reads: Arc<ReadService>,
        checkpoint_interval: Duration,
        retention: Arc<Retention>,
    ) -> Self {
        IntegrityService {
            integrity,
            reads,
            checkpoint_interval,
            retention,
        }
    }

    pub(super) fn enabled(&self) -> Result<&Arc<Integrity>, AppError> {
        self.integrity.as_ref().ok_or(AppError::IntegrityOff)
    }

    /// What reads this node's own tree only: refused on a node of several
    /// partitions, whose trees are at their owners.
    fn one_tree(&self, what: &'static str) -> Result<&Arc<Integrity>, AppError> {
        self.reads.not_partitioned(what)?;
        self.enabled()
    }

    /// The checkpoint kept of exactly `size` leaves, or the latest for 0.
    pub(super) fn kept(&self, size: u64) -> Result<SignedCheckpoint, AppError> {
        let checkpoints = &self.enabled()?.checkpoints;
        match size {
            0 => checkpoints.latest().ok_or(AppError::NoCheckpointYet {
                retry_after: self.checkpoint_interval,
            }),
            size => checkpoints
                .of_size(size)
                .ok_or(AppError::CheckpointNotFound(size)),
        }
    }

    /// The log's note verifier key (`<name>+<id>+<key>`): what checks its
    /// checkpoints. Fetched from the log itself it proves nothing; it is
    /// served so that an operator can copy it somewhere it is trusted.
    pub async fn verifier_key(&self, caller: &Caller, origin: &Origin) -> Result<String, AppError> {
        let result = caller
            .read_scope("read checkpoints")
            .map_err(AppError::from)
            .and_then(|_| Ok(self.enabled()?.signer.verifier_key()));
        self.reads
            .trail
            .audited(caller, trail::KEY, origin, BTreeMap::new(), result)
            .await
    }

    /// The latest signed checkpoint (`size` 0), or the kept one of that
    /// size; on a node of several partitions, a partition's (`partition`)
    /// or, for size 0, the combined checkpoint of them all.
    pub async fn checkpoint(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: GetCheckpointRequest,
    ) -> Result<Checkpoint, AppError> {
        self.checkpoint_as(caller, origin, request, None).await
    }

    /// The latest checkpoint as the `tlog-tiles` path serves it: a C2SP
    /// checkpoint of one tree. On a node of several partitions, the
    /// tree of `partition` (required there: no combined note).
    pub async fn tlog_checkpoint(
        &self,
        caller: &Caller,
        origin: &Origin,
        partition: Option<u32>,
    ) -> Result<Checkpoint, AppError> {
        let request = GetCheckpointRequest { size: 0, partition };
        let one_tree = partition.is_none().then_some("the tlog-tiles paths");
        self.checkpoint_as(caller, origin, request, one_tree).await
    }

    async fn checkpoint_as(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: GetCheckpointRequest,
        one_tree: Option<&'static str>,
    ) -> Result<Checkpoint, AppError> {
        let mut query = BTreeMap::from([("size".to_owned(), request.size.to_string())]);
        if let Some(p) = request.partition {
            query.insert("partition".to_owned(), p.to_string());
        }
        let result = async {
            caller.read_scope("read checkpoints")?;
            if let Some(what) = one_tree {
                self.one_tree(what)?;
            }
            match self.reads.partitioned {
                true => self.partitioned_checkpoint(request).await,
                false => {
                    self.no_partition(request.partition)?;
                    self.kept(request.size).map(to_proto)
                }
            }
        }
        .await;
        self.reads
            .trail
            .audited(caller, trail::CHECKPOINT, origin, query, result)
            .await
    }

    /// A node of one partition holds its only tree: `partition`, if
    /// given, must be 0.
    fn no_partition(&self, partition: Option<u32>) -> Result<(), AppError> {
        match partition {
            None | Some(0) => Ok(()),
            Some(p) => Err(AppError::Invalid {
                field: "partition",
                reason: format!("{p}: this node's log has one partition, 0"),
            }),
        }
    }

    /// An event's receipt: its leaf, its audit path to a signed checkpoint
    /// (the latest, or the kept one of `tree_size`), and the same as a
    /// C2SP tlog-proof. The stored event is checked against the tree's
    /// leaf first: a changed event gets `DataLoss`, never a proof. A valid
    /// request has its trail event stored while the proof is made.
    pub async fn inclusion_proof(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: GetInclusionProofRequest,
    ) -> Result<InclusionProof, AppError> {
        let mut query = BTreeMap::new();
        if !request.id.is_empty() {
            query.insert("id".to_owned(), request.id.clone());
        }
        if let Some(seq) = request.seq {
            query.insert("seq".to_owned(), seq.to_string());
        }
        query.insert("tree_size".to_owned(), request.tree_size.to_string());
        let trail = &self.reads.trail;
        if self.reads.partitioned {
            let result = async {
                let scope = caller.read_scope("read events")?;
                self.partitioned_inclusion(scope, request).await
            }
            .await;
            return trail
                .audited(caller, trail::INCLUSION_PROOF, origin, query, result)
                .await;
        }
        let call = caller
            .read_scope("read events")
            .map_err(AppError::from)
            .and_then(|scope| self.inclusion_call(scope, &request));
        match call {
            Ok(call) => {
                let proof = self.prove_inclusion(call);
                trail
                    .alongside(caller, trail::INCLUSION_PROOF, origin, query, proof)
                    .await
            }
            Err(error) => {
                trail
                    .audited(caller, trail::INCLUSION_PROOF, origin, query, Err(error))
                    .await
            }
        }
    }

    /// What an inclusion proof request asks for, once it is known to be
    /// allowed and well formed.
    pub(super) fn inclusion_call(
        &self,
        scope: ReadScope,
        request: &GetInclusionProofRequest,
    ) -> Result<InclusionCall, AppError> {
        let by = match (request.seq, request.id.is_empty()) {
            (Some(seq), _) => EventRef::Seq(seq),
            (None, false) => EventRef::Id(request.id.clone()),
            (None, true) => {
                return Err(AppError::Invalid {
                    field: "id",
                    reason: "required (or seq)".into(),
                })
            }
        };
        Ok(InclusionCall {
            integrity: self.enabled()?.clone(),
            checkpoint: self.kept(request.tree_size)?,
            tree_size: request.tree_size,
            scope,
            by,
        })
    }

    pub(super) async fn prove_inclusion(
        &self,
        call: InclusionCall,
    ) -> Result<InclusionProof, AppError> {
        let InclusionCall {
            integrity,
            checkpoint,
            tree_size,
            scope,
            by,
        } = call;
        let lookup = by.clone();
        let (event, salt) = self
            .reads
            .blocking(move |s| s.stored_event(&lookup, &scope))
            .await?
            .ok_or_else(|| match &by {
                EventRef::Id(id) => AppError::EventNotFound(id.clone()),
                EventRef::Seq(seq) => AppError::EventNotFound(format!("seq {seq}")),
            })?;
        let seq = event.seq;
        if seq >= checkpoint.size {
            if tree_size != 0 {
                return Err(AppError::Invalid {
                    field: "tree_size",
                    reason: format!(
                        "the event (seq {seq}) is not in the tree of {} leaves",
                        checkpoint.size
                    ),
                });
            }
            return Err(AppError::NotCheckpointed {
                seq,
                latest: checkpoint.size,
                retry_after: self.checkpoint_interval,
            });
        }
        let size = checkpoint.size;
        let tree = integrity.tree.clone();
        let signed = checkpoint.clone();
        let receipt = tokio::task::spawn_blocking(move || {
            receipt_in(&tree.snapshot(), &signed, &event, salt)
        })
        .await
        .map_err(|e| AppError::Internal(format!("proof task failed: {e}")))??;
        Ok(InclusionProof {
            leaf_index: seq,
            tree_size: size,
            tlog_proof: receipt.to_text(),
            leaf: receipt.leaf,
            hashes: receipt.hashes.iter().map(|h| h.to_vec()).collect(),
            checkpoint: Some(to_proto(checkpoint)),
        })
    }

    /// The RFC 9162 proof that the tree of `first` leaves is a prefix of
    /// the tree of `second` (`second` 0: the latest checkpoint's size).
    pub async fn consistency_proof(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: GetConsistencyProofRequest,
    ) -> Result<ConsistencyProof, AppError> {
        let mut query = BTreeMap::from([
            ("first".to_owned(), request.first.to_string()),
            ("second".to_owned(), request.second.to_string()),
        ]);
        if let Some(p) = request.partition {
            query.insert("partition".to_owned(), p.to_string());
        }
        let result = async {
            caller.read_scope("read checkpoints")?;
            match self.reads.partitioned {
                true => self.partitioned_consistency(request).await,
                false => {
                    self.no_partition(request.partition)?;
                    self.consistency_here(request).await
                }
            }
        }
        .await;
        self.reads
            .trail
            .audited(caller, trail::CONSISTENCY_PROOF, origin, query, result)
            .await
    }
}

impl IntegrityService {
    /// The consistency proof of this node's own tree.
    pub(super) async fn consistency_here(
        &self,
        request: GetConsistencyProofRequest,
    ) -> Result<ConsistencyProof, AppError> {
        let integrity = self.enabled()?.clone();
        let second = match request.second {
            0 => self.kept(0)?.size,
            second => second,
        };
        check_sizes(request.first, second, integrity.tree.size())?;
        let tree = integrity.tree.clone();
        let first = request.first;
        let hashes: Vec<Hash> =
            tokio::task::spawn_blocking(move || tree.snapshot().consistency_proof(first, second))
                .await
                .map_err(|e| AppError::Internal(format!("proof task failed: {e}")))?
                .map_err(tree_error)?;
        Ok(ConsistencyProof {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        })
    }
}

impl IntegrityService {
    /// The full audit (admin): every leaf recomputed from the stored
    /// events of `[from_seq, to_seq)` (0, 0: every searchable event) and
    /// the tree held against
    /// the latest checkpoint. Progress comes after every
    /// `AUDIT_WINDOW` seqs, with the problems found in it; the last one
    /// says `done`. The call is on the read trail when it starts.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: AuditLogRequest,
    ) -> Result<AuditProgress, AppError> {
        let mut query = BTreeMap::from([
            ("from_seq".to_owned(), request.from_seq.to_string()),
            ("to_seq".to_owned(), request.to_seq.to_string()),
        ]);
        if let Some(p) = request.partition {
            query.insert("partition".to_owned(), p.to_string());
        }
        let started = async {
            caller.require_admin("audit the log")?;
            if request.to_seq != 0 && request.to_seq < request.from_seq {
                return Err(AppError::Invalid {
                    field: "to_seq",
                    reason: format!("below from_seq ({})", request.from_seq),
                });
            }
            match self.reads.partitioned {
                true => self.audit_plan(request.partition),
                false => {
                    self.no_partition(request.partition)?;
                    Ok(AuditPlan::Here(self.enabled()?.clone(), self.kept(0)?))
                }
            }
        }
        .await;
        let plan = self
            .reads
            .trail
            .audited(caller, trail::AUDIT, origin, query, started)
            .await?;
        Ok(match plan {
            AuditPlan::Here(integrity, checkpoint) => {
                self.audit_here(integrity, checkpoint, request)
            }
            AuditPlan::Partitions(routes, partitions) => {
                self.audit_partitions(routes, partitions, request)
            }
        })
    }

    /// The full audit of this node's own tree, with no trail event (a
    /// partition's owner, asked by the node that stored it).
    pub fn audit_stream(&self, request: AuditLogRequest) -> Result<AuditProgress, AppError> {
        let (integrity, checkpoint) = (self.enabled()?.clone(), self.kept(0)?);
        Ok(self.audit_here(integrity, checkpoint, request))
    }

    /// Audits this node's tree against `checkpoint` on the blocking pool.
    fn audit_here(
        &self,
        integrity: Arc<Integrity>,
        checkpoint: SignedCheckpoint,
        request: AuditLogRequest,
    ) -> AuditProgress {
        let searcher = self.reads.searcher().clone();
        let stop = self.reads.streams.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(AUDIT_PROGRESS_BUFFER);
        // Only what is searchable can be read back; newer events wait for
        // the next audit.
        let searchable = *searcher.searchable().borrow();
        let to = match request.to_seq {
            0 => searchable,
            to => to.min(searchable),
        };
        let expired = self.retention.expired();
        tokio::task::spawn_blocking(move || {
            let snapshot = integrity.tree.snapshot();
            let signed = (checkpoint.size, checkpoint.root);
            let (seqs, expired) = (request.from_seq..to, &expired[..]);
            let sent = audit::audit(
                &searcher,
                &snapshot,
                signed,
                expired,
                seqs,
                AUDIT_WINDOW,
                |p| {
                    if stop.is_cancelled() {
                        let _ = tx.blocking_send(Err(AppError::ShuttingDown));
                        return false;
                    }
                    tx.blocking_send(Ok(progress_to_proto(p))).is_ok()
                },
            );
            if let Err(error) = sent {
                let _ = tx.blocking_send(Err(AppError::Internal(format!("the audit: {error}"))));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// Where a full audit reads: this node's tree against its latest
/// checkpoint, or these partitions' at their owners, one after another.
pub(super) enum AuditPlan {
    Here(Arc<Integrity>, SignedCheckpoint),
    Partitions(super::read::Routes, Vec<u32>),
}

/// A checked inclusion proof request.
pub(super) struct InclusionCall {
    integrity: Arc<Integrity>,
    /// The checkpoint the proof leads to.
    checkpoint: SignedCheckpoint,
    /// As asked (0: the latest).
    tree_size: u64,
    scope: ReadScope,
    by: EventRef,
}

fn progress_to_proto(p: audit::Progress) -> AuditLogProgress {
    AuditLogProgress {
        checked: p.checked,
        total: p.total,
        done: p.done,
        problems: p
            .problems
            .into_iter()
            .map(|p| LeafProblem {
                seq: p.seq,
                kind: p.kind.to_owned(),
                detail: p.detail,
                partition: None,
            })
            .collect(),
    }
}

/// The receipt of the stored `event` (with its `salt`) in the tree of
/// `checkpoint`, read from `snapshot`; `LeafMismatch` when the event does
/// not give the leaf the tree holds.
pub(super) fn receipt_in(
    snapshot: &TreeSnapshot,
    checkpoint: &SignedCheckpoint,
    event: &AuditEvent,
    opening: Option<Opening>,
) -> Result<Receipt, AppError> {
    let seq = event.seq;
    let opening = opening.ok_or(AppError::LeafMismatch {
        seq,
        reason: "the stored event has no salt",
    })?;
    let leaf = opening.leaf_bytes(event, &mut Vec::new());
    let held = snapshot.leaf(seq).map_err(tree_error)?;
    let hashes = snapshot
        .inclusion_proof(seq, checkpoint.size)
        .map_err(tree_error)?;
    if held != leaf_hash(&leaf) {
        return Err(AppError::LeafMismatch {
            seq,
            reason: "it differs from what was stored (or the tree was changed)",
        });
    }
    Ok(Receipt {
        index: seq,
        hashes,
        checkpoint: checkpoint.note.clone(),
        opening,
        leaf,
    })
}

impl IntegrityService {
    /// One tile of the tree, by its `tlog-tiles` path (`tile/<L>/<N>[.p/<W>]`),
    /// as the layout serves it: hashes, no event data, so open to every
    /// read token.
    pub async fn tile(
        &self,
        caller: &Caller,
        origin: &Origin,
        partition: Option<u32>,
        path: &str,
    ) -> Result<Vec<u8>, AppError> {
        let mut query = BTreeMap::from([("tile".to_owned(), path.to_owned())]);
        if let Some(p) = partition {
            query.insert("partition".to_owned(), p.to_string());
        }
        let result = async {
            caller.read_scope("read checkpoints")?;
            match (self.reads.partitioned, partition) {
                (true, Some(p)) => self.partition_tile(p, path).await,
                _ => {
                    self.one_tree("the tlog-tiles paths")?;
                    self.no_partition(partition)?;
                    self.tile_here(path).await
                }
            }
        }
        .await;
        self.reads
            .trail
            .audited(caller, trail::TILE, origin, query, result)
            .await
    }

    /// A tile of this node's own tree.
    pub(super) async fn tile_here(&self, path: &str) -> Result<Vec<u8>, AppError> {
        let integrity = self.enabled()?.clone();
        let id = TileId::parse(path).map_err(|e| AppError::Invalid {
            field: "tile",
            reason: e.to_string(),
        })?;
        tokio::task::spawn_blocking(move || integrity.tree.snapshot().tile(id))
            .await
            .map_err(|e| AppError::Internal(format!("tile task failed: {e}")))?
            .map_err(|e| match e {
                TileError::Absent { .. } => AppError::TileNotFound(e.to_string()),
                other => tree_error(SnapshotError::Tile(other)),
            })
    }
}

/// A tree that cannot answer: DATA_LOSS where stored events no longer
/// give its hashes, INTERNAL otherwise.
fn tree_error(e: SnapshotError) -> AppError {
    match e {
        SnapshotError::Tile(TileError::Mismatch(reason)) => AppError::TreeMismatch(reason),
        e => AppError::Internal(format!("the Merkle tree: {e}")),
    }
}

/// `0 < first <= second <= size`, each failure naming its field.
fn check_sizes(first: u64, second: u64, size: u64) -> Result<(), AppError> {
    let invalid = |field, reason: String| Err(AppError::Invalid { field, reason });
    if first == 0 {
        return invalid("first", "must be at least 1".into());
    }
    if first > second {
        return invalid("first", format!("larger than second ({second})"));
    }
    if second > size {
        return invalid("second", format!("the tree holds {size} leaves"));
    }
    Ok(())
}

pub(super) fn to_proto(checkpoint: SignedCheckpoint) -> Checkpoint {
    Checkpoint {
        size: checkpoint.size,
        root_hash: checkpoint.root.to_vec(),
        time: Some(micros_to_timestamp(checkpoint.time)),
        note: checkpoint.note,
    }
}

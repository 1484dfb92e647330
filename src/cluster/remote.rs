//! Partitions read across nodes (`proto/audit/v1/partitions.proto`): the
//! gRPC service a node serves for the partitions whose index it holds,
//! and [`RemotePartition`], the [`PartitionReader`] another node's
//! fan-out asks it through.
//!
//! Calls carry the cluster's node secret (`authorization: Node <secret>`;
//! `cluster::settings::node_secret`), never a client's token: the node
//! that merges has authorised the read and stored its trail event, and
//! sends the reader's scope. A call without the secret is refused
//! (UNAUTHENTICATED) before anything is read. Messages are bounded by
//! [`MAX_PARTITION_MESSAGE_BYTES`]; an aggregate whose counts would not
//! fit fails with RESOURCE_EXHAUSTED on the answering node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::fanout::{
    AuditProgress, FanOutError, IntegrityAnswer, IntegrityOp, LocalPartition, LogPage,
    PartitionReader, RetentionAnswer, RetentionOp, SNAPSHOT_WAIT,
};
use crate::app::{AppError, ErrorKind};
use crate::auth::ReadScope;
use crate::proto::partitions_client::PartitionsClient;
use crate::proto::partitions_server::Partitions;
use crate::proto::{
    AggregateRequest, AuditEvent, AuditLogProgress, AuditLogRequest, BucketCounts,
    Counts as ProtoCounts, EventFilter, PartitionAggregateRequest, PartitionAuditRequest,
    PartitionFirstPass, PartitionGetRequest, PartitionGetResponse, PartitionIntegrityRequest,
    PartitionIntegrityResponse, PartitionLogRequest, PartitionLogResponse, PartitionReachRequest,
    PartitionReachResponse, PartitionRetentionRequest, PartitionRetentionResponse, PartitionScope,
    PartitionSearchRequest, PartitionSearchResponse, PartitionSecondPass, SearchRequest, Selection,
    SubPasses,
};
use crate::search::aggregate::{Counts, FirstPass, SecondPass, Selected, Selections};
use crate::search::{PageAt, SearchError, Searcher, SnapshotPage};

/// The largest message between nodes, either way: a page of events, or
/// one partition's counts (an aggregate over a million distinct values,
/// `aggregate::MAX_DISTINCT`, fits in it).
pub const MAX_PARTITION_MESSAGE_BYTES: usize = 64 << 20;

/// How long a `Retention` call may take (a change waits for the owner's
/// log; a sweep drops whole days) before the asking node gives up on
/// that partition: UNAVAILABLE naming it.
pub const RETENTION_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an `Integrity` call may take (an inclusion proof reads the
/// event and a path of tiles) before the asking node gives up on that
/// partition: UNAVAILABLE naming it.
pub const INTEGRITY_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a `Reach` call waits on the owner, whatever it asks.
pub const MAX_REACH_WAIT: Duration = Duration::from_secs(60);

/// The most seqs one `LogPage` call reads, whatever it asks.
pub const MAX_LOG_PAGE_SEQS: u64 = 10_000;

/// The scheme of the node secret in `authorization`.
const SCHEME: &str = "Node ";

// ---- Conversions ----

fn scope_to_proto(scope: &ReadScope) -> PartitionScope {
    match scope {
        ReadScope::All => PartitionScope {
            all: true,
            ..Default::default()
        },
        ReadScope::Subject(subject) => PartitionScope {
            subject: subject.clone(),
            ..Default::default()
        },
        ReadScope::SubjectAndAccess { subject, access_id } => PartitionScope {
            all: false,
            subject: subject.clone(),
            access_id: access_id.clone(),
        },
    }
}

fn scope_from_proto(scope: Option<PartitionScope>) -> Result<ReadScope, Status> {
    let scope = scope.ok_or_else(|| Status::invalid_argument("scope: missing"))?;
    match (
        scope.all,
        scope.subject.is_empty(),
        scope.access_id.is_empty(),
    ) {
        (true, true, true) => Ok(ReadScope::All),
        (false, false, true) => Ok(ReadScope::Subject(scope.subject)),
        (false, false, false) => Ok(ReadScope::SubjectAndAccess {
            subject: scope.subject,
            access_id: scope.access_id,
        }),
        _ => Err(Status::invalid_argument(
            "scope: all, a subject, or a subject and an access",
        )),
    }
}

fn counts_to_proto(counts: Counts) -> ProtoCounts {
    let (by_key, by_bucket) = counts.into_parts();
    ProtoCounts {
        by_key: by_key.into_iter().collect(),
        by_bucket: by_bucket.into_iter().collect(),
    }
}

fn counts_from_proto(counts: ProtoCounts) -> Counts {
    let by_key: HashMap<String, u64> = counts.by_key.into_iter().collect();
    let by_bucket: BTreeMap<i64, u64> = counts.by_bucket;
    Counts::from_parts(by_key, by_bucket)
}

fn selections_to_proto(selections: &Selections) -> Vec<Selection> {
    selections
        .iter()
        .map(|selected| match selected {
            None => Selection::default(),
            Some(Selected::Keys(keys)) => {
                let mut ordered: Vec<(&String, &usize)> = keys.iter().collect();
                ordered.sort_by_key(|(_, i)| **i);
                Selection {
                    some: true,
                    keys: ordered.into_iter().map(|(k, _)| k.clone()).collect(),
                    ..Default::default()
                }
            }
            Some(Selected::Buckets { first, len }) => Selection {
                some: true,
                histogram: true,
                first: *first,
                len: *len as u32,
                ..Default::default()
            },
        })
        .collect()
}

fn selections_from_proto(selections: Vec<Selection>) -> Selections {
    selections
        .into_iter()
        .map(|s| match (s.some, s.histogram) {
            (false, _) => None,
            (true, false) => Some(Selected::keys(s.keys)),
            (true, true) => Some(Selected::Buckets {
                first: s.first,
                len: s.len as usize,
            }),
        })
        .collect()
}

fn first_to_proto(first: FirstPass) -> PartitionFirstPass {
    PartitionFirstPass {
        hits: first.hits,
        counts: first.counts.into_iter().map(counts_to_proto).collect(),
    }
}

fn second_to_proto(second: SecondPass) -> PartitionSecondPass {
    PartitionSecondPass {
        aggregations: second
            .0
            .into_iter()
            .map(|subs| SubPasses {
                subs: subs
                    .into_iter()
                    .map(|buckets| BucketCounts {
                        buckets: buckets.into_iter().map(counts_to_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn second_from_proto(second: PartitionSecondPass) -> SecondPass {
    SecondPass(
        second
            .aggregations
            .into_iter()
            .map(|a| {
                a.subs
                    .into_iter()
                    .map(|b| b.buckets.into_iter().map(counts_from_proto).collect())
                    .collect()
            })
            .collect(),
    )
}

// ---- The asking side ----

/// A partition whose owner is another node.
pub struct RemotePartition {
    partition: u32,
    client: PartitionsClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl RemotePartition {
    /// Partition `partition` on the node behind `channel`, asked with the
    /// cluster's node secret (refused if it cannot be a header value).
    pub fn new(
        partition: u32,
        channel: Channel,
        node_secret: &str,
    ) -> Result<RemotePartition, FanOutError> {
        let client = PartitionsClient::new(channel)
            .max_decoding_message_size(MAX_PARTITION_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PARTITION_MESSAGE_BYTES);
        let authorization =
            format!("{SCHEME}{node_secret}")
                .parse()
                .map_err(|_| FanOutError::Failed {
                    partition,
                    reason: "the node secret is not printable ASCII".into(),
                })?;
        Ok(RemotePartition {
            partition,
            client,
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    /// A status from the owner, as a fan-out's error.
    fn error(partition: u32, status: Status) -> FanOutError {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument => FanOutError::Invalid {
                field: field_of(status.message()),
                reason: status.message().to_owned(),
            },
            Code::ResourceExhausted => FanOutError::TooLarge(status.message().to_owned()),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                FanOutError::Unavailable {
                    partition,
                    reason: format!("its owner did not answer: {}", status.message()),
                }
            }
            _ => FanOutError::Failed {
                partition,
                reason: status.message().to_owned(),
            },
        }
    }
}

/// The request field an owner's INVALID_ARGUMENT names (`field: reason`),
/// among those a search or an aggregate is refused for; "request" for
/// another. (The merging node checks a request itself before it asks
/// anyone once queries are wired to fan out; this is for what only an
/// owner can see.)
fn field_of(message: &str) -> &'static str {
    const FIELDS: &[&str] = &[
        "aggregations",
        "aggregations.name",
        "aggregations.kind",
        "aggregations.terms.field",
        "aggregations.terms.size",
        "aggregations.cardinality.field",
        "aggregations.date_histogram.interval",
        "aggregations.sub_aggregations",
        "page_token",
        "from_time",
        "to_time",
        "actions",
        "ips",
        "outcome",
        "query",
        "text",
        "status_min",
        "status_max",
        "scope",
        "tree_size",
        "first",
        "second",
    ];
    let named = message.split(':').next().unwrap_or_default();
    FIELDS
        .iter()
        .find(|f| **f == named)
        .copied()
        .unwrap_or("request")
}

impl PartitionReader for RemotePartition {
    fn search_at(
        &self,
        request: SearchRequest,
        scope: ReadScope,
        at: PageAt,
    ) -> BoxFuture<'static, Result<SnapshotPage, FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let call = self.request(PartitionSearchRequest {
            partition,
            request: Some(request),
            scope: Some(scope_to_proto(&scope)),
            has_after: at.after.is_some(),
            after_time: at.after.map_or(0, |a| a.0),
            after_seq: at.after.map_or(0, |a| a.1),
            snapshot: at.snapshot,
        });
        Box::pin(async move {
            let page = client
                .search_at(call)
                .await
                .map_err(|s| Self::error(partition, s))?
                .into_inner();
            Ok(SnapshotPage {
                events: page.events,
                more: page.more,
                counted: page.counted,
                snapshot: page.snapshot,
            })
        })
    }

    fn get(
        &self,
        id: String,
        scope: ReadScope,
    ) -> BoxFuture<'static, Result<Option<AuditEvent>, FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let call = self.request(PartitionGetRequest {
            partition,
            id,
            scope: Some(scope_to_proto(&scope)),
        });
        Box::pin(async move {
            let got = client
                .get_event(call)
                .await
                .map_err(|s| Self::error(partition, s))?;
            Ok(got.into_inner().event)
        })
    }

    fn reach(&self, seq: u64, within: Duration) -> BoxFuture<'static, Result<(), FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let mut call = self.request(PartitionReachRequest {
            partition,
            seq,
            within_ms: within.as_millis() as u64,
        });
        // The owner's wait, and a moment for the answer to come back.
        call.set_timeout(within + Duration::from_secs(2));
        Box::pin(async move {
            client
                .reach(call)
                .await
                .map_err(|s| Self::error(partition, s))?;
            Ok(())
        })
    }

    fn log_page(
        &self,
        filter: EventFilter,
        scope: ReadScope,
        from: Option<u64>,
        max_seqs: u64,
        wait: Duration,
    ) -> BoxFuture<'static, Result<LogPage, FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let mut call = self.request(PartitionLogRequest {
            partition,
            filter: Some(filter),
            scope: Some(scope_to_proto(&scope)),
            from,
            max_seqs,
            wait_ms: wait.as_millis() as u64,
        });
        call.set_timeout(wait + Duration::from_secs(10));
        Box::pin(async move {
            let page = client
                .log_page(call)
                .await
                .map_err(|s| Self::error(partition, s))?
                .into_inner();
            Ok(LogPage {
                events: page.events,
                to: page.to,
            })
        })
    }

    fn retention(
        &self,
        op: RetentionOp,
    ) -> BoxFuture<'static, Result<RetentionAnswer, FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let mut call = self.request(PartitionRetentionRequest {
            partition,
            op: Some(op),
        });
        // A change waits for the owner's log; a sweep drops whole days.
        call.set_timeout(RETENTION_CALL_TIMEOUT);
        Box::pin(async move {
            let answer = client
                .retention(call)
                .await
                .map_err(|s| Self::error(partition, s))?
                .into_inner()
                .answer;
            answer.ok_or_else(|| FanOutError::Failed {
                partition,
                reason: "its owner answered nothing".into(),
            })
        })
    }

    fn audit(
        &self,
        request: AuditLogRequest,
    ) -> BoxFuture<'static, Result<AuditProgress, AppError>> {
        use futures::StreamExt;
        let (partition, mut client) = (self.partition, self.client.clone());
        // No deadline: a partition's audit takes as long as its events.
        let call = self.request(PartitionAuditRequest {
            partition,
            request: Some(request),
        });
        Box::pin(async move {
            let progress = client
                .audit_log(call)
                .await
                .map_err(|s| owner_error(partition, s))?
                .into_inner();
            let progress = progress.map(move |p| p.map_err(|s| owner_error(partition, s)));
            Ok(progress.boxed())
        })
    }

    fn integrity(
        &self,
        scope: ReadScope,
        op: IntegrityOp,
    ) -> BoxFuture<'static, Result<IntegrityAnswer, AppError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let mut call = self.request(PartitionIntegrityRequest {
            partition,
            scope: Some(scope_to_proto(&scope)),
            op: Some(op),
        });
        call.set_timeout(INTEGRITY_CALL_TIMEOUT);
        Box::pin(async move {
            let answer = client
                .integrity(call)
                .await
                .map_err(|s| owner_error(partition, s))?
                .into_inner()
                .answer;
            answer.ok_or_else(|| AppError::Owner {
                partition,
                kind: ErrorKind::Internal,
                message: "its owner answered nothing".into(),
            })
        })
    }

    fn aggregate_first(
        &self,
        request: AggregateRequest,
        scope: ReadScope,
    ) -> BoxFuture<'static, Result<FirstPass, FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let call = self.request(PartitionAggregateRequest {
            partition,
            request: Some(request),
            scope: Some(scope_to_proto(&scope)),
            selections: Vec::new(),
        });
        Box::pin(async move {
            let first = client
                .aggregate_first(call)
                .await
                .map_err(|s| Self::error(partition, s))?
                .into_inner();
            Ok(FirstPass {
                hits: first.hits,
                counts: first.counts.into_iter().map(counts_from_proto).collect(),
            })
        })
    }

    fn aggregate_second(
        &self,
        request: AggregateRequest,
        scope: ReadScope,
        selections: Selections,
    ) -> BoxFuture<'static, Result<SecondPass, FanOutError>> {
        let (partition, mut client) = (self.partition, self.client.clone());
        let call = self.request(PartitionAggregateRequest {
            partition,
            request: Some(request),
            scope: Some(scope_to_proto(&scope)),
            selections: selections_to_proto(&selections),
        });
        Box::pin(async move {
            let second = client
                .aggregate_second(call)
                .await
                .map_err(|s| Self::error(partition, s))?
                .into_inner();
            Ok(second_from_proto(second))
        })
    }
}

// ---- The answering side ----

/// The searcher of a partition this node holds now, if it does.
pub type Held = Arc<dyn Fn(u32) -> Option<LocalPartition> + Send + Sync>;

/// The `Partitions` service of a node: the partitions whose index it
/// holds, each by its searcher.
pub struct PartitionsService {
    held: Held,
    /// SHA-256 of the node secret: compared in constant time.
    secret_hash: [u8; 32],
}

impl PartitionsService {
    pub fn new(held: Held, node_secret: &str) -> PartitionsService {
        PartitionsService {
            held,
            secret_hash: Sha256::digest(node_secret.as_bytes()).into(),
        }
    }

    /// The searcher of `partition`, once the call has shown the secret.
    fn searcher<T>(&self, request: &Request<T>, partition: u32) -> Result<Searcher, Status> {
        Ok(self.here(request, partition)?.searcher)
    }

    /// Partition `partition` as this node holds it, once the call has
    /// shown the secret.
    fn here<T>(&self, request: &Request<T>, partition: u32) -> Result<LocalPartition, Status> {
        let shown = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(SCHEME))
            .ok_or_else(|| Status::unauthenticated("a node-to-node call needs the node secret"))?;
        let hash: [u8; 32] = Sha256::digest(shown.as_bytes()).into();
        if !bool::from(hash.ct_eq(&self.secret_hash)) {
            return Err(Status::unauthenticated("not this cluster's node secret"));
        }
        (self.held)(partition).ok_or_else(|| {
            Status::unavailable(format!("partition {partition}: not held by this node"))
        })
    }
}

/// What an owner's in-process answer failed with, as the asking node
/// reads it back (`RemotePartition::error`).
fn status_of(error: FanOutError) -> Status {
    match error {
        FanOutError::Invalid { field, reason } => {
            Status::invalid_argument(format!("{field}: {reason}"))
        }
        FanOutError::Unavailable { .. } => Status::unavailable(error.to_string()),
        FanOutError::TooLarge(reason) => Status::resource_exhausted(reason),
        FanOutError::Failed { .. } => Status::internal(error.to_string()),
    }
}

/// A status from an owner's integrity answer, its kind kept (NOT_FOUND,
/// DATA_LOSS, FAILED_PRECONDITION mean there what they mean on one
/// node); a bad field keeps its name; no answer is UNAVAILABLE.
fn owner_error(partition: u32, status: Status) -> AppError {
    use tonic::Code;
    let kind = match status.code() {
        Code::InvalidArgument => return RemotePartition::error(partition, status).into(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            ErrorKind::Unavailable
        }
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::NotFound => ErrorKind::NotFound,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::DataLoss => ErrorKind::DataLoss,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Internal,
    };
    AppError::Owner {
        partition,
        kind,
        message: status.message().to_owned(),
    }
}

/// Runs `read` on the blocking pool.
async fn blocking<T: Send + 'static>(
    searcher: Searcher,
    read: impl FnOnce(&Searcher) -> Result<T, SearchError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(move || read(&searcher))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            SearchError::Invalid { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            SearchError::TooLarge(reason) => Status::resource_exhausted(reason),
            behind @ SearchError::Behind { .. } => Status::unavailable(behind.to_string()),
            other => Status::internal(other.to_string()),
        })
}

#[tonic::async_trait]
impl Partitions for Arc<PartitionsService> {
    async fn search_at(
        &self,
        request: Request<PartitionSearchRequest>,
    ) -> Result<Response<PartitionSearchResponse>, Status> {
        let searcher = self.searcher(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let scope = scope_from_proto(call.scope)?;
        let search = call.request.unwrap_or_default();
        let at = PageAt {
            after: call.has_after.then_some((call.after_time, call.after_seq)),
            snapshot: call.snapshot,
        };
        let reached = searcher.reach(at.snapshot, SNAPSHOT_WAIT).await;
        reached.map_err(|behind| {
            Status::unavailable(format!("partition {}: {behind}", call.partition))
        })?;
        let page = blocking(searcher, move |s| s.search_at(&search, &scope, at)).await?;
        Ok(Response::new(PartitionSearchResponse {
            events: page.events,
            more: page.more,
            counted: page.counted,
            snapshot: page.snapshot,
        }))
    }

    async fn aggregate_first(
        &self,
        request: Request<PartitionAggregateRequest>,
    ) -> Result<Response<PartitionFirstPass>, Status> {
        let searcher = self.searcher(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let scope = scope_from_proto(call.scope)?;
        let aggregate = call.request.unwrap_or_default();
        let first = blocking(searcher, move |s| s.aggregate_first(&aggregate, &scope)).await?;
        Ok(Response::new(first_to_proto(first)))
    }

    async fn aggregate_second(
        &self,
        request: Request<PartitionAggregateRequest>,
    ) -> Result<Response<PartitionSecondPass>, Status> {
        let searcher = self.searcher(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let scope = scope_from_proto(call.scope)?;
        let aggregate = call.request.unwrap_or_default();
        let selections = selections_from_proto(call.selections);
        let second = blocking(searcher, move |s| {
            s.aggregate_second(&aggregate, &scope, &selections)
        })
        .await?;
        Ok(Response::new(second_to_proto(second)))
    }

    async fn reach(
        &self,
        request: Request<PartitionReachRequest>,
    ) -> Result<Response<PartitionReachResponse>, Status> {
        let searcher = self.searcher(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let within = Duration::from_millis(call.within_ms).min(MAX_REACH_WAIT);
        let reached = searcher.reach(Some(call.seq + 1), within).await;
        reached.map_err(|behind| {
            Status::unavailable(format!("partition {}: {behind}", call.partition))
        })?;
        Ok(Response::new(PartitionReachResponse {}))
    }

    async fn log_page(
        &self,
        request: Request<PartitionLogRequest>,
    ) -> Result<Response<PartitionLogResponse>, Status> {
        let local = self.here(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let scope = scope_from_proto(call.scope)?;
        let max_seqs = call.max_seqs.clamp(1, MAX_LOG_PAGE_SEQS);
        let wait = Duration::from_millis(call.wait_ms).min(MAX_REACH_WAIT);
        let filter = call.filter.unwrap_or_default();
        let page = local
            .log_page(filter, scope, call.from, max_seqs, wait)
            .await;
        let page = page.map_err(status_of)?;
        Ok(Response::new(PartitionLogResponse {
            events: page.events,
            to: page.to,
        }))
    }

    async fn retention(
        &self,
        request: Request<PartitionRetentionRequest>,
    ) -> Result<Response<PartitionRetentionResponse>, Status> {
        let local = self.here(&request, request.get_ref().partition)?;
        let op = request.into_inner().op;
        let op = op.ok_or_else(|| Status::invalid_argument("op: required"))?;
        let answer = local.retention(op).await.map_err(status_of)?;
        Ok(Response::new(PartitionRetentionResponse {
            answer: Some(answer),
        }))
    }

    async fn integrity(
        &self,
        request: Request<PartitionIntegrityRequest>,
    ) -> Result<Response<PartitionIntegrityResponse>, Status> {
        let local = self.here(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let scope = scope_from_proto(call.scope)?;
        let op = call
            .op
            .ok_or_else(|| Status::invalid_argument("op: required"))?;
        let answer = local.integrity(scope, op).await?;
        Ok(Response::new(PartitionIntegrityResponse {
            answer: Some(answer),
        }))
    }

    type AuditLogStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<AuditLogProgress, Status>> + Send>>;

    async fn audit_log(
        &self,
        request: Request<PartitionAuditRequest>,
    ) -> Result<Response<Self::AuditLogStream>, Status> {
        use futures::StreamExt;
        let local = self.here(&request, request.get_ref().partition)?;
        let audit = request.into_inner().request.unwrap_or_default();
        let progress = local.audit(audit).await?;
        Ok(Response::new(Box::pin(
            progress.map(|p| p.map_err(Status::from)),
        )))
    }

    async fn get_event(
        &self,
        request: Request<PartitionGetRequest>,
    ) -> Result<Response<PartitionGetResponse>, Status> {
        let searcher = self.searcher(&request, request.get_ref().partition)?;
        let call = request.into_inner();
        let scope = scope_from_proto(call.scope)?;
        let event = blocking(searcher, move |s| s.get(&call.id, &scope)).await?;
        Ok(Response::new(PartitionGetResponse { event }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_selections_round_trip() {
        for scope in [
            ReadScope::All,
            ReadScope::Subject("emma".into()),
            ReadScope::SubjectAndAccess {
                subject: "emma".into(),
                access_id: "app-1".into(),
            },
        ] {
            assert_eq!(
                scope_from_proto(Some(scope_to_proto(&scope))).unwrap(),
                scope
            );
        }
        let odd = PartitionScope {
            all: true,
            subject: "emma".into(),
            ..Default::default()
        };
        assert!(scope_from_proto(Some(odd)).is_err());
        assert!(scope_from_proto(None).is_err());

        let selections: Selections = vec![
            None,
            Some(Selected::keys(vec!["b".into(), "a".into(), "c".into()])),
            Some(Selected::Buckets { first: -3, len: 7 }),
        ];
        let back = selections_from_proto(selections_to_proto(&selections));
        assert_eq!(selections_to_proto(&back), selections_to_proto(&selections));
        assert_eq!(selections_to_proto(&back)[1].keys, ["b", "a", "c"]);
    }

    #[test]
    fn an_owners_invalid_argument_keeps_its_field() {
        let status = Status::invalid_argument("page_token: not a token");
        match RemotePartition::error(3, status) {
            FanOutError::Invalid { field, .. } => assert_eq!(field, "page_token"),
            other => panic!("{other:?}"),
        }
        match RemotePartition::error(3, Status::unavailable("gone")) {
            FanOutError::Unavailable { partition: 3, .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

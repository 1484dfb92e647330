//! The gRPC adapter: unwrap the request, call the application layer,
//! convert the result. `From<AppError> for Status` is the one place a
//! domain error becomes a status code.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::{App, AppError, ErrorKind, Origin};
use crate::auth::{AuthError, Caller};
use crate::proto::audit_log_server::AuditLog;
use crate::proto::integrity_server::Integrity;
use crate::proto::retention_server::Retention;
use crate::proto::subjects_server::Subjects;
use crate::proto::tokens_server::Tokens;
use crate::proto::{
    AddHoldRequest, GetRetentionRequest, Hold, ListHoldsRequest, ListHoldsResponse,
    LockRetentionRequest, ReleaseHoldRequest, RetentionStatus, SweepRequest, SweepResponse,
};
use crate::proto::{
    AggregateRequest, AggregateResponse, AuditEvent, CreateTokenRequest, CreateTokenResponse,
    ExportChunk, ExportRequest, GetEventRequest, IngestRequest, IngestResponse, ListTokensRequest,
    ListTokensResponse, RevokeTokenRequest, SearchRequest, SearchResponse, TailRequest,
    TailResponse, TokenInfo,
};
use crate::proto::{
    AuditLogProgress, AuditLogRequest, Checkpoint, ConsistencyProof, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, InclusionProof,
};
use crate::proto::{
    EraseSubjectRequest, EraseSubjectResponse, ExportSubjectRequest, SubjectExportChunk,
};

/// Metadata key carrying the retry hint of RESOURCE_EXHAUSTED, for clients
/// that do not read `google.rpc.RetryInfo`.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The `AuditLog` service over the application layer.
pub struct AuditLogService(pub App);

/// The `Tokens` service over the application layer.
pub struct TokensService(pub App);

/// The `Integrity` service over the application layer.
pub struct IntegrityGrpc(pub App);

/// The `Retention` service over the application layer.
pub struct RetentionGrpc(pub App);

/// The `Subjects` service over the application layer.
pub struct SubjectsGrpc(pub App);

/// The caller the authentication interceptor put into the request, and
/// where the call came from.
fn caller<T>(request: &Request<T>) -> Result<(Caller, Origin), Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::from(AppError::Auth(AuthError::Unauthenticated)))?;
    Ok((caller, Origin::grpc(request.remote_addr())))
}

type IngestStream = Pin<Box<dyn Stream<Item = Result<IngestResponse, Status>> + Send>>;
type TailStream = Pin<Box<dyn Stream<Item = Result<TailResponse, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportChunk, Status>> + Send>>;
type AuditStream = Pin<Box<dyn Stream<Item = Result<AuditLogProgress, Status>> + Send>>;

#[tonic::async_trait]
impl AuditLog for AuditLogService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let (caller, _) = caller(&request)?;
        let reply = self.0.writes.ingest(&caller, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    type IngestStreamStream = IngestStream;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let (caller, _) = caller(&request)?;
        let replies = self.0.writes.ingest_stream(caller, request.into_inner())?;
        Ok(Response::new(Box::pin(replies)))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let reply = self
            .0
            .reads
            .search(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<AuditEvent>, Status> {
        let (caller, origin) = caller(&request)?;
        let id = request.into_inner().id;
        let event = self.0.reads.get_event(&caller, &origin, id).await?;
        Ok(Response::new(event))
    }

    async fn aggregate(
        &self,
        request: Request<AggregateRequest>,
    ) -> Result<Response<AggregateResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let reply = self
            .0
            .reads
            .aggregate(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }

    type TailStream = TailStream;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let (caller, origin) = caller(&request)?;
        let events = self
            .0
            .reads
            .tail(caller, origin, request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(events)))
    }

    type ExportStream = ExportStream;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let (caller, origin) = caller(&request)?;
        let chunks = self
            .0
            .reads
            .export(caller, origin, request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(chunks)))
    }
}

#[tonic::async_trait]
impl Integrity for IntegrityGrpc {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        let (caller, origin) = caller(&request)?;
        let reply = self
            .0
            .integrity
            .checkpoint(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        let (caller, origin) = caller(&request)?;
        let reply = self
            .0
            .integrity
            .inclusion_proof(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        let (caller, origin) = caller(&request)?;
        let reply = self
            .0
            .integrity
            .consistency_proof(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }

    type AuditLogStream = AuditStream;

    async fn audit_log(
        &self,
        request: Request<AuditLogRequest>,
    ) -> Result<Response<Self::AuditLogStream>, Status> {
        let (caller, origin) = caller(&request)?;
        let progress = self
            .0
            .integrity
            .audit_log(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(
            progress.map(|p| p.map_err(Status::from)),
        )))
    }
}

#[tonic::async_trait]
impl Tokens for TokensService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let (token, secret) = self
            .0
            .tokens
            .create(&caller, &origin, request.into_inner())
            .await?;
        Ok(Response::new(CreateTokenResponse {
            token: Some(token),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let tokens = self.0.tokens.list(&caller, &origin).await?;
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        let (caller, origin) = caller(&request)?;
        let id = request.into_inner().id;
        let info = self.0.tokens.revoke(&caller, &origin, id).await?;
        Ok(Response::new(info))
    }
}

/// The interceptor in front of every `AuditLog` and `Tokens` call: finds
/// the caller behind the bearer token, or refuses.
#[derive(Clone)]
pub struct Authenticate(pub Arc<App>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = self.0.authenticate(header)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The one place a domain error becomes a gRPC status: the kind's code,
/// the error's message, `google.rpc.BadRequest` naming every bad field,
/// and `google.rpc.RetryInfo` (plus `retry-after-ms`) when retrying helps.
impl From<AppError> for Status {
    fn from(error: AppError) -> Status {
        let code = match error.kind() {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::DataLoss => tonic::Code::DataLoss,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        let violations = error.violations();
        let retry_after = error.retry_after();
        let message = error.to_string();
        if violations.is_empty() && retry_after.is_none() {
            return Status::new(code, message);
        }
        let mut details = ErrorDetails::new();
        if !violations.is_empty() {
            details.set_bad_request(
                violations
                    .into_iter()
                    .map(|v| tonic_types::FieldViolation::new(v.field, v.reason))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(retry_after) = retry_after {
            details.set_retry_info(Some(retry_after));
        }
        let mut status = Status::with_error_details(code, message, details);
        if let Some(retry_after) = retry_after {
            if let Ok(value) = retry_after.as_millis().to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER_MS, value);
            }
        }
        status
    }
}

#[tonic::async_trait]
impl Retention for RetentionGrpc {
    async fn get_retention(
        &self,
        request: Request<GetRetentionRequest>,
    ) -> Result<Response<RetentionStatus>, Status> {
        let (caller, origin) = caller(&request)?;
        Ok(Response::new(
            self.0.retention.status(&caller, &origin).await?,
        ))
    }

    async fn lock(
        &self,
        request: Request<LockRetentionRequest>,
    ) -> Result<Response<RetentionStatus>, Status> {
        let (caller, origin) = caller(&request)?;
        let days = request.into_inner().min_days;
        Ok(Response::new(
            self.0.retention.lock(&caller, &origin, days).await?,
        ))
    }

    async fn add_hold(&self, request: Request<AddHoldRequest>) -> Result<Response<Hold>, Status> {
        let (caller, origin) = caller(&request)?;
        let hold = request.into_inner();
        Ok(Response::new(
            self.0.retention.add_hold(&caller, &origin, hold).await?,
        ))
    }

    async fn list_holds(
        &self,
        request: Request<ListHoldsRequest>,
    ) -> Result<Response<ListHoldsResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let released = request.into_inner().include_released;
        let holds = self
            .0
            .retention
            .list_holds(&caller, &origin, released)
            .await?;
        Ok(Response::new(ListHoldsResponse { holds }))
    }

    async fn release_hold(
        &self,
        request: Request<ReleaseHoldRequest>,
    ) -> Result<Response<Hold>, Status> {
        let (caller, origin) = caller(&request)?;
        let id = request.into_inner().id;
        Ok(Response::new(
            self.0.retention.release_hold(&caller, &origin, id).await?,
        ))
    }

    async fn sweep(
        &self,
        request: Request<SweepRequest>,
    ) -> Result<Response<SweepResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        Ok(Response::new(
            self.0.retention.sweep(&caller, &origin).await?,
        ))
    }
}

type SubjectStream = Pin<Box<dyn Stream<Item = Result<SubjectExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Subjects for SubjectsGrpc {
    type ExportSubjectStream = SubjectStream;

    async fn export_subject(
        &self,
        request: Request<ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        let (caller, origin) = caller(&request)?;
        let chunks = self
            .0
            .subjects
            .export(caller, origin, request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn erase_subject(
        &self,
        request: Request<EraseSubjectRequest>,
    ) -> Result<Response<EraseSubjectResponse>, Status> {
        let (caller, origin) = caller(&request)?;
        let request = request.into_inner();
        Ok(Response::new(
            self.0.subjects.erase(&caller, &origin, request).await?,
        ))
    }
}

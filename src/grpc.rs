//! The gRPC adapter: unwrap the request, call a service that knows nothing
//! of tonic, map the result. Every error becomes one precise status here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::auth::{AuthError, Caller, TokenStore};
use crate::ingest::{IngestError, IngestService};
use crate::proto::audit_log_server::AuditLog;
use crate::proto::tokens_server::Tokens;
use crate::proto::{
    AuditEvent, CreateTokenRequest, CreateTokenResponse, GetEventRequest, IngestRequest,
    IngestResponse, ListTokensRequest, ListTokensResponse, RevokeTokenRequest, SearchRequest,
    SearchResponse, TokenInfo, TokenKind,
};
use crate::search::{SearchError, Searcher};
use crate::status::{Health, PipelineStatus};
use crate::trail;

/// Responses an IngestStream may have waiting for a slow reader before it
/// stops reading requests.
pub const STREAM_REPLY_BUFFER: usize = 4;

/// Metadata key carrying the retry hint of RESOURCE_EXHAUSTED, for clients
/// that do not read `google.rpc.RetryInfo`.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

pub struct AuditLogService {
    ingest: Arc<IngestService>,
    searcher: Searcher,
    status: Arc<PipelineStatus>,
    streams: StreamSettings,
}

/// How long-lived IngestStreams end: after `idle_timeout` without a
/// request, or when the server begins to shut down (`stop`), so that
/// neither an idle producer nor a SIGTERM leaves a stream open for ever.
#[derive(Clone)]
pub struct StreamSettings {
    pub idle_timeout: Duration,
    pub stop: tokio_util::sync::CancellationToken,
}

/// The caller the authentication interceptor put into the request.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| auth_status(AuthError::Unauthenticated))
}

impl AuditLogService {
    pub fn new(
        ingest: Arc<IngestService>,
        searcher: Searcher,
        status: Arc<PipelineStatus>,
        streams: StreamSettings,
    ) -> Self {
        AuditLogService {
            ingest,
            searcher,
            status,
            streams,
        }
    }

    fn check_reads(&self) -> Result<(), Status> {
        match self.status.health() {
            Health::Starting => Err(Status::unavailable(
                "auditd is starting (replaying its write-ahead log)",
            )),
            // Reads still work when writes cannot be made durable.
            Health::Serving | Health::Degraded(_) | Health::Failed(_) => Ok(()),
        }
    }

    /// Runs blocking index work off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Searcher) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<T, Status> {
        self.check_reads()?;
        let searcher = self.searcher.clone();
        tokio::task::spawn_blocking(move || work(searcher))
            .await
            .map_err(|e| Status::internal(format!("search task failed: {e}")))?
            .map_err(search_status)
    }
}

/// Stores the trail event of a read before the read's answer goes out: a
/// read that cannot be audited is not served.
async fn audited<T>(
    ingest: &IngestService,
    caller: &Caller,
    action: &str,
    peer: Option<SocketAddr>,
    query: BTreeMap<String, String>,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let outcome = result.as_ref().err().map(|s| (s.code(), s.message()));
    let event = trail::event(caller, action, peer, query, outcome);
    let request = IngestRequest {
        events: vec![event],
        ..Default::default()
    };
    if let Err(error) = ingest.ingest(request).await {
        tracing::error!(%error, action, "a read could not be audited; refusing it");
        return Err(Status::unavailable(format!(
            "the read could not be audited: {error}"
        )));
    }
    result
}

type IngestStream = Pin<Box<dyn Stream<Item = Result<IngestResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditLog for AuditLogService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.check_write(&request.events).map_err(auth_status)?;
        let reply = self.ingest.ingest(request).await.map_err(ingest_status)?;
        Ok(Response::new(reply))
    }

    type IngestStreamStream = IngestStream;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let caller = caller(&request)?;
        caller.check_write(&[]).map_err(auth_status)?;
        let mut inbound = request.into_inner();
        let ingest = self.ingest.clone();
        let StreamSettings { idle_timeout, stop } = self.streams.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_REPLY_BUFFER);
        tokio::spawn(async move {
            // One reply per request, in order; the first error ends the
            // stream, as gRPC streams end with a status. A batch already
            // taken is always answered; shutdown and idleness end the
            // stream only between batches.
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "auditd is shutting down; every batch sent on this stream was answered",
                        )));
                        break;
                    }
                    next = tokio::time::timeout(idle_timeout, inbound.message()) => next,
                };
                let next = match next {
                    Ok(Ok(Some(next))) => next,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    Err(_idle) => {
                        let _ = tx.try_send(Err(Status::deadline_exceeded(format!(
                            "no request for {} ms (limits.stream_idle_timeout_ms); stream closed",
                            idle_timeout.as_millis()
                        ))));
                        break;
                    }
                };
                let reply = match caller.check_write(&next.events) {
                    Ok(()) => ingest.ingest(next).await.map_err(ingest_status),
                    Err(denied) => Err(auth_status(denied)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let caller = caller(&request)?;
        let peer = request.remote_addr();
        let request = request.into_inner();
        let query = trail::search_query(&request);
        let scope = caller.read_scope("search").map_err(auth_status);
        let result = match scope {
            Ok(scope) => self.blocking(move |s| s.search(&request, &scope)).await,
            Err(denied) => Err(denied),
        };
        let reply = audited(&self.ingest, &caller, trail::SEARCH, peer, query, result).await?;
        Ok(Response::new(reply))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<AuditEvent>, Status> {
        let caller = caller(&request)?;
        let peer = request.remote_addr();
        let id = request.into_inner().id;
        let query = BTreeMap::from([("id".to_owned(), id.clone())]);
        let result = async {
            let scope = caller.read_scope("read events").map_err(auth_status)?;
            if id.is_empty() {
                return Err(bad_request("id", "required"));
            }
            let lookup = id.clone();
            // Outside the scope is exactly as absent as nonexistent.
            self.blocking(move |s| s.get(&lookup, &scope))
                .await?
                .ok_or_else(|| Status::not_found(format!("no event with id {id:?}")))
        }
        .await;
        let event = audited(&self.ingest, &caller, trail::GET_EVENT, peer, query, result).await?;
        Ok(Response::new(event))
    }
}

/// Token management: admin tokens only, every change audited.
pub struct TokensService {
    store: Arc<TokenStore>,
    ingest: Arc<IngestService>,
}

impl TokensService {
    pub fn new(store: Arc<TokenStore>, ingest: Arc<IngestService>) -> Self {
        TokensService { store, ingest }
    }
}

fn token_query(info: &TokenInfo) -> BTreeMap<String, String> {
    let mut q = BTreeMap::from([("token".to_owned(), info.id.clone())]);
    for (key, value) in [
        (
            "kind",
            TokenKind::try_from(info.kind)
                .map(|k| k.as_str_name().to_owned())
                .unwrap_or_default(),
        ),
        ("subject", info.subject.clone()),
        ("access_id", info.access_id.clone()),
        ("name", info.name.clone()),
    ] {
        if !value.is_empty() {
            q.insert(key.to_owned(), value);
        }
    }
    q
}

#[tonic::async_trait]
impl Tokens for TokensService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let peer = request.remote_addr();
        let request = request.into_inner();
        let result = caller
            .require_admin("manage tokens")
            .and_then(|()| self.store.create(request))
            .map_err(auth_status);
        let query = result
            .as_ref()
            .map(|(info, _)| token_query(info))
            .unwrap_or_default();
        let (token, secret) = audited(
            &self.ingest,
            &caller,
            trail::TOKEN_CREATE,
            peer,
            query,
            result,
        )
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
        let caller = caller(&request)?;
        let peer = request.remote_addr();
        let result = caller
            .require_admin("manage tokens")
            .map(|()| self.store.list())
            .map_err(auth_status);
        let tokens = audited(
            &self.ingest,
            &caller,
            trail::TOKEN_LIST,
            peer,
            BTreeMap::new(),
            result,
        )
        .await?;
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        let caller = caller(&request)?;
        let peer = request.remote_addr();
        let id = request.into_inner().id;
        let result = caller
            .require_admin("manage tokens")
            .and_then(|()| self.store.revoke(&id))
            .map_err(auth_status);
        let query = BTreeMap::from([("token".to_owned(), id)]);
        let info = audited(
            &self.ingest,
            &caller,
            trail::TOKEN_REVOKE,
            peer,
            query,
            result,
        )
        .await?;
        Ok(Response::new(info))
    }
}

/// The interceptor in front of every `AuditLog` and `Tokens` call: finds
/// the caller behind the bearer token, or refuses.
#[derive(Clone)]
pub struct Authenticate(pub Arc<TokenStore>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = self.0.authenticate(header).map_err(auth_status)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The one place auth failures become status codes.
pub fn auth_status(error: AuthError) -> Status {
    let message = error.to_string();
    match error {
        AuthError::Unauthenticated => Status::unauthenticated(message),
        AuthError::Forbidden { .. } => Status::permission_denied(message),
        AuthError::OutsideBinding { field, reason } => Status::with_error_details(
            tonic::Code::PermissionDenied,
            message,
            ErrorDetails::with_bad_request(vec![FieldViolation::new(field, reason)]),
        ),
        AuthError::Invalid { field, reason } => bad_request(&field, &reason),
        AuthError::NotFound(_) => Status::not_found(message),
        AuthError::Store { .. } => Status::unavailable(message),
    }
}

fn bad_request(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request(vec![FieldViolation::new(field, reason)]),
    )
}

/// The one place ingest failures become status codes.
pub fn ingest_status(error: IngestError) -> Status {
    let message = error.to_string();
    match error {
        IngestError::Invalid(invalid) => {
            let violations: Vec<FieldViolation> = invalid
                .violations
                .iter()
                .map(|v| FieldViolation::new(v.path(), v.reason.clone()))
                .collect();
            Status::with_error_details(
                tonic::Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request(violations),
            )
        }
        IngestError::Overloaded { retry_after, .. } => {
            retry_later(tonic::Code::ResourceExhausted, message, retry_after)
        }
        IngestError::InFlight(_) => Status::aborted(message),
        IngestError::Starting => {
            retry_later(tonic::Code::Unavailable, message, Duration::from_secs(1))
        }
        IngestError::Unavailable(_) => Status::unavailable(message),
        IngestError::Internal(_) => Status::internal(message),
    }
}

fn retry_later(code: tonic::Code, message: String, retry_after: Duration) -> Status {
    let mut status = Status::with_error_details(
        code,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    if let Ok(value) = retry_after.as_millis().to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

/// The one place search failures become status codes.
pub fn search_status(error: SearchError) -> Status {
    match error {
        SearchError::Invalid { field, reason } => bad_request(field, &reason),
        SearchError::Index(e) => Status::internal(format!("index error: {e}")),
        SearchError::Corrupt { .. } => Status::data_loss(error.to_string()),
    }
}

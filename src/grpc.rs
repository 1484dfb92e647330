//! The gRPC adapter: unwrap the request, call a service that knows nothing
//! of tonic, map the result. Every error becomes one precise status here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::ingest::{IngestError, IngestService};
use crate::proto::audit_log_server::AuditLog;
use crate::proto::{
    AuditEvent, GetEventRequest, IngestRequest, IngestResponse, SearchRequest, SearchResponse,
};
use crate::search::{SearchError, Searcher};
use crate::status::{Health, PipelineStatus};

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
}

impl AuditLogService {
    pub fn new(
        ingest: Arc<IngestService>,
        searcher: Searcher,
        status: Arc<PipelineStatus>,
    ) -> Self {
        AuditLogService {
            ingest,
            searcher,
            status,
        }
    }

    fn check_reads(&self) -> Result<(), Status> {
        match self.status.health() {
            Health::Starting => Err(Status::unavailable(
                "auditd is starting (replaying its write-ahead log)",
            )),
            // Reads still work when writes cannot be made durable.
            Health::Serving | Health::Failed(_) => Ok(()),
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

type IngestStream = Pin<Box<dyn Stream<Item = Result<IngestResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditLog for AuditLogService {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let reply = self
            .ingest
            .ingest(request.into_inner())
            .await
            .map_err(ingest_status)?;
        Ok(Response::new(reply))
    }

    type IngestStreamStream = IngestStream;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<Self::IngestStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let ingest = self.ingest.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_REPLY_BUFFER);
        tokio::spawn(async move {
            // One reply per request, in order; the first error ends the
            // stream, as gRPC streams end with a status.
            loop {
                let next = match inbound.message().await {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let reply = ingest.ingest(next).await.map_err(ingest_status);
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
        let request = request.into_inner();
        let reply = self.blocking(move |s| s.search(&request)).await?;
        Ok(Response::new(reply))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<AuditEvent>, Status> {
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(bad_request("id", "required"));
        }
        let lookup = id.clone();
        match self.blocking(move |s| s.get(&lookup)).await? {
            Some(event) => Ok(Response::new(event)),
            None => Err(Status::not_found(format!("no event with id {id:?}"))),
        }
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

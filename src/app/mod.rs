//! The application layer: what auditd does for a caller, whatever the
//! transport. Each service takes a [`Caller`], an [`Origin`] and a typed
//! request, and returns a domain result or an [`AppError`].
//!
//! This layer owns the policy every transport shares: the health gate, the
//! move of blocking index work off the async runtime, the read scope, the
//! read trail, and the state of long-lived streams. Transports (`grpc`,
//! `http`) only unwrap, call and convert, with one error mapping each.

mod error;
mod export;
mod integrity;
mod integrity_partitions;
mod outbox;
mod read;
pub use read::Routes;
mod retention;
mod retention_partitions;
pub mod self_audit;
mod subject;
mod subject_partitions;
mod tail;
mod tail_partitions;
mod tokens;
pub mod trail;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use error::{AppError, ErrorKind, FieldViolation};
pub use integrity::IntegrityService;
pub use read::ReadService;
pub use retention::RetentionService;
pub use subject::SubjectService;
pub use tail::resume_token as tail_resume_token;
pub use tokens::TokenService;
pub use write::{StreamSettings, WriteService};

use crate::auth::{Caller, TokenStore};
use crate::ingest::IngestService;
use crate::integrity::checkpointer::Integrity;
use crate::search::Searcher;
use crate::status::PipelineStatus;

/// Where a call came from: the transport's name (the trail's source name)
/// and the peer's address when the transport knows it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub transport: &'static str,
    pub peer: Option<SocketAddr>,
}

impl Origin {
    pub fn grpc(peer: Option<SocketAddr>) -> Self {
        Origin {
            transport: "grpc",
            peer,
        }
    }

    pub fn http(peer: Option<SocketAddr>) -> Self {
        Origin {
            transport: "http",
            peer,
        }
    }
}

/// Every service of the application layer, cheap to clone: what a
/// transport is built on.
#[derive(Clone)]
pub struct App {
    pub writes: Arc<WriteService>,
    pub reads: Arc<ReadService>,
    pub tokens: Arc<TokenService>,
    pub integrity: Arc<IntegrityService>,
    pub retention: Arc<RetentionService>,
    pub subjects: Arc<SubjectService>,
    store: Arc<TokenStore>,
}

impl App {
    pub fn new(
        ingest: Arc<IngestService>,
        searcher: Searcher,
        store: Arc<TokenStore>,
        status: Arc<PipelineStatus>,
        streams: StreamSettings,
        max_subscribers: usize,
        integrity: (Option<Arc<Integrity>>, Duration),
    ) -> Self {
        let trail = trail::Trail::new(ingest.clone());
        let reads = Arc::new(ReadService::new(
            searcher.clone(),
            status,
            trail.clone(),
            streams.clone(),
            max_subscribers,
        ));
        let retention = Arc::new(RetentionService::new(
            ingest.retention().clone(),
            ingest.clone(),
            searcher,
            trail.clone(),
            reads.routes.clone(),
        ));
        let (integrity, checkpoint_interval) = integrity;
        let subjects = Arc::new(SubjectService::new(
            reads.clone(),
            integrity.clone(),
            ingest.clone(),
        ));
        App {
            subjects,
            writes: Arc::new(WriteService::new(ingest, streams)),
            integrity: Arc::new(IntegrityService::new(
                integrity,
                reads.clone(),
                checkpoint_interval,
                retention.retention().clone(),
            )),
            reads,
            tokens: Arc::new(TokenService::new(store.clone(), trail)),
            retention,
            store,
        }
    }

    /// The trail of this node's reads and changes.
    pub fn trail(&self) -> trail::Trail {
        self.reads.trail.clone()
    }

    /// The background self-audit over `integrity`, stopped by `stop`.
    pub fn self_audit(
        &self,
        integrity: Arc<Integrity>,
        status: Arc<PipelineStatus>,
        events_per_second: u64,
        stop: tokio_util::sync::CancellationToken,
    ) -> self_audit::SelfAudit {
        self_audit::SelfAudit {
            integrity,
            retention: self.retention.retention().clone(),
            searcher: self.reads.searcher().clone(),
            trail: self.reads.trail.clone(),
            status,
            events_per_second,
            stop,
        }
    }

    /// The one bearer check, for every transport: the caller behind an
    /// `Authorization` header's value, or `Unauthenticated` (the same
    /// answer for a missing, malformed, unknown or revoked token).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AppError> {
        Ok(self.store.authenticate(authorization)?)
    }
}

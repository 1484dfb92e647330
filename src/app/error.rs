//! The application layer's one error type, and the transport-neutral kind
//! each transport maps to its own status (gRPC codes in `grpc`, HTTP
//! statuses through [`ErrorKind::http_status`]).

use std::time::Duration;

use crate::auth::AuthError;
use crate::ingest::IngestError;
use crate::search::SearchError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Search(#[from] SearchError),
    /// A read merged over a cluster's partitions (`cluster::fanout`).
    #[error(transparent)]
    FanOut(#[from] crate::cluster::fanout::FanOutError),
    /// A partition's owner refused or failed a call the asking node
    /// passed on (an integrity call on a cluster), its kind kept.
    #[error("partition {partition}: {message}")]
    Owner {
        partition: u32,
        kind: ErrorKind,
        message: String,
    },
    /// A request field the service itself checks (the search's own fields
    /// come as `Search(SearchError::Invalid)`).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("no event with id {0:?}")]
    EventNotFound(String),
    /// Reads wait for the write-ahead log's replay.
    #[error("auditd is starting (replaying its write-ahead log)")]
    Starting,
    /// The read's trail event could not be stored, so the read is refused.
    #[error("the read could not be audited: {0}")]
    NotAudited(String),
    #[error("no request for {} ms (limits.stream_idle_timeout_ms); stream closed", .0.as_millis())]
    StreamIdle(Duration),
    #[error("auditd is shutting down; every batch sent on this stream was answered")]
    ShuttingDown,
    /// A Tail or Export stream ended by shutdown: the caller resumes
    /// elsewhere or later with the token.
    #[error("auditd is shutting down; resume with resume_token {resume_token}")]
    ShuttingDownResume { resume_token: String },
    /// A Tail or Export reader that took nothing for too long.
    #[error(
        "the reader took nothing for {} ms (limits.stream_idle_timeout_ms); \
         resume with resume_token {resume_token}",
        waited.as_millis()
    )]
    ReaderStalled {
        waited: Duration,
        resume_token: String,
    },
    #[error("{0} tail subscribers are open, the limit (limits.max_tail_subscribers)")]
    TooManySubscribers(usize),
    /// A batch stored (durable) that did not become searchable in time on
    /// a cluster of several partitions (`wait_for = SEARCHABLE`).
    #[error(
        "stored (durable, ids and seqs as a retry with the same batch_id gets them), but not \
         searchable within {} ms: {reason}",
        waited.as_millis()
    )]
    StoredNotSearchable { waited: Duration, reason: String },
    /// What a cluster node does not do yet (docs/cluster.md): what, and why.
    #[error("{0} is not available on a cluster node yet: {1}")]
    NotInCluster(&'static str, &'static str),
    /// Ingest sent to a cluster node whose role takes none.
    #[error(
        "this node's role is {0}: it takes no Ingest; send events to a node of role all \
         (docs/cluster.md)"
    )]
    NotThisRole(crate::config::Role),
    /// `integrity.enabled` is off: no tree, no checkpoints.
    #[error("integrity is off (integrity.enabled = false): no Merkle tree, no checkpoints")]
    IntegrityOff,
    #[error("no checkpoint of {0} leaves is kept (0 asks for the latest)")]
    CheckpointNotFound(u64),
    #[error("{0}")]
    TileNotFound(String),
    /// Nothing is signed yet: the first checkpoint comes once events do.
    #[error("no checkpoint yet: the first is signed within integrity.checkpoint_interval_ms of the first event")]
    NoCheckpointYet { retry_after: Duration },
    /// The event is newer than the latest signed checkpoint.
    #[error(
        "the event (seq {seq}) is not in a signed checkpoint yet (the latest holds {latest} \
         leaves); one is made within integrity.checkpoint_interval_ms"
    )]
    NotCheckpointed {
        seq: u64,
        latest: u64,
        retry_after: Duration,
    },
    /// The stored event does not make the leaf the tree holds for it.
    #[error("the stored event at seq {seq} does not match its leaf in the Merkle tree: {reason}")]
    LeafMismatch { seq: u64, reason: &'static str },
    /// Stored events no longer give the tree's hashes where the tree
    /// reads them back (a compacted tile): evidence of a change.
    #[error("the Merkle tree: {0}")]
    TreeMismatch(String),
    /// A retention change the compliance floor forbids, or a lock below
    /// the floor already set.
    #[error("{0}")]
    BelowFloor(String),
    #[error("no legal hold with id {0:?}")]
    HoldNotFound(String),
    #[error("{0} legal holds are in force, the most auditd keeps; release one first")]
    TooManyHolds(usize),
    #[error("{0}")]
    Internal(String),
}

/// What went wrong, as every transport distinguishes it. The names are
/// gRPC's, which the read trail records as `error_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    /// The request is valid but the state forbids it (a retention change
    /// below the compliance floor).
    FailedPrecondition,
    /// The same batch id is being stored by another request.
    Aborted,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    DataLoss,
    Internal,
}

impl ErrorKind {
    /// The name the trail records (gRPC's code name).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::Unauthenticated => "Unauthenticated",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::FailedPrecondition => "FailedPrecondition",
            ErrorKind::Aborted => "Aborted",
            ErrorKind::ResourceExhausted => "ResourceExhausted",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::DeadlineExceeded => "DeadlineExceeded",
            ErrorKind::DataLoss => "DataLoss",
            ErrorKind::Internal => "Internal",
        }
    }

    /// The HTTP status of this kind: what the HTTP transport answers and
    /// what the trail records as the read's `status`.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::FailedPrecondition => 409,
            ErrorKind::Aborted => 409,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::DataLoss | ErrorKind::Internal => 500,
        }
    }
}

/// One bad field of a request: `events[3].source.ip` and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
}

impl AppError {
    /// The one place a domain failure gets its kind.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind::*;
        match self {
            AppError::Auth(error) => match error {
                AuthError::Unauthenticated => Unauthenticated,
                AuthError::Forbidden { .. } | AuthError::OutsideBinding { .. } => PermissionDenied,
                AuthError::Invalid { .. } => InvalidArgument,
                AuthError::NotFound(_) => NotFound,
                AuthError::Store { .. } => Unavailable,
            },
            AppError::Ingest(error) => match error {
                IngestError::Invalid(_) => InvalidArgument,
                IngestError::Overloaded { .. } => ResourceExhausted,
                IngestError::InFlight(_) => Aborted,
                IngestError::Starting | IngestError::Unavailable(_) => Unavailable,
                IngestError::Internal(_) => Internal,
            },
            AppError::Search(error) => match error {
                SearchError::Invalid { .. } => InvalidArgument,
                SearchError::Index(_) => Internal,
                SearchError::Corrupt { .. } => DataLoss,
                SearchError::TooLarge(_) => ResourceExhausted,
                SearchError::Behind { .. } => Unavailable,
            },
            AppError::FanOut(error) => {
                use crate::cluster::fanout::FanOutError;
                match error {
                    FanOutError::Invalid { .. } => InvalidArgument,
                    FanOutError::Unavailable { .. } => Unavailable,
                    FanOutError::Failed { .. } => Internal,
                    FanOutError::TooLarge(_) => ResourceExhausted,
                }
            }
            AppError::Owner { kind, .. } => *kind,
            AppError::Invalid { .. } => InvalidArgument,
            AppError::EventNotFound(_) => NotFound,
            AppError::Starting | AppError::NotAudited(_) | AppError::ShuttingDown => Unavailable,
            AppError::StreamIdle(_) | AppError::StoredNotSearchable { .. } => DeadlineExceeded,
            AppError::ShuttingDownResume { .. } => Unavailable,
            AppError::ReaderStalled { .. } => Aborted,
            AppError::TooManySubscribers(_) => ResourceExhausted,
            AppError::IntegrityOff
            | AppError::NotCheckpointed { .. }
            | AppError::NoCheckpointYet { .. } => Unavailable,
            AppError::CheckpointNotFound(_) | AppError::TileNotFound(_) => NotFound,
            AppError::LeafMismatch { .. } | AppError::TreeMismatch(_) => DataLoss,
            AppError::BelowFloor(_) | AppError::NotInCluster(..) | AppError::NotThisRole(_) => {
                FailedPrecondition
            }
            AppError::HoldNotFound(_) => NotFound,
            AppError::TooManyHolds(_) => ResourceExhausted,
            AppError::Internal(_) => Internal,
        }
    }

    /// The bad fields a client can fix, each named as in the request.
    pub fn violations(&self) -> Vec<FieldViolation> {
        let one = |field: &str, reason: &str| {
            vec![FieldViolation {
                field: field.to_owned(),
                reason: reason.to_owned(),
            }]
        };
        match self {
            AppError::Auth(AuthError::Invalid { field, reason })
            | AppError::Auth(AuthError::OutsideBinding { field, reason }) => one(field, reason),
            AppError::Ingest(IngestError::Invalid(invalid)) => invalid
                .violations
                .iter()
                .map(|v| FieldViolation {
                    field: v.path(),
                    reason: v.reason.clone(),
                })
                .collect(),
            AppError::Search(SearchError::Invalid { field, reason })
            | AppError::FanOut(crate::cluster::fanout::FanOutError::Invalid { field, reason })
            | AppError::Invalid { field, reason } => one(field, reason),
            _ => Vec::new(),
        }
    }

    /// When the client should try again, for refusals that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AppError::Ingest(IngestError::Overloaded { retry_after, .. }) => Some(*retry_after),
            AppError::Ingest(IngestError::Starting) => Some(Duration::from_secs(1)),
            AppError::NotCheckpointed { retry_after, .. }
            | AppError::NoCheckpointYet { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

//! auditd: a durable, searchable audit-log daemon.
//!
//! Transports (`grpc`, `http`) call the transport-neutral `app` layer,
//! which holds the policy (health gate, scope, read trail, streams). The
//! write path, one module per stage: `app` → `ingest` (+ `validate`,
//! `idempotency`) → `wal` (group commit) → `indexer` (+ `schema`,
//! `partition`). The read path: `app` → `search`.
//! `messages` holds what passes between stages; `server::run` wires them.
//! `client` is the client side (bearer token, channels, sample events,
//! CPU readings) that `auditctl`, the tests and the benches share; the
//! daemon does not use it. `allocator` is what the binaries' `main`
//! calls first (transparent huge pages off). Stages no caller outside
//! the daemon needs (`conn`, `http`, `idempotency`, `ingest`, `merge`,
//! `metrics`, `priority`, `status`, `tls`) are private. See
//! ARCHITECTURE.md.

pub mod allocator;
pub mod app;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub(crate) mod conn;
pub mod datadir;
pub mod docstore;
pub mod erasure;
pub mod failpoint;
pub mod formats;
pub mod grpc;
pub(crate) mod http;
pub(crate) mod idempotency;
pub mod indexer;
pub(crate) mod ingest;
pub mod integrity;
pub mod json;
pub(crate) mod merge;
pub mod messages;
pub(crate) mod metrics;
pub mod migrate;
pub mod partition;
pub mod preload;
pub(crate) mod priority;
pub mod record;
pub mod recover;
pub mod retention;
pub mod schema;
pub mod search;
pub mod server;
pub(crate) mod status;
pub(crate) mod tls;
pub mod validate;
pub mod wal;

pub use config::Config;
pub use server::{run, run_on, Listeners, LogChoice};

/// The generated gRPC types of `proto/audit/v1/audit.proto`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("audit.v1");
    /// For gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("audit_descriptor");
}

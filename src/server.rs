//! `run`: start every stage, replay the WAL, serve until `shutdown`, then
//! stop in order — stop accepting, let the WAL thread finish what it holds,
//! let the indexer drain its queue and commit, and join both.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, TokenStore};
use crate::config::Config;
use crate::grpc::{AuditLogService, Authenticate, StreamSettings, TokensService};
use crate::idempotency::Idempotency;
use crate::indexer::{read_checkpoint, IndexError, Indexer, IndexerSettings};
use crate::ingest::{IngestService, IngestSettings};
use crate::messages::{IndexBatch, ToIndexer};
use crate::partition::{PartitionError, Partitions};
use crate::proto::audit_log_server::AuditLogServer;
use crate::proto::tokens_server::TokensServer;
use crate::schema::{timestamp_micros, AuditSchema};
use crate::search::Searcher;
use crate::status::{Health, PipelineStatus};
use crate::wal::group_commit::{self, WalPositions};
use crate::wal::{Wal, WalError};
use tonic::service::interceptor::InterceptedService;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another auditd")]
    Locked(PathBuf),
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error(
        "{source}\nthe index is damaged. `auditd recover --data-dir {}` moves the damaged \
         partition aside, re-indexes what the write-ahead log still holds, and reports exactly \
         how many events it could not give back (README: \"Recovering from damage\")",
        data_dir.display()
    )]
    Damaged {
        source: PartitionError,
        data_dir: PathBuf,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error(
        "write-ahead log: {source}\nthe log is damaged before its last record. `auditd recover \
         --data-dir {}` copies the segment aside and writes a skip record over the damaged \
         bytes, so every record after them is replayed (README: \"Recovering from damage\")",
        data_dir.display()
    )]
    WalDamaged { source: WalError, data_dir: PathBuf },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("TLS file {path}: {source}")]
    Tls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a pipeline thread panicked: {0}")]
    Panicked(&'static str),
}

/// How long HTTPS connections may finish their requests at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// The sockets the daemon serves on, bound by the caller (tests bind
/// `127.0.0.1:0` and read the ports back).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(config.grpc_addr).await?,
            http: TcpListener::bind(config.http_addr).await?,
        })
    }

    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.http.local_addr()?))
    }
}

/// Runs the daemon until `shutdown` completes, then stops gracefully.
/// Returns `Err` when start-up fails (bad data directory, damaged WAL) or a
/// pipeline thread failed.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let _lock = lock_data_dir(&data_dir)?;

    let (tokens, first_admin) = TokenStore::open(&data_dir)?;
    let tokens = Arc::new(tokens);
    if let Some(secret) = first_admin {
        let file = data_dir.join(crate::auth::ADMIN_TOKEN_FILE);
        // Shown once; the file keeps it for auditctl.
        println!(
            "first start: admin token {secret}\n(also written to {}, readable by its owner only)",
            file.display()
        );
        tracing::info!(file = %file.display(), "created the first admin token");
    }
    let partitions = Arc::new(
        Partitions::open(
            &data_dir.join("index"),
            AuditSchema::new(),
            config.index.verify_on_start,
        )
        .map_err(|source| ServerError::Damaged {
            source,
            data_dir: data_dir.clone(),
        })?,
    );
    let checkpoint = read_checkpoint(&data_dir)?;
    let status = Arc::new(PipelineStatus::default());
    let positions = Arc::new(WalPositions::default());
    positions
        .checkpoint
        .store(checkpoint.wal_position, Ordering::Release);
    let (searchable_tx, searchable) = tokio::sync::watch::channel(checkpoint.wal_position);
    let mut searchable_rx_for_replay = searchable.clone();

    // Durable batches waiting for the indexer. When full, the WAL thread
    // blocks, its queue fills and Ingest answers RESOURCE_EXHAUSTED.
    let (index_tx, index_rx) =
        crossbeam_channel::bounded::<ToIndexer>(config.index.queue_capacity);
    let indexer = Indexer::new(
        partitions.clone(),
        IndexerSettings {
            commit_interval: Duration::from_millis(config.index.commit_interval_ms.max(1)),
            writer_threads: config.index.writer_threads,
            writer_heap_bytes: config.index.writer_heap_bytes,
            max_open_writers: config.index.max_open_writers,
            max_segment_docs: config.index.max_segment_docs,
            compact_after_idle: match config.index.compact_after_idle_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
        },
        &data_dir,
        checkpoint.wal_position,
        positions.clone(),
        searchable_tx,
    )
    .spawn(index_rx, status.clone())?;

    let memo = Arc::new(Idempotency::new(
        config.ingest.idempotency_window_secs,
        config.ingest.idempotency_capacity,
    ));
    // Batches stored before this start are in the index (or the WAL,
    // whose replay below puts them in the map).
    let index_received = partitions
        .latest_received()
        .map_err(|source| ServerError::Damaged {
            source,
            data_dir: data_dir.clone(),
        })?;
    if let Some(received) = index_received {
        memo.index_holds_until(received);
    }
    let searcher = Searcher::new(
        partitions.clone(),
        config.limits.clone(),
        searchable.clone(),
    );
    // Batches waiting for the WAL thread; its slots are the ingest
    // service's semaphore permits.
    let (wal_tx, wal_rx) = crossbeam_channel::bounded(config.ingest.wal_queue_capacity);
    let ingest = Arc::new(IngestService::new(
        IngestSettings::new(
            config.limits.clone(),
            &config.wal,
            Duration::from_millis(config.ingest.submit_timeout_ms),
        ),
        wal_tx,
        config.ingest.wal_queue_capacity,
        positions.clone(),
        searchable,
        memo.clone(),
        searcher.clone(),
        status.clone(),
    ));

    // Serve from the start, so health can say NOT_SERVING during replay.
    let stop = CancellationToken::new();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<AuditLogServer<AuditLogService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_service_status(
            INGEST_HEALTH_SERVICE,
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
    // Every AuditLog and Tokens call passes the bearer-token check first;
    // health and reflection stay open.
    let authenticate = Authenticate(tokens.clone());
    let audit_service = InterceptedService::new(
        AuditLogServer::new(AuditLogService::new(
            ingest.clone(),
            searcher,
            status.clone(),
            StreamSettings {
                idle_timeout: Duration::from_millis(config.limits.stream_idle_timeout_ms),
                stop: stop.clone(),
            },
        ))
        .max_decoding_message_size(config.limits.max_message_bytes)
        .max_encoding_message_size(config.limits.max_message_bytes),
        authenticate.clone(),
    );
    let tokens_service = InterceptedService::new(
        TokensServer::new(TokensService::new(tokens.clone(), ingest)),
        authenticate,
    );
    let (grpc_addr, http_addr) = listeners.addrs()?;
    let grpc_stop = stop.clone();
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(config.limits.max_streams_per_connection));
    if let Some(tls) = server_tls(&config.tls)? {
        builder = builder.tls_config(tls)?;
    } else if !grpc_addr.ip().is_loopback() {
        tracing::warn!(%grpc_addr, "serving gRPC WITHOUT TLS on a non-loopback address: tokens and audit data cross the network in clear text; set tls.cert and tls.key");
    }
    if !http_addr.ip().is_loopback() {
        tracing::warn!(%http_addr, "the HTTP endpoints (/metrics, /healthz) are plain text on a non-loopback address");
    }
    let grpc = tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(audit_service)
            .add_service(tokens_service)
            .serve_with_incoming_shutdown(
                crate::conn::incoming(
                    listeners.grpc,
                    config.limits.max_connections,
                    Duration::from_millis(config.limits.idle_connection_timeout_ms),
                ),
                grpc_stop.cancelled_owned(),
            ),
    );
    let http_stop = stop.clone();
    let http_router = crate::http::router(
        status.clone(),
        config.metrics_require_token.then(|| tokens.clone()),
    );
    let http = match crate::http::rustls_config(&config.tls)? {
        None => tokio::spawn(async move {
            axum::serve(listeners.http, http_router)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await
        }),
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let on_stop = handle.clone();
            tokio::spawn(async move {
                http_stop.cancelled().await;
                on_stop.graceful_shutdown(Some(HTTP_DRAIN));
            });
            let server = axum_server::tls_rustls::from_tcp_rustls(
                listeners.http.into_std()?,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )?
            .handle(handle);
            tokio::spawn(async move { server.serve(http_router.into_make_service()).await })
        }
    };
    tracing::info!(%grpc_addr, %http_addr, data_dir = %data_dir.display(), "listening; replaying the write-ahead log");

    // Replay: every record from the checkpoint on goes to the indexer
    // again, and its batch id back into the idempotency window.
    let started = Instant::now();
    let wal_dir = crate::wal::dir(&data_dir);
    let (segment_bytes, recovery) = (config.wal.segment_bytes, config.wal.recovery);
    let from = checkpoint.wal_position;
    let replay_tx = index_tx.clone();
    let replay_memo = memo.clone();
    let (wal, report) = tokio::task::spawn_blocking(move || {
        Wal::open(&wal_dir, from, segment_bytes, recovery, |record| {
            let replayed = IndexBatch::decode(record)?;
            let batch = &replayed.batch;
            if !batch.batch_id.is_empty() {
                let received = batch
                    .events
                    .first()
                    .map_or(0, |e| timestamp_micros(e.received.as_ref()));
                let ids = batch.events.iter().map(|e| e.id.clone()).collect();
                replay_memo.complete(&batch.batch_id, ids, received);
            }
            replay_tx
                .send(ToIndexer::Batch(replayed))
                .map_err(|_| WalError::IndexerGone)
        })
    })
    .await
    .map_err(|_| ServerError::Panicked("wal replay"))?
    .map_err(|error| match error {
        WalError::Corrupt { .. } => ServerError::WalDamaged {
            source: error,
            data_dir: data_dir.clone(),
        },
        other => ServerError::Wal(other),
    })?;
    // Serve only once what was replayed is searchable.
    let replayed_to = wal.end();
    index_tx
        .send(ToIndexer::Commit)
        .map_err(|_| WalError::IndexerGone)?;
    searchable_rx_for_replay
        .wait_for(|indexed| *indexed >= replayed_to)
        .await
        .map_err(|_| WalError::IndexerGone)?;
    metrics::histogram!(crate::metrics::REPLAY_SECONDS).record(started.elapsed().as_secs_f64());
    tracing::info!(
        records = report.records,
        bytes = report.bytes,
        seconds = started.elapsed().as_secs_f64(),
        truncated = ?report.truncated,
        "write-ahead log replayed"
    );

    let wal_thread = group_commit::spawn(
        wal,
        config.wal.sync_policy(),
        wal_rx,
        index_tx,
        positions,
        status.clone(),
    )?;
    status.set_ready();
    let follower = tokio::spawn(follow_health(status.clone(), health.clone()));
    tracing::info!("serving");

    shutdown.await;
    tracing::info!("shutting down: no new requests; draining the pipeline");
    follower.abort();
    health
        .set_not_serving::<AuditLogServer<AuditLogService>>()
        .await;
    stop.cancel();
    // The gRPC server owns the ingest service and with it the WAL queue's
    // only sender: once it returns, the WAL thread drains and stops, which
    // drops the indexer's sender, so the indexer commits and stops.
    let grpc_result = grpc
        .await
        .map_err(|_| ServerError::Panicked("grpc server"))?;
    let _ = http.await;
    let wal_result = join(wal_thread, "wal").await?;
    let index_result = join(indexer, "indexer").await?;
    grpc_result?;
    wal_result?;
    index_result?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The gRPC health service name that reports whether writes can be made
/// durable. `""` and `audit.v1.AuditLog` stay SERVING while only writes are
/// degraded, since reads go on.
pub const INGEST_HEALTH_SERVICE: &str = "auditd.ingest";

/// Keeps the gRPC health service in step with the pipeline's health.
async fn follow_health(status: Arc<PipelineStatus>, health: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut changes = status.subscribe();
    loop {
        let (reads, writes) = match status.health() {
            Health::Serving => (Serving, Serving),
            Health::Degraded(_) => (Serving, NotServing),
            Health::Starting | Health::Failed(_) => (NotServing, NotServing),
        };
        health.set_service_status("", reads).await;
        health
            .set_service_status(
                <AuditLogServer<AuditLogService> as tonic::server::NamedService>::NAME,
                reads,
            )
            .await;
        health
            .set_service_status(INGEST_HEALTH_SERVICE, writes)
            .await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn join<T: Send + 'static>(
    handle: std::thread::JoinHandle<T>,
    name: &'static str,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|_| ServerError::Panicked(name))?
        .map_err(|_| ServerError::Panicked(name))
}

/// An exclusive lock on `<data_dir>/LOCK`, held while the daemon runs: two
/// daemons on one WAL would corrupt it.
pub(crate) fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServerError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Locked(data_dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(ServerError::DataDir { path, source }),
    }
}

/// The gRPC server's TLS settings, when `tls` turns TLS on.
fn server_tls(
    tls: &crate::config::TlsConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| ServerError::Tls {
            path: path.clone(),
            source,
        })
    };
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

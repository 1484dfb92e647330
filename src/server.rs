//! `run`: start the pipeline, serve the transports, replay the WAL, serve
//! until `shutdown`, then stop in order — transports first (every health
//! name NOT_SERVING, no new calls, tracked tasks finished), then the
//! pipeline (the WAL thread finishes what it holds, the indexer drains and
//! commits, and the log drops what that commit covers).

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;

use crate::app::{App, StreamSettings};
use crate::auth::{AuthError, StoredToken, TokenStore};
use crate::cluster::fanout::LocalPartition;
use crate::cluster::lease::LeaseSettings;
use crate::cluster::owner::{Owner, OwnerSettings};
use crate::cluster::remote::{Held, PartitionsService, MAX_PARTITION_MESSAGE_BYTES};
use crate::cluster::tokens::{Loaded, TokenBucket};
use crate::cluster::ClusterError;
use crate::config::{Config, LogKind};
use crate::datadir::{DataDir, Format, FormatError};
use crate::grpc::{
    AuditLogService, Authenticate, IntegrityGrpc, RetentionGrpc, SubjectsGrpc, TokensService,
};
use crate::idempotency::{Idempotency, Stored};
use crate::indexer::{read_checkpoint, IndexError, Indexer, IndexerSettings};
use crate::ingest::{IngestService, IngestSettings};
use crate::integrity::checkpointer::{self, CheckpointError, Checkpoints, Integrity};
use crate::integrity::leaf::lost_leaf_hash;
use crate::integrity::seeds::SaltSeeds;
use crate::integrity::store::{StoreError, TreeStore};
use crate::messages::{AppendRequest, CommitPayload, IndexBatch, RetentionChange, ToIndexer};
use crate::partition::{PartitionError, Partitions};
use crate::proto::audit_log_server::AuditLogServer;
use crate::proto::integrity_server::IntegrityServer;
use crate::proto::partitions_server::PartitionsServer;
use crate::proto::retention_server::RetentionServer;
use crate::proto::subjects_server::SubjectsServer;
use crate::proto::tokens_server::TokensServer;
use crate::record::LogRecord;
use crate::retention::{Retention, RetentionError};
use crate::schema::{timestamp_micros, AuditSchema};
use crate::search::recent::RecentEvents;
use crate::search::{DenseTerms, Searcher};
use crate::status::{Health, PipelineStatus};
use crate::tls::{TlsError, TlsMaterial};
use crate::wal::group_commit::{self, WalPositions};
use crate::wal::jetstream::{JetStreamConfig, JetStreamLog, JetStreamReader};
use crate::wal::log::FileReader;
use crate::wal::memory::{MemoryLog, MemoryStore};
use crate::wal::{Log, LogPosition, LogReader, Record, ReplayReport, Wal, WalError};

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
    #[error("retention: {0}")]
    Retention(#[from] RetentionError),
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
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("a pipeline thread panicked: {0}")]
    Panicked(&'static str),
    #[error("the Merkle tree: {0}")]
    Tree(#[from] StoreError),
    #[error("signed checkpoints: {0}")]
    Checkpoints(#[from] CheckpointError),
    #[error(
        "the Merkle tree holds {tree} leaves, but the write-ahead log no longer holds the \
         events after them (the log's events end at seq {log}); events stored while \
         `integrity.enabled` was off have no leaves"
    )]
    TreeBehind { tree: u64, log: u64 },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Which log the pipeline runs on: the local segment files under the data
/// directory, a NATS JetStream stream (`log.kind`; what `run` picks), or
/// a store in memory (tests: the whole pipeline on the in-memory log,
/// restarts included).
#[derive(Clone, Default)]
pub enum LogChoice {
    #[default]
    Local,
    JetStream(JetStreamConfig),
    /// A node of a cluster (`[cluster] enabled`): the partitioned stream,
    /// read through the subject of one partition (0 in a one-partition
    /// cluster; a partition pipeline's own otherwise, `cluster::owned`).
    Cluster(crate::cluster::Layout, u32),
    /// A node of a cluster of several partitions (`cluster.partitions >
    /// 1`): writes are published into the partitions (`cluster::front`),
    /// nothing is indexed in the node's own data directory, and its
    /// partitions run pipelines of their own (`cluster::owner`).
    Front(crate::cluster::Layout),
    Memory(Arc<MemoryStore>),
}

impl LogChoice {
    /// The log `config.log.kind` names.
    pub fn configured(config: &Config) -> LogChoice {
        if let Some(layout) = config.cluster_layout() {
            return match layout.partitions {
                1 => LogChoice::Cluster(layout, 0),
                _ => LogChoice::Front(layout),
            };
        }
        match config.log.kind {
            LogKind::Local => LogChoice::Local,
            LogKind::Jetstream => LogChoice::JetStream(config.log.jetstream.clone()),
        }
    }

    /// The JetStream log's settings for reading partition `p`: its
    /// subject.
    fn partition_log(layout: &crate::cluster::Layout, p: u32) -> JetStreamConfig {
        JetStreamConfig {
            subject: layout.subject(p),
            ..layout.jetstream.clone()
        }
    }

    fn reader(&self, config: &Config) -> Box<dyn LogReader> {
        match self {
            LogChoice::Local => Box::new(FileReader {
                dir: DataDir::new(&config.data_dir).wal(),
            }),
            LogChoice::JetStream(jetstream) => Box::new(JetStreamReader::lazy(jetstream)),
            LogChoice::Cluster(layout, p) => {
                Box::new(JetStreamReader::lazy(&Self::partition_log(layout, *p)))
            }
            LogChoice::Memory(store) => Box::new(store.clone()),
            LogChoice::Front(_) => Box::new(Arc::new(MemoryStore::default())),
        }
    }

    /// The cluster's layout, for a node of one.
    pub fn layout(&self) -> Option<&crate::cluster::Layout> {
        match self {
            LogChoice::Cluster(layout, _) | LogChoice::Front(layout) => Some(layout),
            _ => None,
        }
    }

    /// The log's name in the data directory's `LOG` file.
    fn identity(&self) -> String {
        match self {
            LogChoice::Local => "local".into(),
            LogChoice::JetStream(jetstream) => format!("jetstream:{}", jetstream.stream),
            // Partition 0 alone: what one-partition nodes have written.
            LogChoice::Cluster(layout, 0) => format!("cluster:{}", layout.jetstream.stream),
            LogChoice::Cluster(layout, p) => format!("cluster:{}/{p}", layout.jetstream.stream),
            LogChoice::Memory(_) => "memory".into(),
            LogChoice::Front(layout) => format!("cluster-front:{}", layout.jetstream.stream),
        }
    }

    /// How far the log may run ahead of the index, in its positions.
    fn lag_budget(&self, config: &Config) -> u64 {
        match self {
            LogChoice::JetStream(jetstream) => jetstream.lag_budget_records,
            LogChoice::Cluster(layout, _) | LogChoice::Front(layout) => {
                layout.jetstream.lag_budget_records
            }
            LogChoice::Local | LogChoice::Memory(_) => config.wal.lag_budget_bytes,
        }
    }

    /// Opens the log and hands every record at or after `from` to `visit`.
    fn open(
        &self,
        config: &Config,
        from: LogPosition,
        visit: impl FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(Box<dyn Log>, ReplayReport), WalError> {
        match self {
            LogChoice::Local => {
                let dir = DataDir::new(&config.data_dir).wal();
                let (segment_bytes, recovery) = (config.wal.segment_bytes, config.wal.recovery);
                let (wal, report) = Wal::open(&dir, from, segment_bytes, recovery, visit)?;
                Ok((Box::new(wal), report))
            }
            LogChoice::JetStream(jetstream) => {
                let (log, report) = JetStreamLog::open(jetstream, from, visit)?;
                Ok((Box::new(log), report))
            }
            LogChoice::Cluster(layout, p) => {
                // The stream with its partitions first: the log below
                // would otherwise make one with its single subject.
                let runtime = tokio::runtime::Handle::current();
                runtime
                    .block_on(layout.open())
                    .map_err(crate::cluster::node::remote)?;
                let (log, report) =
                    JetStreamLog::open(&Self::partition_log(layout, *p), from, visit)?;
                Ok((Box::new(log), report))
            }
            LogChoice::Front(layout) => {
                // The stream with its partitions; nothing to replay here.
                tokio::runtime::Handle::current()
                    .block_on(layout.open())
                    .map_err(crate::cluster::node::remote)?;
                let log = MemoryLog::open(Arc::new(MemoryStore::default()), from, |_| Ok(()))?;
                Ok((Box::new(log), ReplayReport::default()))
            }
            LogChoice::Memory(store) => {
                let mut report = ReplayReport::default();
                let mut visit = visit;
                let log = MemoryLog::open(store.clone(), from, |record| {
                    report.records += 1;
                    report.bytes += record.end.get() - record.start.get();
                    visit(record)
                })?;
                Ok((Box::new(log), report))
            }
        }
    }
}

/// Shows a first admin token once (its file keeps it for auditctl).
fn announce_first_admin(data_dir: &std::path::Path, secret: Option<String>) {
    if let Some(secret) = secret {
        let file = DataDir::new(data_dir).admin_token();
        println!(
            "first start: admin token {secret}\n(also written to {}, readable by its owner only)",
            file.display()
        );
        tracing::info!(file = %file.display(), "created the first admin token");
    }
}

/// [`open_shared`], tried again every second for `cluster.start_wait_ms`
/// while NATS cannot be reached: nodes and NATS are often started
/// together, and a new JetStream cluster elects its leader a moment after
/// it forms. A refused setting is not tried again.
async fn open_shared_waiting(
    layout: &crate::cluster::Layout,
    config: &Config,
) -> Result<Shared, ServerError> {
    let give_up = Instant::now() + Duration::from_millis(config.cluster.start_wait_ms);
    loop {
        match open_shared(layout, config).await {
            Err(ServerError::Cluster(ClusterError::Remote { stream, reason }))
                if Instant::now() < give_up =>
            {
                tracing::warn!(%stream, %reason, "NATS cannot be reached yet; again in a second (cluster.start_wait_ms)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            done => return done,
        }
    }
}

/// Connects to the cluster's NATS, checks this node's settings against
/// the cluster's and reads the tokens bucket.
async fn open_shared(
    layout: &crate::cluster::Layout,
    config: &Config,
) -> Result<Shared, ServerError> {
    let stream = &layout.jetstream.stream;
    let (client, context) = crate::wal::jetstream::connect(&layout.jetstream)
        .await
        .map_err(|reason| ClusterError::Remote {
            stream: stream.clone(),
            reason,
        })?;
    let replicas = layout.jetstream.replicas;
    crate::cluster::settings::agree_on_retention(
        &context,
        &crate::cluster::settings::bucket_name(stream),
        replicas,
        &config.retention,
        config.cluster.adopt_settings,
    )
    .await?;
    let node_secret = crate::cluster::settings::node_secret(
        &context,
        &crate::cluster::settings::bucket_name(stream),
        replicas,
    )
    .await?;
    let signer = match config.integrity.enabled {
        true => Some(
            crate::cluster::settings::integrity_key(
                &context,
                &crate::cluster::settings::bucket_name(stream),
                replicas,
                &config.integrity.origin,
            )
            .await?,
        ),
        false => None,
    };
    let stale_after = Duration::from_millis(config.cluster.token_staleness_ms);
    let bucket = crate::cluster::tokens::bucket_name(stream);
    let tokens = TokenBucket::open(client, &context, &bucket, replicas, stale_after).await?;
    Ok(Shared {
        tokens,
        node_secret,
        signer,
    })
}

/// Starts the partition owner of a node of several partitions (one that
/// owns none, of role `ingest` or `query`, only routes), and routes its
/// reads through it.
async fn start_owner(
    config: &Config,
    layout: &crate::cluster::Layout,
    secret: &str,
    pipeline: &Pipeline,
    listeners: &Listeners,
) -> Result<Owner, ServerError> {
    let (grpc, _) = listeners.addrs()?;
    // The stream first, made once: the partitions' pipelines all open it
    // at once, and on a three-server NATS a first create racing others
    // timed out.
    layout.open().await?;
    let settings = OwnerSettings {
        config: config.clone(),
        layout: layout.clone(),
        leases: LeaseSettings {
            bucket: format!("{}-leases", layout.jetstream.stream),
            node: config.cluster.node.clone(),
            partitions: layout.partitions,
            lease: Duration::from_millis(config.cluster.lease_ms),
            replicas: layout.jetstream.replicas,
            address: config.advertised(grpc),
        },
        node_secret: secret.to_owned(),
        tokens: pipeline.tokens.clone(),
        trail: Some(pipeline.app().trail()),
        owns: config.cluster.role.owns_partitions(),
    };
    let owner = Owner::start(settings).await?;
    pipeline.app().reads.route_through(owner.routes());
    pipeline.app().writes.route_through(owner.routes());
    Ok(owner)
}

/// What a cluster node reads from the cluster's buckets before it serves.
struct Shared {
    tokens: Loaded,
    /// What nodes show one another (`cluster::remote`).
    node_secret: String,
    /// The cluster's checkpoint key (`integrity.enabled`).
    signer: Option<crate::integrity::note::NoteSigner>,
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
/// pipeline thread failed; whatever had started is stopped first.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let log = LogChoice::configured(&config);
    run_on(config, listeners, shutdown, log).await
}

/// [`run`], on the log `log`.
pub async fn run_on(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    log: LogChoice,
) -> Result<(), ServerError> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let streams = StreamSettings {
        idle_timeout: Duration::from_millis(config.limits.stream_idle_timeout_ms),
        stop: stop.clone(),
        tasks: tasks.clone(),
    };
    let tls = TlsMaterial::load(&config.tls)?;
    // A cluster node checks its settings against the cluster's and reads
    // the shared tokens bucket in full before it serves.
    let mut log = log;
    let shared = match &mut log {
        LogChoice::Cluster(layout, _) | LogChoice::Front(layout) => {
            let shared = open_shared_waiting(layout, &config).await?;
            // Every tree of the cluster, this node's and its partitions',
            // is signed with the cluster's key.
            layout.signer = shared.signer.clone();
            Some(shared)
        }
        _ => None,
    };
    let node_secret = shared.as_ref().map(|s| s.node_secret.clone());
    let shared_tokens = shared.map(|s| s.tokens);
    let tokens = match &shared_tokens {
        Some(loaded) => Tokens::Shared(loaded.bucket.clone(), loaded.tokens.clone()),
        None => Tokens::Own,
    };
    let mut pipeline = Pipeline::start(&config, streams, log, tokens)?;
    if let Some(loaded) = shared_tokens {
        match pipeline.tokens.ensure_first_admin(&config.data_dir).await {
            Ok(first_admin) => announce_first_admin(&config.data_dir, first_admin),
            Err(error) => {
                pipeline.stop().await?;
                return Err(error.into());
            }
        }
        // Other nodes' changes, from what was read on: among the
        // transports' tasks, so their stop ends it.
        tasks.spawn(loaded.bucket.follow(
            Arc::downgrade(&pipeline.tokens),
            loaded.revision,
            stop.clone(),
        ));
    }
    // A node of several partitions: its share of them, and the routes
    // its reads fan out through.
    let owner = match (&pipeline.log, &node_secret) {
        (LogChoice::Front(layout), Some(secret)) => {
            match start_owner(&config, layout, secret, &pipeline, &listeners).await {
                Ok(owner) => Some(owner),
                Err(error) => {
                    pipeline.stop().await?;
                    return Err(error);
                }
            }
        }
        _ => None,
    };
    let partitions_service = node_secret.map(|secret| {
        let held: Held = match &owner {
            Some(owner) => owner.held_here(),
            // One partition: this node's own index is partition 0.
            None => {
                let here = LocalPartition {
                    partition: 0,
                    searcher: pipeline.app().reads.searcher().clone(),
                    retention: None,
                    integrity: None,
                };
                Arc::new(move |p| (p == 0).then(|| here.clone()))
            }
        };
        (secret, held)
    });
    // The background self-audit runs among the transports' tasks: their
    // stop ends it, and their stop waits for it.
    let (background, background_stop) = (tasks.clone(), stop.clone());
    let background_stop_retention = stop.clone();
    let stop_on_error = stop.clone();
    let transports = match Transports::serve(
        &config,
        listeners,
        &pipeline,
        (tls, partitions_service),
        stop,
        tasks,
    )
    .await
    {
        Ok(transports) => transports,
        Err(error) => {
            stop_on_error.cancel();
            if let Some(owner) = owner {
                owner.stop().await;
            }
            pipeline.stop().await?;
            return Err(error);
        }
    };
    if let Err(error) = pipeline.replay(&config).await {
        tracing::error!(%error, "start-up failed; stopping");
        // The error that stopped start-up is the one to report.
        if let Err(also) = transports.stop().await {
            tracing::error!(error = %also, "while stopping the servers after a failed start-up");
        }
        if let Some(owner) = owner {
            owner.stop().await;
        }
        if let Err(also) = pipeline.stop().await {
            tracing::error!(error = %also, "while stopping after a failed start-up");
        }
        return Err(error);
    }
    pipeline.status.set_ready();
    tracing::info!("serving");
    let rate = config.integrity.self_audit_events_per_second;
    if let (Some(integrity), true) = (pipeline.integrity.clone(), rate > 0) {
        let audit =
            pipeline
                .app()
                .self_audit(integrity, pipeline.status.clone(), rate, background_stop);
        background.spawn(audit.run());
    }
    // With several partitions each owner sweeps its own (`cluster::owned`).
    let partitioned = config.cluster.enabled && config.cluster.partitions > 1;
    if !partitioned
        && pipeline
            .app()
            .retention
            .retention()
            .policy()
            .shortest()
            .is_some()
    {
        let retention = pipeline.app().retention.clone();
        let every = Duration::from_millis(config.retention.sweep_interval_ms);
        let stop = background_stop_retention;
        background.spawn(async move { retention.run_sweeper(every, stop).await });
    }

    shutdown.await;
    tracing::info!("shutting down: no new requests; draining the pipeline");
    let served = transports.stop().await;
    if let Some(owner) = owner {
        owner.stop().await;
    }
    pipeline.stop().await?;
    served?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Where a pipeline's tokens come from.
pub(crate) enum Tokens {
    /// The data directory's `tokens.json` (one node).
    Own,
    /// The cluster's bucket, as read at start.
    Shared(Arc<TokenBucket>, Vec<StoredToken>),
    /// Another pipeline's store (a partition pipeline, `cluster::owned`,
    /// shares its node's).
    Given(Arc<TokenStore>),
}

/// The stages behind the transports: the data directory's lock, the token
/// store, the indexer thread, the WAL thread once replay has run, and the
/// application layer over them.
pub(crate) struct Pipeline {
    _lock: File,
    pub(crate) status: Arc<PipelineStatus>,
    /// Dropped at stop: with it goes the WAL queue's last sender.
    app: Option<App>,
    positions: Arc<WalPositions>,
    memo: Arc<Idempotency>,
    checkpoint: LogPosition,
    /// The seq after the last event the index held at start-up.
    indexed_seq: u64,
    log: LogChoice,
    /// The indexer queue's sender, handed to the WAL thread after replay.
    index_tx: Option<Sender<ToIndexer>>,
    /// The WAL queue's receiver, handed to the WAL thread after replay.
    wal_rx: Option<Receiver<AppendRequest>>,
    indexer: JoinHandle<Result<(), IndexError>>,
    wal_thread: Option<JoinHandle<Result<Box<dyn Log>, WalError>>>,
    /// The tree, its key and checkpoints (`integrity.enabled`).
    integrity: Option<Arc<Integrity>>,
    /// `auditd-tlog`, once replay has run: dropping the sender stops it.
    checkpointer: Option<Checkpointer>,
    tokens: Arc<TokenStore>,
    /// Which terms' bit sets it keeps is saved at stop, for the next start.
    dense: Arc<DenseTerms>,
}

impl Pipeline {
    /// Locks the data directory and starts every stage but the WAL thread,
    /// which starts once replay has run. The indexer is the last thing
    /// started, so nothing fails after it.
    pub(crate) fn start(
        config: &Config,
        streams: StreamSettings,
        log: LogChoice,
        tokens: Tokens,
    ) -> Result<Pipeline, ServerError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let lock = lock_data_dir(&data_dir)?;
        let layout = DataDir::new(&data_dir);
        if matches!(layout.format()?, Format::Fresh | Format::InPlace(_)) {
            layout
                .write_format()
                .map_err(|source| ServerError::DataDir {
                    path: layout.format_file(),
                    source,
                })?;
        }
        layout.bind_log(&log.identity())?;

        // Before anything else reads the data: a configuration below the
        // compliance floor never starts.
        let retention = Arc::new(Retention::open(
            &data_dir,
            &config.retention,
            &config.erasure,
        )?);
        let tokens = match tokens {
            Tokens::Shared(bucket, loaded) => {
                if layout.tokens().exists() {
                    tracing::warn!(file = %layout.tokens().display(), "a cluster node takes its tokens from the cluster's bucket; this file is not read");
                }
                Arc::new(TokenStore::shared(bucket, loaded))
            }
            Tokens::Own => {
                let (tokens, first_admin) = TokenStore::open(&data_dir)?;
                announce_first_admin(&data_dir, first_admin);
                Arc::new(tokens)
            }
            Tokens::Given(tokens) => tokens,
        };
        let damaged = |source| ServerError::Damaged {
            source,
            data_dir: data_dir.clone(),
        };
        let partitions = Arc::new(
            Partitions::open(
                &layout.index(),
                AuditSchema::new(),
                config.index.verify_on_start,
            )
            .map_err(damaged)?,
        );
        let checkpoint = read_checkpoint(&data_dir)?;
        let memo = Arc::new(Idempotency::new(
            config.ingest.idempotency_window_secs,
            config.ingest.idempotency_capacity,
        ));
        // Batches stored before this start are in the index (or the WAL,
        // whose replay puts them in the map).
        if let Some(received) = partitions.latest_received().map_err(damaged)? {
            memo.index_holds_until(received);
        }
        let status = Arc::new(PipelineStatus::default());
        let positions = Arc::new(WalPositions::default());
        positions.set_checkpoint(checkpoint.wal_position);
        let integrity = if config.integrity.enabled {
            let integrity = open_integrity(config, &log)?;
            positions.tree_durable.store(
                integrity.tree.durable().log.get(),
                std::sync::atomic::Ordering::Release,
            );
            Some(Arc::new(integrity))
        } else {
            None
        };
        // The seq after the last indexed event: the checkpoint's, or a
        // partition's when one committed after it (a crash between the two).
        let indexed_seq = partitions
            .overlapping(None, None)
            .iter()
            .filter_map(|p| p.committed().ok())
            .map(|c| c.seq)
            .fold(checkpoint.next_seq, u64::max);
        let (searchable_tx, searchable) = tokio::sync::watch::channel(indexed_seq);
        let recent = Arc::new(RecentEvents::new(config.index.recent_events_bytes));
        let mut searcher = Searcher::new(
            partitions.clone(),
            config.limits.clone(),
            searchable.clone(),
            recent.clone(),
        );
        // The seeds of seeded batches' salts: the tree's; with integrity
        // off, those a former run kept, which erasure still needs.
        let seeds = match &integrity {
            Some(integrity) => integrity.tree.seeds().clone(),
            None => Arc::new(SaltSeeds::open(
                &data_dir.join(crate::integrity::store::TLOG_DIR),
                u64::MAX,
            )?),
        };
        searcher = searcher
            .with_seeds(seeds.clone())
            .with_dense_terms(config.index.dense_terms_bytes, Some(&layout.dense_terms()));
        let dense = searcher.dense_terms().clone();
        let remembered = dense.clone();
        let warming = partitions.warm_in_background(config.index.warm_on_start_events, move |s| {
            remembered.make_remembered(s)
        });
        if let Err(error) = warming {
            tracing::warn!(%error, "no thread to warm the partitions: the first searches will");
        }
        if config.index.preload_bytes > 0 {
            if let Err(error) = partitions.preload_in_background(config.index.preload_bytes) {
                tracing::warn!(%error, "no thread to read the index ahead");
            }
        }
        if let Some(integrity) = &integrity {
            let leaves = crate::integrity::audit::IndexLeaves(searcher.clone());
            integrity.tree.set_leaf_source(Arc::new(leaves));
        }
        // Batches waiting for the WAL thread; its slots are the ingest
        // service's semaphore permits.
        let (wal_tx, wal_rx) = crossbeam_channel::bounded(config.ingest.wal_queue_capacity);
        let mut ingest_settings = IngestSettings::new(
            config.limits.clone(),
            log.lag_budget(config),
            Duration::from_millis(config.ingest.submit_timeout_ms),
        );
        ingest_settings.in_cluster = matches!(log, LogChoice::Cluster(..) | LogChoice::Front(_));
        ingest_settings.role = config.cluster.role;
        ingest_settings.partitioned = matches!(log, LogChoice::Front(_));
        ingest_settings.leaves = integrity.is_some();
        let ingest = Arc::new(IngestService::new(
            ingest_settings,
            wal_tx,
            config.ingest.wal_queue_capacity,
            positions.clone(),
            searchable.clone(),
            memo.clone(),
            searcher.clone(),
            status.clone(),
            retention.clone(),
        ));
        let app = App::new(
            ingest,
            searcher,
            tokens.clone(),
            status.clone(),
            streams,
            config.limits.max_tail_subscribers,
            (
                integrity.clone(),
                Duration::from_millis(config.integrity.checkpoint_interval_ms),
            ),
        );

        // Durable batches waiting for the indexer. When full, the WAL
        // thread blocks, its queue fills and Ingest answers
        // RESOURCE_EXHAUSTED.
        let (index_tx, index_rx) =
            crossbeam_channel::bounded::<ToIndexer>(config.index.queue_capacity);
        let indexer = Indexer::new(
            partitions,
            IndexerSettings {
                commit_interval: Duration::from_millis(config.index.commit_interval_ms.max(1)),
                trail_commit_interval: Duration::from_millis(config.index.trail_commit_interval_ms),
                writer_threads: config.index.writer_threads,
                writer_heap_bytes: config.index.writer_heap_bytes,
                max_open_writers: config.index.max_open_writers,
                max_segment_docs: config.index.max_segment_docs,
                compact_segment_docs: config.index.compact_segment_docs,
                compact_after_idle: match config.index.compact_after_idle_ms {
                    0 => None,
                    ms => Some(Duration::from_millis(ms)),
                },
            },
            &data_dir,
            log.reader(config),
            CommitPayload {
                log: checkpoint.wal_position,
                seq: indexed_seq,
            },
            positions.clone(),
            searchable_tx,
            retention,
            recent,
        )
        .with_integrity(integrity.as_ref().map(|i| i.tree.clone()), Some(seeds))
        .spawn(index_rx, status.clone())?;
        Ok(Pipeline {
            _lock: lock,
            status,
            app: Some(app),
            positions,
            memo,
            checkpoint: checkpoint.wal_position,
            indexed_seq,
            log,
            index_tx: Some(index_tx),
            wal_rx: Some(wal_rx),
            indexer,
            wal_thread: None,
            integrity,
            checkpointer: None,
            tokens,
            dense,
        })
    }

    pub(crate) fn app(&self) -> App {
        self.app.clone().expect("the app lives until stop")
    }

    /// Waits, at most `within`, until a signed checkpoint covers the tree
    /// as it stands now (a partition's new owner, after its rebuild, so
    /// that it gives proofs as soon as it answers); whether one does.
    pub(crate) async fn signed_so_far(&self, within: Duration) -> bool {
        let Some(integrity) = &self.integrity else {
            return true;
        };
        let size = integrity.tree.size();
        let deadline = Instant::now() + within;
        loop {
            let signed = integrity.checkpoints.latest().map_or(0, |c| c.size);
            if signed >= size {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replays the WAL from the checkpoint (every record goes to the
    /// indexer again, and its batch id back into the idempotency window),
    /// waits until the replayed events are searchable, then starts the WAL
    /// thread.
    pub(crate) async fn replay(&mut self, config: &Config) -> Result<(), ServerError> {
        let started = Instant::now();
        let data_dir = config.data_dir.clone();
        let checkpoint = self.checkpoint;
        let tree = self.integrity.as_ref().map(|i| i.tree.clone());
        // The tree may be behind the index: replay starts where the
        // durable tree ends, and gives the indexer only what it lacks.
        let from = tree
            .as_ref()
            .map_or(checkpoint, |t| checkpoint.min(t.durable().log));
        let (log, opening) = (self.log.clone(), config.clone());
        let index_tx = self.index_tx.clone().expect("replay runs once");
        let replay_tx = index_tx.clone();
        let memo = self.memo.clone();
        let mut next_seq = self.indexed_seq;
        let replay_tree = tree.clone();
        let (wal, report, next_seq) = tokio::task::spawn_blocking(move || {
            // After bytes `auditd recover` skipped, the seqs they held are
            // lost: their leaves are the lost leaf.
            let mut after_skip = false;
            let (wal, report) = log.open(&opening, from, |record| {
                let (path, offset) = (record.path.to_owned(), record.offset);
                let replayed = match crate::record::decode(record)? {
                    LogRecord::Batch(replayed) => replayed,
                    LogRecord::Skip(_) => {
                        after_skip = true;
                        return Ok(());
                    }
                    LogRecord::Retention(span, _) if span.start < checkpoint => return Ok(()),
                    LogRecord::Retention(span, record) => {
                        let change = RetentionChange { record, done: None };
                        return replay_tx
                            .send(ToIndexer::Retention(span, change))
                            .map_err(|_| WalError::IndexerGone);
                    }
                };
                next_seq = next_seq.max(replayed.next_seq());
                if let Some(tree) = &replay_tree {
                    grow_tree(tree, &replayed, std::mem::take(&mut after_skip)).map_err(
                        |reason| WalError::BadRecord {
                            path,
                            offset,
                            reason,
                        },
                    )?;
                }
                if replayed.span.start < checkpoint {
                    return Ok(());
                }
                let batch = &replayed.batch;
                if !batch.batch_id.is_empty() {
                    let received = batch
                        .events
                        .first()
                        .map_or(0, |e| timestamp_micros(e.received.as_ref()));
                    let ids = batch.events.iter().map(|e| e.id.clone()).collect();
                    let stored = Stored {
                        ids,
                        first_seq: replayed.first_seq,
                    };
                    memo.complete(&batch.batch_id, stored, received);
                }
                replay_tx
                    .send(ToIndexer::Batch(replayed))
                    .map_err(|_| WalError::IndexerGone)
            })?;
            Ok((wal, report, next_seq))
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
        if let Some(tree) = &tree {
            if tree.size() < next_seq {
                return Err(ServerError::TreeBehind {
                    tree: tree.size(),
                    log: next_seq,
                });
            }
        }
        // A tree ahead of the log and the index (events lost to damage
        // after their leaves were made): their seqs are not given again.
        let next_seq = tree.as_ref().map_or(next_seq, |t| next_seq.max(t.size()));
        // Serve only once what was replayed is searchable.
        let (committed, replayed_committed) = tokio::sync::oneshot::channel();
        index_tx
            .send(ToIndexer::Commit(committed))
            .map_err(|_| WalError::IndexerGone)?;
        replayed_committed
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
        if let Some(max) = wal.max_record_bytes() {
            self.positions
                .max_record_bytes
                .store(max, Ordering::Release);
        }
        let requests = self.wal_rx.take().expect("replay runs once");
        let indexer = self.index_tx.take().expect("replay runs once");
        self.wal_thread = Some(match &self.log {
            LogChoice::Cluster(layout, partition) => crate::cluster::node::spawn(
                layout.clone(),
                *partition,
                crate::cluster::follow::Resume {
                    after: wal.end(),
                    next_seq,
                },
                wal,
                tree,
                self.memo.clone(),
                requests,
                indexer,
                self.positions.clone(),
                self.status.clone(),
            )?,
            LogChoice::Front(layout) => {
                crate::cluster::front::spawn(layout.clone(), wal, requests, self.status.clone())?
            }
            _ => group_commit::spawn(
                wal,
                config.wal.sync_policy(),
                tree,
                next_seq,
                requests,
                indexer,
                self.positions.clone(),
                self.status.clone(),
            )?,
        });
        if let Some(integrity) = &self.integrity {
            let (stop, stopped) = crossbeam_channel::bounded(0);
            let thread = checkpointer::spawn(
                integrity.clone(),
                Duration::from_millis(config.integrity.checkpoint_interval_ms),
                self.positions.clone(),
                self.status.clone(),
                stopped,
            )?;
            self.checkpointer = Some((stop, thread));
        }
        Ok(())
    }

    /// Stops every stage, in order, once the transports have stopped (they
    /// hold the application layer, and with it the WAL queue's senders):
    /// the WAL thread finishes what it holds and exits, which drops the
    /// indexer's sender; the indexer drains its queue, commits and exits;
    /// then the log drops every record that last commit covers, so a clean
    /// stop leaves no indexed records behind.
    pub(crate) async fn stop(mut self) -> Result<(), ServerError> {
        drop(self.app.take());
        // No search runs now. Not fatal: the next start makes fewer sets.
        if let Err(error) = self.dense.save() {
            tracing::warn!(%error, "could not save which dense terms were in use");
        }
        drop(self.wal_rx.take());
        drop(self.index_tx.take());
        let wal = match self.wal_thread.take() {
            Some(thread) => Some(join(thread, "wal").await?),
            None => None,
        };
        // Every acknowledged leaf is in the tree now: make it durable and
        // sign the last checkpoint before the log that backs it goes.
        let checkpointed = match self.checkpointer.take() {
            Some((stop, thread)) => {
                drop(stop);
                Some(join(thread, "tlog").await)
            }
            None => None,
        };
        let indexed = join(self.indexer, "indexer").await;
        let wal = wal.transpose()?;
        indexed??;
        if let Some(checkpointed) = checkpointed {
            checkpointed??;
        }
        // A cluster's stream is every node's: nothing is trimmed from it.
        let trims = !matches!(self.log, LogChoice::Cluster(..) | LogChoice::Front(_));
        if let Some(mut wal) = wal.filter(|_| trims) {
            let checkpoint = self.positions.trimmable();
            // On a blocking thread: the log may be remote. Not fatal:
            // replay skips what the checkpoint covers anyway.
            let trimmed = tokio::task::spawn_blocking(move || {
                wal.trim(checkpoint)
                    .and_then(|_| wal.retire_indexed(checkpoint, 1))
            })
            .await
            .map_err(|_| ServerError::Panicked("wal trim"))?;
            if let Err(error) = trimmed {
                tracing::warn!(%error, "could not drop the indexed write-ahead log at shutdown");
            }
        }
        Ok(())
    }
}

/// The gRPC health service name that reports whether writes can be made
/// durable. `""`, `audit.v1.AuditLog` and `audit.v1.Tokens` stay SERVING
/// while only writes are degraded, since reads go on.
pub const INGEST_HEALTH_SERVICE: &str = "auditd.ingest";

/// The health names that follow reads.
fn read_health_services() -> [&'static str; 6] {
    [
        "",
        <AuditLogServer<AuditLogService> as NamedService>::NAME,
        <TokensServer<TokensService> as NamedService>::NAME,
        <IntegrityServer<IntegrityGrpc> as NamedService>::NAME,
        <RetentionServer<RetentionGrpc> as NamedService>::NAME,
        <SubjectsServer<SubjectsGrpc> as NamedService>::NAME,
    ]
}

/// The gRPC and HTTP servers, and every task they started.
struct Transports {
    health: tonic_health::server::HealthReporter,
    /// Keeps health in step with the pipeline until shutdown.
    follower: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    tasks: TaskTracker,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Transports {
    /// Serves at once, with every health name NOT_SERVING until replay
    /// ends; the RPCs answer UNAVAILABLE meanwhile.
    /// `partitions`: a cluster node's secret and the partitions it holds,
    /// for its `Partitions` service (`cluster::remote`); none serves it
    /// without.
    async fn serve(
        config: &Config,
        listeners: Listeners,
        pipeline: &Pipeline,
        (tls, partitions): (Option<TlsMaterial>, Option<(String, Held)>),
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Transports, ServerError> {
        let app = pipeline.app();
        let partitions_service = partitions.map(|(secret, held)| {
            PartitionsServer::new(Arc::new(PartitionsService::new(held, &secret)))
                .max_decoding_message_size(MAX_PARTITION_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PARTITION_MESSAGE_BYTES)
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        set_not_serving(&health).await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Both versions: v1alpha is what many tools still ask for.
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        // Every AuditLog and Tokens call passes the bearer-token check
        // first; health and reflection stay open.
        let authenticate = Authenticate(Arc::new(app.clone()));
        let audit_service = InterceptedService::new(
            AuditLogServer::new(AuditLogService(app.clone()))
                .max_decoding_message_size(config.limits.max_message_bytes)
                .max_encoding_message_size(config.limits.max_message_bytes),
            authenticate.clone(),
        );
        let tokens_service = InterceptedService::new(
            TokensServer::new(TokensService(app.clone())),
            authenticate.clone(),
        );
        let integrity_service = InterceptedService::new(
            IntegrityServer::new(IntegrityGrpc(app.clone())),
            authenticate.clone(),
        );
        let retention_service = InterceptedService::new(
            RetentionServer::new(RetentionGrpc(app.clone())),
            authenticate.clone(),
        );
        let subjects_service = InterceptedService::new(
            SubjectsServer::new(SubjectsGrpc(app.clone()))
                .max_encoding_message_size(config.limits.max_message_bytes),
            authenticate,
        );
        let (grpc_addr, http_addr) = listeners.addrs()?;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(config.limits.max_streams_per_connection));
        if let Some(tls) = &tls {
            builder = builder.tls_config(tls.grpc())?;
        } else if !grpc_addr.ip().is_loopback() {
            tracing::warn!(%grpc_addr, "serving gRPC WITHOUT TLS on a non-loopback address: tokens and audit data cross the network in clear text; set tls.cert and tls.key");
        }
        if tls.is_none() && !http_addr.ip().is_loopback() {
            tracing::warn!(%http_addr, "serving HTTP WITHOUT TLS on a non-loopback address: tokens and audit data cross the network in clear text; set tls.cert and tls.key");
        }
        let grpc = tasks.spawn(
            builder
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(audit_service)
                .add_service(tokens_service)
                .add_service(integrity_service)
                .add_service(retention_service)
                .add_service(subjects_service)
                .add_optional_service(partitions_service)
                .serve_with_incoming_shutdown(
                    crate::conn::incoming(
                        listeners.grpc,
                        config.limits.max_connections,
                        Duration::from_millis(config.limits.idle_connection_timeout_ms),
                    ),
                    stop.clone().cancelled_owned(),
                ),
        );
        let http_router = crate::http::router(
            app,
            pipeline.status.clone(),
            config.metrics_require_token,
            &config.limits,
        )
        .into_make_service_with_connect_info::<crate::http::Peer>();
        let http_limiter = crate::conn::Limiter::new(
            config.limits.max_http_connections,
            Duration::from_millis(config.limits.idle_connection_timeout_ms),
        );
        let http_stop = stop.clone();
        let http = match tls {
            None => {
                let listener = crate::conn::HttpListener {
                    listener: listeners.http,
                    limiter: http_limiter,
                };
                tasks.spawn(async move {
                    axum::serve(listener, http_router)
                        .with_graceful_shutdown(http_stop.cancelled_owned())
                        .await
                })
            }
            Some(tls) => {
                let rustls = crate::http::rustls_config(&tls).map_err(|source| TlsError {
                    path: config.tls.cert.clone().unwrap_or_default(),
                    source,
                })?;
                let handle = axum_server::Handle::new();
                let on_stop = handle.clone();
                tasks.spawn(async move {
                    http_stop.cancelled().await;
                    on_stop.graceful_shutdown(Some(HTTP_DRAIN));
                });
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
                    axum_server::tls_rustls::RustlsConfig::from_config(rustls),
                )
                .acceptor(http_limiter);
                let server = axum_server::from_tcp(listeners.http.into_std()?)?
                    .acceptor(acceptor)
                    .handle(handle);
                tasks.spawn(async move { server.serve(http_router).await })
            }
        };
        let follower = tasks.spawn(follow_health(
            pipeline.status.clone(),
            health.clone(),
            config.cluster.role.takes_ingest(),
        ));
        tracing::info!(%grpc_addr, %http_addr, data_dir = %config.data_dir.display(), "listening; replaying the write-ahead log");
        Ok(Transports {
            health,
            follower,
            stop,
            tasks,
            grpc,
            http,
        })
    }

    /// Every health name turns NOT_SERVING, the servers stop accepting,
    /// open streams end after their current batch, in-flight calls finish,
    /// and every tracked task is waited for. Returns the gRPC server's
    /// own failure, if it had one.
    async fn stop(self) -> Result<(), ServerError> {
        self.follower.abort();
        let _ = self.follower.await;
        set_not_serving(&self.health).await;
        self.stop.cancel();
        let grpc = self.grpc.await;
        let http = self.http.await;
        self.tasks.close();
        self.tasks.wait().await;
        if let Ok(Err(error)) = http {
            tracing::warn!(%error, "the HTTP server stopped with an error");
        }
        grpc.map_err(|_| ServerError::Panicked("grpc server"))??;
        Ok(())
    }
}

/// Every health name, reads' and writes', NOT_SERVING: before replay
/// ends, and at shutdown.
async fn set_not_serving(health: &tonic_health::server::HealthReporter) {
    for name in read_health_services()
        .into_iter()
        .chain([INGEST_HEALTH_SERVICE])
    {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// Keeps the gRPC health service in step with the pipeline's health.
///
/// A cluster node whose role takes no Ingest never reports the ingest name
/// SERVING, so a balancer that checks it sends no batch there.
async fn follow_health(
    status: Arc<PipelineStatus>,
    health: tonic_health::server::HealthReporter,
    takes_ingest: bool,
) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut changes = status.subscribe();
    loop {
        let (reads, writes) = match status.health() {
            Health::Serving if takes_ingest => (Serving, Serving),
            Health::Serving | Health::Degraded(_) => (Serving, NotServing),
            Health::Starting | Health::Failed(_) => (NotServing, NotServing),
        };
        for name in read_health_services() {
            health.set_service_status(name, reads).await;
        }
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

/// The running `auditd-tlog` thread: dropping the sender stops it.
type Checkpointer = (
    crossbeam_channel::Sender<()>,
    JoinHandle<Result<(), CheckpointError>>,
);

/// Opens the tree, the signing key (made on first start, its verifier key
/// printed) and the kept checkpoints.
/// On a cluster node the key is the cluster's (its verifier key written
/// to `integrity.pub`), and a partition's checkpoints of a cluster of
/// several partitions have the origin `<name>/partition/<p>`.
fn open_integrity(config: &Config, log: &LogChoice) -> Result<Integrity, ServerError> {
    let data_dir = &config.data_dir;
    let tree = Arc::new(TreeStore::open(data_dir)?);
    let (layout, partition) = match log {
        LogChoice::Cluster(layout, p) => (Some(layout), (layout.partitions > 1).then_some(*p)),
        LogChoice::Front(layout) => (Some(layout), None),
        _ => (None, None),
    };
    let (signer, new) = match layout.and_then(|l| l.signer.clone()) {
        Some(signer) => {
            checkpointer::write_verifier_key(data_dir, &signer)?;
            (signer, false)
        }
        None => checkpointer::load_or_create_key(data_dir, &config.integrity.origin)?,
    };
    let origin = match partition {
        Some(p) => crate::integrity::combined::partition_origin(signer.name(), p),
        None => signer.name().to_owned(),
    };
    if new {
        println!(
            "first start: checkpoints are signed by the note verifier key\n{}\n(also in {})",
            signer.verifier_key(),
            data_dir.join("integrity.pub").display()
        );
        tracing::info!(key = %signer.verifier_key(), "created the checkpoint signing key");
    }
    Ok(Integrity {
        tree,
        origin,
        signer,
        checkpoints: Checkpoints::open(data_dir)?,
        publish_file: config.integrity.publish_file.clone(),
        publish_url: config.integrity.publish_url.clone().map(|url| {
            crate::integrity::publish::UrlPublisher::new(url, tokio::runtime::Handle::current())
        }),
    })
}

/// Appends a replayed batch's leaves that the tree lacks (those at or past
/// its size); a batch without salts (data format 2) cannot have any. Seqs
/// between the tree's end and the batch are lost to damage when the batch
/// comes `after_skip` (they get the lost leaf, which the full audit
/// reports as missing), and an error otherwise.
pub(crate) fn grow_tree(
    tree: &TreeStore,
    batch: &IndexBatch,
    after_skip: bool,
) -> Result<(), String> {
    let size = tree.size();
    if batch.next_seq() <= size {
        return Ok(());
    }
    if size < batch.first_seq {
        if !after_skip {
            return Err(format!(
                "the Merkle tree holds {size} leaves, but this record's events start at seq {}",
                batch.first_seq
            ));
        }
        tracing::warn!(
            from = size,
            to = batch.first_seq,
            "events lost to damaged log bytes get the lost leaf in the Merkle tree"
        );
        let lost = vec![lost_leaf_hash(); (batch.first_seq - size) as usize];
        tree.append(&lost, batch.span.start);
    }
    let size = tree.size();
    let leaves = batch.batch.leaf_hashes().ok_or_else(|| {
        "a batch record without salts (data format 2), or of a leaf version this \
             auditd does not know"
            .to_owned()
    })?;
    if let Some(seed) = batch.batch.seed() {
        tree.seeds().add(batch.first_seq, leaves.len(), seed);
    }
    tree.append(&leaves[(size - batch.first_seq) as usize..], batch.span.end);
    Ok(())
}

/// An exclusive lock on `<data_dir>/LOCK`, held while the daemon runs: two
/// daemons on one WAL would corrupt it.
pub(crate) fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let path = DataDir::new(data_dir).lock();
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

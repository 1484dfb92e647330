//! Every setting, with its default, in one place.
//!
//! Layers, later wins: embedded defaults → TOML file (`--config`) →
//! `AUDITD_*` environment variables (nested with `__`:
//! `AUDITD_WAL__SYNC=never`) → command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::wal::jetstream::JetStreamConfig;
use crate::wal::{Recovery, SyncPolicy};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the WAL, the index partitions and the checkpoint live.
    pub data_dir: PathBuf,
    /// gRPC listen address (`AuditLog`, health, reflection).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (`/metrics`, `/healthz`).
    pub http_addr: SocketAddr,
    /// The `tracing` filter and the write-ahead log's kind (`[log]`).
    #[serde(deserialize_with = "log_setting")]
    pub log: LogConfig,
    /// `/metrics` asks for an admin bearer token, like the API. Off by
    /// default so a Prometheus on the same host can scrape it.
    pub metrics_require_token: bool,
    pub limits: Limits,
    pub wal: WalConfig,
    pub index: IndexConfig,
    pub ingest: IngestConfig,
    pub tls: TlsConfig,
    pub integrity: IntegrityConfig,
    pub retention: RetentionConfig,
    pub erasure: ErasureConfig,
    pub cluster: ClusterConfig,
}

/// TLS for gRPC (rustls). Off unless `cert` and `key` are set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server.
    pub key: Option<PathBuf>,
    /// PEM CA certificate: when set, clients must present a certificate it
    /// signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            grpc_addr: "127.0.0.1:50051".parse().expect("valid address"),
            http_addr: "127.0.0.1:8080".parse().expect("valid address"),
            log: LogConfig::default(),
            metrics_require_token: false,
            limits: Limits::default(),
            wal: WalConfig::default(),
            index: IndexConfig::default(),
            ingest: IngestConfig::default(),
            tls: TlsConfig::default(),
            integrity: IntegrityConfig::default(),
            retention: RetentionConfig::default(),
            erasure: ErasureConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// `[cluster]`: this daemon as one node of several on one JetStream
/// stream (docs/cluster.md, "One partition, several nodes"). Needs
/// `log.kind = "jetstream"`; `[log.jetstream]` names the stream, and its
/// `subject` is the partitions' prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every write this node takes (its clients' batches, the trail events
    /// of its audited reads, retention changes) goes into the stream's
    /// partitions, and the node indexes what every node wrote there.
    pub enabled: bool,
    /// `N`, fixed when the stream is created. 1: every node indexes
    /// everything. More: each partition is indexed by one node at a time
    /// (its lease), and reads fan out to the owners (docs/cluster.md).
    pub partitions: u32,
    /// This node's name in the cluster (letters, digits, `-`, `_`):
    /// unique, and the same across its restarts. Needed with
    /// `partitions > 1`.
    pub node: String,
    /// How long a partition's lease lives unrenewed (`partitions > 1`):
    /// a dead owner's partitions move to another node after at most
    /// this long. The same on every node.
    pub lease_ms: u64,
    /// The URL at which the other nodes reach this node's gRPC port
    /// (`partitions > 1`), e.g. `http://10.0.0.7:50051`. Empty: `http://`
    /// (`https://` with `tls.cert`) and `grpc_addr`, which must then not
    /// be a wildcard address.
    pub advertise: String,
    /// What this node does (`auditd --role`): `all` takes Ingest, indexes
    /// and answers queries; `query` answers queries but takes no Ingest
    /// (its own trail events still go into the stream), and with one
    /// partition indexes everything, with several none. `ingest` and
    /// `index` need several partitions: `ingest` takes Ingest and indexes
    /// nothing, `index` owns partitions and takes no Ingest. Every node
    /// answers queries (docs/cluster.md).
    pub role: Role,
    /// How long a node may go without hearing from the cluster's tokens
    /// bucket (a ping answered while its watch runs) before it takes no
    /// token at all: a revocation made on another node could be missed.
    /// 0: tokens never go stale.
    pub token_staleness_ms: u64,
    /// This node's shared settings (its `[retention]` rules) replace the
    /// cluster's when it starts, instead of being checked against them:
    /// how the rules of every node change (docs/cluster.md).
    pub adopt_settings: bool,
    /// How long a node starting while NATS cannot be reached (not yet up,
    /// or a new JetStream cluster still electing its leader) tries again,
    /// once a second, before it gives up.
    pub start_wait_ms: u64,
    /// PEM CA certificate that signed the nodes' `tls.cert` (several
    /// partitions with `tls.cert`, required then): nodes read each other
    /// over TLS, checking the other node's certificate against it, and
    /// present their own `tls.cert` as client certificate (so `tls.client_ca`
    /// may require one). Their `advertise` URLs are then `https://`.
    pub tls_ca: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            partitions: 1,
            node: String::new(),
            lease_ms: 10_000,
            advertise: String::new(),
            role: Role::All,
            token_staleness_ms: 10_000,
            adopt_settings: false,
            start_wait_ms: 30_000,
            tls_ca: None,
        }
    }
}

/// A cluster node's role (`[cluster] role`, `auditd --role`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    All,
    Ingest,
    Index,
    Query,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingest => "ingest",
            Role::Index => "index",
            Role::Query => "query",
        }
    }

    /// Whether clients' Ingest is taken here.
    pub fn takes_ingest(self) -> bool {
        matches!(self, Role::All | Role::Ingest)
    }

    /// Whether a node of this role owns partitions when there are several.
    pub fn owns_partitions(self) -> bool {
        matches!(self, Role::All | Role::Index)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        [Role::All, Role::Ingest, Role::Index, Role::Query]
            .into_iter()
            .find(|role| role.name() == s)
            .ok_or_else(|| format!("{s:?}: one of all, ingest, index, query"))
    }
}

impl Config {
    /// The partitioned stream of `[cluster]` (`None` when off).
    /// What a node of several partitions needs besides the layout.
    fn check_partitioned(&self) -> Result<(), (&'static str, String)> {
        let c = &self.cluster;
        let token = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !token(&c.node) {
            return Err((
                "cluster.node",
                "a name for this node, unique in the cluster (letters, digits, '-' and '_'), is \
                 needed with cluster.partitions > 1"
                    .into(),
            ));
        }
        if c.lease_ms < 1_000 {
            return Err(("cluster.lease_ms", "at least 1000".into()));
        }
        if self.tls.enabled() && c.tls_ca.is_none() {
            return Err((
                "cluster.tls_ca",
                "nodes of several partitions with tls.cert read each other over TLS: give the \
                 CA that signed the nodes' certificates (docs/cluster.md)"
                    .into(),
            ));
        }
        if c.advertise.starts_with("http://") && self.tls.enabled() {
            return Err((
                "cluster.advertise",
                format!(
                    "{}: this node serves TLS (tls.cert), so the other nodes reach it at https://",
                    c.advertise
                ),
            ));
        }
        if c.advertise.is_empty() && self.grpc_addr.ip().is_unspecified() {
            return Err((
                "cluster.advertise",
                format!(
                    "grpc_addr {} is a wildcard address: say at which URL the other nodes \
                     reach this one (e.g. http://10.0.0.7:{})",
                    self.grpc_addr,
                    self.grpc_addr.port()
                ),
            ));
        }
        Ok(())
    }

    /// Where the other nodes reach this node's gRPC port, bound at
    /// `bound`.
    pub fn advertised(&self, bound: std::net::SocketAddr) -> String {
        let scheme = match self.tls.enabled() {
            true => "https",
            false => "http",
        };
        match self.cluster.advertise.as_str() {
            "" => format!("{scheme}://{bound}"),
            given => given.to_owned(),
        }
    }

    pub fn cluster_layout(&self) -> Option<crate::cluster::Layout> {
        self.cluster.enabled.then(|| crate::cluster::Layout {
            jetstream: self.log.jetstream.clone(),
            partitions: self.cluster.partitions,
            duplicate_window: Duration::from_secs(self.ingest.idempotency_window_secs.max(1)),
            signer: None,
        })
    }
}

/// `[log]`: what the daemon logs, and the write-ahead log it runs on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `auditd=debug`. The older form
    /// `log = "info"` (a string, not a table) sets this alone.
    pub filter: String,
    /// `local` (segment files under `data_dir/wal`) or `jetstream` (a
    /// NATS JetStream stream, `[log.jetstream]`).
    pub kind: LogKind,
    pub jetstream: JetStreamConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            kind: LogKind::Local,
            jetstream: JetStreamConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    Local,
    Jetstream,
}

/// `log` as a table, or as the string it used to be (the filter).
fn log_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<LogConfig, D::Error> {
    struct Setting;
    impl<'de> serde::de::Visitor<'de> for Setting {
        type Value = LogConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [log] table, or a tracing filter string")
        }
        fn visit_str<E: serde::de::Error>(self, filter: &str) -> Result<LogConfig, E> {
            Ok(LogConfig {
                filter: filter.to_owned(),
                ..LogConfig::default()
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<LogConfig, A::Error> {
            LogConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Setting)
}

/// What one request may carry. Violations are INVALID_ARGUMENT naming the
/// event and field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Events in one Ingest batch (at most 65,536).
    pub max_batch_events: usize,
    /// Largest gRPC message, decoded or encoded; set on the tonic server.
    pub max_message_bytes: usize,
    /// Identifier-like fields: type, action, access_id, subject,
    /// source.name, resource, error_id, forwarded_for.
    pub max_field_bytes: usize,
    /// Text fields: error_message, before, after.
    pub max_text_bytes: usize,
    /// Entries in `query` and in `attributes`, each.
    pub max_map_entries: usize,
    pub max_map_key_bytes: usize,
    pub max_map_value_bytes: usize,
    /// How far in the future an event's `time` may be.
    pub max_clock_skew_secs: u64,
    /// Largest page Search returns, whatever `limit` asks for.
    pub max_search_limit: u32,
    /// Page size when `limit` is 0.
    pub default_search_limit: u32,
    /// Search counts matches exactly up to this many; past it `total_hits`
    /// is this number, flagged as a lower bound, unless the request asks
    /// for `exact_total`. Counting everything costs a pass over every
    /// match, where the page itself may need only the newest segments.
    pub exact_total_hits: u32,
    /// Open gRPC connections; one more is accepted and closed at once
    /// (logged, counted in `auditd_connections_refused_total`).
    pub max_connections: usize,
    /// Open HTTP connections (the API, the page, `/metrics`), counted
    /// apart from gRPC's; one more is closed at once, as for gRPC. Each
    /// open `/v1/tail` holds one.
    pub max_http_connections: usize,
    /// Concurrent requests (HTTP/2 streams) on one gRPC connection,
    /// announced to the client in the HTTP/2 settings.
    pub max_streams_per_connection: u32,
    /// A connection with no byte read or written for this long is closed.
    pub idle_connection_timeout_ms: u64,
    /// An IngestStream with no request for this long is ended with
    /// DEADLINE_EXCEEDED; a Tail or Export whose reader takes nothing for
    /// this long, with ABORTED carrying the resume token.
    pub stream_idle_timeout_ms: u64,
    /// Open Tail streams; one more gets RESOURCE_EXHAUSTED.
    pub max_tail_subscribers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_events: 10_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_field_bytes: 1024,
            max_text_bytes: 64 * 1024,
            max_map_entries: 64,
            max_map_key_bytes: 128,
            max_map_value_bytes: 4096,
            max_clock_skew_secs: 300,
            max_search_limit: 10_000,
            default_search_limit: 100,
            exact_total_hits: 10_000,
            max_connections: 1024,
            max_http_connections: 1024,
            max_streams_per_connection: 128,
            idle_connection_timeout_ms: 300_000,
            stream_idle_timeout_ms: 120_000,
            max_tail_subscribers: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// `always` (fsync before each acknowledgement, shared by concurrent
    /// batches), `interval` (at most one fsync per `sync_interval_ms`;
    /// acknowledgements wait for it) or `never` (benchmarks only).
    pub sync: SyncMode,
    pub sync_interval_ms: u64,
    /// A new segment file starts once the active one reaches this size.
    pub segment_bytes: u64,
    /// `tolerate_torn_tail` (cut a partial last record and log it) or
    /// `strict` (refuse to start on any damage).
    pub recovery: Recovery,
    /// How far the WAL may run ahead of the index before Ingest refuses
    /// with RESOURCE_EXHAUSTED. Bounds replay time after a crash.
    pub lag_budget_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync: SyncMode::Always,
            sync_interval_ms: 10,
            segment_bytes: 64 * 1024 * 1024,
            recovery: Recovery::TolerateTornTail,
            lag_budget_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl WalConfig {
    pub fn sync_policy(&self) -> SyncPolicy {
        match self.sync {
            SyncMode::Always => SyncPolicy::Always,
            SyncMode::Interval => {
                SyncPolicy::Interval(Duration::from_millis(self.sync_interval_ms.max(1)))
            }
            SyncMode::Never => SyncPolicy::Never,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// How often the indexer commits, making new events searchable
    /// (from the start of one commit to the start of the next). When the
    /// last three commits each took at least `t`, the next one waits at
    /// least `3 t` after the last ended (`indexer::CommitPacer`), so under
    /// heavy load commits space out, but one slow commit does not hold
    /// back the next.
    pub commit_interval_ms: u64,
    /// When the only new events are the trail of reads
    /// (`audit-log/auditd`, one per search), the commit waits until the
    /// oldest of them is this old: a read-only spell then commits every
    /// couple of seconds instead of every `commit_interval_ms`, and searches
    /// stop paying for a commit (its CPU, a new searcher) several times a
    /// second (BENCHMARKS.md, issue 17). Any other event, or a caller
    /// waiting for `searchable`, commits at the usual pace, trail included.
    pub trail_commit_interval_ms: u64,
    /// Indexing threads per open partition writer.
    pub writer_threads: usize,
    /// Memory budget per open partition writer (Tantivy's arena), in bytes.
    pub writer_heap_bytes: usize,
    /// Partition writers kept open at once; the least recently used is
    /// committed and closed past this. Bounds indexing memory at
    /// `max_open_writers × writer_heap_bytes`.
    pub max_open_writers: usize,
    /// A partition of a day that is over (UTC) and has had no new event for
    /// this long is compacted in the background: its segments, in time
    /// order, merged into as few as `compact_segment_docs` allows. Audit data
    /// of past days stops changing, and few segments take less disk than
    /// the many small ones frequent commits leave. Late events for that
    /// day are still taken (as a new segment). 0 turns it off.
    pub compact_after_idle_ms: u64,
    /// No merge (compaction, or the writer's merge policy) takes in a
    /// segment of this many events or more, or builds one; both merge only
    /// segments that are neighbours in time (`merge.rs`). A
    /// search for the newest matches reads every match of the newest
    /// segment before it can skip older ones: with a whole day in one
    /// segment, it reads far more than the page (docs/benchmarks-history.md).
    pub max_segment_docs: u32,
    /// Compaction's cap, in place of `max_segment_docs`, for a past day
    /// that stopped changing: no merge builds a segment of this many
    /// events. Larger than the live cap because a search pays a fixed cost
    /// per segment (a dictionary look-up per term, a scorer), which a sparse
    /// search over a long range pays for every segment; a past day's
    /// merged segments are time neighbours that do not overlap, so a
    /// newest-first search still reads only the best end of the one it
    /// starts with (docs/benchmarks-history.md, "2026-12-03: 100 M within 20 ms").
    pub compact_segment_docs: u32,
    /// Durable batches waiting for the indexer. When full, the WAL thread
    /// waits, its request queue fills, and Ingest refuses with
    /// RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Check every partition's files against their checksums at start-up
    /// (reads the whole index once). Damage then stops start-up with the
    /// file named, instead of wrong or failing searches later. Turn off
    /// only for an index too big to read at each start.
    pub verify_on_start: bool,
    /// Bytes of the last commits' events (their stored bodies) kept in
    /// memory, where Tail reads what a commit just made searchable
    /// instead of the doc store (`search/recent.rs`). Past it the oldest
    /// go, and a follower that far behind reads them from the index. The
    /// indexer's events awaiting a commit, which a follower whose filter
    /// has a live form takes before they are searchable, are held under
    /// the same budget, so at most twice this. 0 keeps none (every
    /// follower then waits for commits).
    pub recent_events_bytes: usize,
    /// Bytes of bit sets kept for terms that at least one event in 64 of a
    /// segment of 65,536 events or more holds (a frequent subject, an
    /// action word): a search joining several such terms reads their bit
    /// sets a 64-bit word at a time instead of seeking through their
    /// postings (`search/dense.rs`). A set is made in the background the
    /// first time a search meets its term in a segment, and takes a bit an
    /// event of the segment (250 KB for 2 M events); past the budget the
    /// least recently used go. 0 keeps none. Which terms' sets were kept
    /// is saved at a clean stop (`<data_dir>/dense-terms.json`) and their
    /// sets made again by the start's warming (`warm_on_start_events`).
    pub dense_terms_bytes: u64,
    /// At start, a thread at the lowest priority opens the newest
    /// partitions' views with each segment's time bounds (a read of their
    /// time columns, 1–8 bytes an event), newest day first, until it has
    /// warmed this many events, so that the first searches after a start
    /// need not (`Partitions::warm_in_background`). The day that crosses
    /// it is warmed whole; older days are warmed by the first search that
    /// reads them. In each day it warms it also makes the bit sets of the
    /// terms the last run's searches were using (`dense_terms_bytes`),
    /// until their budget is full. 0 warms none.
    pub warm_on_start_events: u64,
    /// Bytes of index files a thread at the lowest priority asks the
    /// kernel to read into the page cache, at start and once the big
    /// segments have changed and settled (after an ingest or a merge):
    /// the term dictionaries, postings and columns of every day first,
    /// newest first, then the events pages are read from
    /// (`preload.rs`). Never more than half the machine's memory. A
    /// search over pages not in the cache waits for the disk: on 100 M
    /// events with a cold cache, free text's p99 was 63.7 ms instead of
    /// 14.8. 0 reads nothing ahead.
    pub preload_bytes: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            commit_interval_ms: 300,
            trail_commit_interval_ms: 2_000,
            writer_threads: 2,
            writer_heap_bytes: 128 * 1024 * 1024,
            max_open_writers: 4,
            compact_after_idle_ms: 10_000,
            max_segment_docs: 500_000,
            compact_segment_docs: 2_000_000,
            queue_capacity: 16,
            verify_on_start: true,
            recent_events_bytes: 32 * 1024 * 1024,
            dense_terms_bytes: 64 * 1024 * 1024,
            warm_on_start_events: 100_000_000,
            preload_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Deprecated name of `index.queue_capacity` (it bounds the indexer's
    /// queue, not ingest's): still read, with a warning at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    /// Batches waiting for the WAL thread.
    pub wal_queue_capacity: usize,
    /// How long Ingest waits for room before RESOURCE_EXHAUSTED.
    pub submit_timeout_ms: u64,
    /// How long a `batch_id` is remembered; survives a restart.
    pub idempotency_window_secs: u64,
    /// Most batch ids remembered in memory; older ones are found in the
    /// index instead.
    pub idempotency_capacity: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue_capacity: None,
            wal_queue_capacity: 1024,
            submit_timeout_ms: 2000,
            idempotency_window_secs: 600,
            idempotency_capacity: 100_000,
        }
    }
}

/// The Merkle tree, its signed checkpoints, and where they are published
/// (`integrity` module, `docs/integrity.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrityConfig {
    /// Build the tree and sign checkpoints. Off only to measure what they
    /// cost: events stored while it is off get no leaves, so the tree
    /// cannot be turned on again for that data directory.
    pub enabled: bool,
    /// The longest time between two checkpoints while events arrive.
    pub checkpoint_interval_ms: u64,
    /// The checkpoints' origin line and the signing key's name, used when
    /// the key is made (first start); empty: `auditd/<8 random hex>`.
    pub origin: String,
    /// A file every new checkpoint is appended to (one JSON line each:
    /// `size`, `time`, `note`); best kept on another disk or machine.
    pub publish_file: Option<PathBuf>,
    /// A URL every new checkpoint note is POSTed to (`text/plain`; best
    /// effort: one at a time, 5 s each, failures counted).
    pub publish_url: Option<String>,
    /// The background self-audit's pace: stored events held against their
    /// leaves per second, over and over (0: off). Each window of 4,096
    /// waits for a moment with no read for 250 ms, for ten windows' time
    /// at most, so under reads that never pause the pace is a tenth of
    /// this (`auditd_integrity_self_audit_busy_windows_total` counts those
    /// windows).
    pub self_audit_events_per_second: u64,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            enabled: true,
            checkpoint_interval_ms: 1000,
            origin: String::new(),
            publish_file: None,
            publish_url: None,
            self_audit_events_per_second: 10_000,
        }
    }
}

/// How long events are kept (`retention` module). A day's partition is
/// dropped whole once every event in it is past its rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days an event no rule matches is kept; unset: forever.
    pub default_days: Option<u32>,
    /// Days the daemon's own trail (type `audit-log/auditd`: reads, token
    /// changes, retention and integrity events) is kept; unset: as the
    /// rules and `default_days` say.
    pub trail_days: Option<u32>,
    /// Rules by type prefix and/or action pattern. An event matched by
    /// several is kept for the longest of them.
    pub rules: Vec<RetentionRule>,
    /// How often the daemon looks for partitions to drop.
    pub sweep_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            default_days: None,
            trail_days: None,
            rules: Vec::new(),
            sweep_interval_ms: 3_600_000,
        }
    }
}

/// Events whose type starts with `type_prefix` (empty: any) and whose
/// action is one of `actions` (empty: any; `auth.*` is a prefix, as in
/// Search) are kept `days` days.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionRule {
    pub type_prefix: String,
    pub actions: Vec<String>,
    pub days: u32,
}

/// What `auditctl subject erase` takes out of a subject's events
/// (`erasure` module).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ErasureConfig {
    /// The personal fields erased or pseudonymised, by their JSON names:
    /// accessId, subject, source.ip, forwardedFor, resource, query,
    /// errorMessage, before, after, attributes.
    pub fields: Vec<String>,
    /// Events whose type starts with one of these are never erased (a
    /// record the law says to keep, such as HIPAA's); the answer counts
    /// them.
    pub keep_type_prefixes: Vec<String>,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            fields: crate::integrity::leaf::PERSONAL
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            keep_type_prefixes: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Defaults, then `file` (when given), then `AUDITD_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config",
                    reason: format!("{} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file(file));
        }
        let mut config: Config = figment
            .merge(Env::prefixed("AUDITD_").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.apply_deprecated()?;
        config.check()?;
        Ok(config)
    }

    /// Settings read under an old name, as `(old, new)`: what start-up
    /// warns about.
    pub fn deprecated(&self) -> Vec<(&'static str, &'static str)> {
        let mut names = Vec::new();
        if self.ingest.queue_capacity.is_some() {
            names.push(("ingest.queue_capacity", "index.queue_capacity"));
        }
        names
    }

    /// Moves settings given under an old name to the new one. Both names
    /// with different values is an error: which one was meant is unclear.
    fn apply_deprecated(&mut self) -> Result<(), ConfigError> {
        if let Some(old) = self.ingest.queue_capacity {
            let default = IndexConfig::default().queue_capacity;
            if self.index.queue_capacity != default && self.index.queue_capacity != old {
                return Err(ConfigError::Invalid {
                    field: "ingest.queue_capacity",
                    reason: "deprecated; set only index.queue_capacity".into(),
                });
            }
            self.index.queue_capacity = old;
        }
        Ok(())
    }

    /// Rejects settings the pipeline cannot honour.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.limits.max_batch_events == 0
            || self.limits.max_batch_events > crate::messages::MAX_EVENTS_PER_RECORD
        {
            return invalid("limits.max_batch_events", "must be between 1 and 65536");
        }
        if self.limits.max_search_limit == 0 {
            return invalid("limits.max_search_limit", "must be at least 1");
        }
        if self.integrity.checkpoint_interval_ms == 0 {
            return invalid("integrity.checkpoint_interval_ms", "must be at least 1");
        }
        if let Some(url) = &self.integrity.publish_url {
            if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                return invalid("integrity.publish_url", "an http:// or https:// URL");
            }
        }
        if self.integrity.origin.contains(['+', ' ', '\n']) {
            return invalid(
                "integrity.origin",
                "a key name: no '+', space or line break",
            );
        }
        if self.limits.exact_total_hits < self.limits.max_search_limit {
            // A page never holds more events than `total_hits` says.
            return invalid(
                "limits.exact_total_hits",
                "must be at least limits.max_search_limit",
            );
        }
        if self.index.queue_capacity == 0 {
            return invalid(
                "index.queue_capacity",
                "the queue needs room for at least one batch",
            );
        }
        if self.ingest.wal_queue_capacity == 0 {
            return invalid(
                "ingest.wal_queue_capacity",
                "the queue needs room for at least one batch",
            );
        }
        if self.index.max_open_writers == 0 || self.index.writer_threads == 0 {
            return invalid(
                "index.max_open_writers",
                "at least one writer with one thread",
            );
        }
        // Tantivy refuses less than 15 MB per indexing thread.
        if self.index.writer_heap_bytes < self.index.writer_threads * 15_000_000 {
            return invalid(
                "index.writer_heap_bytes",
                "at least 15 MB per writer thread",
            );
        }
        // Below two events no two segments could ever merge.
        if self.index.max_segment_docs < 2 {
            return invalid(
                "index.max_segment_docs",
                "at least 2, or segments would never merge",
            );
        }
        if self.index.compact_segment_docs < 2 {
            return invalid(
                "index.compact_segment_docs",
                "at least 2, or segments would never merge",
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert", "tls.cert and tls.key go together");
        }
        if self.tls.client_ca.is_some() && !self.tls.enabled() {
            return invalid("tls.client_ca", "needs tls.cert and tls.key");
        }
        if self.limits.max_connections == 0 || self.limits.max_streams_per_connection == 0 {
            return invalid(
                "limits.max_connections",
                "at least one connection with one stream",
            );
        }
        if self.wal.segment_bytes < 4096 {
            return invalid("wal.segment_bytes", "at least 4096");
        }
        let days = self.retention.rules.iter().map(|r| Some(r.days));
        let days = days.chain([self.retention.default_days, self.retention.trail_days]);
        if days.flatten().any(|d| d == 0) {
            return invalid("retention", "a retention of 0 days would drop what arrives");
        }
        if let Err(reason) = crate::erasure::fields_mask(&self.erasure.fields) {
            return invalid("erasure.fields", &reason);
        }
        if self.retention.sweep_interval_ms == 0 {
            return invalid("retention.sweep_interval_ms", "must be at least 1");
        }
        if self.log.kind == LogKind::Jetstream {
            if let Err((field, reason)) = self.log.jetstream.check() {
                return invalid(field, &reason);
            }
        }
        if self.cluster.enabled {
            if self.log.kind != LogKind::Jetstream {
                return invalid("cluster.enabled", "needs log.kind = \"jetstream\"");
            }
            let partitions = self.cluster.partitions;
            if partitions == 0 || partitions > crate::cluster::MAX_PARTITIONS {
                return invalid(
                    "cluster.partitions",
                    &format!("between 1 and {}", crate::cluster::MAX_PARTITIONS),
                );
            }
            if partitions == 1 && matches!(self.cluster.role, Role::Ingest | Role::Index) {
                return invalid(
                    "cluster.role",
                    "ingest and index need several partitions (cluster.partitions > 1): with \
                     one, every node indexes everything",
                );
            }
            if partitions > 1 {
                if let Err((field, reason)) = self.check_partitioned() {
                    return invalid(field, &reason);
                }
            }
        } else if self.cluster.role != Role::All {
            return invalid(
                "cluster.role",
                "a role other than all needs cluster.enabled",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its error type
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_the_checks_and_file_and_env_override() {
        Config::default().check().unwrap();
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "auditd.toml",
                "grpc_addr = \"127.0.0.1:6000\"\n[wal]\nsync = \"interval\"\n",
            )?;
            jail.set_env("AUDITD_INDEX__COMMIT_INTERVAL_MS", "250");
            let config = Config::load(Some(Path::new("auditd.toml"))).unwrap();
            assert_eq!(config.grpc_addr.port(), 6000);
            assert_eq!(config.wal.sync, SyncMode::Interval);
            assert_eq!(config.index.commit_interval_ms, 250);
            Ok(())
        });
    }

    #[test]
    fn the_old_name_of_the_indexer_queue_setting_still_works() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("AUDITD_INGEST__QUEUE_CAPACITY", "7");
            let config = Config::load(None).unwrap();
            assert_eq!(config.index.queue_capacity, 7);
            assert_eq!(
                config.deprecated(),
                vec![("ingest.queue_capacity", "index.queue_capacity")]
            );
            jail.set_env("AUDITD_INDEX__QUEUE_CAPACITY", "9");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("ingest.queue_capacity"), "{error}");
            jail.set_env("AUDITD_INDEX__QUEUE_CAPACITY", "7");
            assert_eq!(Config::load(None).unwrap().index.queue_capacity, 7);
            Ok(())
        });
        assert!(Config::default().deprecated().is_empty());
    }

    #[test]
    fn an_exact_total_bound_below_a_page_names_its_setting() {
        let mut config = Config::default();
        config.limits.exact_total_hits = config.limits.max_search_limit - 1;
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("limits.exact_total_hits"), "{error}");
    }

    #[test]
    fn a_segment_cap_under_two_events_names_its_setting() {
        let mut config = Config::default();
        config.index.max_segment_docs = 1;
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("index.max_segment_docs"), "{error}");
        config.index.max_segment_docs = 2;
        config.check().unwrap();
        config.index.compact_segment_docs = 1;
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("index.compact_segment_docs"), "{error}");
        config.index.compact_segment_docs = 2;
        config.check().unwrap();
    }

    #[test]
    fn the_readme_retention_example_loads_and_a_zero_day_rule_is_refused() {
        let readme = include_str!("../README.md");
        let block = readme
            .split("```toml\n[retention]")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the README's [retention] example");
        figment::Jail::expect_with(|jail| {
            jail.create_file("auditd.toml", &format!("[retention]{block}"))?;
            let config = Config::load(Some(Path::new("auditd.toml"))).unwrap();
            assert_eq!(config.retention.default_days, Some(365));
            assert_eq!(config.retention.trail_days, Some(2190));
            assert_eq!(config.retention.rules.len(), 2);
            assert_eq!(config.retention.rules[1].actions, vec!["health.*"]);
            jail.set_env("AUDITD_RETENTION__DEFAULT_DAYS", "0");
            let error = Config::load(Some(Path::new("auditd.toml"))).unwrap_err();
            assert!(error.to_string().contains("retention"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn log_is_a_table_or_the_old_filter_string() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("old.toml", "log = \"debug\"\n")?;
            let config = Config::load(Some(Path::new("old.toml"))).unwrap();
            assert_eq!(config.log.filter, "debug");
            assert_eq!(config.log.kind, LogKind::Local);
            jail.create_file(
                "new.toml",
                "[log]\nkind = \"jetstream\"\n[log.jetstream]\nservers = [\"nats://10.0.0.1:4222\"]\nreplicas = 3\n",
            )?;
            let config = Config::load(Some(Path::new("new.toml"))).unwrap();
            assert_eq!(
                (config.log.kind, config.log.jetstream.replicas),
                (LogKind::Jetstream, 3)
            );
            assert_eq!(config.log.filter, "info");
            jail.set_env("AUDITD_LOG__JETSTREAM__REPLICAS", "2");
            let error = Config::load(Some(Path::new("new.toml"))).unwrap_err();
            assert!(
                error.to_string().contains("log.jetstream.replicas"),
                "{error}"
            );
            jail.create_file("typo.toml", "[log]\nkidn = \"jetstream\"\n")?;
            let error = Config::load(Some(Path::new("typo.toml"))).unwrap_err();
            assert!(error.to_string().contains("kidn"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_cluster_needs_jetstream_and_a_node_of_several_partitions_a_name_naming_the_field() {
        let field = |config: Config| match config.check() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut config = Config::default();
        config.cluster.enabled = true;
        assert_eq!(field(config.clone()), "cluster.enabled");
        config.log.kind = LogKind::Jetstream;
        config.check().unwrap();
        config.cluster.role = Role::Query;
        config.check().unwrap();
        config.cluster.role = Role::Index;
        assert_eq!(field(config.clone()), "cluster.role");
        config.cluster.role = Role::All;
        config.cluster.partitions = 0;
        assert_eq!(field(config.clone()), "cluster.partitions");
        config.cluster.partitions = 2;
        assert_eq!(field(config.clone()), "cluster.node");
        config.cluster.node = "node 1".into();
        assert_eq!(field(config.clone()), "cluster.node");
        config.cluster.node = "node-1".into();
        config.check().unwrap();
        // Every role runs with several partitions.
        for role in [Role::Ingest, Role::Index, Role::Query] {
            config.cluster.role = role;
            config.check().unwrap();
        }
        config.cluster.lease_ms = 999;
        assert_eq!(field(config.clone()), "cluster.lease_ms");
        config.cluster.lease_ms = 10_000;
        config.grpc_addr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(field(config.clone()), "cluster.advertise");
        config.cluster.advertise = "http://10.0.0.7:50051".into();
        config.check().unwrap();
        config.tls.cert = Some("cert.pem".into());
        config.tls.key = Some("key.pem".into());
        assert_eq!(field(config.clone()), "cluster.tls_ca");
        config.cluster.tls_ca = Some("ca.pem".into());
        assert_eq!(field(config.clone()), "cluster.advertise");
        config.cluster.advertise = "https://10.0.0.7:50051".into();
        config.check().unwrap();
        config.cluster.advertise = String::new();
        let bound = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(config.advertised(bound), "https://127.0.0.1:7000");
        config.tls = TlsConfig::default();
        assert_eq!(config.advertised(bound), "http://127.0.0.1:7000");
        config.cluster.tls_ca = None;
        config.cluster.partitions = 1;
        config.cluster.role = Role::All;
        // Off, the section is not looked at but for a role.
        config.cluster.enabled = false;
        config.check().unwrap();
        config.cluster.role = Role::Query;
        assert_eq!(field(config.clone()), "cluster.role");
        assert_eq!("query".parse::<Role>(), Ok(Role::Query));
        assert!("reader".parse::<Role>().is_err());
    }

    #[test]
    fn an_unknown_setting_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("auditd.toml", "[wal]\nsnyc = \"never\"\n")?;
            assert!(Config::load(Some(Path::new("auditd.toml"))).is_err());
            Ok(())
        });
    }
}

//! Metric names, in one place so a dashboard can be written from this file.
//! Exposed in Prometheus form at `/metrics`.

pub const EVENTS_INGESTED: &str = "auditd_events_ingested_total";
pub const EVENTS_REJECTED: &str = "auditd_events_rejected_total";
pub const BATCHES_INGESTED: &str = "auditd_batches_ingested_total";
/// Labelled by `reason`: invalid, overloaded, unavailable, in_flight.
pub const BATCHES_REJECTED: &str = "auditd_batches_rejected_total";
pub const BATCHES_DEDUPLICATED: &str = "auditd_batches_deduplicated_total";
pub const INGEST_SECONDS: &str = "auditd_ingest_duration_seconds";
pub const QUEUE_DEPTH: &str = "auditd_indexer_queue_depth";
/// Bytes of the records appended to the log (header and body; the local
/// log's framing and JetStream's message headers left out), on either log.
pub const WAL_BYTES: &str = "auditd_wal_bytes_total";
pub const WAL_END_POSITION: &str = "auditd_wal_end_position";
pub const WAL_SEGMENTS: &str = "auditd_wal_segments";
pub const WAL_ROTATIONS: &str = "auditd_wal_rotations_total";
pub const WAL_SYNC_SECONDS: &str = "auditd_wal_sync_duration_seconds";
pub const COMMITS: &str = "auditd_index_commits_total";
pub const COMPACTIONS: &str = "auditd_index_compactions_total";
pub const COMMIT_SECONDS: &str = "auditd_index_commit_duration_seconds";
pub const INDEXED_POSITION: &str = "auditd_index_committed_position";
pub const INDEX_DOCS: &str = "auditd_index_docs";
/// Bytes of events held in memory for Tail, committed and live
/// (`search/recent.rs`).
pub const RECENT_EVENTS_BYTES: &str = "auditd_index_recent_events_bytes";
/// Bytes of dense terms' bit sets kept (`search/dense.rs`).
pub const DENSE_TERM_BYTES: &str = "auditd_search_dense_term_bytes";
/// Bytes of index files asked to be read ahead into the page cache
/// (`preload.rs`).
pub const PRELOADED_BYTES: &str = "auditd_index_preloaded_bytes_total";
/// Dense terms' bit sets made.
pub const DENSE_TERM_BUILDS: &str = "auditd_search_dense_term_builds_total";
/// Bit sets not asked for because the builder's queue was full.
pub const DENSE_TERM_BUILDS_DROPPED: &str = "auditd_search_dense_term_builds_dropped_total";
pub const PARTITIONS: &str = "auditd_index_partitions";
pub const SEARCH_SECONDS: &str = "auditd_search_duration_seconds";
pub const REPLAY_SECONDS: &str = "auditd_replay_duration_seconds";
/// Events the background self-audit held against their leaves.
pub const SELF_AUDITED_EVENTS: &str = "auditd_integrity_self_audited_events_total";
/// Self-audit windows started while reads went on, after waiting the
/// longest for a quiet moment (`app::self_audit::QUIET`).
pub const SELF_AUDIT_BUSY_WINDOWS: &str = "auditd_integrity_self_audit_busy_windows_total";
/// Stored events (or hash tiles) that did not match the Merkle tree,
/// labelled by `kind` (modified, missing, unexpected, reordered).
pub const INTEGRITY_VIOLATIONS: &str = "auditd_integrity_violations_total";
/// Checkpoints that could not be POSTed to `integrity.publish_url`.
pub const PUBLISH_ERRORS: &str = "auditd_integrity_publish_errors_total";
/// Checkpoints not POSTed because the previous POST was still in flight.
pub const PUBLISH_SKIPPED: &str = "auditd_integrity_publish_skipped_total";
/// Level-0 hash tiles removed because the index stands in for them
/// (`integrity::compact`).
pub const TILES_COMPACTED: &str = "auditd_integrity_tiles_compacted_total";
/// 1 while a stage (`stage` = wal, index) is degraded by a fault it retries.
pub const DEGRADED: &str = "auditd_degraded";
/// WAL write, sync, rotation and repair errors, labelled by `op`.
pub const WAL_ERRORS: &str = "auditd_wal_errors_total";
/// Index commit errors; each one rolls the writers back and re-reads the
/// WAL from the checkpoint.
pub const INDEX_ERRORS: &str = "auditd_index_errors_total";
/// WAL bytes acknowledged but not yet committed to the index.
pub const INDEX_LAG_BYTES: &str = "auditd_index_lag_bytes";
/// Unix time of the last index commit; `time() - this` is the time since.
pub const LAST_COMMIT_SECONDS: &str = "auditd_index_last_commit_timestamp_seconds";
/// Open gRPC connections.
pub const CONNECTIONS: &str = "auditd_grpc_connections";
/// Connections closed at once because `limits.max_connections` were open.
pub const CONNECTIONS_REFUSED: &str = "auditd_connections_refused_total";
/// Connections closed after `limits.idle_connection_timeout_ms` idle.
pub const CONNECTIONS_IDLE_CLOSED: &str = "auditd_connections_idle_closed_total";
/// Events removed by retention (whole partitions dropped).
pub const RETENTION_DROPPED_EVENTS: &str = "auditd_retention_dropped_events_total";
/// Bytes of index removed by retention.
pub const RETENTION_DROPPED_BYTES: &str = "auditd_retention_dropped_bytes_total";
/// Unix time of the start of the oldest day still kept (absent: none).
pub const RETENTION_OLDEST_SECONDS: &str = "auditd_retention_oldest_day_timestamp_seconds";
/// Legal holds in force.
pub const RETENTION_HOLDS: &str = "auditd_retention_holds";
/// Publishes to a partition refused because another ingest node published
/// there first (`cluster::publish`; each is retried), by `partition`.
pub const CLUSTER_PUBLISH_CONFLICTS: &str = "auditd_cluster_publish_conflicts_total";
/// Records of a partition after the last one this node has read (the
/// consumer's pending count), by `partition`: how far its index trails
/// the stream.
pub const CLUSTER_FOLLOW_LAG: &str = "auditd_cluster_follow_lag_records";
/// Partition leases this node gained or lost (`change` = gained, lost),
/// by `partition`.
pub const CLUSTER_LEASE_CHANGES: &str = "auditd_cluster_lease_changes_total";
/// Seconds a call merged over partitions took, every partition's part
/// included (`cluster::fanout`), by `call` (search, aggregate).
pub const CLUSTER_FANOUT_SECONDS: &str = "auditd_cluster_fanout_duration_seconds";

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
pub const PARTITIONS: &str = "auditd_index_partitions";
pub const SEARCH_SECONDS: &str = "auditd_search_duration_seconds";
pub const REPLAY_SECONDS: &str = "auditd_replay_duration_seconds";
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

/// CPU time (user + system, seconds) this process has used so far, or
/// `None` where `/proc` is not there (not Linux). The load generator and
/// the raw-engine bench report it beside their rates, so that
/// `BENCHMARKS.md` can say where each event's CPU goes.
pub fn process_cpu_seconds() -> Option<f64> {
    proc_stat_cpu_seconds("/proc/self/stat")
}

/// CPU time the calling thread has used so far; see `process_cpu_seconds`.
pub fn thread_cpu_seconds() -> Option<f64> {
    proc_stat_cpu_seconds("/proc/thread-self/stat")
}

/// `utime + stime` of a `/proc/.../stat` file. They are in clock ticks of
/// `USER_HZ`, which Linux fixes at 100 for user space on every common
/// architecture, so 10 ms resolution: plenty over a run of seconds.
fn proc_stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / 100.0)
}

/// The command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`: after it
/// come state (field 3) ... utime (14) and stime (15).
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15_even_with_odd_command_names() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 69 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(800));
        assert_eq!(parse_stat_cpu_ticks("4242 (cut"), None);
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn cpu_readings_rise_with_work_on_linux() {
        if cfg!(target_os = "linux") {
            // Spin until this thread's tick counter moves: a real reading
            // rises with work, and the process's covers the thread's.
            let before = thread_cpu_seconds().unwrap();
            let mut x = 0u64;
            while thread_cpu_seconds().unwrap() <= before {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            let thread = thread_cpu_seconds().unwrap();
            assert!(process_cpu_seconds().unwrap() >= thread);
        }
    }
}

#!/usr/bin/env bash
# End-to-end ingest benchmark (issue 4), every figure from one run of this
# script: the raw-engine limit and auditd's durable ingest on the same
# NDJSON, interleaved run by run, then a run at half the measured rate for
# time to searchable. Each run also loads the same events over HTTP
# (NDJSON to POST /v1/events) into a fresh daemon, and over gRPC again
# with the Merkle tree off (integrity.enabled = false), for what integrity
# costs in the same run (on first in odd runs, off first in even ones). Each auditd run starts on an empty data directory
# with the embedded defaults (sync = always).
#
#   scripts/bench_ingest.sh                  # 1,000,000 events, 3 runs
#   COUNT=200000 RUNS=5 scripts/bench_ingest.sh
#   HTTP=0 scripts/bench_ingest.sh           # without the HTTP runs
#
# Writes target/bench-ingest/*.json and prints a summary (python3 formats
# it). Events come from ../shared/workload/gen_events.py when it is there,
# else from `auditctl gen` (the same shape and skew, ported to Rust).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-1000000}
RUNS=${RUNS:-3}
STREAMS=${STREAMS:-4}
BATCH=${BATCH:-1000}
GRPC_PORT=${GRPC_PORT:-50951}
HTTP_PORT=${HTTP_PORT:-50952}
OUT=${OUT:-target/bench-ingest}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*-cpu-*.txt

cargo build --release --bins
cargo bench --bench raw_engine --no-run
source scripts/bench_common.sh

NDJSON="$OUT/events-$COUNT.ndjson"
ensure_ndjson "$NDJSON"

# Starts auditd (on a fresh data directory unless DATA is set and KEEP=1);
# sets PID and DATA; returns once it answers a search.
start_daemon() {
    if [ "${KEEP:-0}" != 1 ]; then DATA=$(mktemp -d "$OUT/data.XXXXXX"); fi
    "$AUDITD" --data-dir "$DATA" --grpc-addr "127.0.0.1:$GRPC_PORT" \
        --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do
        if "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$DATA" \
            search --limit 1 > /dev/null 2>&1; then
            return
        fi
        kill -0 "$PID" || { cat "$OUT/auditd.log"; exit 1; }
        sleep 0.1
    done
    echo "auditd did not answer within 60 s" >&2
    exit 1
}

# Stops it (SIGTERM: commit, exit) once its merges have settled, and
# records peak RSS and disk use: the disk figure is the one after catching
# up that issue 4 asks for.
stop_daemon() {
    local name=$1 hwm settled
    settled=$(wait_settled "$DATA/index")
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
    kill -TERM "$PID"
    wait "$PID"
    local tlog=0
    if [ -d "$DATA/tlog" ]; then tlog=$(du -sb "$DATA/tlog" | cut -f1); fi
    echo "{\"peak_rss_kib\":$hwm,\"settle_seconds\":$settled,\"index_bytes\":$(du -sb "$DATA/index" | cut -f1),\"wal_bytes\":$(du -sb "$DATA/wal" | cut -f1),\"tlog_bytes\":$tlog,\"ndjson_bytes\":$(stat -L -c %s "$NDJSON")}" \
        > "$OUT/$name-daemon.json"
    rm -rf "$DATA"
}

# The daemon's CPU so far, in clock ticks, to $1: a "process - ticks" line,
# then "tid name ticks" per live thread. bench_summary.py takes the
# difference across a load, thread name by thread name; threads that ended
# meanwhile (Tantivy's indexing workers end at each commit) are what the
# process used beyond its live threads.
cpu_snapshot() {
    local task
    {
        echo "process - $(cut -d')' -f2- "/proc/$PID/stat" | awk '{print $12 + $13}')"
        for task in /proc/"$PID"/task/*; do
            # A thread may end between the glob and the read: skipped.
            echo "${task##*/} $(tr ' ' '_' < "$task/comm" 2>/dev/null) $(cut -d')' -f2- "$task/stat" 2>/dev/null | awk '{print $12 + $13}')"
        done
    } > "$1"
}

load() {
    "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$DATA" \
        load "$NDJSON" --streams "$STREAMS" --batch-size "$BATCH" --json "$@"
}

for run in $(seq "$RUNS"); do
    echo "== run $run/$RUNS: raw engine" >&2
    BENCH_NDJSON="$NDJSON" BENCH_RUNS=1 cargo bench --bench raw_engine -q 2>/dev/null \
        | grep '"run"' > "$OUT/raw-$run.json"
    # Integrity on and off take turns going first, so that neither
    # always follows the raw engine's run or the other's clean-up.
    if [ $((run % 2)) = 1 ]; then ORDER="e2e off"; else ORDER="off e2e"; fi
    for name in $ORDER; do
        if [ "$name" = off ]; then
            echo "== run $run/$RUNS: auditd, closed loop, integrity off" >&2
            export AUDITD_INTEGRITY__ENABLED=false
        else
            echo "== run $run/$RUNS: auditd, closed loop" >&2
        fi
        start_daemon
        unset AUDITD_INTEGRITY__ENABLED
        cpu_snapshot "$OUT/$name-$run-cpu-before.txt"
        load > "$OUT/$name-$run.json"
        cpu_snapshot "$OUT/$name-$run-cpu-after.txt"
        stop_daemon "$name-$run"
    done
    if [ "${HTTP:-1}" != 0 ]; then
        echo "== run $run/$RUNS: auditd, closed loop, over HTTP (NDJSON to POST /v1/events)" >&2
        start_daemon
        load --http "http://127.0.0.1:$HTTP_PORT" > "$OUT/http-$run.json"
        stop_daemon "http-$run"
    fi
done

HALF=$(python3 -c "
import json, statistics, sys
rates = [json.load(open(f'$OUT/e2e-{r}.json'))['events_per_sec'] for r in range(1, $RUNS + 1)]
print(round(statistics.median(rates) / 2))")
echo "== auditd at half the median rate ($HALF events/s), time to searchable" >&2
start_daemon
load --rate "$HALF" --markers 200 > "$OUT/half.json"
stop_daemon half

echo "== start-up with $COUNT acknowledged events only in the WAL" >&2
# No commit for an hour: every acknowledged event is only in the WAL when
# the SIGKILL comes; the restart replays and indexes all of them before it
# answers.
export AUDITD_INDEX__COMMIT_INTERVAL_MS=3600000
start_daemon
unset AUDITD_INDEX__COMMIT_INTERVAL_MS
load --markers 0 --no-wait > "$OUT/unindexed-load.json"
kill -KILL "$PID"
wait "$PID" || true
STARTED=$(date +%s.%N)
KEEP=1 start_daemon
READY=$(date +%s.%N)
COUNTED=$("$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$DATA" search --limit 1 --exact-total 2>&1 >/dev/null | awk 'NR == 1 {print $1}')
echo "{\"seconds_to_serving\":$(python3 -c "print(round($READY - $STARTED, 3))"),\"events_searchable\":$COUNTED}" > "$OUT/startup.json"
stop_daemon startup

python3 scripts/bench_summary.py "$OUT" "$RUNS"

#!/usr/bin/env bash
# Analysis figures (issue 16) on the 10,000,000-event index of
# scripts/bench_search.sh (built first when target/bench-search/data is
# missing):
#   - Aggregate: `auditctl bench-aggregate` (count by action over one day,
#     top 10 addresses over everything, failures per hour of one access
#     over 30 days), each ITERATIONS times;
#   - Export: `auditctl export --format ndjson > /dev/null` of everything,
#     RUNS times, events/s;
#   - Tail: scripts/bench_tail.sh (a fresh data directory, HALF events/s
#     for TAIL_SECONDS).
#
#   scripts/bench_analysis.sh
#   ITERATIONS=20 RUNS=1 HALF=75000 TAIL_SECONDS=30 scripts/bench_analysis.sh
#
# Writes target/bench-analysis/*.json and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."

ITERATIONS=${ITERATIONS:-100}
RUNS=${RUNS:-3}
HALF=${HALF:-75000}
TAIL_SECONDS=${TAIL_SECONDS:-30}
GRPC_PORT=${GRPC_PORT:-50971}
HTTP_PORT=${HTTP_PORT:-50972}
OUT=target/bench-analysis
DATA=target/bench-search/data
mkdir -p "$OUT"

if [ ! -f "$DATA/FORMAT" ]; then
    PER_SHAPE=1 scripts/bench_search.sh
fi
cargo build --release --bins
source scripts/bench_common.sh

start() { # data directory
    "$AUDITD" --data-dir "$1" --grpc-addr "127.0.0.1:$GRPC_PORT" \
        --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd.log" 2>&1 &
    PID=$!
    for _ in $(seq 1200); do
        "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$1" \
            search --limit 1 > /dev/null 2>&1 && return
        kill -0 "$PID"
        sleep 0.1
    done
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
ctl() { "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$DATA" "$@"; }

start "$DATA"
echo "== aggregate, $ITERATIONS iterations each" >&2
ctl bench-aggregate --iterations "$ITERATIONS" --json > "$OUT/aggregate.json"
ctl bench-aggregate --iterations "$ITERATIONS"

echo "== export of everything as NDJSON to /dev/null, $RUNS runs" >&2
# Every event but the read trail: what "top 10 ips, everything" counted.
TOTAL=$(python3 -c "import json; print(json.load(open('$OUT/aggregate.json'))['top 10 ips, everything']['count'])")
for r in $(seq "$RUNS"); do
    STARTED=$(date +%s.%N)
    ctl export --format ndjson > /dev/null
    ENDED=$(date +%s.%N)
    python3 -c "s=$ENDED-$STARTED; print(f'run $r: {s:.1f} s')" >&2
    echo "$STARTED $ENDED" >> "$OUT/export-times.txt.$$"
done
python3 - "$OUT/export-times.txt.$$" "$TOTAL" > "$OUT/export.json" <<'PY'
import json, statistics, sys
times = [float(b) - float(a) for a, b in (l.split() for l in open(sys.argv[1]))]
total = int(sys.argv[2])
rates = sorted(total / t for t in times)
print(json.dumps({"events": total, "seconds": times,
                  "events_per_sec_median": statistics.median(rates),
                  "events_per_sec_min": rates[0], "events_per_sec_max": rates[-1]}))
PY
rm -f "$OUT/export-times.txt.$$"
cat "$OUT/export.json"
stop
trap - EXIT

GRPC_PORT=$GRPC_PORT HTTP_PORT=$HTTP_PORT HALF=$HALF TAIL_SECONDS=$TAIL_SECONDS \
    scripts/bench_tail.sh

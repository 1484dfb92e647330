#!/usr/bin/env bash
# Tail delivery (issue 16) on a fresh data directory: `auditctl
# bench-tail` follows everything while `auditctl load` ingests at HALF
# events/s (half of the maximum ingest in BENCHMARKS.md) for TAIL_SECONDS,
# and reports acknowledged-to-delivered and received-to-delivered
# latency, beside the load's own time to searchable for the same events.
#
#   scripts/bench_tail.sh
#   HALF=75000 TAIL_SECONDS=30 scripts/bench_tail.sh
#
# Writes target/bench-analysis/tail.json and tail-load.json. Run by
# scripts/bench_analysis.sh; needs no index of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

HALF=${HALF:-75000}
TAIL_SECONDS=${TAIL_SECONDS:-30}
GRPC_PORT=${GRPC_PORT:-50971}
HTTP_PORT=${HTTP_PORT:-50972}
OUT=target/bench-analysis
TAIL_DATA=$OUT/tail-data
mkdir -p "$OUT"
cargo build --release --bins
source scripts/bench_common.sh

rm -rf "$TAIL_DATA"
"$AUDITD" --data-dir "$TAIL_DATA" --grpc-addr "127.0.0.1:$GRPC_PORT" \
    --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd-tail.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
tctl() { "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$TAIL_DATA" "$@"; }
for _ in $(seq 1200); do
    tctl search --limit 1 > /dev/null 2>&1 && break
    kill -0 "$PID"
    sleep 0.1
done

echo "== tail while ingesting at $HALF events/s for $TAIL_SECONDS s" >&2
# The tail follows a little longer than the load runs, so it sees every
# event; the load reports time to searchable for the same events, and
# writes when each batch was acknowledged, for the tail's
# acknowledged-to-delivered figure (issue 16's measure; received-to-
# delivered also counts the wait for the log's fsync).
rm -f "$OUT/tail-acks.txt"
tctl bench-tail --seconds $((TAIL_SECONDS + 10)) --ack-log "$OUT/tail-acks.txt" --json > "$OUT/tail.json" &
TAIL_PID=$!
tctl load --generate $((HALF * TAIL_SECONDS)) --rate "$HALF" --markers 200 \
    --ack-log "$OUT/tail-acks.txt" --json > "$OUT/tail-load.json"
wait "$TAIL_PID"
python3 -c "import json; r = json.load(open('$OUT/tail-load.json')); print('load:', {k: v for k, v in r.items() if 'search' in k or 'ack' in k or k == 'events_per_sec'})"
cat "$OUT/tail.json"
kill -TERM "$PID"
wait "$PID" || true

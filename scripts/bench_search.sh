#!/usr/bin/env bash
# Search latency on a 10,000,000-event index (issues 4 and 17): builds the
# index from `gen_events.py --count 10000000` with `auditctl ingest` into a
# release auditd with its defaults, then times the seeded random mix of
# `auditctl bench-search` (every shape PER_SHAPE times, each with values
# drawn from the data with SEED, after one warm-up), over gRPC on
# loopback, twice.
#
#   scripts/bench_search.sh                       # 10 M events, 200 a shape
#   COUNT=1000000 PER_SHAPE=500 SEED=7 scripts/bench_search.sh
#   REUSE=1 FSYNC_DELAY_MS=2 scripts/bench_search.sh  # a disk whose fsync takes 2 ms
#   COUNT=100000000 STREAM=1 scripts/bench_search.sh  # 100 M, no NDJSON file
#   REUSE=1 ONLY="free text" SLOWEST=5 scripts/bench_search.sh  # one shape, its 5 slowest queries
#
# STREAM=1 pipes `auditctl gen` into `auditctl ingest -` instead of
# writing the NDJSON first (100 M events are about 30 GB of it, and the
# Python generator takes some 40 minutes for them); its events have the
# same shape and skew, not the same bytes. The index is then set against
# the bytes the generator wrote, counted on the way.
#
# FSYNC_DELAY_MS builds the daemon with the `failpoints` feature and arms
# `wal::fsync=sleep(N)`: every WAL fsync, the trail of each search's
# included, takes N ms more (this VM's own fsync is nearly free).
#
# Writes target/bench-search/search.json and prints the table. The data
# directory is kept (target/bench-search/data) so a second run with
# REUSE=1 skips the ingest.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-10000000}
PER_SHAPE=${PER_SHAPE:-200}
SEED=${SEED:-1}
GRPC_PORT=${GRPC_PORT:-50961}
HTTP_PORT=${HTTP_PORT:-50962}
OUT=${OUT:-target/bench-search}
DATA=$OUT/data
mkdir -p "$OUT"

if [ -n "${FSYNC_DELAY_MS:-}" ]; then
    cargo build --release --bins --features failpoints
    export FAILPOINTS="wal::fsync=sleep($FSYNC_DELAY_MS)"
else
    cargo build --release --bins
fi
source scripts/bench_common.sh
ctl() { "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$DATA" "$@"; }

NDJSON="$OUT/events-$COUNT.ndjson"
if [ "${STREAM:-0}" != 1 ]; then ensure_ndjson "$NDJSON"; fi
if [ "${REUSE:-0}" != 1 ]; then rm -rf "$DATA"; fi

"$AUDITD" --data-dir "$DATA" --grpc-addr "127.0.0.1:$GRPC_PORT" \
    --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID' EXIT
for _ in $(seq 1200); do
    ctl search --limit 1 > /dev/null 2>&1 && break
    kill -0 "$PID"
    sleep 0.1
done

if [ "${REUSE:-0}" != 1 ]; then
    echo "== ingesting $COUNT events" >&2
    STARTED=$(date +%s.%N)
    if [ "${STREAM:-0}" = 1 ]; then
        "$AUDITCTL" gen --count "$COUNT" | tee >(wc -c > "$OUT/streamed-bytes") |
            ctl ingest - --quiet
    else
        ctl ingest "$NDJSON" --quiet
    fi
    echo "== ingested in $(python3 -c "print(round($(date +%s.%N) - $STARTED, 1))") s" >&2
fi
echo "== merges settled after $(wait_settled "$DATA/index") s" >&2
if [ "${STREAM:-0}" = 1 ]; then BYTES=$(cat "$OUT/streamed-bytes"); else BYTES=$(stat -L -c %s "$NDJSON"); fi
echo "== index: $(du -sb "$DATA/index" | cut -f1) bytes for $BYTES bytes of NDJSON" >&2
MIX=(--per-shape "$PER_SHAPE" --seed "$SEED")
if [ -n "${ONLY:-}" ]; then MIX+=(--only "$ONLY"); fi
if [ -n "${SLOWEST:-}" ]; then MIX+=(--slowest "$SLOWEST"); fi
echo "== search mix, $PER_SHAPE queries a shape, seed $SEED, two passes" >&2
ctl bench-search "${MIX[@]}" --json > "$OUT/search.json"
ctl bench-search "${MIX[@]}"

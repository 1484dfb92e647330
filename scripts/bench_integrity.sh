#!/usr/bin/env bash
# The Merkle log's read-side figures (issue 19): inclusion proof latency
# and the full audit's rate, on a daemon holding COUNT events, and the
# disk the tree and checkpoints take beside the index. (What integrity
# costs at ingest is in scripts/bench_ingest.sh: its integrity-off runs.)
#
#   scripts/bench_integrity.sh                 # 1,000,000 events
#   COUNT=10000000 scripts/bench_integrity.sh
#
# The background self-audit is off here, so that it does not share the
# machine with what is measured. Writes target/bench-integrity/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-1000000}
GRPC_PORT=${GRPC_PORT:-50961}
HTTP_PORT=${HTTP_PORT:-50962}
OUT=${OUT:-target/bench-integrity}
mkdir -p "$OUT"
cargo build --release --bins
source scripts/bench_common.sh
NDJSON="$OUT/events-$COUNT.ndjson"
ensure_ndjson "$NDJSON"

DATA=$(mktemp -d "$OUT/data.XXXXXX")
AUDITD_INTEGRITY__SELF_AUDIT_EVENTS_PER_SECOND=0 "$AUDITD" --data-dir "$DATA" \
    --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
ctl() { "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$DATA" "$@"; }
for _ in $(seq 600); do
    if ctl search --limit 1 > /dev/null 2>&1; then break; fi
    sleep 0.1
done

echo "== loading $COUNT events" >&2
# No time-to-searchable probes: their searches' trail events, dated
# today, would sit between the generated events (dated 2023-11-14) and
# keep those level-0 tiles from compaction, which only replaces a tile
# whose events are all of one day (docs/integrity.md, 4). In production
# the trail and the events share their day.
ctl load "$NDJSON" --streams 4 --batch-size 1000 --markers 0 --json > "$OUT/load.json"
settled=$(wait_settled "$DATA/index")
echo "== inclusion proofs (index settled after ${settled} s)" >&2
ctl bench-proof --count 2000 > "$OUT/proof.json"
echo "== full audit" >&2
started=$(date +%s.%N)
ctl verify --full > "$OUT/audit.txt"
ended=$(date +%s.%N)
checked=$(awk '/^ok:/ {print $2}' "$OUT/audit.txt")
python3 - "$OUT" "$started" "$ended" "$checked" "$DATA" <<'PY'
import json, subprocess, sys
out, started, ended, checked, data = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
du = lambda p: int(subprocess.check_output(["du", "-sb", f"{data}/{p}"]).split()[0])
audit = {"events": checked, "seconds": round(ended - started, 2), "events_per_sec": round(checked / (ended - started))}
disk = {"index_bytes": du("index"), "tlog_bytes": du("tlog")}
disk["tlog_per_index"] = round(disk["tlog_bytes"] / disk["index_bytes"], 4)
# Of the tree: the leaf fingerprints of compacted blocks, and the level-0
# tiles still on disk (the last, unfinished block, and tiles compaction
# kept: events of two days, a missing or a forged event).
import os
du_if = lambda p: du(p) if os.path.exists(f"{data}/{p}") else 0
disk["fingerprint_bytes"] = du_if("tlog/fingerprints")
disk["level0_tile_bytes"] = du_if("tlog/tile/0") + du_if("tlog/leaves")
json.dump(audit, open(f"{out}/audit.json", "w"))
json.dump(disk, open(f"{out}/disk.json", "w"))
proof = json.load(open(f"{out}/proof.json"))
print(f"inclusion proofs on {proof['tree_size']:,} leaves: p50 {proof['p50_ms']:.2f} ms, p99 {proof['p99_ms']:.2f} ms, "
      f"max {proof['max_ms']:.2f} ms ({proof['proofs']} proofs)")
print(f"full audit: {audit['events']:,} events in {audit['seconds']} s = {audit['events_per_sec']:,} events/s")
print(f"disk: tree + checkpoints {disk['tlog_bytes']:,} B, index {disk['index_bytes']:,} B: {disk['tlog_per_index']:.4f} of the index "
      f"(fingerprints {disk['fingerprint_bytes']:,} B, level-0 tiles {disk['level0_tile_bytes']:,} B)")
PY
kill -TERM "$PID"
wait "$PID" || true
rm -rf "$DATA"

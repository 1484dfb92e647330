#!/usr/bin/env bash
# Writes tests/fixtures/format-<N>/: a data directory written by an older
# auditd, for tests/migrate.rs and tests/integrity.rs. The fixtures in
# the tree:
#   format 1: commit 53d9c9c (no FORMAT file, bare prost log records,
#             byte-derived seqs, plain-number commit payloads);
#   format 2: commit f880949 (typed records and dense seqs, no salts and
#             no Merkle tree);
#   format 3: commit 4544b2c (salts, the Merkle tree, version 1 leaves);
#   format 7: commit 965de81 (version 2 leaves, a batch's salts from one
#             seed the tree keeps, compacted tiles), the last before
#             version 3 leaves.
#
# It builds that commit in a scratch git worktree (a debug build, in its
# own target directory: minutes), then runs
# it on loopback:
#   1. 600 events of one day (seed 7), ingested until searchable, and one
#      search (a read-trail event); small WAL segments, so the log is
#      trimmed behind the commits; a clean stop (SIGTERM);
#   2. 400 events of the next day (seed 8), with commits turned off, then
#      SIGKILL: these are only in the log.
# The events' NDJSON goes beside the data directory, so the test can check
# every field of every event after `auditd migrate`.
#
# Usage: scripts/make_old_format_fixture.sh 1|2|3|7   (from anywhere; needs git)
set -euo pipefail
cd "$(dirname "$0")/.."
FORMAT=${1:?usage: $0 1|2|3|7}
case "$FORMAT" in
  1) OLD_COMMIT=53d9c9c ;;
  2) OLD_COMMIT=f880949 ;;
  3) OLD_COMMIT=4544b2c ;;
  7) OLD_COMMIT=965de81 ;;
  *) echo "no fixture for format $FORMAT" >&2; exit 2 ;;
esac
SRC=target/format-$FORMAT-src
OUT=tests/fixtures/format-$FORMAT

if [ ! -d "$SRC" ]; then
  git worktree add --detach "$SRC" "$OLD_COMMIT"
fi
(cd "$SRC" && CARGO_TARGET_DIR="$PWD/../old-format-target" cargo build --bin auditd --bin auditctl)
BIN=target/old-format-target/debug

SCRATCH=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
DATA=$SCRATCH/data
GRPC=127.0.0.1:50151
HTTP=127.0.0.1:50152

start() {
  env "$@" "$BIN/auditd" --data-dir "$DATA" --grpc-addr "$GRPC" --http-addr "$HTTP" \
    >"$SCRATCH/auditd.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    grep -q 'serving' "$SCRATCH/auditd.log" && return 0
    sleep 0.1
  done
  echo "the old auditd did not start:" >&2
  cat "$SCRATCH/auditd.log" >&2
  exit 1
}
ctl() { "$BIN/auditctl" --addr "http://$GRPC" --data-dir "$DATA" "$@"; }

"$BIN/auditctl" gen --count 600 --seed 7 --accesses 20 --subjects 10 --addresses 50 \
  --start 1700000000 >"$SCRATCH/indexed.ndjson"
"$BIN/auditctl" gen --count 400 --seed 8 --accesses 20 --subjects 10 --addresses 50 \
  --start 1700090000 >"$SCRATCH/log-only.ndjson"

start AUDITD_WAL__SEGMENT_BYTES=65536
ctl ingest --quiet --batch-size 100 "$SCRATCH/indexed.ndjson"
ctl search --limit 1 >/dev/null
kill -TERM "$PID"
wait "$PID"

start AUDITD_WAL__SEGMENT_BYTES=65536 AUDITD_INDEX__COMMIT_INTERVAL_MS=3600000
ctl ingest --quiet --no-wait --batch-size 100 "$SCRATCH/log-only.ndjson"
kill -KILL "$PID"
wait "$PID" || true

rm -rf "$OUT"
mkdir -p "$OUT"
rm -f "$DATA/LOCK"
cp -r "$DATA" "$OUT/data"
cp "$SCRATCH/indexed.ndjson" "$SCRATCH/log-only.ndjson" "$OUT/"
echo "wrote $OUT:"
find "$OUT" -type f | sort | xargs ls -l

#!/usr/bin/env bash
# Ingest at the maximum rate (auditctl load, 1,000,000 events) into a fresh
# release auditd, with and without a Tail subscriber that stops reading (its
# stdout is a FIFO nobody reads), two rounds interleaved; prints events/s and
# the daemon's peak RSS (VmHWM) of each run. Needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
for round in 1 2; do for mode in none stalled; do
  D=$(mktemp -d)
  target/release/auditd --data-dir $D --grpc-addr 127.0.0.1:50993 --http-addr 127.0.0.1:50994 > $D/log 2>&1 &
  PID=$!
  C="target/release/auditctl --addr http://127.0.0.1:50993 --data-dir $D"
  for i in $(seq 100); do $C search --limit 1 >/dev/null 2>&1 && break; sleep 0.1; done
  if [ $mode = stalled ]; then
    mkfifo $D/fifo
    exec 3<>$D/fifo   # held open, never read: auditctl blocks on its stdout
    $C tail --format json > $D/fifo 2>/dev/null &
    TAIL=$!
    sleep 1
  fi
  R=$($C load --generate 1000000 --json 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print(round(r['events_per_sec']))")
  HWM=$(grep VmHWM /proc/$PID/status | awk '{print $2}')
  echo "round $round $mode: $R events/s, daemon VmHWM $((HWM/1024)) MiB"
  [ $mode = stalled ] && { kill $TAIL; exec 3>&-; }
  kill -TERM $PID; wait $PID; rm -rf $D
done; done

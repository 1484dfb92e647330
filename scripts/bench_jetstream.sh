#!/usr/bin/env bash
# The JetStream log and a cluster node against the local log, interleaved
# in one run set: the same NDJSON loaded over gRPC into a fresh daemon on
# each, RUNS times. The JetStream daemon publishes to a one-server
# nats-server (R1, max_payload 16 MiB) started here, on a fresh stream
# each run; the cluster node ([cluster] enabled, one partition) publishes
# each batch by compare-and-set and indexes what it reads back; two
# cluster nodes on one stream each take half the file at once (two loads
# in parallel, one a node), and every node indexes all of it; then the
# same two nodes on a stream of PARTS partitions (4), each owning half of
# them, timed until every event is searchable (a node acknowledges once
# the stream holds a batch; its partitions' owners index it after).
#
#   scripts/bench_jetstream.sh                 # 300,000 events, 3 runs
#   COUNT=1000000 RUNS=5 scripts/bench_jetstream.sh
#
# Needs nats-server (scripts/test.sh installs Debian's). Writes
# target/bench-jetstream/*.json and prints medians, spreads, the ratio,
# and the CPU seconds nats-server and auditd spent per million events
# (what docs/cluster.md sizes a cluster from).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-300000}
RUNS=${RUNS:-3}
STREAMS=${STREAMS:-4}
PARTS=${PARTS:-4}
BATCH=${BATCH:-1000}
GRPC_PORT=${GRPC_PORT:-50961}
HTTP_PORT=${HTTP_PORT:-50962}
NATS_PORT=${NATS_PORT:-50963}
OUT=${OUT:-target/bench-jetstream}
mkdir -p "$OUT"
rm -f "$OUT"/*.json

cargo build --release --bins
source scripts/bench_common.sh
NDJSON="$OUT/events-$COUNT.ndjson"
ensure_ndjson "$NDJSON"

NATS_DIR=$(mktemp -d "$OUT/nats.XXXXXX")
cat > "$NATS_DIR/nats.conf" <<CONF
listen: "127.0.0.1:$NATS_PORT"
max_payload: 16MB
jetstream { store_dir: "$NATS_DIR/store" }
CONF
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
"$NATS" -c "$NATS_DIR/nats.conf" > "$OUT/nats.log" 2>&1 &
NATS_PID=$!
# Daemons still running when the script stops early are stopped with NATS.
DAEMONS=""
trap 'kill $DAEMONS "$NATS_PID" 2>/dev/null || true' EXIT

# Seconds of CPU (user + system) process $1 has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

run_one() {
    local name=$1
    local data
    data=$(mktemp -d "$OUT/data.XXXXXX")
    "$AUDITD" --data-dir "$data" --grpc-addr "127.0.0.1:$GRPC_PORT" \
        --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd.log" 2>&1 &
    local pid=$!
    DAEMONS="$pid"
    for _ in $(seq 600); do
        if "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$data" \
            search --limit 1 > /dev/null 2>&1; then break; fi
        kill -0 "$pid" || { cat "$OUT/auditd.log"; exit 1; }
        sleep 0.1
    done
    local nats_before auditd_before
    nats_before=$(cpu_seconds "$NATS_PID")
    auditd_before=$(cpu_seconds "$pid")
    "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" --data-dir "$data" \
        load "$NDJSON" --streams "$STREAMS" --batch-size "$BATCH" --json > "$OUT/$name.json"
    awk -v n0="$nats_before" -v n1="$(cpu_seconds "$NATS_PID")" \
        -v a0="$auditd_before" -v a1="$(cpu_seconds "$pid")" \
        'BEGIN { printf "{\"nats\": %.2f, \"auditd\": %.2f}\n", n1 - n0, a1 - a0 }' > "$OUT/$name.cpu"
    kill -TERM "$pid"
    wait "$pid"
    rm -rf "$data"
}

# Waits until the daemon $1 on gRPC port $2 answers a search (token $3).
wait_answering() {
    for _ in $(seq 600); do
        if AUDITCTL_TOKEN=$3 "$AUDITCTL" --addr "http://127.0.0.1:$2" \
            search --limit 1 > /dev/null 2>&1; then return 0; fi
        kill -0 "$1" || { cat "$OUT/auditd.log" "$OUT/auditd-2.log"; exit 1; }
        sleep 0.1
    done
    return 1
}

# The exact number of events node's HTTP port $1 finds (token $2).
count_events() {
    python3 - "$1" "$2" <<'PY'
import json, sys, urllib.request
request = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/v1/events?limit=1&exactTotal=true",
    headers={"Authorization": f"Bearer {sys.argv[2]}"})
try:
    print(json.load(urllib.request.urlopen(request, timeout=10))["totalHits"])
except Exception:
    print(-1)
PY
}

# Two cluster nodes on stream $2 of $3 partitions (1 by default): each
# loads half of the file through its own node at once. Writes events/s
# over the wall time of both loads and, with several partitions, until
# every event is searchable.
run_two() {
    local name=$1 stream=$2 partitions=${3:-1}
    local data1 data2 half
    data1=$(mktemp -d "$OUT/data.XXXXXX")
    data2=$(mktemp -d "$OUT/data.XXXXXX")
    half=$(( $(wc -l < "$NDJSON") / 2 ))
    head -n "$half" "$NDJSON" > "$OUT/half-1.ndjson"
    tail -n +"$((half + 1))" "$NDJSON" > "$OUT/half-2.ndjson"
    export AUDITD_LOG__KIND=jetstream AUDITD_CLUSTER__ENABLED=true \
        AUDITD_LOG__JETSTREAM__SERVERS="[\"nats://127.0.0.1:$NATS_PORT\"]" \
        AUDITD_LOG__JETSTREAM__STREAM="$stream" AUDITD_LOG__JETSTREAM__SUBJECT="${stream,,}" \
        AUDITD_CLUSTER__PARTITIONS="$partitions" AUDITD_CLUSTER__LEASE_MS=3000
    AUDITD_CLUSTER__NODE=n1 "$AUDITD" --data-dir "$data1" --grpc-addr "127.0.0.1:$GRPC_PORT" \
        --http-addr "127.0.0.1:$HTTP_PORT" > "$OUT/auditd.log" 2>&1 &
    local pid1=$!
    DAEMONS="$pid1"
    for _ in $(seq 600); do [ -f "$data1/admin.token" ] && break; sleep 0.1; done
    local token
    token=$(cat "$data1/admin.token")
    wait_answering "$pid1" "$GRPC_PORT" "$token"
    AUDITD_CLUSTER__NODE=n2 "$AUDITD" --data-dir "$data2" --grpc-addr "127.0.0.1:$((GRPC_PORT + 10))" \
        --http-addr "127.0.0.1:$((HTTP_PORT + 10))" > "$OUT/auditd-2.log" 2>&1 &
    local pid2=$!
    DAEMONS="$pid1 $pid2"
    wait_answering "$pid2" "$((GRPC_PORT + 10))" "$token"
    unset AUDITD_LOG__KIND AUDITD_CLUSTER__ENABLED AUDITD_LOG__JETSTREAM__SERVERS \
        AUDITD_LOG__JETSTREAM__STREAM AUDITD_LOG__JETSTREAM__SUBJECT AUDITD_CLUSTER__PARTITIONS \
        AUDITD_CLUSTER__LEASE_MS
    if [ "$partitions" -gt 1 ]; then
        # The second node has its share once the first released it: both
        # answer for every partition (an empty stream counts 0, not -1).
        for _ in $(seq 300); do
            local ready
            ready=$( (ls -d "$data2"/partitions/* 2>/dev/null || true) | wc -l)
            [ "$ready" -ge $((partitions / 2)) ] && [ "$(count_events "$HTTP_PORT" "$token")" = 0 ] && break
            sleep 0.1
        done
    fi
    local n0 a0 b0 started
    n0=$(cpu_seconds "$NATS_PID"); a0=$(cpu_seconds "$pid1"); b0=$(cpu_seconds "$pid2")
    started=$(date +%s.%N)
    AUDITCTL_TOKEN=$token "$AUDITCTL" --addr "http://127.0.0.1:$GRPC_PORT" \
        load "$OUT/half-1.ndjson" --streams "$STREAMS" --batch-size "$BATCH" --json > "$OUT/$name.a.json" &
    local load1=$!
    AUDITCTL_TOKEN=$token "$AUDITCTL" --addr "http://127.0.0.1:$((GRPC_PORT + 10))" \
        load "$OUT/half-2.ndjson" --streams "$STREAMS" --batch-size "$BATCH" --json > "$OUT/$name.b.json"
    wait "$load1"
    if [ "$partitions" -gt 1 ]; then
        # Searchable through either node: what the owners have indexed.
        for _ in $(seq 3000); do
            [ "$(count_events "$HTTP_PORT" "$token")" -ge "$COUNT" ] && break
            sleep 0.05
        done
    fi
    awk -v s="$started" -v e="$(date +%s.%N)" -v n="$COUNT" \
        'BEGIN { printf "{\"events_per_sec\": %.1f}\n", n / (e - s) }' > "$OUT/$name.json"
    # auditd: both nodes together (each indexes all of it).
    awk -v n0="$n0" -v n1="$(cpu_seconds "$NATS_PID")" -v a0="$a0" -v b0="$b0" \
        -v a1="$(cpu_seconds "$pid1")" -v b1="$(cpu_seconds "$pid2")" \
        'BEGIN { printf "{\"nats\": %.2f, \"auditd\": %.2f}\n", n1 - n0, a1 - a0 + b1 - b0 }' > "$OUT/$name.cpu"
    kill -TERM "$pid1" "$pid2"
    wait "$pid1" "$pid2" || true
    rm -rf "$data1" "$data2" "$OUT/half-1.ndjson" "$OUT/half-2.ndjson"
}

for run in $(seq "$RUNS"); do
    echo "== run $run/$RUNS: local log" >&2
    run_one "local-$run"
    echo "== run $run/$RUNS: JetStream log (R1, one nats-server)" >&2
    AUDITD_LOG__KIND=jetstream \
    AUDITD_LOG__JETSTREAM__SERVERS="[\"nats://127.0.0.1:$NATS_PORT\"]" \
    AUDITD_LOG__JETSTREAM__STREAM="BENCH_$run" \
    AUDITD_LOG__JETSTREAM__SUBJECT="bench.$run" \
        run_one "jetstream-$run"
    echo "== run $run/$RUNS: cluster node (one partition, R1)" >&2
    AUDITD_LOG__KIND=jetstream AUDITD_CLUSTER__ENABLED=true \
    AUDITD_LOG__JETSTREAM__SERVERS="[\"nats://127.0.0.1:$NATS_PORT\"]" \
    AUDITD_LOG__JETSTREAM__STREAM="CLUSTER_$run" \
    AUDITD_LOG__JETSTREAM__SUBJECT="cluster.$run" \
        run_one "cluster-$run"
    echo "== run $run/$RUNS: two cluster nodes, half the file through each at once" >&2
    run_two "two-nodes-$run" "TWO_$run"
    echo "== run $run/$RUNS: two nodes owning ${PARTS} partitions, until all is searchable" >&2
    run_two "two-parts-$run" "PARTS_$run" "$PARTS"
done

python3 - "$OUT" "$RUNS" "$COUNT" <<'PY'
import json, statistics, sys
out, runs, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate = lambda name, r: json.load(open(f"{out}/{name}-{r}.json"))["events_per_sec"]
names = (("local", "local log"), ("jetstream", "JetStream log"), ("cluster", "cluster node"),
         ("two-nodes", "two nodes"), ("two-parts", "two owners"))
rates = {name: [rate(name, r) for r in range(1, runs + 1)] for name, _ in names}
for name, label in names:
    xs = rates[name]
    print(f"{label:14} median {statistics.median(xs):>9,.0f} events/s  (runs {min(xs):,.0f}–{max(xs):,.0f})")
for name, label in names[1:]:
    ratios = [x / l for x, l in zip(rates[name], rates["local"])]
    print(f"{label} / local, run by run: median {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
for name, _ in names:
    cpu = [json.load(open(f"{out}/{name}-{r}.cpu")) for r in range(1, runs + 1)]
    for proc in ("auditd", "nats"):
        per_million = [c[proc] * 1e6 / count for c in cpu]
        print(f"{name:9} : {proc:6} CPU s per million events, median {statistics.median(per_million):.2f} "
              f"({min(per_million):.2f}–{max(per_million):.2f})")
PY

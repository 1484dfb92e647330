#!/usr/bin/env bash
# A cluster on this machine (issue 21's contract; docs/cluster.md):
#
#   scripts/cluster.sh up     three nats-server processes (a JetStream
#                             cluster, R3) and three auditd nodes on
#                             loopback: two of role `all`, one of role
#                             `query`; returns once every node is SERVING
#                             and writes target/cluster/cluster.json
#   scripts/cluster.sh down   stops them all (auditd first); the data
#                             stays under target/cluster/ and `up` starts
#                             on it again (rm -rf target/cluster for a
#                             fresh cluster)
#
# cluster.json:
#   {"nats": [{"pid": …, "url": "nats://127.0.0.1:4222"}, …],
#    "auditd": [{"pid": …, "role": "all", "grpc": "127.0.0.1:50051",
#                "http": "127.0.0.1:8080", "data_dir": "…"}, …],
#    "admin_token": "adt.…"}
#
# Uses the nats-server on the PATH (or Debian's /usr/sbin/nats-server),
# installing Debian's package when it is missing. Builds auditd and auditctl (release)
# unless BIN_DIR names a directory holding an auditd binary (not an
# AUDITD_ variable: those are the daemon's settings).
# Ports, for several clusters or busy ones (the defaults are the
# example's): NATS_PORTS, ROUTE_PORTS, MONITOR_PORTS (nats-server's
# /healthz), GRPC_PORTS, HTTP_PORTS, three space-separated ports each. CLUSTER_DIR moves target/cluster.
# PARTITIONS (1 by default) is the stream's partition count when `up`
# makes it: with more than one, the two `all` nodes (named node-1 and
# node-2) own the partitions through leases, the `query` node holds no
# index, and Search and Aggregate fan out to the owners (docs/cluster.md).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_DIR=${CLUSTER_DIR:-target/cluster}
read -r -a NATS_PORTS <<< "${NATS_PORTS:-4222 4223 4224}"
read -r -a ROUTE_PORTS <<< "${ROUTE_PORTS:-6222 6223 6224}"
read -r -a GRPC_PORTS <<< "${GRPC_PORTS:-50051 50052 50053}"
read -r -a HTTP_PORTS <<< "${HTTP_PORTS:-8080 8081 8082}"
read -r -a MONITOR_PORTS <<< "${MONITOR_PORTS:-8222 8223 8224}"
ROLES=(all all query)
PARTITIONS=${PARTITIONS:-1}
# How long `up` waits for each process.
WAIT_SECONDS=${WAIT_SECONDS:-120}

# What `up` started so far: stopped again when `up` fails.
STARTED=()
die() {
    echo "cluster.sh: $*" >&2
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
    exit 1
}

nats_binary() {
    if command -v nats-server > /dev/null; then
        command -v nats-server
    elif [ -x /usr/sbin/nats-server ]; then
        echo /usr/sbin/nats-server
    fi
}

install_nats() {
    [ -n "$(nats_binary)" ] && return
    echo "== installing Debian's nats-server" >&2
    local sudo=""
    [ "$(id -u)" != 0 ] && sudo=sudo
    $sudo apt-get install -y -q nats-server \
        || { $sudo apt-get update -q && $sudo apt-get install -y -q nats-server; }
    [ -n "$(nats_binary)" ] || die "nats-server is still missing after apt-get"
}

auditd_binary() {
    if [ -n "${BIN_DIR:-}" ]; then
        [ -x "$BIN_DIR/auditd" ] || die "no auditd in BIN_DIR=$BIN_DIR"
        echo "$BIN_DIR/auditd"
    else
        cargo build --release --bins >&2   # auditd, and auditctl for the README's commands
        echo "$PWD/target/release/auditd"
    fi
}

# Whether something answers on 127.0.0.1:$1 (bash's /dev/tcp: no curl needed).
port_open() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

# The status line of GET $2 on 127.0.0.1:$1.
http_status() {
    local reply
    reply=$( (exec 3<> "/dev/tcp/127.0.0.1/$1" \
        && printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 \
        && head -c 64 <&3) 2> /dev/null) || return 1
    echo "${reply%%$'\r'*}"
}

# Whether the server whose HTTP port is $1 answers /healthz with 200: an
# auditd node SERVING, or a nats-server whose JetStream has its meta
# leader (a new cluster elects one a moment after it forms; a stream
# cannot be made before).
serving() {
    case "$(http_status "$1" /healthz)" in
        "HTTP/1."?" 200"*) return 0 ;;
        *) return 1 ;;
    esac
}

# The last lines of log $1, to quote when a process fails (a test's
# directory, and the log in it, are gone by the time anyone reads why).
log_tail() { printf '\n--- its last lines:\n%s' "$(tail -n 15 "$1" 2> /dev/null)"; }

# wait_for PID LOG COMMAND…: until COMMAND succeeds, or process PID
# exits, or WAIT_SECONDS pass.
wait_for() {
    local pid=$1 log=$2
    shift 2
    for _ in $(seq $((WAIT_SECONDS * 10))); do
        "$@" && return 0
        kill -0 "$pid" 2> /dev/null || die "process $pid exited; its log: $log$(log_tail "$log")"
        sleep 0.1
    done
    die "not ready after ${WAIT_SECONDS}s: $* (log: $log)$(log_tail "$log")"
}

pids_in() { grep -o '"pid": [0-9]*' "$1" | grep -o '[0-9]*$' || true; }

up() {
    local json="$CLUSTER_DIR/cluster.json"
    if [ -f "$json" ]; then
        for pid in $(pids_in "$json"); do
            kill -0 "$pid" 2> /dev/null && die "already up ($json names live process $pid); run down first"
        done
    fi
    install_nats
    local nats auditd
    nats=$(nats_binary)
    auditd=$(auditd_binary)
    mkdir -p "$CLUSTER_DIR"
    local dir
    dir=$(cd "$CLUSTER_DIR" && pwd)

    local nats_pids=() nats_urls=() servers=()
    for i in 0 1 2; do
        servers+=("\"nats://127.0.0.1:${NATS_PORTS[$i]}\"")
    done
    for i in 0 1 2; do
        local n=$((i + 1)) routes=()
        for j in 0 1 2; do
            [ "$j" != "$i" ] && routes+=("nats://127.0.0.1:${ROUTE_PORTS[$j]}")
        done
        mkdir -p "$dir/nats-$n"
        cat > "$dir/nats-$n/nats.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:${NATS_PORTS[$i]}
http: 127.0.0.1:${MONITOR_PORTS[$i]}
max_payload: 16MB
jetstream { store_dir: "$dir/nats-$n/store" }
cluster {
  name: auditd
  listen: 127.0.0.1:${ROUTE_PORTS[$i]}
  routes: [$(IFS=,; echo "${routes[*]}")]
}
EOF
        port_open "${NATS_PORTS[$i]}" && die "port ${NATS_PORTS[$i]} is taken"
        setsid "$nats" -c "$dir/nats-$n/nats.conf" > "$dir/nats-$n.log" 2>&1 < /dev/null &
        nats_pids+=($!)
        STARTED+=($!)
        nats_urls+=("nats://127.0.0.1:${NATS_PORTS[$i]}")
    done
    for i in 0 1 2; do
        wait_for "${nats_pids[$i]}" "$dir/nats-$((i + 1)).log" serving "${MONITOR_PORTS[$i]}"
    done

    # The first node starts alone: on a fresh cluster it makes the first
    # admin token (the tokens bucket's first-admin key) and writes it to
    # its data directory.
    local auditd_pids=()
    for i in 0 1 2; do
        local n=$((i + 1))
        port_open "${GRPC_PORTS[$i]}" && die "port ${GRPC_PORTS[$i]} is taken"
        AUDITD_LOG__KIND=jetstream \
        AUDITD_LOG__JETSTREAM__SERVERS="[$(IFS=,; echo "${servers[*]}")]" \
        AUDITD_LOG__JETSTREAM__REPLICAS=3 \
        AUDITD_CLUSTER__ENABLED=true \
        AUDITD_CLUSTER__PARTITIONS="$PARTITIONS" \
        AUDITD_CLUSTER__NODE="node-$n" \
            setsid "$auditd" --role "${ROLES[$i]}" --data-dir "$dir/node-$n" \
            --grpc-addr "127.0.0.1:${GRPC_PORTS[$i]}" --http-addr "127.0.0.1:${HTTP_PORTS[$i]}" \
            > "$dir/node-$n.log" 2>&1 < /dev/null &
        auditd_pids+=($!)
        STARTED+=($!)
        wait_for "${auditd_pids[$i]}" "$dir/node-$n.log" serving "${HTTP_PORTS[$i]}"
    done

    local token=""
    for n in 1 2 3; do
        if [ -f "$dir/node-$n/admin.token" ]; then
            token=$(tr -d '\n' < "$dir/node-$n/admin.token")
            break
        fi
    done
    [ -n "$token" ] || echo "cluster.sh: no node holds admin.token (a cluster whose tokens bucket outlived its data directories?)" >&2

    {
        echo '{"nats": ['
        for i in 0 1 2; do
            printf '  {"pid": %s, "url": "%s"}%s\n' "${nats_pids[$i]}" "${nats_urls[$i]}" "$([ $i -lt 2 ] && echo ,)"
        done
        echo ' ],'
        echo ' "auditd": ['
        for i in 0 1 2; do
            printf '  {"pid": %s, "role": "%s", "grpc": "127.0.0.1:%s", "http": "127.0.0.1:%s", "data_dir": "%s"}%s\n' \
                "${auditd_pids[$i]}" "${ROLES[$i]}" "${GRPC_PORTS[$i]}" "${HTTP_PORTS[$i]}" \
                "$dir/node-$((i + 1))" "$([ $i -lt 2 ] && echo ,)"
        done
        echo ' ],'
        printf ' "admin_token": "%s"}\n' "$token"
    } > "$json.tmp"
    mv "$json.tmp" "$json"
    echo "up: $json" >&2
}

down() {
    local json="$CLUSTER_DIR/cluster.json"
    [ -f "$json" ] || { echo "cluster.sh: nothing to stop (no $json)" >&2; return 0; }
    # auditd first (it drains into NATS), then NATS; each gets 30 s.
    local auditd_pids nats_pids
    auditd_pids=$(sed -n '/"auditd"/,$p' "$json" | grep -o '"pid": [0-9]*' | grep -o '[0-9]*$' || true)
    nats_pids=$(sed -n '/"nats"/,/"auditd"/p' "$json" | grep -o '"pid": [0-9]*' | grep -o '[0-9]*$' || true)
    for group in "$auditd_pids" "$nats_pids"; do
        for pid in $group; do kill -TERM "$pid" 2> /dev/null || true; done
        for pid in $group; do
            for _ in $(seq 300); do
                kill -0 "$pid" 2> /dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2> /dev/null && echo "cluster.sh: killed $pid after 30 s" >&2 || true
        done
    done
    rm -f "$json"
    echo "down" >&2
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) die "usage: scripts/cluster.sh up|down" ;;
esac

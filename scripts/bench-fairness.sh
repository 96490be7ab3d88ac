#!/usr/bin/env bash
# One tenant floods glia with guests that spin until their timeout; how
# fast do another tenant's no-op calls and /healthz stay?
#
#   1. idle:   the quiet tenant's no-op (`GET /fn/noop/ok`, hostile.wasm) and
#              `GET /healthz`, one connection each, nothing else running
#   2. flood:  the same, while the flooding tenant keeps $FLOOD connections
#              busy with `GET /fn/spin/loop` (spins until its 2 s timeout)
#
# and reports p50 and p99 of each, side by side, against the targets: the
# no-op's p50 under the flood within twice its idle p50 plus one epoch tick
# (10 ms), and /healthz's p99 under 50 ms. glia runs on its defaults (one
# guest thread per core it may use), pinned to $SERVER_CPUS; wrk runs
# pinned to $CLIENT_CPU.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-fairness.sh
#   GLIA_BASELINE=path/to/older/glia scripts/bench-fairness.sh
#
# Environment:
#   DURATION      each measurement's length, a wrk duration (default 10s)
#   FLOOD         the flooding tenant's connections (default 64; its quota of
#                 100 calls in flight leaves them all running)
#   SERVER_CPUS   cores glia is pinned to (default 0)
#   CLIENT_CPU    core wrk is pinned to (default 1)
#   BASE_PORT     loopback port used (default 18190)
#   GLIA_BASELINE another glia binary (an earlier build) measured the same
#                 way after this tree's, for a side-by-side
#
# Needs: cargo with the wasm32-wasip2 target, taskset, curl, wrk (installed
# with apt-get when missing).

set -euo pipefail

DURATION=${DURATION:-10s}
FLOOD=${FLOOD:-64}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18190}
ADDR=127.0.0.1:$BASE_PORT
ADMIN_KEY=glia_bench_fairness_admin_key_000000000000000

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

build_glia_and_noop

# Convert a wrk latency (512.00us, 1.23ms, 2.00s) to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) f = 0.001; else if (v ~ /ms$/) f = 1; else if (v ~ /s$/) f = 1000; else f = 1
        printf "%.2f", n * f
    }'
}

# `POST` JSON ($2) to $ADDR$1 with the admin key; prints the response body.
admin_post() {
    curl -sf -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
        -d "$2" "http://$ADDR$1"
}

# A tenant named $1 with a deploy+invoke key; prints the key.
tenant_key() {
    admin_post /v1/tenants "{\"name\":\"$1\"}" >/dev/null
    admin_post "/v1/tenants/$1/keys" '{"scopes":["deploy","invoke"]}' |
        sed -n 's/.*"key": *"\(glia_[^"]*\)".*/\1/p'
}

# Deploys $COMPONENT as $2 with settings $3 using key $1.
deploy() {
    curl -sf -X PUT -H "Authorization: Bearer $1" --data-binary "@$COMPONENT" \
        "http://$ADDR/v1/functions/$2?$3" >/dev/null
}

# p50 and p99 (ms) of one connection's calls to URL $1 with key $2
# (empty: none): "P50 P99".
latency() {
    local out auth=()
    [[ -n $2 ]] && auth=(-H "Authorization: Bearer $2")
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c1 -d"$DURATION" --latency "${auth[@]}" "$1")
    printf '%s\n' "$out" >&2
    echo "$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")") $(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
}

RESULTS=()

# Measures binary $1 (named $2 in the report).
measure_binary() {
    local binary=$1 name=$2 dir quiet flood flood_pid
    dir=$(mktemp -d -p "$WORK")
    log "$name: starting"
    GLIA_LOG=warn GLIA_ADMIN_KEY=$ADMIN_KEY taskset -c "$SERVER_CPUS" \
        "$binary" serve --listen "$ADDR" --data-dir "$dir/data" >"$dir/glia.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        curl -s -o /dev/null --max-time 1 "http://$ADDR/healthz" && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/glia.log" >&2; exit 1; }
        sleep 0.2
    done
    quiet=$(tenant_key quiet)
    flood=$(tenant_key flood)
    deploy "$quiet" noop ""
    deploy "$flood" spin "timeout_ms=2000&max_concurrency=$FLOOD"
    curl -sf -H "Authorization: Bearer $quiet" "http://$ADDR/fn/noop/ok" >/dev/null

    log "$name: idle"
    read -r noop_idle_50 noop_idle_99 <<<"$(latency "http://$ADDR/fn/noop/ok" "$quiet")"
    read -r health_idle_50 health_idle_99 <<<"$(latency "http://$ADDR/healthz" "")"

    log "$name: flood of $FLOOD spinning calls"
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$FLOOD" -d600s --timeout 10s \
        -H "Authorization: Bearer $flood" "http://$ADDR/fn/spin/loop" >/dev/null 2>&1 &
    flood_pid=$!
    sleep 3
    read -r noop_flood_50 noop_flood_99 <<<"$(latency "http://$ADDR/fn/noop/ok" "$quiet")"
    read -r health_flood_50 health_flood_99 <<<"$(latency "http://$ADDR/healthz" "")"
    kill "$flood_pid" 2>/dev/null || true
    wait "$flood_pid" 2>/dev/null || true
    # SIGTERM, then SIGKILL if the server has not drained within 15 s.
    local stopped=yes
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        stopped="no (killed)"
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=

    RESULTS+=("$name $noop_idle_50 $noop_idle_99 $noop_flood_50 $noop_flood_99 $health_idle_50 $health_idle_99 $health_flood_50 $health_flood_99 $stopped")
}

measure_binary "$GLIA" "glia"
if [[ -n ${GLIA_BASELINE:-} ]]; then
    measure_binary "$GLIA_BASELINE" "baseline"
fi

echo
echo "glia pinned to cores $SERVER_CPUS, wrk to core $CLIENT_CPU; one connection measured for $DURATION; flood: $FLOOD connections on /fn/spin/loop (2 s timeout)"
echo
echo "| build | no-op p50 idle | p99 idle | p50 flood | p99 flood | target p50 (2x idle + 10 ms) | /healthz p50 idle | p99 idle | p50 flood | p99 flood (target < 50 ms) | SIGTERM drained in 15 s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for row in "${RESULTS[@]}"; do
    read -r name n50 n99 f50 f99 h50 h99 hf50 hf99 stopped <<<"$row"
    target=$(awk -v a="$n50" 'BEGIN { printf "%.2f", 2 * a + 10 }')
    echo "| $name | $n50 ms | $n99 ms | $f50 ms | $f99 ms | $target ms | $h50 ms | $h99 ms | $hf50 ms | $hf99 ms | $stopped |"
done

#!/usr/bin/env bash
# Requests per second of a no-op HTTP handler on three servers:
#
#   1. native hyper   `host/examples/native_hello.rs`, route `/`
#   2. glia           `hostile.wasm` deployed as `noop`, route `/fn/noop/ok`;
#                     three runs: metering off (like for like with wasmtime
#                     serve), then `batched` and `strict` billing durability
#   3. wasmtime serve the same `hostile.wasm`, route `/ok`; twice: pooling
#                     on and instance reuse 1 with everything else default,
#                     then with glia's own pool settings (memory reset), to
#                     show what glia's request path is worth on its own
#
# Every handler answers `200 ok`. Each server runs alone, pinned to core 0
# (one tokio worker thread where the server uses tokio); the load generator
# (`wrk`, one thread, 16 connections) runs pinned to core 1. Each server is
# warmed up for 2 s, then measured for $DURATION.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-rps.sh
#   DURATION=30s scripts/bench-rps.sh
#
# Environment:
#   DURATION      measurement length per server, a wrk duration (default 10s)
#   WARMUP        warm-up length per server (default 2s)
#   CONNECTIONS   wrk connections (default 16)
#   SERVER_CPU    core the server is pinned to (default 0)
#   CLIENT_CPU    core wrk is pinned to (default 1)
#   BASE_PORT     first of three loopback ports used (default 18090)
#   GLIA_BASELINE other glia binaries (earlier builds, space-separated) to
#                 measure too, with metering off, right after this tree's
#                 glia: a change's effect side by side in one run
#
# Needs: cargo with the wasm32-wasip2 target, taskset (util-linux), curl, and
# wrk (installed with apt-get when missing). The first run also builds
# wasmtime-cli 48.0.8 (the wasmtime release glia embeds) into
# target/bench-tools, which takes a long while; later runs reuse it.

set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18090}
WASMTIME_VERSION=48.0.8

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

GLIA=target/release/glia
NATIVE=target/release/examples/native_hello
TOOLS=target/bench-tools
WASMTIME=$TOOLS/bin/wasmtime

NATIVE_ADDR=127.0.0.1:$BASE_PORT
GLIA_ADDR=127.0.0.1:$((BASE_PORT + 1))
WASMTIME_ADDR=127.0.0.1:$((BASE_PORT + 2))

COMMANDS=()

# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

# Run a command and remember it for the report.
run() {
    COMMANDS+=("$*")
    "$@"
}

# --- builds -----------------------------------------------------------------

log "building glia and native_hello (release)"
run cargo build --release -p glia-host --example native_hello --bin glia

log "building the no-op component"
run cargo build --manifest-path tests/fixtures/Cargo.toml --target wasm32-wasip2 \
    --release --target-dir target/wasm

WASMTIME_OK=1
if [[ ! -x $WASMTIME ]]; then
    log "building wasmtime-cli $WASMTIME_VERSION into $TOOLS (slow, once)"
    # `serve` is one of wasmtime-cli's default features.
    if ! run cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --root "$TOOLS"; then
        log "wasmtime-cli build failed; wasmtime serve is skipped"
        WASMTIME_OK=0
    fi
fi

# --- measurement --------------------------------------------------------------

# Wait until $1 answers any HTTP request (up to 30 s).
wait_ready() {
    local url=$1
    for _ in $(seq 300); do
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "error: server exited before answering $url" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "error: $url did not answer within 30 s" >&2
    return 1
}

# Check that $1 answers `200 ok`, so the benchmark measures the no-op path.
check_ok() {
    local url=$1 out
    out=$(curl -s -w ' %{http_code}' ${AUTH_HEADER:+-H "$AUTH_HEADER"} "$url")
    if [[ $out != "ok 200" ]]; then
        echo "error: $url answered '$out', expected 'ok 200'" >&2
        return 1
    fi
}

# Convert a wrk latency (e.g. 512.00us, 1.23ms, 2.00s) to microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) f = 1; else if (v ~ /ms$/) f = 1000;
        else if (v ~ /m$/) f = 60000000; else if (v ~ /s$/) f = 1000000; else f = 1
        printf "%.0f", n * f
    }'
}

# Load $1 with wrk and append "name rps avg_us p99_us non2xx errors" to results.
RESULTS=()
measure() {
    local name=$1 url=$2 out rps avg p99 non2xx errors
    log "$name: warm-up $WARMUP"
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" ${AUTH_HEADER:+-H "$AUTH_HEADER"} "$url" >/dev/null
    log "$name: measuring $DURATION at $url"
    COMMANDS+=("taskset -c $CLIENT_CPU wrk -t1 -c$CONNECTIONS -d$DURATION --latency ${AUTH_HEADER:+-H '$AUTH_HEADER_SHOWN'} $url")
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency ${AUTH_HEADER:+-H "$AUTH_HEADER"} "$url")
    printf '%s\n' "$out" >&2
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    avg=$(awk '$1 == "Latency" { print $2; exit }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2; exit }' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    errors=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' <<<"$out")
    RESULTS+=("$name|$rps|$(to_us "$avg")|$(to_us "$p99")|${non2xx:-0}|${errors:-none}")
}

# 1. native hyper
log "starting native_hello on $NATIVE_ADDR"
COMMANDS+=("TOKIO_WORKER_THREADS=1 taskset -c $SERVER_CPU $NATIVE $NATIVE_ADDR")
TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" "$NATIVE" "$NATIVE_ADDR" \
    2>"$WORK/native.log" &
SERVER_PID=$!
wait_ready "http://$NATIVE_ADDR/"
check_ok "http://$NATIVE_ADDR/"
measure "native hyper" "http://$NATIVE_ADDR/"
stop_server

# 2. glia: without metering (like for like with wasmtime serve), then with
# each billing durability. Every thread of the server, the ledger writer's
# included, shares the server's core.
glia_run() {
    local name=$1 billing=$2 glia=${3:-$GLIA} dir config
    dir=$(mktemp -d -p "$WORK")
    config="$dir/platform.toml"
    printf '[billing]\n%s\n' "$billing" >"$config"
    log "starting $name on $GLIA_ADDR"
    COMMANDS+=("printf '[billing]\\n%s\\n' '$billing' > platform.toml")
    COMMANDS+=("GLIA_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c $SERVER_CPU $glia serve --listen $GLIA_ADDR --data-dir \$(mktemp -d) --config platform.toml")
    GLIA_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" \
        "$glia" serve --listen "$GLIA_ADDR" --data-dir "$dir/data" --config "$config" \
        >"$dir/glia.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://$GLIA_ADDR/v1/functions"
    # The CLI finds the admin key the server wrote to its data directory;
    # every measured call presents it, so the key check is measured too.
    run "$GLIA" deploy "$COMPONENT" --name noop --url "http://$GLIA_ADDR" --data-dir "$dir/data" >&2
    AUTH_HEADER="Authorization: Bearer $(cat "$dir/data/admin.key")"
    AUTH_HEADER_SHOWN="Authorization: Bearer \$(cat data/admin.key)"
    check_ok "http://$GLIA_ADDR/fn/noop/ok"
    measure "$name" "http://$GLIA_ADDR/fn/noop/ok"
    AUTH_HEADER=""
    stop_server
}
glia_run "glia" "enabled = false"
for baseline in ${GLIA_BASELINE:-}; do
    glia_run "baseline glia ($baseline)" "enabled = false" "$baseline"
done
glia_run "glia, metering batched" 'durability = "batched"'
glia_run "glia, metering strict" 'durability = "strict"'

# 3. wasmtime serve: pooling allocator, a fresh instance per request
# (--max-instance-reuse-count 1, also wasmtime's default for WASIp2
# components), -Scli so the component's wasi:cli imports link.
wasmtime_run() {
    local name=$1
    shift
    log "starting $name on $WASMTIME_ADDR"
    wasmtime_args=(serve --addr "$WASMTIME_ADDR" -O pooling-allocator=y "$@"
        --max-instance-reuse-count 1 -S cli "$COMPONENT")
    COMMANDS+=("TOKIO_WORKER_THREADS=1 taskset -c $SERVER_CPU $WASMTIME ${wasmtime_args[*]}")
    TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" "$WASMTIME" "${wasmtime_args[@]}" \
        >"$WORK/wasmtime.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://$WASMTIME_ADDR/ok"
    check_ok "http://$WASMTIME_ADDR/ok"
    measure "$name" "http://$WASMTIME_ADDR/ok"
    stop_server
}
if [[ $WASMTIME_OK == 1 ]]; then
    wasmtime_run "wasmtime serve $WASMTIME_VERSION"
    # The same with the pool settings glia uses (runtime::engine_config):
    # what glia's own request path is worth, with memory reset equal.
    tuned=(-O pooling-memory-keep-resident=131072 -O pooling-table-keep-resident=16384
        -O pooling-decommit-batch-size=16)
    # PAGEMAP_SCAN: Linux 6.7 and later (glia checks the same way at start).
    if [[ $(uname -s) == Linux && $(uname -r | awk -F. '{ print ($1 > 6 || ($1 == 6 && $2 >= 7)) }') == 1 ]]; then
        tuned=(-O pooling-memory-keep-resident=1048576 -O pooling-pagemap-scan=y
            -O pooling-table-keep-resident=16384 -O pooling-decommit-batch-size=16)
    fi
    wasmtime_run "wasmtime serve $WASMTIME_VERSION, glia's pool settings" "${tuned[@]}"
fi

# --- report ------------------------------------------------------------------

rps_of() {
    local row
    for row in "${RESULTS[@]}"; do
        if [[ ${row%%|*} == "$1"* ]]; then
            cut -d'|' -f2 <<<"$row"
            return
        fi
    done
}

ratio() {
    if [[ -n $1 && -n $2 ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else
        printf 'n/a'
    fi
}

GLIA_RPS=$(rps_of glia)
NATIVE_RPS=$(rps_of "native hyper")
WASMTIME_RPS=$(rps_of "wasmtime serve")

echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency (after ${WARMUP} warm-up); server on core $SERVER_CPU, wrk on core $CLIENT_CPU"
echo
echo "| Server | Req/s | Avg latency | p99 latency | glia req/s ÷ this | Non-2xx | Socket errors |"
echo "|---|---:|---:|---:|---:|---:|---|"
for row in "${RESULTS[@]}"; do
    IFS='|' read -r name rps avg p99 non2xx errors <<<"$row"
    printf '| %s | %.0f | %s µs | %s µs | %s | %s | %s |\n' \
        "$name" "$rps" "$avg" "$p99" "$(ratio "$GLIA_RPS" "$rps")" "$non2xx" "$errors"
done
if [[ $WASMTIME_OK != 1 ]]; then
    echo "| wasmtime serve $WASMTIME_VERSION | n/a (build failed) | | | | | |"
fi
echo
echo "- glia / wasmtime serve: $(ratio "$GLIA_RPS" "$WASMTIME_RPS")"
echo "- glia / wasmtime serve with glia's pool settings: $(ratio "$GLIA_RPS" "$(rps_of "wasmtime serve $WASMTIME_VERSION, glia")")"
echo "- glia / native hyper: $(ratio "$GLIA_RPS" "$NATIVE_RPS")"
echo
echo "Commands run:"
echo
echo '```sh'
printf '%s\n' "${COMMANDS[@]}"
echo '```'

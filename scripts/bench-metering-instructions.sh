#!/usr/bin/env bash
# What metering costs `glia serve`, counted in instructions rather than
# time: the user-space instructions glia executes per request with billing
# off, `batched` and `strict`, under valgrind's callgrind. A count does not
# move with the machine's load, so a difference of a fraction of a percent
# shows, where requests per second (scripts/bench-metering.sh) vary by
# several percent between identical runs on a shared machine. It leaves out
# the kernel's work (sockets, the ledger's writes) and how long each
# instruction takes: metering's instructions take longer than the average
# one, so a share of instructions understates what metering costs in CPU
# time (scripts/bench-metering-side-by-side.sh measures that).
#
# The functions are those of scripts/bench-metering.sh (noop, model). Each
# run starts a fresh glia under callgrind with its instruction counting off,
# warms it up with `wrk`, waits for the ledger's flush, counts the
# instructions of DURATION seconds of load and of one more flush (so the
# rows committed in the window are those of the requests in it), and
# divides by the requests served. Under callgrind glia serves about 100
# requests a second, so `batched` flushes every FLUSH_MS (10 s) instead of
# 100 ms: a commit holds about 1,000 rows, as one does at full speed.
# Instance pool and in-flight limit are lowered to 4: valgrind cannot
# reserve the address space of the default pool.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-metering-instructions.sh
#   MODES="off batched" FUNCTIONS=noop scripts/bench-metering-instructions.sh
#
# Environment:
#   DURATION    seconds of load counted per run (default 40)
#   FLUSH_MS    `batched` flush interval under callgrind (default 10000)
#   MODES       space-separated, from: off batched strict (default all three)
#   FUNCTIONS   space-separated, from: noop model (default both)
#   GLIA        the glia binary (default target/release/glia, built here)
#   PORT        loopback port (18291)
#
# Needs: cargo with the wasm32-wasip2 target, curl, and valgrind and wrk
# (installed with apt-get when missing).

set -euo pipefail

DURATION=${DURATION:-40}
FLUSH_MS=${FLUSH_MS:-10000}
MODES=${MODES:-off batched strict}
FUNCTIONS=${FUNCTIONS:-noop model}
PORT=${PORT:-18291}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

COMPONENT=target/wasm/wasm32-wasip2/release/hostile.wasm
ADDR=127.0.0.1:$PORT

# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

if ! command -v valgrind >/dev/null; then
    log "installing valgrind"
    apt-get update
    apt-get install -y valgrind
fi

build_glia_and_noop

billing_of() {
    case $1 in
        off) echo 'enabled = false' ;;
        batched) printf 'durability = "batched"\nflush_interval_ms = %s\n' "$FLUSH_MS" ;;
        strict) echo 'durability = "strict"' ;;
        *) echo "error: unknown mode $1" >&2; exit 2 ;;
    esac
}

# One run: sets R_REQUESTS, R_IR (instructions per request, all threads)
# and R_LEDGER (those of the ledger's writer thread).
run_one() {
    local function=$1 mode=$2 dir out settle file total ledger
    dir=$(mktemp -d -p "$WORK")
    printf '[runtime]\nmax_instances = 4\n[scheduler]\nmax_in_flight = 4\n[billing]\n%s\n' \
        "$(billing_of "$mode")" >"$dir/platform.toml"
    GLIA_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \
        --separate-threads=yes --callgrind-out-file="$dir/callgrind.out" \
        "$GLIA" serve --listen "$ADDR" --data-dir "$dir/data" --config "$dir/platform.toml" \
        >"$dir/glia.log" 2>&1 &
    SERVER_PID=$!
    wait_for_server "$dir/glia.log"
    target_of "$function" "$dir/data"
    wrk -t1 -c4 -d5s "${TARGET_ARGS[@]}" "$TARGET_URL" >/dev/null
    # The warm-up's rows are committed before counting starts, and the
    # counted requests' rows before it stops.
    settle=$((FLUSH_MS / 1000 + 1))
    sleep "$settle"
    callgrind_control -i on "$SERVER_PID" >/dev/null 2>&1
    out=$(wrk -t1 -c4 -d"${DURATION}s" "${TARGET_ARGS[@]}" "$TARGET_URL")
    sleep "$settle"
    callgrind_control -i off "$SERVER_PID" >/dev/null 2>&1
    stop_server
    if grep -q 'Non-2xx' <<<"$out"; then
        printf '%s\n' "$out" >&2
        echo "error: $function ($mode) answered errors" >&2
        exit 1
    fi
    R_REQUESTS=$(awk '/ requests in / { print $1 }' <<<"$out")
    total=0 ledger=0
    for file in "$dir"/callgrind.out-*; do
        local count
        count=$(awk '/^totals:/ { print $2 }' "$file")
        total=$((total + ${count:-0}))
        if grep -q 'Ledger>::append' "$file"; then
            ledger=$((ledger + ${count:-0}))
        fi
    done
    R_IR=$((total / R_REQUESTS))
    R_LEDGER=$((ledger / R_REQUESTS))
}

declare -A IR LEDGER
for function in $FUNCTIONS; do
    for mode in $MODES; do
        run_one "$function" "$mode"
        log "$function, $mode: $R_REQUESTS requests, $R_IR instructions per request" \
            "($R_LEDGER on the ledger thread)"
        IR[$function.$mode]=$R_IR
        LEDGER[$function.$mode]=$R_LEDGER
    done
done

echo
echo "glia serve under callgrind: user-space instructions per request ($(date -u +%F))"
echo
echo "| function | metering | instructions per request | vs off | ledger thread |"
echo "| --- | --- | ---: | ---: | ---: |"
for function in $FUNCTIONS; do
    base=${IR[$function.off]:-}
    for mode in $MODES; do
        awk -v f="$function" -v m="$mode" -v i="${IR[$function.$mode]}" -v b="$base" \
            -v l="${LEDGER[$function.$mode]}" 'BEGIN {
            v = (b == "" || m == "off") ? "—" : sprintf("%+.2f %%", (i / b - 1) * 100)
            printf "| %s | %s | %d | %s | %d |\n", f, m, i, v, l
        }'
    done
done

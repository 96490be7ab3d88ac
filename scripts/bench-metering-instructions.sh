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
# With CACHE_SIM=1, callgrind also simulates the caches of one of this
# machine's cores (L1: 32 KiB of instructions, 48 KiB of data; its 2 MiB
# L2 as the last level) and the table gives, per request, the instruction
# fetches that missed L1 and the writes that missed L2 on every thread but
# the ledger writer's. Code that runs once per request is fetched from L2
# each time: the request path's code does not fit in L1.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-metering-instructions.sh
#   MODES="off batched" FUNCTIONS=noop scripts/bench-metering-instructions.sh
#   CACHE_SIM=1 MODES="off batched" FUNCTIONS=noop scripts/bench-metering-instructions.sh
#
# Environment:
#   DURATION    seconds of load counted per run (default 40)
#   FLUSH_MS    `batched` flush interval under callgrind (default 10000)
#   MODES       space-separated, from: off batched strict (default all three)
#   CACHE_SIM   1: simulate the caches too (slower)
#   FUNCTIONS   space-separated, from: noop model embed (default: noop model)
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
CACHE_SIM=${CACHE_SIM:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

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

SIM=()
if [[ $CACHE_SIM == 1 ]]; then
    SIM=(--cache-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=2097152,16,64)
fi

# Column N (counting from 1) of the event named $2 in a callgrind output
# file's `events:` line; empty if it has none.
event_column() {
    awk -v e="$2" '/^events:/ { for (i = 2; i <= NF; i++) if ($i == e) print i - 1 }' "$1"
}

# One run: sets R_REQUESTS, R_IR (instructions per request, all threads),
# R_LEDGER (those of the ledger's writer thread) and, with CACHE_SIM=1,
# R_I1MR and R_LLMW (instruction fetches missing L1, writes missing the
# last level, per request, on every thread but the ledger's).
run_one() {
    local function=$1 mode=$2 dir out settle file total ledger i1mr llmw
    dir=$(mktemp -d -p "$WORK")
    printf '[runtime]\nmax_instances = 4\n[scheduler]\nmax_in_flight = 4\n[billing]\n%s\n' \
        "$(billing_of "$mode")" >"$dir/platform.toml"
    GLIA_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \
        --separate-threads=yes "${SIM[@]}" --callgrind-out-file="$dir/callgrind.out" \
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
    total=0 ledger=0 i1mr=0 llmw=0
    for file in "$dir"/callgrind.out-*; do
        local count
        count=$(awk '/^totals:/ { print $2 }' "$file")
        total=$((total + ${count:-0}))
        if grep -q 'Ledger>::append' "$file"; then
            ledger=$((ledger + ${count:-0}))
        elif [[ $CACHE_SIM == 1 ]]; then
            local c1 c2 v1 v2
            c1=$(event_column "$file" I1mr)
            c2=$(event_column "$file" DLmw)
            read -r v1 v2 < <(awk -v a="$c1" -v b="$c2" \
                '/^totals:/ { print $(a + 1) + 0, $(b + 1) + 0 }' "$file")
            i1mr=$((i1mr + ${v1:-0}))
            llmw=$((llmw + ${v2:-0}))
        fi
    done
    R_IR=$((total / R_REQUESTS))
    R_LEDGER=$((ledger / R_REQUESTS))
    R_I1MR=$(awk -v v="$i1mr" -v n="$R_REQUESTS" 'BEGIN { printf "%.1f", v / n }')
    R_LLMW=$(awk -v v="$llmw" -v n="$R_REQUESTS" 'BEGIN { printf "%.2f", v / n }')
}

declare -A IR LEDGER I1MR LLMW
for function in $FUNCTIONS; do
    for mode in $MODES; do
        run_one "$function" "$mode"
        log "$function, $mode: $R_REQUESTS requests, $R_IR instructions per request" \
            "($R_LEDGER on the ledger thread)"
        IR[$function.$mode]=$R_IR
        LEDGER[$function.$mode]=$R_LEDGER
        I1MR[$function.$mode]=$R_I1MR
        LLMW[$function.$mode]=$R_LLMW
    done
done

echo
echo "glia serve under callgrind: user-space instructions per request ($(date -u +%F))"
echo
if [[ $CACHE_SIM == 1 ]]; then
    echo "| function | metering | instructions per request | vs off | ledger thread | L1 instruction misses | L2 write misses |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
else
    echo "| function | metering | instructions per request | vs off | ledger thread |"
    echo "| --- | --- | ---: | ---: | ---: |"
fi
for function in $FUNCTIONS; do
    base=${IR[$function.off]:-}
    for mode in $MODES; do
        awk -v f="$function" -v m="$mode" -v i="${IR[$function.$mode]}" -v b="$base" \
            -v l="${LEDGER[$function.$mode]}" -v sim="$CACHE_SIM" \
            -v i1="${I1MR[$function.$mode]}" -v mw="${LLMW[$function.$mode]}" 'BEGIN {
            v = (b == "" || m == "off") ? "—" : sprintf("%+.2f %%", (i / b - 1) * 100)
            printf "| %s | %s | %d | %s | %d |", f, m, i, v, l
            if (sim == 1) printf " %s | %s |", i1, mw
            printf "\n"
        }'
    done
done

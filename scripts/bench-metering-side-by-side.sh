#!/usr/bin/env bash
# What metering costs `glia serve`, measured side by side: in each round an
# unmetered glia and a metered one serve at the same time, both pinned to
# the same core, each loaded by its own `wrk` on the other core. A server's
# CPU per request is the CPU time of all its threads over the window (from
# /proc/PID/task/*/schedstat, in nanoseconds, user and kernel), divided by
# the requests it served. The two servers share the core and the machine's
# state from moment to moment, so a slow or fast spell of the machine
# weighs on both alike and their ratio holds still, where requests per
# second measured one run after another (scripts/bench-metering.sh) vary
# by several percent. Unlike the instruction counts of
# scripts/bench-metering-instructions.sh, it counts everything the CPU
# does for a request: the kernel's work, cache misses, the ledger thread.
#
# Each mode is compared with `off` (or with BASE): the table gives, per
# function and mode, the median over the rounds of the metered server's
# CPU per request against the reference's, and every round's ratio. The
# `ledger thread` column is the part of the difference spent by the ledger
# writer's thread (`glia-ledger`: encoding, SQLite, commits), as a share of
# the reference's CPU per request; the rest is spent on the call's path. A mode
# of `off` compared with `off` shows the method's own noise. Rounds swap
# which server starts first and which port it listens on; an even number
# of rounds gives each order as many. Each round's log line says how much
# time the hypervisor stole from the machine meanwhile: on a shared host,
# rounds far off the others usually had some.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-metering-side-by-side.sh
#   ROUNDS=4 MODES=batched FUNCTIONS=noop scripts/bench-metering-side-by-side.sh
#   # two builds, both `batched`:
#   BASE=batched BASE_GLIA=/tmp/glia-before MODES=batched \
#       scripts/bench-metering-side-by-side.sh
#
# Environment:
#   ROUNDS      rounds per function and mode (default 8)
#   DURATION    seconds measured per round (default 15)
#   WARMUP      seconds of load before each measurement (default 2)
#   MODES       space-separated, from: off batched strict batched:MS
#               (`batched` flushed every MS ms) (default: off batched strict)
#   FUNCTIONS   space-separated, from: noop model embed (default: noop model)
#   BASE        the reference server's mode (default off)
#   GLIA        the glia binary (default target/release/glia, built here)
#   BASE_GLIA   the reference server's binary (default GLIA)
#   SERVER_CPU, CLIENT_CPU, PORT   cores, and the first of two loopback
#               ports (0, 1, 18292)
#   LEDGER_CPU  a core for the servers' ledger writer threads (default:
#               they stay on SERVER_CPU with the rest of their server)
#
# Needs: cargo with the wasm32-wasip2 target, taskset, curl, and wrk
# (installed with apt-get when missing).

set -euo pipefail

ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-2}
MODES=${MODES:-off batched strict}
FUNCTIONS=${FUNCTIONS:-noop model}
BASE=${BASE:-off}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18292}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

build_glia_and_noop
BASE_GLIA=${BASE_GLIA:-$GLIA}

# The two servers of a round: pid, wrk's URL and arguments, by slot.
PIDS=()
URLS=()
ARGS=()

stop_both() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'stop_both; cleanup' EXIT

# start SLOT BINARY MODE PORT FUNCTION
start() {
    local dir
    dir=$(mktemp -d -p "$WORK")
    ADDR=127.0.0.1:$4
    serve_in_mode "$2" "$3" "$dir"
    PIDS[$1]=$SERVER_PID
    SERVER_PID=
    if [[ -n ${LEDGER_CPU:-} ]]; then
        local task
        for task in /proc/"${PIDS[$1]}"/task/*; do
            if is_ledger "$task"; then taskset -p -c "$LEDGER_CPU" "${task##*/}" >/dev/null; fi
        done
    fi
    target_of "$5" "$dir/data"
    URLS[$1]=$TARGET_URL
    ARGS[$1]=$(printf '%q ' "${TARGET_ARGS[@]}")
}

# load SLOT SECONDS: wrk's report.
load() {
    local args
    eval "args=(${ARGS[$1]})"
    taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"$2s" "${args[@]}" "${URLS[$1]}"
}

# Milliseconds the hypervisor has run something else while this machine's
# cores wanted to run (the `steal` column of /proc/stat), all cores.
steal_ms() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { print int($9 * 1000 / hz) }' /proc/stat
}

# Loads both servers at once for SECONDS; sets R_REQ, R_NS and R_LEDGER_NS
# (requests, CPU nanoseconds, and those of the ledger writer's thread, per
# slot) and R_STEAL_MS (time stolen from the machine meanwhile).
both() {
    local out0=$WORK/wrk0 out1=$WORK/wrk1 first steal slot total ledger
    local -a before_ns before_ledger
    steal=$(steal_ms)
    for slot in 0 1; do
        read -r "before_ns[$slot]" "before_ledger[$slot]" < <(cpu_ns "${PIDS[$slot]}")
    done
    load 0 "$1" >"$out0" &
    first=$!
    load 1 "$1" >"$out1"
    wait "$first"
    R_NS=() R_LEDGER_NS=()
    for slot in 0 1; do
        read -r total ledger < <(cpu_ns "${PIDS[$slot]}")
        R_NS[slot]=$((total - before_ns[slot]))
        R_LEDGER_NS[slot]=$((ledger - before_ledger[slot]))
    done
    R_STEAL_MS=$(($(steal_ms) - steal))
    if grep -q 'Non-2xx' "$out0" "$out1"; then
        cat "$out0" "$out1" >&2
        echo "error: a server answered errors" >&2
        exit 1
    fi
    R_REQ=("$(awk '/ requests in / { print $1 }' "$out0")" "$(awk '/ requests in / { print $1 }' "$out1")")
}

declare -A RATIOS BASE_US MODE_US LEDGER_SHARE
for function in $FUNCTIONS; do
    for mode in $MODES; do
        for round in $(seq "$ROUNDS"); do
            # Odd rounds start the reference first, on the first port.
            if ((round % 2)); then ref=0 metered=1; else ref=1 metered=0; fi
            for slot in 0 1; do
                if ((slot == ref)); then
                    start "$slot" "$BASE_GLIA" "$BASE" $((PORT + slot)) "$function"
                else
                    start "$slot" "$GLIA" "$mode" $((PORT + slot)) "$function"
                fi
            done
            both "$WARMUP"
            both "$DURATION"
            stop_both
            read -r ref_us mode_us ratio ledger_us ledger_share < <(awk \
                -v rn="${R_NS[$ref]}" -v rq="${R_REQ[$ref]}" -v rl="${R_LEDGER_NS[$ref]}" \
                -v mn="${R_NS[$metered]}" -v mq="${R_REQ[$metered]}" -v ml="${R_LEDGER_NS[$metered]}" \
                'BEGIN { r = rn / rq / 1000; m = mn / mq / 1000; l = ml / mq / 1000
                         printf "%.1f %.1f %.2f %.2f %.2f\n", r, m, (m / r - 1) * 100, l, (l - rl / rq / 1000) / r * 100 }')
            log "$function, $mode vs $BASE, round $round: $mode_us vs $ref_us µs CPU per request ($ratio %; ledger thread $ledger_us µs, $ledger_share % of $BASE), ${R_REQ[$metered]} vs ${R_REQ[$ref]} requests, ${R_STEAL_MS} ms stolen"
            RATIOS[$function.$mode]+="$ratio "
            BASE_US[$function.$mode]+="$ref_us "
            MODE_US[$function.$mode]+="$mode_us "
            LEDGER_SHARE[$function.$mode]+="$ledger_share "
        done
    done
done

echo
echo "glia serve, metered and $BASE side by side on one core: medians of $ROUNDS rounds of ${DURATION} s ($(date -u +%F))"
echo
echo "| function | metering | CPU µs per request | $BASE | vs $BASE | ledger thread | rounds (vs $BASE) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | --- |"
for function in $FUNCTIONS; do
    for mode in $MODES; do
        m_ratio=$(median <<<"${RATIOS[$function.$mode]}")
        m_base=$(median <<<"${BASE_US[$function.$mode]}")
        m_mode=$(median <<<"${MODE_US[$function.$mode]}")
        m_ledger=$(median <<<"${LEDGER_SHARE[$function.$mode]}")
        all=$(tr ' ' '\n' <<<"${RATIOS[$function.$mode]}" | grep . | awk '{ printf "%s%+.1f", (NR > 1 ? " · " : ""), $1 }')
        awk -v f="$function" -v m="$mode" -v r="$m_ratio" -v b="$m_base" -v u="$m_mode" \
            -v l="$m_ledger" -v all="$all" \
            'BEGIN { printf "| %s | %s | %.1f | %.1f | %+.2f %% | %+.2f %% | %s |\n", f, m, u, b, r, l, all }'
    done
done

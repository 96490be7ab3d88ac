#!/usr/bin/env bash
# What metering costs `glia serve`: requests per second and CPU time per
# request with billing off, `batched` and `strict`, for two functions:
#
#   noop   `hostile.wasm` (tests/fixtures) deployed as `noop`, `GET /fn/noop/ok`:
#          the cheapest call there is, so metering weighs the most
#   model  the built-in `classify-digits`, `POST` of one 8x8 digit: JSON in,
#          one `wasi:nn` inference on the `digits` model, JSON out
#
# Rounds alternate the modes (off, batched, strict, off, ...), so each mode
# sees the same machine state; the table gives medians over the rounds. Each
# run starts a fresh glia (fresh data directory and ledger), pinned with all
# its threads to core 0 (one tokio worker: the ledger writer shares the
# core, as it would a fully loaded machine), and `wrk` (one thread, 16
# connections) on core 1. CPU per request is everything glia's process used
# (all threads, user and system, from /proc/PID/stat) over the measured
# window, divided by the requests served in it.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-metering.sh
#   ROUNDS=3 DURATION=5 FUNCTIONS=model scripts/bench-metering.sh
#
# Environment:
#   ROUNDS      rounds (default 5)
#   DURATION    seconds measured per run (default 10)
#   WARMUP      seconds of load before each measurement (default 2)
#   MODES       space-separated, from: off batched strict (default all three)
#   FUNCTIONS   space-separated, from: noop model embed (default: noop model)
#   GLIA        the glia binary (default target/release/glia, built here)
#   SERVER_CPU, CLIENT_CPU, PORT   cores and loopback port (0, 1, 18290)
#
# Needs: cargo with the wasm32-wasip2 target, taskset, curl, and wrk
# (installed with apt-get when missing).

set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
MODES=${MODES:-off batched strict}
FUNCTIONS=${FUNCTIONS:-noop model}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18290}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ADDR=127.0.0.1:$PORT

# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

build_glia_and_noop

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One run: sets R_RPS and R_US (CPU µs per request).
run_one() {
    local function=$1 mode=$2 dir t0 t1 out rps
    dir=$(mktemp -d -p "$WORK")
    serve_in_mode "$GLIA" "$mode" "$dir"
    target_of "$function" "$dir/data"
    taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"${WARMUP}s" "${TARGET_ARGS[@]}" "$TARGET_URL" >/dev/null
    t0=$(cpu_ticks "$SERVER_PID")
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"${DURATION}s" "${TARGET_ARGS[@]}" "$TARGET_URL")
    t1=$(cpu_ticks "$SERVER_PID")
    stop_server
    if grep -q 'Non-2xx' <<<"$out"; then
        printf '%s\n' "$out" >&2
        echo "error: $function ($mode) answered errors" >&2
        exit 1
    fi
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    R_RPS=$(awk -v r="$rps" 'BEGIN { printf "%.0f", r }')
    R_US=$(awk -v r="$rps" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v d="$DURATION" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / (r * d) }')
}

declare -A RPS CPU
for round in $(seq "$ROUNDS"); do
    for function in $FUNCTIONS; do
        for mode in $MODES; do
            run_one "$function" "$mode"
            log "round $round: $function, $mode: $R_RPS req/s, $R_US µs CPU per request"
            RPS[$function.$mode]+="$R_RPS "
            CPU[$function.$mode]+="$R_US "
        done
    done
done

echo
echo "glia serve, metering off vs on: medians of $ROUNDS rounds of ${DURATION} s ($(date -u +%F))"
echo
echo "| function | metering | req/s | vs off | CPU µs per request | vs off | rounds (req/s) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | --- |"
for function in $FUNCTIONS; do
    base_rps= base_cpu=
    for mode in $MODES; do
        m_rps=$(median <<<"${RPS[$function.$mode]}")
        m_cpu=$(median <<<"${CPU[$function.$mode]}")
        if [[ $mode == off ]]; then
            base_rps=$m_rps base_cpu=$m_cpu
        fi
        awk -v f="$function" -v m="$mode" -v r="$m_rps" -v c="$m_cpu" -v br="$base_rps" \
            -v bc="$base_cpu" -v all="${RPS[$function.$mode]}" 'BEGIN {
            vr = (br == "" || m == "off") ? "—" : sprintf("%+.1f %%", (r / br - 1) * 100)
            vc = (bc == "" || m == "off") ? "—" : sprintf("%+.1f %%", (c / bc - 1) * 100)
            sub(/ $/, "", all); gsub(/ /, " · ", all)
            printf "| %s | %s | %.0f | %s | %.1f | %s | %s |\n", f, m, r, vr, c, vc, all
        }'
    done
done

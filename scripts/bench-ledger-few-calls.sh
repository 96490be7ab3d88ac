#!/usr/bin/env bash
# What the ledger's writer costs when calls are few. Under load a commit
# carries hundreds of rows and its fixed cost is spread thin; at a few
# hundred calls a second, `batched` still commits every 100 ms, and that
# fixed cost is most of what each call's row costs.
#
# Each run starts `glia serve` (`batched`, one tokio worker, pinned to
# SERVER_CPU), deploys the no-op component and calls it on one connection
# (a keep-alive HTTP client on CLIENT_CPU, a pause of GAP_MS between
# calls) for DURATION seconds. The writer's CPU time is that of its thread
# (`glia-ledger`, /proc/PID/task/TID/schedstat, user and kernel); the
# commits are the server's `glia_ledger_commits_total`. With BASE_GLIA,
# runs alternate between the two binaries, ROUNDS of each, and the table
# compares their medians.
#
# Usage (from anywhere in the repository):
#
#   scripts/bench-ledger-few-calls.sh
#   BASE_GLIA=/tmp/glia-before ROUNDS=5 scripts/bench-ledger-few-calls.sh
#
# Environment:
#   ROUNDS      runs per binary (default 3)
#   DURATION    seconds measured per run (default 20)
#   GAP_MS      pause between calls, in ms (default 4: about 200 calls/s)
#   GLIA        the glia binary (default target/release/glia, built here)
#   BASE_GLIA   a second binary to compare with (default: none)
#   SERVER_CPU, CLIENT_CPU, PORT   cores and loopback port (0, 1, 18295)
#
# Needs: cargo with the wasm32-wasip2 target, taskset, curl, python3.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
GAP_MS=${GAP_MS:-4}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18295}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ADDR=127.0.0.1:$PORT

# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

command -v python3 >/dev/null || { echo "error: python3 not found" >&2; exit 1; }
build_glia_and_noop

# Calls URL (with AUTH as its `Authorization` header) on one connection,
# pausing GAP seconds after each, for SECONDS, from CLIENT_CPU; prints the
# calls made:
#   client URL AUTH GAP SECONDS
client() {
    taskset -c "$CLIENT_CPU" python3 - "$@" <<'PY'
import http.client, sys, time, urllib.parse
url, auth, gap, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
calls, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    conn.request("GET", u.path, headers={"Authorization": auth})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"error: the server answered {response.status}")
    calls += 1
    time.sleep(gap)
print(calls)
PY
}

# The CPU nanoseconds so far of process $1's ledger writer thread.
ledger_ns() {
    local _ ledger
    read -r _ ledger < <(cpu_ns "$1")
    echo "$ledger"
}

commits() {
    curl -s -H "Authorization: $1" "http://$ADDR/metrics" | awk '/^glia_ledger_commits_total/ { print $2 }'
}

# One run of BINARY: sets R_CALLS, R_COMMITS and R_NS (the writer's CPU).
run_one() {
    local dir auth gap ns0 c0
    dir=$(mktemp -d -p "$WORK")
    serve_in_mode "$1" batched "$dir"
    target_of noop "$dir/data"
    auth="Bearer $(cat "$dir/data/admin.key")"
    gap=$(awk -v ms="$GAP_MS" 'BEGIN { print ms / 1000 }')
    # A warm-up, and its rows committed.
    client "$TARGET_URL" "$auth" "$gap" 2 >/dev/null
    sleep 0.3
    ns0=$(ledger_ns "$SERVER_PID")
    c0=$(commits "$auth")
    R_CALLS=$(client "$TARGET_URL" "$auth" "$gap" "$DURATION")
    sleep 0.3
    R_NS=$(($(ledger_ns "$SERVER_PID") - ns0))
    R_COMMITS=$(($(commits "$auth") - c0))
    stop_server
}

declare -A PER_COMMIT PER_CALL
BINARIES=("$GLIA")
[[ -n ${BASE_GLIA:-} ]] && BINARIES+=("$BASE_GLIA")
for round in $(seq "$ROUNDS"); do
    for binary in "${BINARIES[@]}"; do
        run_one "$binary"
        read -r commit_us call_us < <(awk -v ns="$R_NS" -v c="$R_COMMITS" -v n="$R_CALLS" \
            'BEGIN { printf "%.1f %.2f\n", ns / c / 1000, ns / n / 1000 }')
        log "$binary, round $round: $R_CALLS calls, $R_COMMITS commits, writer $((R_NS / 1000)) µs: $commit_us µs per commit, $call_us µs per call"
        PER_COMMIT[$binary]+="$commit_us "
        PER_CALL[$binary]+="$call_us "
    done
done

echo
echo "The ledger writer at one call every ${GAP_MS} ms (batched): medians of $ROUNDS runs of ${DURATION} s ($(date -u +%F))"
echo
echo "| glia | writer µs per commit | writer µs per call | runs (µs per commit) |"
echo "| --- | ---: | ---: | --- |"
for binary in "${BINARIES[@]}"; do
    printf '| %s | %s | %s | %s |\n' "$binary" \
        "$(median <<<"${PER_COMMIT[$binary]}")" "$(median <<<"${PER_CALL[$binary]}")" \
        "$(tr -s ' ' '\n' <<<"${PER_COMMIT[$binary]}" | grep . | paste -sd ' ' | sed 's/ / · /g')"
done

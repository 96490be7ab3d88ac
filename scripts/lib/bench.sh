# Shared by the benchmark scripts (sourced, from the repository root): a
# scratch directory in $WORK, the no-op component's path in $COMPONENT,
# one server at a time in $SERVER_PID (stopped on exit), and the tools
# they need (wrk is installed with apt-get when missing).

WORK=$(mktemp -d)
SERVER_PID=
# The no-op component the benchmarks deploy (built by build_glia_and_noop).
COMPONENT=target/wasm/wasm32-wasip2/release/hostile.wasm

log() { printf '==> %s\n' "$*" >&2; }

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get update
    apt-get install -y wrk
fi
for tool in taskset curl; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done

# Waits until the server started as $SERVER_PID answers on $ADDR; shows
# its log ($1) and fails if it exits first.
wait_for_server() {
    for _ in $(seq 600); do
        curl -s -o /dev/null --max-time 1 "http://$ADDR/v1/functions" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$1" >&2; exit 1; }
        sleep 0.2
    done
    echo "error: no server on $ADDR" >&2
    exit 1
}

# The benchmarks' functions on the server at $ADDR, whose data directory is
# $2: sets TARGET_URL and TARGET_ARGS (wrk's arguments) for $1:
#   noop   $COMPONENT (hostile.wasm) deployed as `noop`, `GET /fn/noop/ok`
#   model  the built-in `classify-digits`, a `POST` of one 8x8 digit
#   embed  the built-in `embed-text`, a `POST` of one sentence (MiniLM)
target_of() {
    case $1 in
        noop)
            "$GLIA" deploy "$COMPONENT" --name noop --url "http://$ADDR" \
                --data-dir "$2" >/dev/null
            TARGET_URL="http://$ADDR/fn/noop/ok"
            TARGET_ARGS=(-H "Authorization: Bearer $(cat "$2/admin.key")")
            ;;
        model)
            post_target /fn/classify-digits '{"pixels":[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}'
            ;;
        embed)
            post_target /fn/embed-text '{"text":"The river was calm this morning, so we walked along it to the old bridge."}'
            ;;
        *) echo "error: unknown function $1" >&2; exit 2 ;;
    esac
}

# A `POST` of BODY (without single quotes) to PATH on $ADDR, through a wrk
# script: sets TARGET_URL and TARGET_ARGS. post_target PATH BODY
post_target() {
    local script=$WORK/${1##*/}.lua
    printf "wrk.method = \"POST\"\nwrk.body = '%s'\n" "$2" >"$script"
    TARGET_URL="http://$ADDR$1"
    TARGET_ARGS=(-s "$script")
}

# Builds glia (release; unless $GLIA names a binary already) and the no-op
# component ($COMPONENT).
build_glia_and_noop() {
    if [[ -z ${GLIA:-} ]]; then
        log "building glia (release)"
        cargo build --release -p glia-host --bin glia
        GLIA=target/release/glia
    fi
    log "building the no-op component"
    cargo build --manifest-path tests/fixtures/Cargo.toml --target wasm32-wasip2 \
        --release --target-dir target/wasm
}

# The `[billing]` settings of a metering mode: off, batched, strict, or
# batched:MS (`batched`, flushed every MS milliseconds).
billing_of() {
    case $1 in
        off) echo 'enabled = false' ;;
        batched) echo 'durability = "batched"' ;;
        batched:*) printf 'durability = "batched"\nflush_interval_ms = %s\n' "${1#batched:}" ;;
        strict) echo 'durability = "strict"' ;;
        *) echo "error: unknown mode $1" >&2; exit 2 ;;
    esac
}

# Starts BINARY (`glia serve`, one tokio worker, pinned to $SERVER_CPU) on
# $ADDR in metering MODE with its data under DIR, as $SERVER_PID, and waits
# for it to answer: serve_in_mode BINARY MODE DIR
serve_in_mode() {
    printf '[billing]\n%s\n' "$(billing_of "$2")" >"$3/platform.toml"
    GLIA_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" \
        "$1" serve --listen "$ADDR" --data-dir "$3/data" --config "$3/platform.toml" \
        >"$3/glia.log" 2>&1 &
    SERVER_PID=$!
    wait_for_server "$3/glia.log"
}

# Whether the thread whose /proc directory is $1 (/proc/PID/task/TID) is
# a ledger writer (`glia-ledger`).
is_ledger() {
    local name
    read -r name 2>/dev/null <"$1/comm" && [[ $name == glia-ledger ]]
}

# CPU nanoseconds so far of all of the threads of process $1, and of its ledger
# writer's thread, read in one pass: "TOTAL LEDGER".
cpu_ns() {
    local total=0 ledger=0 ns _ task
    for task in /proc/"$1"/task/*; do
        read -r ns _ 2>/dev/null <"$task/schedstat" || continue
        total=$((total + ns))
        if is_ledger "$task"; then ledger=$((ledger + ns)); fi
    done
    echo "$total $ledger"
}

# The median of the numbers given, separated by spaces or lines, on
# standard input.
median() { tr -s ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Shared by the benchmark scripts (sourced, from the repository root): a
# scratch directory in $WORK, one server at a time in $SERVER_PID (stopped
# on exit), and the tools they need (wrk is installed with apt-get when
# missing).

WORK=$(mktemp -d)
SERVER_PID=

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

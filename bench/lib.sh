# Sourced by the bench scripts that run the daemon against the load generator.
# Set BENCH_NAME first (the log prefix); then this file gives:
#   BENCH_DIR, REPO, TARGET_DIR, and daemon-config.sh's functions;
#   log / die (to stderr) and get FILE KEY (a value of a key=value file);
#   bench_build: the release daemon and loadgen; sets BIN (or $HMS_BIN) and LOADGEN;
#   bench_tmp: a temp folder TMP, and PIDS, whose processes are killed on exit
#   (the folder removed unless KEEP_TMP=1).
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/daemon-config.sh
. "$BENCH_DIR/daemon-config.sh"
REPO=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
get() { sed -n "s/^$2=//p" "$1" | head -n1; }

bench_build() {
    (cd "$REPO" && cargo build --release --locked && cargo build --release --locked --example loadgen)
    BIN=${HMS_BIN:-$TARGET_DIR/release/hms-sync}
    LOADGEN=$TARGET_DIR/release/examples/loadgen
}

bench_cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}

bench_tmp() {
    TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-$BENCH_NAME.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

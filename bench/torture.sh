#!/usr/bin/env bash
# kill -9 torture: N SIGKILLs of a release daemon delivering to a file target and
# a SOAP target at once under mixed socket and drop-folder input, then every
# check of the crash test on both targets (source: bench/torture.rs). See
# bench/README.md.
#
#   bench/torture.sh                  # 300 kills
#   KILLS=1000 bench/torture.sh       # the run quoted in ARCHITECTURE.md
#   SEED=42 bench/torture.sh          # the same random choices again
#
# Prints kills, acked, lost, repeats, restart p50/p99 and writes them, with the
# machine and commit, to bench/torture-results-latest.txt. Exit 1 if a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."

KILLS=${KILLS:-300}
OUT=${OUT:-bench/torture-results-latest.txt}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$(realpath -m "$TARGET_DIR/release/hms-sync")

echo "building the release binary and the torture example ..." >&2
cargo build --release --locked >&2 || exit 2
# The example runs the binary named here (harness.rs reads it at compile time).
HMS_SYNC_BIN=$BIN cargo build --release --locked --example torture >&2 || exit 2

args=(--kills "$KILLS")
[ -n "${SEED:-}" ] && args+=(--seed "$SEED")
log=$(mktemp "${TMPDIR:-/tmp}/torture.XXXXXX")
start=$(date +%s)
"$TARGET_DIR/release/examples/torture" "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
{
    echo "torture, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null), release build"
    echo "$(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(uname -r)," \
        "load average at the end $(cut -d' ' -f1-3 /proc/loadavg), temp folder on $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
    echo "wall time $(( $(date +%s) - start )) s, exit $rc"
    grep -E '^[a-z_0-9]+=' "$log"
    grep -m 20 '^PROBLEM' "$log"
} >"$OUT"
echo "written to $OUT" >&2
exit "$rc"

#!/usr/bin/env bash
# hms-sync serial benchmark: frames per second over a pseudo-terminal with an
# answering device (one frame in flight), and what that means on a real line at
# 9600 and 115200 baud. See bench/README.md ("Serial link").
#
# Knobs (environment): FRAMES (2000), KEEP_TMP=1, BENCH_TMPDIR, HMS_BIN (another
# build of the same source), CARGO_TARGET_DIR.
set -euo pipefail

FRAMES=${FRAMES:-2000}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/daemon-config.sh
. "$BENCH_DIR/daemon-config.sh"
REPO=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

log() { printf '[serial-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
get() { sed -n "s/^$2=//p" "$1" | head -n1; }

log "building (target dir $TARGET_DIR)"
(cd "$REPO" && cargo build --release --locked)
(cd "$REPO" && cargo build --release --locked --example loadgen --example serialdev)
BIN=${HMS_BIN:-$TARGET_DIR/release/hms-sync}
LOADGEN=$TARGET_DIR/release/examples/loadgen
SERIALDEV=$TARGET_DIR/release/examples/serialdev

TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-serial-bench.XXXXXX")
DAEMON_PID="" DEV_PID=""
cleanup() {
    local rc=$?
    for pid in $DAEMON_PID $DEV_PID; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dir=$TMP/serial
daemon_config "$dir"
mkdir -p "$dir/connectors/bench"
cat >"$dir/connectors/bench/connector.toml" <<'CONF'
collections = ["permits"]
[format]
kind = "csv"
columns = ["permit_number", "status", "type", "parcel_id", "fee"]
[transport]
kind = "serial"
port = "tty"
baud = 115200
framing = "stx_etx_lrc"
ack_timeout = "1s"
retransmits = 3
CONF

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
"$SERIALDEV" "$dir/tty" "$FRAMES" --timeout 600 >"$dir/device.txt" &
DEV_PID=$!
for _ in $(seq 100); do [[ -L $dir/tty ]] && break; sleep 0.05; done
[[ -L $dir/tty ]] || die "the device did not create its pty"

(cd "$dir" && exec "$BIN" run -c "$dir/hms-sync.toml" >>"$dir/daemon.log" 2>&1) &
DAEMON_PID=$!
for _ in $(seq 600); do grep -q ' ready' "$dir/daemon.log" 2>/dev/null && break; sleep 0.05; done
grep -q ' ready' "$dir/daemon.log" || { cat "$dir/daemon.log" >&2; die "hms-sync did not start"; }

log "sending $FRAMES changes; the device acknowledges each frame at once"
"$LOADGEN" ingest "$dir/hms.sock" --clients 1 --max "$FRAMES" --seconds 600 >"$dir/ingest.txt"
wait "$DEV_PID" || die "the device did not see $FRAMES frames"
DEV_PID=""
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

frames=$(get "$dir/device.txt" frames)
fps=$(get "$dir/device.txt" frames_per_s)
size=$(get "$dir/device.txt" mean_frame_bytes)
naks=$(get "$dir/device.txt" naks)
seconds=$(get "$dir/device.txt" seconds)

# Per frame on a real line: the frame and the ACK byte on the wire (10 bits a byte
# at 8N1), plus what the pty run shows beyond the wire (daemon, queue commit,
# device turnaround), which does not depend on the baud rate.
report() {
    awk -v fps="$fps" -v size="$size" -v baud="$1" 'BEGIN {
        overhead_ms = 1000 / fps
        wire_ms = (size + 1) * 10 * 1000 / baud
        printf "%-8s  frame %5.1f B  wire %7.2f ms  overhead %5.2f ms (%5.1f%% of wire)  => %7.1f frames/s\n",
            baud, size, wire_ms, overhead_ms, 100 * overhead_ms / wire_ms, 1000 / (wire_ms + overhead_ms)
    }'
}
{
    echo "hms-sync serial benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "built from: $(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
    echo "machine:    $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)"
    echo "load avg:   start $LOAD_START, end $LOAD_END"
    echo "link:       pseudo-terminal, stx_etx_lrc, csv rows of 5 columns, one frame in flight"
    echo
    echo "pty: $frames frames acknowledged in $seconds s = $fps frames/s ($naks NAKs); mean frame $size bytes"
    echo "per frame beyond the wire (pty, no baud limit): $(awk -v f="$fps" 'BEGIN { printf "%.3f", 1000 / f }') ms"
    echo
    echo "on a real line (wire time = (frame + ACK byte) x 10 bits / baud, plus the overhead above):"
    report 9600
    report 115200
} | tee "$BENCH_DIR/serial-results-latest.txt"

#!/usr/bin/env bash
# A nightly full export dropped into a snapshot folder (SPEC §4 "Large files"):
# how long until it has left the inbox (checked whole, changed records queued,
# absent ones deleted) and the daemon's peak RSS (VmHWM from /proc) meanwhile.
#
#   bench/snapshot.sh                  # 1,000,000 rows: first load, then a 1% change
#   ROWS=100000 bench/snapshot.sh
#   HMS_BIN=dist/hms-sync-x86_64-unknown-linux-musl bench/snapshot.sh
#
# Run 1 loads the export into an empty queue (every row a create) with a file
# connector delivering meanwhile; the script waits until all is delivered and
# restarts the daemon (a fresh VmHWM). Run 2 drops the same export with 1% of the
# rows changed and 1% gone: only those are queued (checked in the delivery counts).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${HMS_BIN:-}" ]; then
    cargo build --release --locked >&2
fi
BIN=${HMS_BIN:-$TARGET_DIR/release/hms-sync}
source bench/daemon-config.sh
TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-snapshot.XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

daemon_config "$TMP"
cat >>"$TMP/hms-sync.toml" <<'TOML'

[[watch]]
dir = "inbox/snap"
collection = "permits"
key = "permit_number"
snapshot = true
TOML
# An export over the default 64 MiB needs a larger limit (about 35 bytes a row).
if [ "$ROWS" -gt 1500000 ]; then
    printf '\n[limits]\nmax_file_bytes = "%d MiB"\n' $((ROWS * 40 / 1048576 + 1)) >>"$TMP/hms-sync.toml"
fi
mkdir -p "$TMP/outbox/bench" "$TMP/inbox/snap"
bench_csv_connector "$TMP" 5000

# The export: about 35 bytes a row, like a county's permit export. With 1 as its
# argument every 100th row's status changes and every 100th other row is left out.
export_csv() {
    awk -v n="$ROWS" -v changed="$1" 'BEGIN {
        print "permit_number,status,type,parcel_id,fee"
        for (i = 0; i < n; i++) {
            if (changed && i % 100 == 50) continue
            s = (changed && i % 100 == 0) ? "REVOKED" : "ISSUED"
            printf "%d,%s,BLD,P-%07d,%d.00\n", i, s, i, i % 500
        }
    }'
}

ready_count() {
    local n
    n=$(grep -c ready "$TMP/daemon.log" 2>/dev/null) || true
    echo "${n:-0}"
}
start() {
    local before; before=$(ready_count)
    (cd "$TMP" && exec "$BIN" run -c hms-sync.toml >>daemon.log 2>&1) &
    PID=$!
    until [ "$(ready_count)" -gt "$before" ]; do sleep 0.05; done
}
counts() {
    (cd "$TMP" && "$BIN" status -c hms-sync.toml --json) |
        python3 -c 'import json,sys; t=json.load(sys.stdin)["targets"][0]; print(t["delivered"], t["pending"])'
}
hwm() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$PID/status"; }

run() {
    local label=$1 changed=$2
    export_csv "$changed" >"$TMP/inbox/snap/.export.part"
    local bytes; bytes=$(stat -c %s "$TMP/inbox/snap/.export.part")
    local p0; p0=$(writer_phases "$TMP")
    local t0; t0=$(date +%s.%N)
    mv "$TMP/inbox/snap/.export.part" "$TMP/inbox/snap/export.csv"
    while [ -e "$TMP/inbox/snap/export.csv" ]; do sleep 0.05; done
    local t1; t1=$(date +%s.%N)
    WRITER="queue writer: $(phase_shares "$p0" "$(writer_phases "$TMP")" "$(echo "$t1 - $t0" | bc -l)") of the run"
    local peak; peak=$(hwm)
    read -r del pend < <(counts)
    printf '%-38s %8d rows %6.1f MB %7.2f s  peak RSS %6.1f MiB  (delivered %d, pending %d at the end)\n' \
        "$label" "$ROWS" "$(echo "$bytes / 1000000" | bc -l)" "$(echo "$t1 - $t0" | bc -l)" "$peak" "$del" "$pend"
    echo "   $WRITER"
}

drain() {
    local want=$1 del pend
    while :; do
        read -r del pend < <(counts)
        [ "$pend" -eq 0 ] && [ "$del" -ge "$want" ] && break
        sleep 0.5
    done
}

echo "hms-sync snapshot benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), binary $BIN"
start
run "1. first load (all creates)" 0
drain "$ROWS"
kill "$PID"; wait "$PID" || true
start
run "2. next night (1% changed, 1% gone)" 1
drain "$((ROWS + ROWS / 100 * 2))"
read -r del pend < <(counts)
echo "   after run 2: delivered $del in all = $ROWS + $((del - ROWS)) (expected $ROWS + $((ROWS / 100 * 2)): only the changed and the gone rows)"
kill "$PID"; wait "$PID" || true
PID=

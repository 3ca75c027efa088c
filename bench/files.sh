#!/usr/bin/env bash
# Many small files (issue 12, item 5): COUNT one-record JSON files renamed into a
# drop folder as fast as one producer can, while a CSV file connector delivers.
# Reports the files/s that leave the inbox durable (first rename to inbox empty)
# and when the last change was delivered. See bench/README.md ("Many files").
#
# Knobs: COUNT (20000), BATCH_MAX (1000), KEEP_TMP=1, BENCH_TMPDIR, HMS_BIN.
set -euo pipefail

COUNT=${COUNT:-20000}
BATCH_MAX=${BATCH_MAX:-1000}

BENCH_NAME=files-bench
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_build
bench_tmp

# start_daemon DIR: runs hms-sync on DIR's config; sets DAEMON_PID.
start_daemon() {
    (cd "$1" && exec "$BIN" run -c "$1/hms-sync.toml" >>"$1/daemon.log" 2>&1) &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
}
wait_ready() {
    local i
    for ((i = 0; i < 600; i++)); do
        grep -q ' ready' "$1/daemon.log" 2>/dev/null && return 0
        sleep 0.05
    done
    die "hms-sync did not start: $(cat "$1/daemon.log")"
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# 2: a folder already full (the daemon was stopped): how fast it empties, without
# the producer as the limit.
pre=$TMP/pre
daemon_config "$pre"
bench_csv_connector "$pre" "$BATCH_MAX"
mkdir -p "$pre/outbox/bench"
"$LOADGEN" burst "$pre/inbox/permits" --count "$COUNT" --timeout 0 >/dev/null
start_daemon "$pre"
"$LOADGEN" burst "$pre/inbox/permits" --count "$COUNT" --wait-only 1 >"$TMP/pre.out"
kill -TERM "$DAEMON_PID" 2>/dev/null || true
wait "$DAEMON_PID" 2>/dev/null || true

# 1: the producer renames files in while the daemon runs.
dir=$TMP/d
daemon_config "$dir"
bench_csv_connector "$dir" "$BATCH_MAX"
mkdir -p "$dir/outbox/bench"
start_daemon "$dir"
wait_ready "$dir"
started_ns=$(date +%s%N)
"$LOADGEN" burst "$dir/inbox/permits" --count "$COUNT" >"$TMP/burst.out"
# Delivered: every change's row in the outbox (CSV rows minus headers).
for ((i = 0; i < 6000; i++)); do
    rows=$(cat "$dir"/outbox/bench/*.csv 2>/dev/null | grep -c '^bench:' || true)
    [[ $rows -ge $COUNT ]] && break
    sleep 0.05
done
delivered_ms=$((($(date +%s%N) - started_ns) / 1000000))
rss_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$DAEMON_PID/status")
kill -TERM "$DAEMON_PID" 2>/dev/null || true
wait "$DAEMON_PID" 2>/dev/null || true

cat <<EOF

Many small files: $COUNT one-record files, one producer, CSV connector delivering (batch_max $BATCH_MAX);
$(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "$REPO" && git rev-parse --short HEAD), binary $BIN
| figure | measured | goal |
|---|---|---|
| producer (write + rename) | $(get "$TMP/burst.out" producer_files_per_s) files/s | - |
| taken from the inbox, durable, while the producer writes | $(get "$TMP/burst.out" files_per_s) files/s ($(get "$TMP/burst.out" drained_s) s, $(get "$TMP/burst.out" left) left) | >= 2,000 files/s |
| taken from an inbox already holding them (start to empty) | $(get "$TMP/pre.out" files_per_s) files/s ($(get "$TMP/pre.out" drained_s) s, $(get "$TMP/pre.out" left) left) | >= 2,000 files/s |
| last change delivered | $((delivered_ms / 1000)).$(printf '%03d' $((delivered_ms % 1000))) s after the first rename ($rows rows) | - |
| peak RSS | $((rss_kib / 1024)) MiB | - |
EOF

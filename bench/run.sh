#!/usr/bin/env bash
# hms-sync benchmark: builds the release binary and the load generator, runs every
# scenario in a temporary folder, prints a table of results next to their goals and
# writes it to bench/results-latest.txt. See bench/README.md.
#
# Knobs (environment): INGEST_SECONDS (8), INGEST_CLIENTS (4), INGEST_WINDOW (1000),
# LAT_RATE (200), LAT_COUNT (2000), BACKLOG (1000000), BACKLOG_MAX_SECONDS (600),
# KEEP_TMP=1 (keep the temp folder), BENCH_TMPDIR (where the temp folder goes),
# ONLY="ingest latency backlog" (a subset of the scenarios; idle RSS and sizes always run),
# EXTRA_CONFIG='cache_mib = 16' (top-level config lines, for experiments only: the
# results file shows them, and the goals are meant for the defaults).
set -euo pipefail

INGEST_SECONDS=${INGEST_SECONDS:-8}
INGEST_CLIENTS=${INGEST_CLIENTS:-4}
INGEST_WINDOW=${INGEST_WINDOW:-1000}
LAT_RATE=${LAT_RATE:-200}
LAT_COUNT=${LAT_COUNT:-2000}
BACKLOG=${BACKLOG:-1000000}
BACKLOG_MAX_SECONDS=${BACKLOG_MAX_SECONDS:-600}
ONLY=${ONLY:-ingest latency backlog}
EXTRA_CONFIG=${EXTRA_CONFIG:-}
wanted() { [[ " $ONLY " == *" $1 "* ]]; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/daemon-config.sh
. "$BENCH_DIR/daemon-config.sh"
REPO=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SCRIPT_START=$(date +%s.%N)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
# seconds between two `now` stamps, 1 decimal
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# value of KEY in a key=value file
get() { if [[ -f $1 ]]; then sed -n "s/^$2=//p" "$1" | head -n1; else echo "-"; fi; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- build ----------------------------------------------------------------------
# What is being measured: the commit, and whether src/ differs from it, at build time.
BUILT_FROM="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/ or Cargo.*')"
log "building (target dir $TARGET_DIR)"
BUILD_START=$(now)
(cd "$REPO" && cargo build --release --locked)
(cd "$REPO" && cargo build --release --locked --example loadgen)
BUILD_SECONDS=$(since "$BUILD_START")
# HMS_BIN measures another build of the same source (e.g. the static musl one).
BIN=${HMS_BIN:-$TARGET_DIR/release/hms-sync}
LOADGEN=$TARGET_DIR/release/examples/loadgen
[[ -x $BIN ]] || die "no binary at $BIN"
[[ -x $LOADGEN ]] || die "no load generator at $LOADGEN"
RUN_START=$(now)

# ---- temp folder, daemons, cleanup -------------------------------------------------
TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-bench.XXXXXX")
DAEMON_PID=""
cleanup() {
    local rc=$?
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# mkcase NAME MODE: a daemon folder; MODE is none (no connector), up (outbox exists)
# or down (outbox folder missing, so the target is down and deltas pile up).
mkcase() {
    local dir=$TMP/$1 mode=$2
    daemon_config "$dir" "$EXTRA_CONFIG"
    if [[ $mode != none ]]; then
        bench_csv_connector "$dir" 1000
        [[ $mode == up ]] && mkdir -p "$dir/outbox/bench"
    else
        # No connector receives `permits`: keep its changes instead of refusing them.
        printf '\n[collections]\nkeep_unrouted = true\n' >>"$dir/hms-sync.toml"
    fi
    echo "$dir"
}

# start_daemon DIR: starts `hms-sync run`, waits for `ready`, sets DAEMON_PID.
start_daemon() {
    local dir=$1 i
    (cd "$dir" && exec "$BIN" run -c "$dir/hms-sync.toml" >>"$dir/daemon.log" 2>&1) &
    DAEMON_PID=$!
    for ((i = 0; i < 600; i++)); do
        grep -q ' ready' "$dir/daemon.log" 2>/dev/null && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$dir/daemon.log" >&2; die "hms-sync exited at start"; }
        sleep 0.05
    done
    cat "$dir/daemon.log" >&2
    die "hms-sync did not log ready within 30 s"
}

# stop_daemon: SIGTERM, wait (kill -9 after 40 s); prints the seconds it took.
stop_daemon() {
    local t0 i
    t0=$(now)
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for ((i = 0; i < 4000; i++)); do
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.01
    done
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        log "daemon did not stop within 40 s of SIGTERM; kill -9"
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
    since "$t0"
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID [THREAD-NAME]: user+system clock ticks of the process, or of its
# threads with that name
cpu_ticks() {
    local f total=0 t
    if [[ $# -eq 1 ]]; then
        sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
        return
    fi
    for f in /proc/"$1"/task/*; do
        [[ $(cat "$f/comm" 2>/dev/null) == "$2" ]] || continue
        t=$(sed 's/.*) //' "$f/stat" | awk '{ print $12 + $13 }')
        total=$((total + t))
    done
    echo "$total"
}
# busy TICKS SECONDS: share of one CPU, in percent
busy() { awk -v t="$1" -v s="$2" -v hz="$CLK_TCK" 'BEGIN { if (s > 0) printf "%.0f", 100 * t / hz / s; else print "-" }'; }

vm_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { if (k ~ /^[0-9.]+$/) printf "%.1f", k / 1024; else print "-" }'; }
status_field() { # DIR FIELD: first numeric FIELD in `status --json`
    (cd "$1" && "$BIN" status --json -c "$1/hms-sync.toml" 2>/dev/null) |
        grep -o "\"$2\":[0-9.]*" | head -n1 | cut -d: -f2 || true
}
count_rows() { # DIR: data rows in the delivered CSV files
    find "$1" -maxdepth 1 -type f ! -name '.*' -print0 | xargs -0 -r cat |
        grep -vc '^delivery_id,' || true
}

LOADS=""
note_load() { LOADS="$LOADS $1 [$(loadavg)];"; }

# ---- 3: idle RSS ----------------------------------------------------------------------
log "scenario 3: idle RSS of a fresh daemon with one file connector"
note_load idle
D=$(mkcase idle up)
start_daemon "$D"
sleep 2
IDLE_RSS_KIB=$(vm_kib "$DAEMON_PID" VmRSS)
IDLE_HWM_KIB=$(vm_kib "$DAEMON_PID" VmHWM)
stop_daemon >/dev/null
log "idle: VmRSS $(mib "$IDLE_RSS_KIB") MiB, VmHWM $(mib "$IDLE_HWM_KIB") MiB"

# ---- 1: socket ingest -------------------------------------------------------------------
UP_RSS_KIB=0 UP_DELIVERED_AT_END="-" UP_DRAIN_SECONDS="-" UP_CPU="-" UP_WRITER="-" NONE_CPU="-"
if wanted ingest; then
    log "scenario 1a: socket ingest with a file connector (${INGEST_CLIENTS} clients, window ${INGEST_WINDOW}, ${INGEST_SECONDS} s)"
    note_load ingest-connector
    D=$(mkcase ingest-up up)
    start_daemon "$D"
    c0=$(cpu_ticks "$DAEMON_PID") w0=$(cpu_ticks "$DAEMON_PID" queue-writer)
    p0=$(writer_phases "$D")
    "$LOADGEN" ingest "$D/hms.sock" --clients "$INGEST_CLIENTS" --seconds "$INGEST_SECONDS" \
        --window "$INGEST_WINDOW" --prefix up >"$TMP/ingest-up.out"
    s=$(get "$TMP/ingest-up.out" seconds)
    UP_WRITER=$(phase_shares "$p0" "$(writer_phases "$D")" "$s")
    UP_CPU="daemon $(busy $(($(cpu_ticks "$DAEMON_PID") - c0)) "$s")% of one CPU, queue-writer thread $(busy $(($(cpu_ticks "$DAEMON_PID" queue-writer) - w0)) "$s")%, load generator $(busy "$(awk -v c="$(get "$TMP/ingest-up.out" loadgen_cpu_s)" -v hz="$CLK_TCK" 'BEGIN { printf "%d", c * hz }')" "$s")%"
    UP_RSS_KIB=$(vm_kib "$DAEMON_PID" VmHWM)
    UP_DELIVERED_AT_END=$(count_rows "$D/outbox/bench")
    # Let the worker finish (bounded wait) to see how long the drain takes.
    DRAIN_START=$(now)
    for ((i = 0; i < 1200; i++)); do
        p=$(status_field "$D" pending)
        [[ ${p:-1} == 0 ]] && break
        sleep 0.1
    done
    UP_DRAIN_SECONDS=$(since "$DRAIN_START")
    UP_PENDING_LEFT=$(status_field "$D" pending)
    stop_daemon >/dev/null
    cat "$TMP/ingest-up.out" >&2
    log "connector delivered $UP_DELIVERED_AT_END rows by the end of the ingest; drained the rest in ${UP_DRAIN_SECONDS} s (pending left: ${UP_PENDING_LEFT:-?})"

    log "scenario 1b: socket ingest with no connector (diff + snapshot only)"
    note_load ingest-none
    D=$(mkcase ingest-none none)
    start_daemon "$D"
    c0=$(cpu_ticks "$DAEMON_PID") w0=$(cpu_ticks "$DAEMON_PID" queue-writer)
    "$LOADGEN" ingest "$D/hms.sock" --clients "$INGEST_CLIENTS" --seconds "$INGEST_SECONDS" \
        --window "$INGEST_WINDOW" --prefix none >"$TMP/ingest-none.out"
    s=$(get "$TMP/ingest-none.out" seconds)
    NONE_CPU="daemon $(busy $(($(cpu_ticks "$DAEMON_PID") - c0)) "$s")% of one CPU, queue-writer thread $(busy $(($(cpu_ticks "$DAEMON_PID" queue-writer) - w0)) "$s")%, load generator $(busy "$(awk -v c="$(get "$TMP/ingest-none.out" loadgen_cpu_s)" -v hz="$CLK_TCK" 'BEGIN { printf "%d", c * hz }')" "$s")%"
    stop_daemon >/dev/null
    cat "$TMP/ingest-none.out" >&2
fi

# ---- 2: drop-to-outbox latency ----------------------------------------------------------
if wanted latency; then
    log "scenario 2: drop-to-outbox latency, ${LAT_COUNT} files at ${LAT_RATE}/s, batch_window 0s"
    note_load latency
    D=$(mkcase latency up)
    start_daemon "$D"
    "$LOADGEN" latency "$D/inbox/permits" "$D/outbox/bench" --rate "$LAT_RATE" --count "$LAT_COUNT" \
        >"$TMP/latency.out"
    stop_daemon >/dev/null
    cat "$TMP/latency.out" >&2
fi

# ---- 4: memory with a large backlog, then restart to first delivery --------------------------
BL_RSS_KIB="-" BL_HWM_KIB="-" BL_PENDING="-" BL_STATE_KIB="-" BL_STOP_SECONDS="-" BACKLOG_SECONDS="-"
if wanted backlog; then
    log "scenario 4: ${BACKLOG} changes queued for a target that is down (outbox missing)"
    note_load backlog
    D=$(mkcase backlog down)
    start_daemon "$D"
    BACKLOG_START=$(now)
    "$LOADGEN" ingest "$D/hms.sock" --clients "$INGEST_CLIENTS" --seconds "$BACKLOG_MAX_SECONDS" \
        --max "$BACKLOG" --window "$INGEST_WINDOW" --prefix bl >"$TMP/backlog.out"
    BACKLOG_SECONDS=$(since "$BACKLOG_START")
    cat "$TMP/backlog.out" >&2
    sleep 2
    BL_RSS_KIB=$(vm_kib "$DAEMON_PID" VmRSS)
    BL_HWM_KIB=$(vm_kib "$DAEMON_PID" VmHWM)
    # queued = waiting + in flight (the down worker holds a lease while it backs off)
    p=$(status_field "$D" pending) f=$(status_field "$D" in_flight)
    BL_PENDING=$((${p:-0} + ${f:-0}))
    BL_STATE_KIB=$(du -sk "$D/state" | cut -f1)
    log "backlog: queued=${BL_PENDING:-?} RSS=$(mib "$BL_RSS_KIB") MiB HWM=$(mib "$BL_HWM_KIB") MiB state=$(mib "$BL_STATE_KIB") MiB"
    BL_STOP_SECONDS=$(stop_daemon)
    log "SIGTERM to exit with the backlog: ${BL_STOP_SECONDS} s; creating the outbox and restarting"
    mkdir -p "$D/outbox/bench"
    note_load restart
    "$LOADGEN" restart "$BIN" "$D/hms-sync.toml" "$D/outbox/bench" "$D/daemon.log" --timeout 120 \
        >"$TMP/restart.out"
    cat "$TMP/restart.out" >&2
fi
note_load end

# ---- 5: binary size ---------------------------------------------------------------------------
SIZE_REL=$(stat -c %s "$BIN")
MUSL=$REPO/dist/hms-sync-x86_64-unknown-linux-musl
SIZE_MUSL=""
[[ -f $MUSL ]] && SIZE_MUSL=$(stat -c %s "$MUSL")

# ---- table ------------------------------------------------------------------------------------
RUN_SECONDS=$(since "$RUN_START")
TOTAL_SECONDS=$(since "$SCRIPT_START")

# verdict VALUE OP GOAL: PASS/MISS (OP is le or ge); n/a if VALUE is not a number
verdict() {
    awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN {
        if (v !~ /^[0-9.]+$/) { print "n/a"; exit }
        ok = (op == "le") ? (v + 0 <= g + 0) : (v + 0 >= g + 0)
        print ok ? "PASS" : "MISS" }'
}
row() { printf '%-46s %14s %12s  %s\n' "$1" "$2" "$3" "$4"; }

UP_RATE=$(get "$TMP/ingest-up.out" ok_rate)
NONE_RATE=$(get "$TMP/ingest-none.out" ok_rate)
P50=$(get "$TMP/latency.out" p50_ms)
P99=$(get "$TMP/latency.out" p99_ms)
LAT_MISSING=$(get "$TMP/latency.out" missing)
BL_OK=$(get "$TMP/backlog.out" ok)
BL_RATE=$(get "$TMP/backlog.out" ok_rate)
FIRST_MS=$(get "$TMP/restart.out" first_delivery_ms)
READY_MS=$(get "$TMP/restart.out" ready_ms)
FIRST_S=$(awk -v v="$FIRST_MS" 'BEGIN { if (v ~ /^[0-9.]+$/) printf "%.2f", v / 1000; else print v }')
READY_S=$(awk -v v="$READY_MS" 'BEGIN { if (v ~ /^[0-9.]+$/) printf "%.2f", v / 1000; else print v }')
RE_RSS=$(get "$TMP/restart.out" rss_kib)
FSTYPE=$(findmnt -n -o FSTYPE --target "$TMP" 2>/dev/null || df -PT "$TMP" | awk 'NR == 2 { print $2 }')

{
    echo "hms-sync benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "built from: $BUILT_FROM"
    echo "machine:    $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel:     $(uname -sr)"
    echo "temp dir:   $FSTYPE ($(df -P "$TMP" | awk 'NR == 2 { print $1 }'))"
    echo "load gen:   ${INGEST_CLIENTS} clients x window ${INGEST_WINDOW} lines, 5-field envelopes, distinct keys; one process on the same box"
    echo
    row "metric" "measured" "goal" "verdict"
    row "----------------------------------------------" "--------------" "------------" "-------"
    row "1. socket ingest, file connector (ok/s)" "$UP_RATE" ">= 50000" "$(verdict "$UP_RATE" ge 50000)"
    row "1. socket ingest, no connector (ok/s)" "$NONE_RATE" "(info)" ""
    row "2. drop-to-outbox p50 (ms) @${LAT_RATE} files/s" "$P50" "(info)" ""
    row "2. drop-to-outbox p99 (ms) @${LAT_RATE} files/s" "$P99" "<= 25" "$(verdict "$P99" le 25)"
    row "3. idle RSS after start (MiB)" "$(mib "$IDLE_RSS_KIB")" "<= 20" "$(verdict "$(mib "$IDLE_RSS_KIB")" le 20)"
    row "4. RSS with ${BL_PENDING:-?} queued (MiB)" "$(mib "$BL_RSS_KIB")" "<= 128" "$(verdict "$(mib "$BL_RSS_KIB")" le 128)"
    row "4. peak RSS (VmHWM) while queueing them (MiB)" "$(mib "$BL_HWM_KIB")" "(info)" ""
    row "4. restart to first delivery, backlog (s)" "$FIRST_S" "<= 1" "$(verdict "$FIRST_S" le 1)"
    row "4. restart to 'ready', backlog (s)" "$READY_S" "(info)" ""
    row "5. release binary (MiB)" "$(mib $((SIZE_REL / 1024)))" "<= 15" "$(verdict "$(mib $((SIZE_REL / 1024)))" le 15)"
    if [[ -n $SIZE_MUSL ]]; then
        row "5. dist musl binary (MiB)" "$(mib $((SIZE_MUSL / 1024)))" "<= 15" "$(verdict "$(mib $((SIZE_MUSL / 1024)))" le 15)"
    fi
    echo
    echo "details:"
    echo "  1. with connector: $(get "$TMP/ingest-up.out" ok) ok / $(get "$TMP/ingest-up.out" sent) sent in $(get "$TMP/ingest-up.out" seconds) s, busy=$(get "$TMP/ingest-up.out" busy) err=$(get "$TMP/ingest-up.out" err); rows delivered by then: $UP_DELIVERED_AT_END; rest drained in ${UP_DRAIN_SECONDS} s; peak RSS $(mib "$UP_RSS_KIB") MiB"
    echo "     CPU: $UP_CPU"
    echo "     queue writer thread's time (wall clock): $UP_WRITER"
    echo "     no connector:   $(get "$TMP/ingest-none.out" ok) ok / $(get "$TMP/ingest-none.out" sent) sent in $(get "$TMP/ingest-none.out" seconds) s, busy=$(get "$TMP/ingest-none.out" busy) err=$(get "$TMP/ingest-none.out" err)"
    echo "     CPU: $NONE_CPU"
    echo "  2. $(get "$TMP/latency.out" delivered)/$(get "$TMP/latency.out" sent) delivered (missing $LAT_MISSING) in $(get "$TMP/latency.out" outbox_files) outbox files; mean $(get "$TMP/latency.out" mean_ms) ms, p90 $(get "$TMP/latency.out" p90_ms) ms, max $(get "$TMP/latency.out" max_ms) ms; writer max lag $(get "$TMP/latency.out" writer_max_lag_ms) ms"
    echo "  3. idle VmHWM $(mib "$IDLE_HWM_KIB") MiB (2 s after ready, one file connector, fresh state)"
    echo "  4. queued $BL_OK changes in ${BACKLOG_SECONDS} s ($BL_RATE ok/s, target down); state folder $(mib "$BL_STATE_KIB") MiB;"
    echo "     SIGTERM to exit ${BL_STOP_SECONDS} s; after restart: RSS at first delivery $(mib "${RE_RSS:-0}") MiB, stop $(get "$TMP/restart.out" stop_ms) ms"
    if [[ -n $SIZE_MUSL ]]; then
        echo "  5. dist binary dated $(date -u -r "$MUSL" +%Y-%m-%dT%H:%MZ) (built separately; may be older than the source)"
    fi
    echo "  load average (1/5/15 min) at the start of each scenario:$LOADS"
    if [[ -n $EXTRA_CONFIG ]]; then echo "  NOT THE DEFAULT CONFIG: extra top-level config: $EXTRA_CONFIG"; fi
    echo "  build ${BUILD_SECONDS} s (not counted); scenarios ${RUN_SECONDS} s; total ${TOTAL_SECONDS} s"
} >"$TMP/table.txt"

cat "$TMP/table.txt"
if [[ -z $EXTRA_CONFIG && $ONLY == "ingest latency backlog" ]]; then
    cp "$TMP/table.txt" "$BENCH_DIR/results-latest.txt"
    log "wrote $BENCH_DIR/results-latest.txt"
else
    log "partial or non-default run: $BENCH_DIR/results-latest.txt left as it was"
fi

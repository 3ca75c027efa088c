#!/usr/bin/env bash
# Slow-service benchmark (issue 12, item 3): a SOAP service that answers each call
# after 40 ms of work, with up to WORKERS calls worked on at once; changes dropped
# as one-record files at RATE/s. Compares max_in_flight = 1 with "auto": the rate
# delivered and the drop-to-delivered latency (measured by the service when its
# answer goes). See bench/README.md ("Slow service").
#
# Knobs: RATE (50), COUNT (1500), SERVICE_MS (40), WORKERS (8), KEEP_TMP=1,
# BENCH_TMPDIR, HMS_BIN (a prebuilt hms-sync, e.g. the static one).
set -euo pipefail

RATE=${RATE:-50}
COUNT=${COUNT:-1500}
SERVICE_MS=${SERVICE_MS:-40}
WORKERS=${WORKERS:-8}

BENCH_NAME=adaptive-bench
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_build
bench_tmp

# one_run NAME MAX_IN_FLIGHT: drops COUNT files at RATE/s into a daemon whose one
# SOAP connector has MAX_IN_FLIGHT, waits until the service has answered them all
# (or 4x the drop time), and leaves the service's figures in $TMP/NAME.out.
one_run() {
    local name=$1 mif=$2 dir=$TMP/$1 i
    rm -f "$TMP/$name.port"
    "$LOADGEN" soap-server "$TMP/$name.port" --expect "$COUNT" \
        --seconds "$((4 * COUNT / RATE + 30))" --service-ms "$SERVICE_MS" --workers "$WORKERS" >"$TMP/$name.out" &
    local server=$!
    PIDS+=("$server")
    for ((i = 0; i < 200; i++)); do [[ -s $TMP/$name.port ]] && break; sleep 0.02; done
    daemon_config "$dir"
    mkdir -p "$dir/connectors/bench"
    cat >"$dir/connectors/bench/connector.toml" <<EOF
collections = ["permits"]
[format]
kind = "xml"
root = "PermitUpdate"
key_element = "PermitNumber"
[transport]
kind = "soap"
url = "http://127.0.0.1:$(cat "$TMP/$name.port")/PermitService"
max_in_flight = $mif
EOF
    (cd "$dir" && exec "$BIN" run -c "$dir/hms-sync.toml" >>"$dir/daemon.log" 2>&1) &
    local daemon=$!
    PIDS+=("$daemon")
    for ((i = 0; i < 600; i++)); do
        grep -q ' ready' "$dir/daemon.log" 2>/dev/null && break
        sleep 0.05
    done
    local started=$SECONDS
    "$LOADGEN" drop "$dir/inbox/permits" --rate "$RATE" --count "$COUNT" >"$TMP/$name.drop"
    wait "$server" || true
    echo "elapsed_s=$((SECONDS - started))" >>"$TMP/$name.out"
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
one_run fixed1 1
log "max_in_flight = 1: $(get "$TMP/fixed1.out" requests) answered, p99 $(get "$TMP/fixed1.out" p99_ms) ms"
one_run auto '"auto"'
log "max_in_flight = auto: $(get "$TMP/auto.out" requests) answered, p99 $(get "$TMP/auto.out" p99_ms) ms"

row() {
    local f=$TMP/$2.out
    echo "| $1 | $(get "$f" requests) of $COUNT in $(get "$f" elapsed_s) s | $(get "$f" rate)/s | $(get "$f" p50_ms) | $(get "$f" p99_ms) | $(get "$f" max_ms) | $(get "$f" most_at_once) |"
}
cat <<EOF

Slow SOAP service ($SERVICE_MS ms a call, $WORKERS at once), $COUNT changes dropped at $RATE/s;
$(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "$REPO" && git rev-parse --short HEAD)
| max_in_flight | answered | rate (2nd half) | p50 ms | p99 ms | max ms | most at once |
|---|---|---|---|---|---|---|
$(row 1 fixed1)
$(row auto auto)
EOF

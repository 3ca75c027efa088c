#!/usr/bin/env bash
# SOAP delivery benchmark: how fast hms-sync delivers to a local keep-alive SOAP
# server that answers at once, as a share of what `wrk` gets from the same server
# with the same request on one connection; and drop-to-delivered latency at a fixed
# rate. See bench/README.md ("SOAP").
#
# Knobs: SOAP_COUNT (20000 changes for the rate runs), WRK_SECONDS (5),
# LAT_RATE (200), LAT_COUNT (2000), KEEP_TMP=1, BENCH_TMPDIR.
set -euo pipefail

SOAP_COUNT=${SOAP_COUNT:-20000}
WRK_SECONDS=${WRK_SECONDS:-5}
LAT_RATE=${LAT_RATE:-200}
LAT_COUNT=${LAT_COUNT:-2000}

BENCH_NAME=soap-bench
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v wrk >/dev/null || die "wrk is missing (Debian: apt-get install wrk)"
bench_build
bench_tmp

# start_server NAME EXPECT [--dump FILE]: the SOAP server; sets SERVER_PID, PORT.
start_server() {
    local name=$1 expect=$2 i
    shift 2
    rm -f "$TMP/$name.port"
    "$LOADGEN" soap-server "$TMP/$name.port" --expect "$expect" --seconds 300 "$@" >"$TMP/$name.out" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for ((i = 0; i < 200; i++)); do [[ -s $TMP/$name.port ]] && break; sleep 0.02; done
    PORT=$(cat "$TMP/$name.port")
}

# case_dir NAME MAX_IN_FLIGHT: a daemon folder with one SOAP connector to $PORT.
case_dir() {
    local dir=$TMP/$1
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
url = "http://127.0.0.1:$PORT/PermitService"
soap_action = "urn:UpdatePermit"
max_in_flight = $2
EOF
    echo "$dir"
}

start_daemon() {
    local dir=$1 i
    (cd "$dir" && exec "$BIN" run -c "$dir/hms-sync.toml" >>"$dir/daemon.log" 2>&1) &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    for ((i = 0; i < 600; i++)); do
        grep -q ' ready' "$dir/daemon.log" 2>/dev/null && return 0
        sleep 0.05
    done
    die "hms-sync did not start: $(cat "$dir/daemon.log")"
}

# rate_run MAX_IN_FLIGHT: feeds SOAP_COUNT changes through the socket and
# measures the server's request rate over the second half (the drain); sets RATE.
# Called directly, never in $( ): the pids it starts must reach PIDS so that
# cleanup stops them if anything fails.
rate_run() {
    local mif=$1 dir
    start_server "rate$mif" "$SOAP_COUNT" --dump "$TMP/envelope.xml"
    dir=$(case_dir "rate$mif" "$mif")
    start_daemon "$dir"
    "$LOADGEN" ingest "$dir/hms.sock" --clients 1 --max "$SOAP_COUNT" --seconds 120 --prefix "m$mif" >"$TMP/ingest$mif.out"
    wait "$SERVER_PID" || true
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    RATE=$(get "$TMP/rate$mif.out" rate)
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
rate_run 1
RATE1=$RATE
log "max_in_flight=1: $RATE1 deliveries/s"
rate_run 8
RATE8=$RATE
log "max_in_flight=8: $RATE8 deliveries/s"

# wrk: the same envelope, the same headers, one connection, one thread.
start_server wrk 100000000
cat >"$TMP/post.lua" <<EOF
wrk.method = "POST"
local f = io.open("$TMP/envelope.xml", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "text/xml; charset=utf-8"
wrk.headers["SOAPAction"] = "\"urn:UpdatePermit\""
EOF
wrk -t1 -c1 -d"${WRK_SECONDS}s" -s "$TMP/post.lua" "http://127.0.0.1:$PORT/PermitService" >"$TMP/wrk.out"
kill -TERM "$SERVER_PID" 2>/dev/null || true
WRK=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$TMP/wrk.out")
log "wrk: $WRK requests/s"

# Latency: files dropped at LAT_RATE/s, time from rename to arrival at the server.
start_server lat "$LAT_COUNT"
dir=$(case_dir lat 1)
start_daemon "$dir"
"$LOADGEN" drop "$dir/inbox/permits" --rate "$LAT_RATE" --count "$LAT_COUNT" >"$TMP/drop.out"
wait "$SERVER_PID" || true
kill -TERM "$DAEMON_PID" 2>/dev/null || true

share() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }'; }
cat <<EOF

SOAP delivery, $(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "$REPO" && git rev-parse --short HEAD)
| figure | measured | goal |
|---|---|---|
| wrk, same request, 1 connection | $WRK req/s | – |
| hms-sync, max_in_flight = 1 | $RATE1 deliveries/s ($(share "$RATE1" "$WRK") of wrk) | >= 50% of wrk |
| hms-sync, max_in_flight = 8 | $RATE8 deliveries/s ($(share "$RATE8" "$WRK") of wrk) | – |
| drop-to-delivered at $LAT_RATE/s ($(get "$TMP/lat.out" latency_count) changes) | p50 $(get "$TMP/lat.out" p50_ms) ms, p90 $(get "$TMP/lat.out" p90_ms) ms, p99 $(get "$TMP/lat.out" p99_ms) ms, max $(get "$TMP/lat.out" max_ms) ms | p99 <= 25 ms |
EOF

#!/usr/bin/env bash
# Fixed (COBOL) records vs CSV end to end (issue 11's performance goal): COUNT
# changes queued while the outbox is missing (target down), then the outbox
# appears and the time until every change is delivered is measured: lease,
# render, write and fsync the batch file, ack. `pickup = "none"`. One connector
# per run, CSV and fixed alternating, ROUNDS times.
#
# Knobs: COUNT (200000), ROUNDS (2), BATCH_MAX (1000), KEEP_TMP=1, HMS_BIN.
set -euo pipefail
COUNT=${COUNT:-200000}
ROUNDS=${ROUNDS:-2}
BATCH_MAX=${BATCH_MAX:-1000}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/daemon-config.sh
. "$BENCH_DIR/daemon-config.sh"
REPO=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
log() { printf '[fixed-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
(cd "$REPO" && cargo build --release --locked && cargo build --release --locked --example loadgen) >&2
BIN=${HMS_BIN:-$TARGET_DIR/release/hms-sync}
LOADGEN=$TARGET_DIR/release/examples/loadgen
TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-fixed-e2e.XXXXXX")
PID=
cleanup() { [[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null; wait 2>/dev/null; [[ ${KEEP_TMP:-0} == 1 ]] || rm -rf "$TMP"; }
trap cleanup EXIT

# connector DIR KIND: the bench connector writing csv or fixed records.
connector() {
    mkdir -p "$1/connectors/bench"
    if [[ $2 == csv ]]; then
        bench_csv_connector "$1" "$BATCH_MAX"
        return
    fi
    cat >"$1/connectors/bench/PERMIT-UPD.cpy" <<'EOF'
       01  PERMIT-UPD.
           05  PU-ACTION          PIC X.
           05  PU-PERMIT-NO       PIC X(20).
           05  PU-STATUS          PIC X(10).
           05  PU-TYPE            PIC X(12).
           05  PU-PARCEL          PIC X(10).
           05  PU-FEE             PIC S9(7)V99 COMP-3.
EOF
    cat >"$1/connectors/bench/connector.toml" <<EOF
collections = ["permits"]

[format]
kind = "fixed"
copybook = "PERMIT-UPD.cpy"
record_end = "lf"

[format.map]
PU-ACTION = "@op"
PU-PERMIT-NO = "permit_number"
PU-STATUS = "status"
PU-TYPE = "type"
PU-PARCEL = "parcel_id"
PU-FEE = "fee"

[transport]
kind = "file"
dir = "outbox/bench"
batch_max = $BATCH_MAX
batch_window = "0s"
EOF
}

# waiting DIR: the changes not yet delivered (pending + in flight)
waiting() {
    (cd "$1" && "$BIN" status --json -c "$1/hms-sync.toml") |
        python3 -c 'import json,sys; t=json.load(sys.stdin)["targets"][0]; print(t["pending"] + t["in_flight"])'
}

# one KIND ROUND: prints the deliveries/s
one() {
    local d=$TMP/$1-$2 i
    daemon_config "$d"
    connector "$d" "$1"
    (cd "$d" && exec "$BIN" run -c "$d/hms-sync.toml" >>"$d/daemon.log" 2>&1) &
    PID=$!
    for ((i = 0; i < 600; i++)); do grep -q ' ready' "$d/daemon.log" 2>/dev/null && break; sleep 0.05; done
    "$LOADGEN" ingest "$d/hms.sock" --clients 4 --max "$COUNT" --seconds 120 --prefix "$1" >/dev/null
    [[ $(waiting "$d") == "$COUNT" ]] || log "expected $COUNT waiting, got $(waiting "$d")"
    local t0; t0=$(date +%s%N)
    mkdir -p "$d/outbox/bench"
    until [[ $(waiting "$d") == 0 ]]; do sleep 0.05; done
    local ms=$((($(date +%s%N) - t0) / 1000000))
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
    echo "$((COUNT * 1000 / ms))"
}
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
csv=() fixed=()
for ((r = 1; r <= ROUNDS; r++)); do
    csv+=("$(one csv "$r")")
    fixed+=("$(one fixed "$r")")
    log "round $r: csv ${csv[-1]}/s, fixed ${fixed[-1]}/s"
done
cat <<EOF

Fixed vs CSV end to end: $COUNT queued changes delivered into the outbox (batch_max $BATCH_MAX, pickup "none");
$(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "$REPO" && git rev-parse --short HEAD)
| round | csv deliveries/s | fixed deliveries/s | fixed / csv |
|---|---|---|---|
EOF
for ((r = 0; r < ROUNDS; r++)); do
    echo "| $((r + 1)) | ${csv[r]} | ${fixed[r]} | $(awk -v a="${fixed[r]}" -v b="${csv[r]}" 'BEGIN { printf "%.2f", a / b }') |"
done

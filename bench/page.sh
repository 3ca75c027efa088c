#!/usr/bin/env bash
# The status page's server time and weight with 50 targets and 1,000,000 pending
# deltas (issue 10: at most 20 ms a page, at most 60 KB). 50 file connectors all
# receive `permits` and are paused (so nothing drains); 20,000 changes through
# the socket make 1,000,000 pending deltas. Then GET / (and /status, /widget,
# /records/…) is timed with curl. Writes bench/page-results-latest.txt.
#
#   bench/page.sh                      # builds --release first
#   TARGETS=10 CHANGES=1000 bench/page.sh   # smaller
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${TARGETS:-50}
CHANGES=${CHANGES:-20000}
cargo build --release --locked >/dev/null 2>&1
BIN=$PWD/target/release/hms-sync
TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-page.XXXXXX")
trap 'kill $PID 2>/dev/null || true; [ -n "${KEEP_TMP:-}" ] || rm -rf "$TMP"' EXIT
cd "$TMP"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > hms-sync.toml <<TOML
state_dir = "state"
connectors_dir = "connectors"
delivery_log = "delivery.log"
min_free_disk_mib = 0
[socket]
path = "hms.sock"
[status]
listen = "127.0.0.1:$PORT"
[[watch]]
dir = "inbox/permits"
collection = "permits"
key = "permit_number"
TOML
mkdir -p state
paused=""
for i in $(seq -w 1 "$TARGETS"); do
    mkdir -p "connectors/t$i" "outbox/t$i"
    printf 'collections = ["permits"]\n[format]\nkind = "csv"\ncolumns = ["permit_number", "status"]\n[transport]\nkind = "file"\ndir = "outbox/t%s"\n' "$i" > "connectors/t$i/connector.toml"
    paused="$paused\"t$i\","
done
echo "{\"paused\":[${paused%,}]}" > state/paused.json
"$BIN" run -c hms-sync.toml > daemon.log 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q ' ready ' daemon.log && break; sleep 0.1; done
python3 - "$CHANGES" > changes.ndjson <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"collection": "permits", "key": str(i), "doc": {"permit_number": str(i), "status": "NEW", "notes": "x" * 40}}))
PY
start=$(date +%s.%N)
"$BIN" send -c hms-sync.toml changes.ndjson >/dev/null
end=$(date +%s.%N)
pending=$("$BIN" status --json -c hms-sync.toml | python3 -c 'import json,sys; print(sum(t["pending"] for t in json.load(sys.stdin)["targets"]))')
time_of() {
    for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$PORT$1"; done  # warm
    for _ in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT$1"; done |
        sort -n | awk '{a[NR]=$1} END {printf "median %.1f ms, max %.1f ms", a[int((NR+1)/2)]*1000, a[NR]*1000}'
}
weight=$(curl -s "http://127.0.0.1:$PORT/" | wc -c)
{
    echo "# bench/page.sh $(date -u +%FT%TZ) commit $(git -C "$OLDPWD" rev-parse --short HEAD) on $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "targets $TARGETS, changes $CHANGES (ingested in $(echo "$end - $start" | bc) s), pending deltas $pending"
    echo "GET /          $(time_of /)   weight $weight bytes (goal: <= 20 ms, <= 60 KB)"
    echo "GET /status    $(time_of /status)"
    echo "GET /widget    $(time_of /widget)"
    echo "GET /records/permits/123  $(time_of /records/permits/123)"
    echo "GET /metrics   $(time_of /metrics)"
} | tee "$OLDPWD/bench/page-results-latest.txt"

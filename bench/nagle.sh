#!/usr/bin/env bash
# Delayed-ACK benchmark (issue 9, defect 6): SOAP deliveries per second with one
# in flight against a server that writes an answer's headers and body in two
# writes with Nagle on — Python's http.server, as many legacy stacks do. A
# client that delays its ACK of the headers makes the body wait ~40 ms.
#
# Knobs: NAGLE_COUNT (changes, default 300), HMS_BIN (a built hms-sync; else
# `cargo build --release --locked`), KEEP_TMP=1, BENCH_TMPDIR.
set -euo pipefail

NAGLE_COUNT=${NAGLE_COUNT:-300}
BENCH_NAME=nagle-bench
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v python3 >/dev/null || die "python3 is missing"
if [[ -z ${HMS_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --locked)
    HMS_BIN=$TARGET_DIR/release/hms-sync
fi
bench_tmp

# The legacy server: HTTP/1.1 keep-alive; end_headers() writes the headers,
# wfile.write() the body: two writes, Nagle on (http.server's default).
cat >"$TMP/server.py" <<'EOF'
import http.server, sys
ACK = (b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
       b'<soap:Body><UpdatePermitResponse>got it</UpdatePermitResponse></soap:Body></soap:Envelope>')
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(ACK)))
        self.end_headers()
        self.wfile.write(ACK)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.serve_forever()
EOF
python3 "$TMP/server.py" "$TMP/port" &
PIDS+=("$!")
for ((i = 0; i < 200; i++)); do [[ -s $TMP/port ]] && break; sleep 0.02; done
PORT=$(cat "$TMP/port")

DIR=$TMP/daemon
daemon_config "$DIR"
mkdir -p "$DIR/connectors/legacy"
cat >"$DIR/connectors/legacy/connector.toml" <<EOF
collections = ["permits"]
[format]
kind = "xml"
root = "PermitUpdate"
key_element = "PermitNumber"
[transport]
kind = "soap"
url = "http://127.0.0.1:$PORT/PermitService"
soap_action = "urn:UpdatePermit"
max_in_flight = 1
EOF
(cd "$DIR" && exec "$HMS_BIN" run -c "$DIR/hms-sync.toml" >>"$DIR/daemon.log" 2>&1) &
PIDS+=("$!")
for ((i = 0; i < 600; i++)); do
    grep -q ' ready' "$DIR/daemon.log" 2>/dev/null && break
    sleep 0.05
done
grep -q ' ready' "$DIR/daemon.log" || die "hms-sync did not start: $(cat "$DIR/daemon.log")"

for ((i = 0; i < NAGLE_COUNT; i++)); do
    printf '{"collection":"permits","key":"n%d","doc":{"permit_number":"n%d","status":"A"}}\n' "$i" "$i"
done >"$TMP/changes.ndjson"
start=$(date +%s.%N)
"$HMS_BIN" send -c "$DIR/hms-sync.toml" "$TMP/changes.ndjson" >/dev/null
delivered=0
for ((i = 0; i < 6000; i++)); do
    delivered=$(grep -c '"outcome":"delivered"' "$DIR/delivery.log" 2>/dev/null || true)
    ((delivered >= NAGLE_COUNT)) && break
    sleep 0.01
done
end=$(date +%s.%N)
((delivered >= NAGLE_COUNT)) || die "only $delivered of $NAGLE_COUNT delivered"
median=$(sed -n 's/.*"outcome":"delivered".*"latency_ms":\([0-9]*\).*/\1/p' "$DIR/delivery.log" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
rate=$(awk -v n="$NAGLE_COUNT" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
cat <<EOF

SOAP to a two-write Nagle-on server (python3 http.server), max_in_flight = 1, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "$REPO" && git rev-parse --short HEAD)
| figure | measured |
|---|---|
| deliveries/s, $NAGLE_COUNT changes | $rate |
| median answer time (delivery log latency_ms) | $median ms |
EOF

# Sourced by the bench scripts. daemon_config DIR [EXTRA]: the folder layout and
# hms-sync.toml every scenario runs with: state, delivery log and ingest socket in
# DIR, the status listener on a free loopback port, and a drop folder
# inbox/permits keyed by permit_number. EXTRA (top-level lines) goes first. The
# caller writes DIR/connectors/<name>/connector.toml.
daemon_config() {
    local dir=$1 extra=${2:-}
    mkdir -p "$dir/connectors" "$dir/inbox/permits"
    cat >"$dir/hms-sync.toml" <<EOF
$extra
state_dir = "state"
connectors_dir = "connectors"
delivery_log = "delivery.log"

[socket]
path = "hms.sock"

[status]
listen = "127.0.0.1:0"

[[watch]]
dir = "inbox/permits"
collection = "permits"
key = "permit_number"
EOF
}

# bench_csv_connector DIR BATCH_MAX: connector `bench`, CSV files of up to
# BATCH_MAX rows into DIR/outbox/bench (the folder is not created: a missing
# outbox is how a scenario keeps the target down).
bench_csv_connector() {
    local dir=$1 batch_max=$2
    mkdir -p "$dir/connectors/bench"
    cat >"$dir/connectors/bench/connector.toml" <<EOF
collections = ["permits"]

[format]
kind = "csv"
columns = ["permit_number", "status", "type", "parcel_id", "fee"]

[transport]
kind = "file"
dir = "outbox/bench"
batch_max = $batch_max
batch_window = "0s"
EOF
}

# writer_phases DIR: seconds the queue writer of the daemon logging to DIR/daemon.log
# has spent per phase (from /metrics): "ingest calls commit idle".
writer_phases() {
    local addr
    addr=$(grep -o 'address=[0-9.:]*' "$1/daemon.log" | tail -n1 | cut -d= -f2)
    exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
    printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    awk -F'[{}" ]+' '/^hms_sync_writer_seconds_total[{]/ { v[$3] = $NF }
        END { printf "%s %s %s %s", v["ingest"], v["calls"], v["commit"], v["idle"] }' <&3
    exec 3<&-
}
# phase_shares "BEFORE" "AFTER" SECONDS: the writer's time per phase, in % of SECONDS
phase_shares() {
    awk -v a="$1" -v b="$2" -v s="$3" 'BEGIN {
        split(a, x, " "); split(b, y, " "); split("ingest calls commit idle", n, " ")
        for (i = 1; i <= 4; i++) printf "%s%s %.0f%%", (i > 1 ? ", " : ""), n[i], 100 * (y[i] - x[i]) / s
    }'
}


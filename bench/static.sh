#!/usr/bin/env bash
# The static musl binary against the glibc one, side by side in one run (issue 12,
# item 2): bench/run.sh's ingest scenarios and idle RSS for each binary, in
# alternating rounds so that both see the same machine. Needs
# dist/hms-sync-x86_64-unknown-linux-musl from cross/build.sh (of the same commit).
#
# Knobs: ROUNDS (2), INGEST_SECONDS (8), and what bench/run.sh takes.
set -euo pipefail
ROUNDS=${ROUNDS:-2}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
MUSL=${MUSL_BIN:-$REPO/dist/hms-sync-x86_64-unknown-linux-musl}
GLIBC=$TARGET_DIR/release/hms-sync
log() { printf '[static-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[[ -x $MUSL ]] || { log "no $MUSL: run cross/build.sh x86_64-unknown-linux-musl first"; exit 1; }
(cd "$REPO" && cargo build --release --locked >&2)
log "glibc: $("$GLIBC" --version)"
log "musl:  $("$MUSL" --version)"
OUT=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/hms-static.XXXXXX")
log "each run's full results: $OUT"
for ((r = 1; r <= ROUNDS; r++)); do
    for b in glibc musl; do
        bin=$GLIBC
        [[ $b == musl ]] && bin=$MUSL
        log "round $r: $b"
        HMS_BIN=$bin ONLY=ingest bash "$BENCH_DIR/run.sh" >"$OUT/$b-$r.txt" 2>"$OUT/$b-$r.log"
    done
done
# value FILE LABEL: the measured column of the row starting with LABEL
value() { awk -v l="$2" 'index($0, l) == 1 { split(substr($0, length(l) + 1), f, " "); print f[1]; exit }' "$1"; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
row() { # LABEL
    local g m
    g=$(for ((r = 1; r <= ROUNDS; r++)); do value "$OUT/glibc-$r.txt" "$1"; done | median)
    m=$(for ((r = 1; r <= ROUNDS; r++)); do value "$OUT/musl-$r.txt" "$1"; done | median)
    echo "| $1 | $g | $m | $(awk -v a="$m" -v b="$g" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }') |"
}
cat <<EOF

Static musl vs glibc, median of $ROUNDS alternating rounds; $(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg), commit $(cd "$REPO" && git rev-parse --short HEAD)
| figure | glibc | musl (static) | musl / glibc |
|---|---|---|---|
$(row "1. socket ingest, file connector (ok/s)")
$(row "1. socket ingest, no connector (ok/s)")
$(row "3. idle RSS after start (MiB)")
EOF
for ((r = 1; r <= ROUNDS; r++)); do
    for b in glibc musl; do
        echo "--- $b, round $r:"
        grep -E "queue writer|CPU:" "$OUT/$b-$r.txt" || true
    done
done

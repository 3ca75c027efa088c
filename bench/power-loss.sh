#!/usr/bin/env bash
# Power-loss runs beyond CI's: the integration test power_loss (tests/it/power_loss.rs)
# on a PowerFs mount, for many cuts, two queue sizes and both cut orders, then
# one summary table. See bench/README.md.
#
#   bench/power-loss.sh                         # 500 cuts per run, 20,000 and 100,000 records
#   CUTS=1000 RECORDS="20000" ORDERS="kill-first" bench/power-loss.sh
#   SEED=42 bench/power-loss.sh                  # the same random choices in every run
#   HMS_SYNC_UNSAFE_SKIP_FSYNC=1 bench/power-loss.sh   # show that a missing fsync is caught
#
# Needs /dev/fuse and fusermount3 (Debian: fuse3), as root or a user allowed to mount.
set -uo pipefail
cd "$(dirname "$0")/.."

CUTS=${CUTS:-500}
RECORDS=${RECORDS:-"20000 100000"}
ORDERS=${ORDERS:-"kill-first drop-first"}
OUT=${OUT:-bench/power-loss-latest.txt}
logs=$(mktemp -d "${TMPDIR:-/tmp}/power-loss.XXXXXX")

echo "building the test binary ..." >&2
cargo test --locked --test it --no-run >&2 || exit 2

rows=()
status=0
for records in $RECORDS; do
    for order in $ORDERS; do
        seed=${SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
        log="$logs/$records-$order.log"
        echo "run: $CUTS cuts, $records records, $order, HMS_POWER_SEED=$seed (log: $log)" >&2
        start=$(date +%s)
        HMS_POWER_CUTS=$CUTS HMS_POWER_RECORDS=$records HMS_POWER_ORDER=$order HMS_POWER_SEED=$seed \
            cargo test --locked --test it power_loss -- --nocapture >"$log" 2>&1
        rc=$?
        secs=$(( $(date +%s) - start ))
        line=$(grep -m1 '^power-loss summary:' "$log")
        field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
        if [ -z "$line" ]; then
            rows+=("$(printf '%-8s %-10s %6s %10s %8s %9s %8s %8s  %s' "$records" "$order" "?" "?" "?" "?" "?" "${secs}s" "no summary: see $log")")
        else
            verdict=pass
            [ "$rc" -ne 0 ] && verdict=FAIL
            rows+=("$(printf '%-8s %-10s %6s %10s %8s %9s %8s %8s  %s' "$records" "$order" \
                "$(field cuts)" "$(field acked)" "$(field lost)" "$(field restart_failures)" \
                "$(field reused_ids)" "${secs}s" "$verdict")")
        fi
        [ "$rc" -ne 0 ] && status=1
    done
done

{
    echo "power-loss runs, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null), $(nproc) cores"
    [ "${HMS_SYNC_UNSAFE_SKIP_FSYNC:-}" = 1 ] && echo "HMS_SYNC_UNSAFE_SKIP_FSYNC=1: the queue skipped its fsync"
    printf '%-8s %-10s %6s %10s %8s %9s %8s %8s  %s\n' records order cuts acked lost restarts reusedid time verdict
    printf '%s\n' "${rows[@]}"
    echo "(cuts: power cuts done; a run stops at the first restart failure. lost: records whose"
    echo " acknowledged version never arrived. restarts: restart failures. reusedid: delivery ids"
    echo " reused for another record. Logs: $logs)"
} | tee "$OUT"
exit $status

#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a time budget each, on stable Rust:
# libFuzzer from libfuzzer-sys, the coverage instrumentation that cargo-fuzz
# would ask rustc for, no sanitizer (see fuzz/README.md).
#
#   fuzz/run.sh                      # every target, 60 s each
#   SECONDS_EACH=600 fuzz/run.sh     # longer
#   fuzz/run.sh diff_merge ingest    # some targets
#   JOBS=2 fuzz/run.sh               # libFuzzer workers per target
#
# The corpus grows in fuzz/corpus/<target> (kept out of git except the seeds:
# commit a new input only when it found something). A crash is saved as
# fuzz/artifacts/<target>/crash-*; run it again with
#   fuzz/target/<host triple>/release/<target> fuzz/artifacts/<target>/crash-…
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH=${SECONDS_EACH:-60}
JOBS=${JOBS:-1}
ALL=(ingest config connector soap_answer serial_answer diff_merge)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

# What `cargo fuzz build -s none` passes: edge counters, comparison tracing,
# the PC table libFuzzer's coverage needs, and cfg(fuzzing).
export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
# --target keeps these flags off build scripts and proc macros (as cargo-fuzz does).
HOST=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bins --target "$HOST"
BIN_DIR=target/$HOST/release

status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${SECONDS_EACH}s" >&2
    # seeds/<target> is read, corpus/<target> is where new inputs go.
    parallel=()
    [ "$JOBS" -gt 1 ] && parallel=(-fork="$JOBS")
    if ! "$BIN_DIR/$t" -max_total_time="$SECONDS_EACH" "${parallel[@]}" \
        -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" 2>"artifacts/$t/log.txt"; then
        echo "!! $t failed: see fuzz/artifacts/$t/log.txt" >&2
        tail -40 "artifacts/$t/log.txt" >&2
        status=1
    else
        grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)|^Done' \
            "artifacts/$t/log.txt" | tr '\n' ' ' >&2
        echo >&2
    fi
done
exit $status

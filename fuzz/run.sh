#!/usr/bin/env bash
# Runs every weft fuzz target (or the ones named) for N seconds each and fails
# if any of them finds a crash, a timeout or an oversized allocation.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      # default 10 s, all targets
#
# Works on stable Rust: cargo-fuzz needs nightly -Z flags, which
# RUSTC_BOOTSTRAP=1 unlocks. Needs `cargo install cargo-fuzz`.
# New inputs go to fuzz/corpus-new/<target>/ (git-ignored); the committed seed
# corpus fuzz/corpus/<target>/ is read, never written. Crashes land in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-${FUZZ_SECONDS:-10}}"
shift || true
export RUSTC_BOOTSTRAP=1
target_dir=()
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    target_dir=(--target-dir "$CARGO_TARGET_DIR")
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list | grep -vx gen_seeds)
fi

cargo fuzz build "${target_dir[@]}"

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-new/$t" "corpus/$t"
    log="corpus-new/$t.log"
    echo "=== $t: ${seconds}s"
    # -timeout: one input slower than 10 s is a finding (hostile input must
    # be cheap); -malloc_limit_mb: so is any single allocation over 512 MiB.
    if cargo fuzz run "${target_dir[@]}" "$t" "corpus-new/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=512 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    cov=$(grep -oE '#[0-9]+.*cov: [0-9]+' "$log" | tail -n1 | grep -oE 'cov: [0-9]+' || true)
    summary+=("$(printf '%-16s %-7s %12s execs  %s' "$t" "$status" "${runs:-?}" "$cov")")
done

echo
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/corpus-new/<target>.log)"
    exit 1
fi

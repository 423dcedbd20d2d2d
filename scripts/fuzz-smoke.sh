#!/usr/bin/env bash
# CI's fuzz check (issue "Hostile input and faults"): every fuzz target
# replays its committed corpus, then (with cargo-fuzz installed) fuzzes for a
# few seconds, so that a decoder regression shows in CI.
#
#   scripts/fuzz-smoke.sh            # replay + 5 s of fuzzing per target (needs cargo-fuzz)
#   scripts/fuzz-smoke.sh 0          # replay only (no cargo-fuzz needed; what CI runs)
#   scripts/fuzz-smoke.sh 30 cidr    # chosen targets, 30 s each
#
# No sanitizers here (ASan doubles the build to ~10 min on 2 cores): a
# panic, an allocation over 512 MiB or one input over 10 s is a failure.
# The long, sanitized runs are fuzz/run.sh. Needs a C++ compiler (libFuzzer
# is built by libfuzzer-sys).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-${FUZZ_SECONDS:-5}}"
shift || true
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz-smoke"
flags=(-timeout=10 -malloc_limit_mb=512 -rss_limit_mb=2048)

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -vx -e weft-fuzz -e gen_seeds)
fi

if [[ "$seconds" != 0 ]] && cargo fuzz --version >/dev/null 2>&1; then
    # Coverage-guided, sanitizer-free: replays the corpus first, then fuzzes.
    # cargo-fuzz's -Z flags on stable (only here: it changes the build's
    # fingerprint, so the plain replay build below does not set it).
    # `cargo fuzz run` builds just its target (a build of every bin would
    # also link gen_seeds, which has no libFuzzer to satisfy the coverage
    # instrumentation).
    export RUSTC_BOOTSTRAP=1
    mode="fuzz ${seconds}s"
    run() {
        mkdir -p "corpus-new/$1"
        cargo fuzz run --sanitizer none --target-dir "$target_dir" "$1" "corpus-new/$1" "corpus/$1" -- \
            "${flags[@]}" -max_total_time="$seconds" -print_final_stats=1
    }
else
    # Plain build: libFuzzer's driver runs each corpus file once.
    [[ "$seconds" != 0 ]] && echo "cargo-fuzz not installed: corpus replay only"
    cargo build --release --target-dir "$target_dir" --bins >/dev/null
    mode="replay"
    run() {
        "$target_dir/release/$1" "${flags[@]}" -runs=0 -print_final_stats=1 "corpus/$1"
    }
fi

failed=()
for t in "${targets[@]}"; do
    log=$(mktemp)
    if run "$t" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    inputs=$(find "corpus/$t" -type f | wc -l)
    printf '%-16s %-6s %-10s %6s corpus files %10s execs\n' "$t" "$status" "$mode" "$inputs" "${runs:-?}"
    rm -f "$log"
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz smoke failed: ${failed[*]}"
    exit 1
fi

#!/usr/bin/env bash
# The fuzz script (issue "Hostile input"): every fuzz target, or the ones
# named, replays its committed corpus fuzz/corpus/<target>/ and then fuzzes
# for SECONDS with cargo-fuzz, so that a decoder regression shows in CI
# (scripts/test.sh runs it); the same script does the long runs.
#
#   scripts/fuzz-smoke.sh                   # FUZZ_SMOKE_SECONDS (default 5) s per target
#   scripts/fuzz-smoke.sh 0                 # replay only (plain build, no cargo-fuzz needed)
#   scripts/fuzz-smoke.sh 600 handshake cidr
#   FUZZ_SANITIZER=address scripts/fuzz-smoke.sh 600 frame_open   # with ASan
#
# Findings: a panic, one allocation over 512 MiB, RSS over 2 GiB, or one
# input taking over 10 s. New inputs go to fuzz/corpus-new/<target>/
# (git-ignored; the committed corpus is read, never written), crash inputs to
# fuzz/artifacts/<target>/, each run's log to fuzz/corpus-new/<target>.log.
#
# Only stable Rust: cargo-fuzz's -Z flags are unlocked with RUSTC_BOOTSTRAP=1
# (set here only: it changes the build's fingerprint). No sanitizer by
# default (ASan doubles the first build to ~10 min on 2 cores). Without
# cargo-fuzz, SECONDS > 0 falls back to the replay, loudly, unless
# WEFT_REQUIRE_FUZZ=1 (CI), which makes that a failure. Needs a C++ compiler
# (libFuzzer is built by libfuzzer-sys).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-${FUZZ_SMOKE_SECONDS:-5}}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
flags=(-timeout=10 -malloc_limit_mb=512 -rss_limit_mb=2048 -print_final_stats=1)

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -vx -e weft-fuzz -e gen_seeds)
fi

if [[ "$seconds" != 0 ]] && ! cargo fuzz --version >/dev/null 2>&1; then
    if [[ "${WEFT_REQUIRE_FUZZ:-0}" == 1 ]]; then
        echo "cargo-fuzz is not installed and WEFT_REQUIRE_FUZZ=1 (.ci/run installs it)" >&2
        exit 1
    fi
    echo "*** cargo-fuzz not installed: corpus replay only (cargo install --locked cargo-fuzz) ***"
    seconds=0
fi

start=$SECONDS
if [[ "$seconds" != 0 ]]; then
    export RUSTC_BOOTSTRAP=1
    mode="fuzz ${seconds}s"
    # Every target in one build (gen_seeds is behind a feature); one target
    # named builds just that one. `cargo fuzz run` then finds it built,
    # replays both corpora and fuzzes.
    one=()
    [[ ${#targets[@]} -eq 1 ]] && one=("${targets[0]}")
    cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" "${one[@]}"
    run() {
        cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$1" \
            "corpus-new/$1" "corpus/$1" -- "${flags[@]}" -max_total_time="$seconds"
    }
else
    # Plain build: libFuzzer's driver runs each corpus file once.
    cargo build --release --target-dir "$target_dir" --bins >/dev/null
    mode="replay"
    run() {
        "$target_dir/release/$1" "${flags[@]}" -runs=0 "corpus/$1"
    }
fi
echo "fuzz build: $((SECONDS - start)) s"

start=$SECONDS
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-new/$t"
    log="corpus-new/$t.log"
    if run "$t" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -n 40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    cov=$(grep -oE '#[0-9]+.*cov: [0-9]+' "$log" | tail -n1 | grep -oE 'cov: [0-9]+' || true)
    inputs=$(find "corpus/$t" -type f | wc -l)
    printf '%-16s %-6s %-9s %5s corpus files %10s execs  %s\n' "$t" "$status" "$mode" "$inputs" "${runs:-?}" "$cov"
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - start)) s after the build"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/corpus-new/<target>.log)"
    exit 1
fi

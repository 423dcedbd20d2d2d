#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and simulation tests, and the
# netns integration tests (which need root; with WEFT_REQUIRE_ROOT_TESTS=1 a
# skip is a failure). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Integration tests start real routers: build the binaries once, in release,
# so that transfers are fast, and run the tests one file at a time.
cargo build --workspace --release --locked
# The shipped binaries as the image has them (static plugin, stripped, debug
# info apart) in target/release/dist, for tests/deploy.rs: one more link.
./scripts/build-dist.sh
cargo test --workspace --release --locked -- --test-threads=2
# Every fuzz target replays its committed corpus and is then fuzzed for
# FUZZ_SMOKE_SECONDS (default 5) s with cargo-fuzz, without sanitizers
# (scripts/fuzz-smoke.sh; one instrumented build of the fuzz crate, then
# about two minutes). Without cargo-fuzz it only replays (a failure under
# WEFT_REQUIRE_FUZZ=1, as in CI); FUZZ_SMOKE_SECONDS=0 replays only; =skip
# leaves it out.
if [[ "${FUZZ_SMOKE_SECONDS:-5}" != skip ]]; then
  ./scripts/fuzz-smoke.sh "${FUZZ_SMOKE_SECONDS:-5}"
fi

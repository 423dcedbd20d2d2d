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
cargo test --workspace --release --locked -- --test-threads=2
# Every fuzz target replays its committed corpus without sanitizers
# (scripts/fuzz-smoke.sh; a plain build of the fuzz crate, ~6 min on 2
# cores, then seconds). FUZZ_SMOKE_SECONDS=N also fuzzes each target N s with
# cargo-fuzz; =skip skips it.
if [[ "${FUZZ_SMOKE_SECONDS:-0}" != skip ]]; then
  ./scripts/fuzz-smoke.sh "${FUZZ_SMOKE_SECONDS:-0}"
fi

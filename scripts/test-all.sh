#!/usr/bin/env bash
# Runs every check and test of livefeed-bridge: formatting, clippy, unit, golden and
# end-to-end suites (against the in-process Bitrix24/Slack sandbox).
# Needs only the Rust toolchain. Usage: ./scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so a reused machine rebuilds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/livefeed-bridge/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s ==\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo test"
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}"

step "all tests passed"

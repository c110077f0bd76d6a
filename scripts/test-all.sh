#!/usr/bin/env bash
# Runs every check and test of livefeed-bridge: formatting, clippy, unit, golden and
# end-to-end suites (against the in-process Bitrix24/Slack sandbox and a real Synapse).
# Needs the Rust toolchain, python3 (venv) and curl. Usage: ./scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so a reused machine rebuilds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/livefeed-bridge/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s ==\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

# The Matrix suites run against a real Synapse on 127.0.0.1 (installed from PyPI on first
# use). LIVEFEED_SKIP_MATRIX=1 skips them; plain `cargo test` without a homeserver skips them too.
if [ "${LIVEFEED_SKIP_MATRIX:-0}" != 1 ]; then
  step "start Synapse"
  SYNAPSE_DIR="${SYNAPSE_DIR:-${TMPDIR:-/tmp}/livefeed-bridge-synapse}"
  SYNAPSE_PORT="${SYNAPSE_PORT:-18448}"
  ./scripts/synapse.sh start "$SYNAPSE_DIR" "$SYNAPSE_PORT" > "$SYNAPSE_DIR.env"
  trap './scripts/synapse.sh stop "$SYNAPSE_DIR"' EXIT
  set -a; . "$SYNAPSE_DIR.env"; set +a
fi

step "cargo test"
cargo test --locked --workspace --all-targets --all-features -- --test-threads="${TEST_THREADS:-2}"

step "all tests passed"

#!/usr/bin/env bash
# Runs every check and test of livefeed-bridge: formatting, clippy, unit, golden and
# end-to-end suites (against the in-process Bitrix24/Slack sandbox and a real Synapse), the
# container files' lint, and the container smoke test where podman can be installed.
# Needs the Rust toolchain, python3 (venv), curl and PyPI. Usage: ./scripts/test-all.sh
# LIVEFEED_SKIP_MATRIX=1 skips the Synapse suites, LIVEFEED_SKIP_CONTAINERS=1 the smoke test.
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

step "container files: hadolint, compose-spec schema"
./scripts/container/lint.sh .ci/venv

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

# The performance harness, briefly: proves it still runs end to end, not a timing check.
step "performance harness smoke (livefeed-bench --smoke)"
cargo build --locked -p livefeed-bridge -p livefeed-sandbox --bins
"$CARGO_TARGET_DIR/debug/livefeed-bench" --smoke --json "${TMPDIR:-/tmp}/livefeed-bench-smoke.json"

# The image as operators run it: built with podman, healthy, a post mirrored, SIGTERM, a
# restart on the same volume, and the compose demo. It packages the debug binaries the tests
# just built (the Dockerfile's prebuilt path), so it costs seconds, not a release build.
if [ "${LIVEFEED_SKIP_CONTAINERS:-0}" != 1 ]; then
  step "container smoke test"
  if reason=$(./scripts/container/setup.sh .ci/venv 2>&1); then
    echo "$reason"
    SMOKE_PROFILE=dev ./scripts/container/smoke.sh .ci/venv
  else
    echo "container smoke test NOT RUN: $reason"
  fi
fi

step "all tests passed"

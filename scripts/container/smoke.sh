#!/usr/bin/env bash
# Container smoke test: the image as an operator runs it, and the compose demo.
#
#  1. packages the binaries into the Dockerfile's images (BIN_FROM=prebuilt: the compile stage
#     is the same cargo build the host just did) on locally made base images;
#  2. runs the sandbox and the bridge image beside it, waits for the health check, writes a
#     feed post and sees it arrive in Slack;
#  3. stops the bridge with SIGTERM (it must exit 0 within a second), replies in the thread
#     while it is down, and starts a new container on the same store volume: the reply must
#     land as a comment on the right post, and nothing may be mirrored twice;
#  4. runs `podman-compose --profile demo up` and sees a post mirrored there too.
#
# Needs root, podman (+ runc) and python3; podman-compose is taken from VENV (default .ci/venv).
# scripts/container/setup.sh installs them. SMOKE_PROFILE=dev packages debug binaries (CI: they
# are already built by the tests); the default, release, is what ships.
# Usage: scripts/container/smoke.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/container
VENV=$(realpath -m "${1:-.ci/venv}")
export PATH="$VENV/bin:$PATH"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/$HERE/containers.conf}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/livefeed-bridge/target}"
PROFILE="${SMOKE_PROFILE:-release}"
TAG=smoke
P=lfb-smoke                      # prefix of every container and volume this script makes
PORTAL_PORT=28024 SLACK_PORT=28025 BRIDGE_PORT=28080

T0=$(date +%s.%N)
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
say() { printf '[smoke %6ss] %s\n' "$(since "$T0")" "$*"; }
PODMAN_LOG=$(mktemp)
# Podman without systemd complains on every container start that it cannot schedule health
# checks (we run them by hand); its stderr goes here and is shown on failure.
die() { say "FAILED: $*"; tail -20 "$PODMAN_LOG" >&2; exit 1; }
j() { python3 "$HERE/jhttp.py" "$@"; }
# wait_for DESCRIPTION SECONDS COMMAND…: poll a condition, fail with the description.
wait_for() {
  local what=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    [ $(( $(date +%s) - start )) -lt "$limit" ] || die "no $what within ${limit}s"
    sleep 0.3
  done
}

cleanup() {
  podman rm -f -t 0 "$P-bridge" >/dev/null 2>&1 || true
  podman rm -f -t 0 "$P-sandbox" >/dev/null 2>&1 || true
  podman volume rm -f "$P-data" "$P-demo" >/dev/null 2>&1 || true
  podman-compose -p "$P-demo" --profile demo down -v >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true   # earlier builds of the same tags
}
trap cleanup EXIT
cleanup

# ---- 1. images ------------------------------------------------------------------------------
say "binaries ($PROFILE profile)"
cargo build --locked --profile "$PROFILE" -p livefeed-bridge -p livefeed-sandbox --bins -q
out_dir="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
rm -rf dist && mkdir -p dist/data
cp "$out_dir/livefeed-bridge" "$out_dir/livefeed-sandbox" dist/
"$HERE/base-images.sh"
say "podman build (BIN_FROM=prebuilt)"
b0=$(date +%s.%N)
podman build -q --format docker --pull=never --build-arg BIN_FROM=prebuilt -t "localhost/livefeed-bridge:$TAG" . >/dev/null
podman build -q --format docker --pull=never --build-arg BIN_FROM=prebuilt --target sandbox \
  -t "localhost/livefeed-sandbox:$TAG" . >/dev/null
size=$(podman image inspect --format '{{.Size}}' "localhost/livefeed-bridge:$TAG")
say "images built in $(since "$b0")s; livefeed-bridge:$TAG is $(( size / 1000000 )) MB"
[ "$(podman image inspect --format '{{.Config.User}}' "localhost/livefeed-bridge:$TAG")" = 65532:65532 ] \
  || die "the image does not run as the nonroot user"
podman run --rm --network none "localhost/livefeed-bridge:$TAG" version 2>>"$PODMAN_LOG"

# ---- 2. run, healthy, a post mirrored -------------------------------------------------------
podman run -d --name "$P-sandbox" -v "$P-demo:/demo" \
  -p "127.0.0.1:$PORTAL_PORT:18024" -p "127.0.0.1:$SLACK_PORT:18025" -p "127.0.0.1:$BRIDGE_PORT:8080" \
  "localhost/livefeed-sandbox:$TAG" >/dev/null 2>>"$PODMAN_LOG"
PORTAL="http://127.0.0.1:$PORTAL_PORT" SLACK="http://127.0.0.1:$SLACK_PORT"
wait_for "sandbox" 20 j GET "$SLACK/_sandbox/channels"
NEWS=$(j GET "$SLACK/_sandbox/channels" '[c["id"] for c in d["channels"] if c["name"] == "company-news"][0]')
ANNA=$(j GET "$SLACK/_sandbox/users" '[u["id"] for u in d["users"] if u["name"] == "anna"][0]')
IVAN=$(j GET "$PORTAL/_sandbox/users" '[u["id"] for u in d if u["name"] == "Ivan"][0]')

start_bridge() {
  podman run -d --name "$P-bridge" --network "container:$P-sandbox" \
    -e LIVEFEED_BRIDGE_CONFIG=/demo/bridge.yaml \
    -v "$P-demo:/demo:ro" -v "$P-data:/data" "localhost/livefeed-bridge:$TAG" >/dev/null 2>>"$PODMAN_LOG"
  # Podman runs health checks from systemd timers; without systemd, run the image's check by hand.
  wait_for "healthy bridge" 60 podman healthcheck run "$P-bridge"
  say "bridge healthy: $(podman exec "$P-bridge" livefeed-bridge health)"
}
start_bridge
podman logs "$P-bridge" 2>&1 | python3 -c 'import json,sys; json.loads(sys.stdin.read().splitlines()[0])' \
  || die "logs are not JSON when stderr is not a terminal"

POST=$(j POST "$PORTAL/_sandbox/posts" \
  "{\"author\":$IVAN,\"title\":\"Container smoke\",\"text\":\"Mirrored from a container\",\"dest\":[\"UA\"]}" 'd["id"]')
roots() { j GET "$SLACK/_sandbox/history/$NEWS" "[m for m in d['messages'] if 'Mirrored from a container' in m.get('text', '')]"; }
wait_for "root message for post $POST in #company-news" 30 roots
ROOT_TS=$(j GET "$SLACK/_sandbox/history/$NEWS" "[m['ts'] for m in d['messages'] if 'Mirrored from a container' in m.get('text', '')][0]")
say "post $POST mirrored to $NEWS as $ROOT_TS"

# ---- 3. SIGTERM, a reply while down, a new container on the same volume ---------------------
s0=$(date +%s.%N)
podman stop -t 10 "$P-bridge" >/dev/null 2>>"$PODMAN_LOG"
stop_s=$(since "$s0")
code=$(podman inspect --format '{{.State.ExitCode}}' "$P-bridge")
say "SIGTERM: exited $code after ${stop_s}s"
[ "$code" = 0 ] || die "exit code $code after SIGTERM"
python3 -c "import sys; sys.exit(float(sys.argv[1]) >= 1.0)" "$stop_s" || die "stopping took ${stop_s}s"
podman logs "$P-bridge" 2>&1 | grep -q 'livefeed-bridge stopped' || die "no 'livefeed-bridge stopped' line in the log"
podman rm "$P-bridge" >/dev/null 2>>"$PODMAN_LOG"

j POST "$SLACK/_sandbox/reply" \
  "{\"user\":\"$ANNA\",\"channel\":\"$NEWS\",\"thread_ts\":\"$ROOT_TS\",\"text\":\"Written while the bridge was down\"}" >/dev/null
start_bridge
comments() { j GET "$PORTAL/_sandbox/posts/$POST/comments" "[c for c in d if 'while the bridge was down' in c['text']]"; }
wait_for "comment on post $POST after the restart" 60 comments
n_roots=$(j GET "$SLACK/_sandbox/history/$NEWS" "len([m for m in d['messages'] if 'Mirrored from a container' in m.get('text', '')])")
n_comments=$(j GET "$PORTAL/_sandbox/posts/$POST/comments" "len(d)")
[ "$n_roots" = 1 ] || die "$n_roots root messages for one post"
[ "$n_comments" = 1 ] || die "$n_comments comments for one reply"
say "restart on the same volume: the reply became comment 1 of post $POST; still 1 root message"
podman exec "$P-bridge" livefeed-bridge dead-letters list
podman stop -t 10 "$P-bridge" >/dev/null 2>>"$PODMAN_LOG"
podman rm -f "$P-bridge" >/dev/null 2>>"$PODMAN_LOG"
podman rm -f "$P-sandbox" >/dev/null 2>>"$PODMAN_LOG"

# ---- 4. the compose demo --------------------------------------------------------------------
say "podman-compose --profile demo up"
export BIN_FROM=prebuilt LIVEFEED_TAG=$TAG
podman-compose -p "$P-demo" --profile demo up -d >/dev/null 2>&1 || die "compose up failed"
PORTAL=http://127.0.0.1:18024 SLACK=http://127.0.0.1:18025
wait_for "ready demo bridge" 60 j GET http://127.0.0.1:18080/readyz 'd["ready"]'
POST=$(j POST "$PORTAL/_sandbox/posts" \
  "{\"author\":$IVAN,\"title\":\"Compose demo\",\"text\":\"Mirrored by the compose demo\",\"dest\":[\"UA\"]}" 'd["id"]')
demo_roots() { j GET "$SLACK/_sandbox/history/$NEWS" "[m for m in d['messages'] if 'Mirrored by the compose demo' in m.get('text', '')]"; }
wait_for "root message from the compose demo" 30 demo_roots
say "compose demo mirrored post $POST"
podman-compose -p "$P-demo" --profile demo exec demo-bridge livefeed-bridge check --offline
podman-compose -p "$P-demo" --profile demo down -v >/dev/null 2>&1
say "container smoke passed"

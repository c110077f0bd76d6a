#!/usr/bin/env bash
# Installs what scripts/container/smoke.sh needs, where it can: podman, runc and debootstrap from
# Debian's packages (root only), podman-compose from PyPI into VENV. Prints what it could not do
# and exits 1 then, so callers can say clearly why the smoke test did not run.
# Usage: scripts/container/setup.sh [VENV]   (default .ci/venv)
set -uo pipefail
cd "$(dirname "$0")/../.."
VENV=$(realpath -m "${1:-.ci/venv}")
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "podman is not installed, and this is not a root Debian machine to install it on"
    exit 1
  fi
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      podman buildah runc >/dev/null; }; then
    echo "apt-get could not install podman, buildah and runc"
    exit 1
  fi
fi
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check 'podman-compose==1.6.0' || {
  echo "pip could not install podman-compose"
  exit 1
}
export CONTAINERS_CONF="$PWD/scripts/container/containers.conf"
if ! out=$(podman info 2>&1); then
  echo "podman is installed but does not work here: ${out##*$'\n'}"
  exit 1
fi
echo "podman $(podman version --format '{{.Client.Version}}'), $("$VENV/bin/podman-compose" --version 2>/dev/null | head -1)"

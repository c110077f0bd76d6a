#!/usr/bin/env bash
# A throwaway Synapse homeserver for livefeed-bridge's Matrix suites: loopback only, SQLite,
# no federation, client rate limits off (tests switch them on per user with the admin API).
#
#   scripts/synapse.sh start [DATA_DIR] [PORT]   install if needed, start, print KEY=value lines
#   scripts/synapse.sh stop  [DATA_DIR]          stop the instance started from DATA_DIR
#
# stdout carries only KEY=value lines (also written to DATA_DIR/env):
#   MATRIX_HOMESERVER  MATRIX_SERVER_NAME  MATRIX_ADMIN_USER  MATRIX_ADMIN_TOKEN
# Tests register their own users with the admin token, so parallel tests never share a bot.
# Needs python3 >= 3.10 with venv, curl, and PyPI. Installs into $SYNAPSE_VENV
# (default ~/.cache/livefeed-bridge/synapse-venv) once; later starts take ~3 s.
set -euo pipefail

VERSION="${SYNAPSE_VERSION:-1.163.2}"
VENV="${SYNAPSE_VENV:-$HOME/.cache/livefeed-bridge/synapse-venv}"
PYTHON="${SYNAPSE_PYTHON:-python3}"
SERVER_NAME=localhost

log() { echo "synapse.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cmd="${1:-start}"; shift || true
DATA_DIR="${1:-${TMPDIR:-/tmp}/livefeed-bridge-synapse}"
PORT="${2:-18448}"
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
PIDFILE="$DATA_DIR/homeserver.pid"
PY="$VENV/bin/python"

running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "synapse.app.homeserver -c $DATA_DIR/homeserver.yaml" || return 1
  echo "$pid"
}

stop() {
  local pid i
  if pid="$(running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped pid $pid"
  fi
  rm -f "$PIDFILE"
}

case "$cmd" in
  stop) stop; exit 0 ;;
  start) ;;
  *) die "usage: $0 start|stop [DATA_DIR] [PORT]" ;;
esac
command -v curl >/dev/null || die "curl is required"

# -- install once (pinned; the constraints are the transitive set tested with 1.163.2) --------
if [ ! -x "$PY" ] || ! "$PY" -c "import synapse, sys; sys.exit(synapse.__version__ != '$VERSION')" 2>/dev/null; then
  log "installing matrix-synapse==$VERSION into $VENV (PyPI)"
  t0=$(date +%s)
  [ -x "$PY" ] || "$PYTHON" -m venv "$VENV" || die "python venv failed (Debian: apt-get install python3-venv)"
  cons="$(mktemp)"
  if [ "$VERSION" = 1.163.2 ]; then cat > "$cons" <<'CONS'
annotated-types==0.8.0
attrs==26.1.0
Automat==25.4.16
bcrypt==5.0.0
bleach==6.4.0
canonicaljson==2.0.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
constantly==23.10.4
cryptography==50.0.2
hyperlink==21.0.0
idna==3.20
ijson==3.6.0
immutabledict==4.3.1
Incremental==24.11.0
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
MarkupSafe==3.0.4
matrix-common==1.3.0
msgpack==1.2.4
multipart==2.0.1
netaddr==1.3.0
packaging==26.3
phonenumbers==9.0.43
pillow==13.0.0
pyasn1==0.6.5
pyasn1_modules==0.4.2
pycparser==3.12
pydantic==2.14.3
pydantic_core==2.50.4
pymacaroons==0.13.0
PyNaCl==1.6.2
pyOpenSSL==26.4.0
pyparsing==3.3.3
pyrsistent==0.20.0
python-multipart==0.0.34
PyYAML==6.0.3
referencing==0.37.0
requests==2.34.2
rpds-py==2026.9.1
semantic-version==2.10.0
service-identity==26.1.0
setuptools-rust==1.13.0
signedjson==1.1.4
six==1.17.0
sortedcontainers==2.4.0
treq==26.7.0
Twisted==26.10.0
typing-inspection==0.4.5
typing_extensions==4.16.0
unpaddedbase64==2.1.0
urllib3==2.8.0
webencodings==0.6.1
zope.interface==8.7
CONS
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-input -c "$cons" "matrix-synapse==$VERSION" >&2 \
    || { rm -f "$cons"; die "pip install failed"; }
  rm -f "$cons"
  log "installed in $(( $(date +%s) - t0 ))s"
fi

# -- a fresh homeserver every start: tests must not depend on leftovers --------------------
stop
rm -rf "$DATA_DIR"/homeserver.db* "$DATA_DIR"/media_store "$DATA_DIR"/env
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/_matrix/client/versions" 2>/dev/null \
  && die "port $PORT already answers; pass another port"

REG_SECRET="$("$PY" -c 'import secrets; print(secrets.token_hex(24))')"
MACAROON="$("$PY" -c 'import secrets; print(secrets.token_hex(24))')"
ADMIN_PASSWORD="admin-$("$PY" -c 'import secrets; print(secrets.token_hex(8))')"
"$PY" - "$DATA_DIR/$SERVER_NAME.signing.key" <<'PYK'
import sys, signedjson.key
k = signedjson.key.generate_signing_key("a_test")
open(sys.argv[1], "w").write(f"{k.alg} {k.version} {signedjson.key.encode_signing_key_base64(k)}\n")
PYK

cat > "$DATA_DIR/log.config" <<EOL
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $DATA_DIR/homeserver.log
loggers:
  synapse.storage.SQL: { level: WARNING }
  twisted: { level: WARNING }
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
EOL

big='{per_second: 100000, burst_count: 100000}'
cat > "$DATA_DIR/homeserver.yaml" <<EOC
server_name: "$SERVER_NAME"
public_baseurl: "http://127.0.0.1:$PORT/"
pid_file: "$PIDFILE"
listeners:
  - port: $PORT
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args: { database: "$DATA_DIR/homeserver.db" }
log_config: "$DATA_DIR/log.config"
media_store_path: "$DATA_DIR/media_store"
signing_key_path: "$DATA_DIR/$SERVER_NAME.signing.key"
registration_shared_secret: "$REG_SECRET"
macaroon_secret_key: "$MACAROON"
report_stats: false
bcrypt_rounds: 4
enable_metrics: false
enable_registration: false
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
url_preview_enabled: false
presence: { enabled: false }
user_directory: { enabled: false }
rc_message: $big
rc_registration: $big
rc_login: { address: $big, account: $big, failed_attempts: $big }
rc_joins: { local: $big, remote: $big }
rc_joins_per_room: $big
rc_invites: { per_room: $big, per_user: $big, per_issuer: $big }
rc_room_creation: $big
rc_admin_redaction: $big
rc_media_create: $big
rc_presence: { per_user: $big }
rc_profile: $big
EOC

log "starting Synapse $VERSION on 127.0.0.1:$PORT"
t0=$(date +%s%3N)
setsid "$PY" -m synapse.app.homeserver -c "$DATA_DIR/homeserver.yaml" </dev/null >>"$DATA_DIR/stdout.log" 2>&1 &
pid=$!
echo "$pid" > "$PIDFILE"
deadline=$(( $(date +%s) + 90 ))
until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/_matrix/client/versions" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "$DATA_DIR/stdout.log" "$DATA_DIR/homeserver.log" >&2 || true; rm -f "$PIDFILE"; die "Synapse exited during startup"; }
  [ "$(date +%s)" -lt "$deadline" ] || { stop; die "Synapse not ready after 90 s"; }
  sleep 0.1
done
log "ready in $(( $(date +%s%3N) - t0 )) ms (pid $pid)"

# The admin: registered with the shared secret (HMAC-SHA1 over nonce\0user\0password\0admin).
"$PY" - "http://127.0.0.1:$PORT" "$REG_SECRET" "$ADMIN_PASSWORD" > "$DATA_DIR/env" <<'PYREG'
import hashlib, hmac, json, sys, urllib.request
hs, secret, password = sys.argv[1:4]
def call(method, path, body=None):
    req = urllib.request.Request(hs + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
mac.update(b"\x00".join([nonce.encode(), b"admin", password.encode(), b"admin"]))
r = call("POST", "/_synapse/admin/v1/register", {"nonce": nonce, "username": "admin", "password": password, "admin": True, "mac": mac.hexdigest()})
print(f"MATRIX_HOMESERVER={hs}")
print("MATRIX_SERVER_NAME=localhost")
print(f"MATRIX_ADMIN_USER={r['user_id']}")
print(f"MATRIX_ADMIN_TOKEN={r['access_token']}")
PYREG
cat "$DATA_DIR/env"

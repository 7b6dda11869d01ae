#!/usr/bin/env bash
# Schemathesis (PyPI) against the OpenAPI document of a running system: starts
# `flotilla up` (the release binary if built, else debug; FLOTILLA_BIN to choose) on a
# free port with a temporary data directory and a seeded admin, then runs every check
# with the admin's token on every request. Fails on a 5xx, a crash, or a response outside
# its schema. SCHEMATHESIS_MAX_EXAMPLES (default 50) bounds the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v schemathesis >/dev/null || pip install -q 'schemathesis>=4,<5'
bin=${FLOTILLA_BIN:-}
if [ -z "$bin" ]; then
  if [ -x target/release/flotilla ]; then bin=target/release/flotilla
  else cargo build -q -p flotilla && bin=target/debug/flotilla; fi
fi
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
admin_email=schemathesis-admin@example.com
admin_password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
FLOTILLA_ADMIN_EMAIL=$admin_email FLOTILLA_ADMIN_PASSWORD=$admin_password \
  FLOTILLA_CONVERTER_FFMPEG=off FLOTILLA_COMMENTS_POST_WAIT=200ms \
  "$bin" up --listen "127.0.0.1:$port" --data-dir "$data" >"$data/flotilla.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 120); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/flotilla.log"; exit 1; }
  sleep 0.5
done
token=$(curl -fsS -X POST -u "$admin_email:$admin_password" "$base/login")
status=0
schemathesis --config-file scripts/ci/schemathesis.toml run "$base/openapi.json" --url "$base" --checks all \
  --header "Authorization: Bearer $token" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" --exclude-path-regex '^/live/|^/admin/system/stream$' \
  --request-timeout 30 --workers 1 --seed 14 "$@" || status=$?
# A process that died under the test is a failure whatever the checks said.
if ! kill -0 "$pid" 2>/dev/null; then
  echo "flotilla stopped during the run:"; tail -n 50 "$data/flotilla.log"; exit 1
fi
if grep -q '"level":"ERROR"\|ERROR' "$data/flotilla.log"; then
  echo "errors in the server log:"; grep 'ERROR' "$data/flotilla.log" | head -n 20
fi
exit "$status"

#!/usr/bin/env bash
# Production mode on one machine: every service as its own `flotilla serve` process,
# against a real RabbitMQ and PostgreSQL (installed and started without systemd by
# scripts/ci/start-servers.sh), the gateway reaching them over HTTP. Two converter
# processes share the `video` queue.
#
#   scripts/production.sh start [--release]   build, start everything, wait until ready
#   scripts/production.sh stop                SIGTERM every process (graceful drain)
#   scripts/production.sh status              /readyz of every process
#
# Settings (env): FLOTILLA_PROD_DIR (default /tmp/flotilla-production) holds data, logs
# and pids; FLOTILLA_PROD_PORT (default 8080) is the gateway's port; services use the
# next ports. FLOTILLA_ADMIN_EMAIL / FLOTILLA_ADMIN_PASSWORD seed the admin.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FLOTILLA_PROD_DIR:-/tmp/flotilla-production}
port=${FLOTILLA_PROD_PORT:-8080}
services=(auth media converter converter-2 notification posts comments moderation query event-bus)
declare -A ports
i=1
for s in "${services[@]}"; do ports[$s]=$((port + 20 + i)); i=$((i + 1)); done

url() { echo "http://127.0.0.1:${ports[$1]}"; }

wait_ready() { # name url
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$2/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$1 did not become ready; last log lines:" >&2
  tail -n 20 "$dir/logs/$1.log" >&2
  return 1
}

start() {
  local profile=debug
  if [ "${1:-}" = "--release" ]; then profile=release; fi
  if [ "$profile" = release ]; then cargo build --release -q -p flotilla; else cargo build -q -p flotilla; fi
  local bin=target/$profile/flotilla
  mkdir -p "$dir"
  bash scripts/ci/start-servers.sh "$dir/servers.env" >/dev/null
  # shellcheck source=/dev/null
  source "$dir/servers.env"
  mkdir -p "$dir/logs" "$dir/pids" "$dir/blobs"
  # One database per service, as in a cluster.
  for s in auth media converter notification posts comments moderation query event_bus; do
    PGPASSWORD=app psql -h 127.0.0.1 -U app -d app -qtAc "SELECT 1 FROM pg_database WHERE datname='flotilla_$s'" | grep -q 1 \
      || PGPASSWORD=app psql -h 127.0.0.1 -U app -d app -qc "CREATE DATABASE flotilla_$s"
  done
  export FLOTILLA_BUS_URL=$FLOTILLA_TEST_AMQP_URL
  export FLOTILLA_BLOB_URL=file://$dir/blobs
  export FLOTILLA_SMTP_URL=$FLOTILLA_TEST_SMTP_URL
  export FLOTILLA_JWT_KEY_FILE=$dir/jwt-signing.pem
  export FLOTILLA_AUTH_URL FLOTILLA_EVENT_BUS_URL
  FLOTILLA_AUTH_URL=$(url auth)
  FLOTILLA_EVENT_BUS_URL=$(url event-bus)
  for s in "${services[@]}"; do
    local service=${s%-2}
    local db=flotilla_${service//-/_}
    mkdir -p "$dir/data/$s"
    FLOTILLA_DATABASE_URL="postgres://app:app@127.0.0.1:5432/$db" \
    FLOTILLA_DATA_DIR="$dir/data/$s" \
    FLOTILLA_LISTEN="127.0.0.1:${ports[$s]}" \
      nohup "$bin" serve "$service" >"$dir/logs/$s.log" 2>&1 &
    echo $! >"$dir/pids/$s.pid"
  done
  for s in "${services[@]}"; do wait_ready "$s" "$(url "$s")"; done
  FLOTILLA_AUTH_URL=$(url auth) \
  FLOTILLA_MEDIA_URL=$(url media) \
  FLOTILLA_POSTS_URL=$(url posts) \
  FLOTILLA_COMMENTS_URL=$(url comments) \
  FLOTILLA_QUERY_URL=$(url query) \
  FLOTILLA_EVENT_BUS_URL=$(url event-bus) \
  FLOTILLA_DATA_DIR="$dir/data/gateway" \
  FLOTILLA_LISTEN="127.0.0.1:$port" \
    nohup "$bin" serve gateway >"$dir/logs/gateway.log" 2>&1 &
  echo $! >"$dir/pids/gateway.pid"
  wait_ready gateway "http://127.0.0.1:$port"
  echo "flotilla (production mode) ready at http://127.0.0.1:$port; logs in $dir/logs"
}

stop() {
  shopt -s nullglob
  local pids=()
  for f in "$dir"/pids/*.pid; do
    local pid
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  echo "stopped ${#pids[@]} processes"
}

status() {
  for s in gateway "${services[@]}"; do
    local u
    if [ "$s" = gateway ]; then u="http://127.0.0.1:$port"; else u=$(url "$s"); fi
    printf '%-13s %s  ' "$s" "$u"
    curl -s -o /dev/null -w '%{http_code}\n' "$u/readyz" || echo down
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--release] | stop | status" >&2; exit 2 ;;
esac

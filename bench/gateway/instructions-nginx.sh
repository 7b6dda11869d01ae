#!/usr/bin/env bash
# Instructions per proxied request of nginx as the proxy (callgrind, one process with
# master_process off, start-up subtracted): the peer of instructions.sh, counted the same
# way (wrk -t1 -c8 for 8 s).
#   bench/gateway/instructions-nginx.sh UPSTREAM_HOST:PORT
# The upstream serves `GET /posts` (bench/gateway/run.sh's nginx upstream will do).
set -euo pipefail
upstream=$1
work=$(mktemp -d)
trap 'pkill -QUIT -f "callgrind-out-file=$work/cg.out" 2>/dev/null || true; rm -rf "$work"' EXIT
port=19107
# shellcheck source=bench/gateway/nginx-conf.sh
source "$(dirname "$0")/nginx-conf.sh"
nginx_conf "$work" "$upstream" "$port"
run() { # seconds of load -> instructions of the whole run, requests served
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    nginx -g 'daemon off; master_process off;' -p "$work" -c "$work/nginx.conf" >"$work/log" 2>&1 &
  local pid=$! requests=0
  for _ in $(seq 200); do curl -fsS -o /dev/null "http://127.0.0.1:$port/posts" 2>/dev/null && break; sleep 0.2; done
  if [ "$1" -gt 0 ]; then
    requests=$(wrk -t1 -c8 -d"$1s" "http://127.0.0.1:$port/posts" | awk '/requests in/ {print $1}')
  fi
  kill -QUIT "$pid"; wait "$pid" || true
  echo "$(awk '/^summary:/ {print $2}' "$work/cg.out") $requests"
}
read -r idle _ <<<"$(run 0)"
read -r loaded requests <<<"$(run 8)"
[ -n "${requests:-}" ] || exit 1
echo "requests $requests, instructions per request $(( (loaded - idle) / requests ))"

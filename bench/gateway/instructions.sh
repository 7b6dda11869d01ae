#!/usr/bin/env bash
# Instructions per proxied request of the gateway (valgrind's callgrind, one HTTP thread),
# start-up subtracted: a figure the host's noise does not move.
#   bench/gateway/instructions.sh UPSTREAM_URL [BINARY]
# UPSTREAM_URL serves `GET /posts` (bench/gateway/run.sh's nginx upstream will do).
set -euo pipefail
upstream=$1 binary=${2:-target/release/flotilla}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19105
run() { # seconds of load -> instructions of the whole run, requests served
  FLOTILLA_HTTP_THREADS=1 FLOTILLA_QUERY_URL=$upstream FLOTILLA_GATEWAY_RATE_LIMIT=0 RUST_LOG=warn \
  FLOTILLA_DATA_DIR=$work/data FLOTILLA_LISTEN=127.0.0.1:$port \
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$binary" serve gateway >"$work/log" 2>&1 &
  local pid=$! requests=0
  for _ in $(seq 200); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break; sleep 0.2; done
  if [ "$1" -gt 0 ]; then
    local out
    out=$(wrk -t1 -c8 -d"$1s" "http://127.0.0.1:$port/posts")
    if grep -q 'Non-2xx' <<<"$out"; then
      echo "the gateway answered errors (is $upstream up?):" >&2; echo "$out" >&2; kill -INT "$pid"; exit 1
    fi
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
  fi
  kill -INT "$pid"; wait "$pid" || true
  echo "$(awk '/I   refs/ {gsub(",", "", $4); print $4}' "$work/log") $requests"
}
read -r idle _ <<<"$(run 0)"
read -r loaded requests <<<"$(run 8)"
[ -n "${requests:-}" ] || exit 1
echo "requests $requests, instructions per request $(( (loaded - idle) / requests ))"

#!/usr/bin/env bash
# Instructions per proxied request of HAProxy as the proxy (callgrind, one process with
# one thread, start-up subtracted): the peer of instructions.sh, counted the same way
# (wrk -t1 -c8 for 8 s), with bench/gateway/run.sh's HAProxy configuration.
#   bench/gateway/instructions-haproxy.sh UPSTREAM_HOST:PORT
# The upstream serves `GET /posts` (bench/gateway/run.sh's nginx upstream will do).
set -euo pipefail
upstream=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19108
# shellcheck source=bench/gateway/haproxy-conf.sh
source "$(dirname "$0")/haproxy-conf.sh"
# shellcheck source=bench/gateway/callgrind.sh
source "$(dirname "$0")/callgrind.sh"
haproxy_conf "$work" "$upstream" "$port" 1
proxy_instructions "$work" "$port" TERM haproxy -db -f "$work/haproxy.cfg"

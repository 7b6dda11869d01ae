#!/usr/bin/env bash
# Instructions per proxied request of nginx as the proxy (callgrind, one process with
# master_process off, start-up subtracted): the peer of instructions.sh, counted the same
# way (wrk -t1 -c8 for 8 s).
#   bench/gateway/instructions-nginx.sh UPSTREAM_HOST:PORT
# The upstream serves `GET /posts` (bench/gateway/run.sh's nginx upstream will do).
set -euo pipefail
upstream=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19107
# shellcheck source=bench/gateway/nginx-conf.sh
source "$(dirname "$0")/nginx-conf.sh"
# shellcheck source=bench/gateway/callgrind.sh
source "$(dirname "$0")/callgrind.sh"
nginx_conf "$work" "$upstream" "$port"
# QUIT: nginx's graceful stop, which lets callgrind write its file.
proxy_instructions "$work" "$port" QUIT nginx -g 'daemon off; master_process off;' -p "$work" -c "$work/nginx.conf"

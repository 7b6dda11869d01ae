#!/usr/bin/env bash
# Instructions per proxied request of the bare hyper proxy (bench/gateway/hyper-bare;
# callgrind, one thread, start-up subtracted): the peer of instructions.sh, counted the
# same way (wrk -t1 -c8 for 8 s).
#   bench/gateway/instructions-hyper.sh UPSTREAM_HOST:PORT [BINARY] [steal|nosteal] [legacy|conn]
# BINARY defaults to target/hyper-bare/release/hyper-bare (bench/gateway/run.sh builds
# it); the runtime to nosteal, the gateway's model (one single-threaded runtime per HTTP
# thread); the client to legacy (hyper-util's Client; conn: hyper's client connections in
# a per-thread pool, as the gateway's upstream::pool). The upstream serves `GET /posts`
# (run.sh's nginx upstream will do).
set -euo pipefail
upstream=$1 binary=${2:-target/hyper-bare/release/hyper-bare} runtime=${3:-nosteal} client=${4:-legacy}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19110
# shellcheck source=bench/gateway/callgrind.sh
source "$(dirname "$0")/callgrind.sh"
proxy_instructions "$work" "$port" INT "$binary" "127.0.0.1:$port" "$upstream" 1 "$runtime" "$client"

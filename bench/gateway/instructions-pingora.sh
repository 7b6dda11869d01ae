#!/usr/bin/env bash
# Instructions per proxied request of the bare Pingora proxy (bench/gateway/pingora-bare;
# callgrind, one thread, start-up subtracted): the peer of instructions.sh, counted the
# same way (wrk -t1 -c8 for 8 s).
#   bench/gateway/instructions-pingora.sh UPSTREAM_HOST:PORT [BINARY]
# BINARY defaults to target/pingora-bare/release/pingora-bare (bench/gateway/run.sh
# builds it). The upstream serves `GET /posts` (run.sh's nginx upstream will do).
set -euo pipefail
upstream=$1 binary=${2:-target/pingora-bare/release/pingora-bare}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19109
# shellcheck source=bench/gateway/callgrind.sh
source "$(dirname "$0")/callgrind.sh"
proxy_instructions "$work" "$port" INT "$binary" "127.0.0.1:$port" "$upstream" 1

#!/usr/bin/env bash
# Instructions per proxied request of the monoio proxies (callgrind, one thread, start-up
# subtracted): bench/gateway/monoio-bare, the peer of instructions-hyper.sh, and
# bench/gateway/monoio-features (the same engine with the gateway's per-request work),
# counted the same way (wrk -t1 -c8 for 8 s).
#   bench/gateway/instructions-monoio.sh UPSTREAM_HOST:PORT [BINARY] [legacy|uring] [PATH]
# BINARY defaults to target/monoio-bare/release/monoio-bare, built by
#   cargo build --release --manifest-path bench/gateway/monoio-bare/Cargo.toml \
#     --target-dir target/monoio-bare
# (monoio-features: the same with monoio-features in both paths, binary
# target/monoio-features/release/monoio-features).
# The driver defaults to legacy (epoll); `uring` is counted too (valgrind runs io_uring;
# what the kernel does for it is not counted, as for any system call). The upstream serves
# `GET PATH` (bench/gateway/run.sh's nginx upstream serves any path).
# PATH (default /posts, the gateway's benchmarks' route) is what wrk asks for: monoio-features
# guards `/jobs/{id}`, `/download`, … with the JWT check, so `/jobs/42` counts that too.
# monoio-features writes the token it signs at start-up to $MONOIO_FEATURES_TOKEN_FILE;
# wrk (and the readiness check) then send `Authorization: Bearer <token>`. A proxy that
# writes none (monoio-bare) gets $BEARER_TOKEN in the same header when that is set (the
# same request head for both), else no header.
set -euo pipefail
upstream=$1 binary=${2:-target/monoio-bare/release/monoio-bare} driver=${3:-legacy}
request_path=${4:-/posts}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19106
export MONOIO_FEATURES_TOKEN_FILE=$work/token
# callgrind.sh calls wrk and curl with `http://127.0.0.1:PORT/posts`: these wrappers ask
# for PATH instead, with the token.
authorized() {
  local args=("${@/%\/posts/$request_path}") token=${BEARER_TOKEN:-}
  if [ -s "$work/token" ]; then token=$(cat "$work/token"); fi
  if [ -n "$token" ]; then
    command "${args[0]}" -H "Authorization: Bearer $token" "${args[@]:1}"
  else
    command "${args[@]}"
  fi
}
wrk() { authorized wrk "$@"; }
curl() { authorized curl "$@"; }
# shellcheck source=bench/gateway/callgrind.sh
source "$(dirname "$0")/callgrind.sh"
proxy_instructions "$work" "$port" INT "$binary" "127.0.0.1:$port" "$upstream" 1 "$driver"

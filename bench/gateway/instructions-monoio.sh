#!/usr/bin/env bash
# Instructions per proxied request of the bare monoio proxy (bench/gateway/monoio-bare;
# callgrind, one thread, start-up subtracted): the peer of instructions-hyper.sh, counted
# the same way (wrk -t1 -c8 for 8 s).
#   bench/gateway/instructions-monoio.sh UPSTREAM_HOST:PORT [BINARY] [legacy|uring]
# BINARY defaults to target/monoio-bare/release/monoio-bare, built by
#   cargo build --release --manifest-path bench/gateway/monoio-bare/Cargo.toml \
#     --target-dir target/monoio-bare
# The driver defaults to legacy (epoll); `uring` is counted too (valgrind runs io_uring;
# what the kernel does for it is not counted, as for any system call). The upstream serves `GET /posts` (bench/gateway/run.sh's nginx upstream
# will do).
set -euo pipefail
upstream=$1 binary=${2:-target/monoio-bare/release/monoio-bare} driver=${3:-legacy}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19106
# shellcheck source=bench/gateway/callgrind.sh
source "$(dirname "$0")/callgrind.sh"
proxy_instructions "$work" "$port" INT "$binary" "127.0.0.1:$port" "$upstream" 1 "$driver"

# Sourced by the benchmark scripts (from the repository root): the steps they all take.
#
# need_nginx_wrk
#   installs nginx and wrk (Debian packages) when either is missing.
# flotilla_binary
#   sets $binary: FLOTILLA_BINARY when set (measure that binary), else a release build of
#   the flotilla package made here (target/release/flotilla, or under CARGO_TARGET_DIR).
# start_flotilla_up PORT DIR
#   starts `flotilla up` on 127.0.0.1:PORT with its data in DIR/data, stdout in
#   DIR/flotilla.out, stderr in DIR/flotilla.err and its pid in DIR/flotilla.pid, without
#   the gateway's per-client rate limit (it is for the internet, not for a benchmark
#   client); returns when it prints its ready line, or fails with its stderr after 60 s.
# stop_flotilla DIR
#   stops what start_flotilla_up started in DIR (SIGTERM, then waits for it).

need_nginx_wrk() {
  command -v nginx >/dev/null && command -v wrk >/dev/null && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
}

flotilla_binary() {
  binary=${FLOTILLA_BINARY:-}
  if [ -z "$binary" ]; then
    cargo build --release -q -p flotilla
    binary=${CARGO_TARGET_DIR:-target}/release/flotilla
  fi
}

start_flotilla_up() {
  local port=$1 dir=$2
  rm -rf "$dir/data"
  FLOTILLA_GATEWAY_RATE_LIMIT=0 RUST_LOG=warn "$binary" up \
    --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/flotilla.out" 2>"$dir/flotilla.err" &
  echo $! >"$dir/flotilla.pid"
  for _ in $(seq 600); do grep -q ready "$dir/flotilla.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "flotilla did not start:" >&2
  cat "$dir/flotilla.err" >&2
  return 1
}

stop_flotilla() {
  local dir=$1
  [ -e "$dir/flotilla.pid" ] || return 0
  kill "$(cat "$dir/flotilla.pid")" 2>/dev/null || true
  wait "$(cat "$dir/flotilla.pid")" 2>/dev/null || true
  rm -f "$dir/flotilla.pid"
}

# Sourced by the instruction counts of the gateway benchmarks (instructions-nginx.sh,
# instructions-haproxy.sh, instructions-pingora.sh): one proxy under valgrind's callgrind,
# counted as instructions.sh counts the gateway's.
# proxy_instructions WORK PORT SIGNAL COMMAND...
#   runs COMMAND (a proxy listening on 127.0.0.1:PORT that serves `GET /posts`) under
#   callgrind twice, idle and with wrk -t1 -c8 for 8 s, stopping it with SIGNAL (INT, TERM, QUIT:
#   whichever makes it exit at once; HAProxy keeps the SIGINT that bash ignores in
#   background jobs); prints
#   "requests N, instructions per request I" (start-up and shut-down subtracted).
proxy_instructions() {
  local work=$1 port=$2 signal=$3
  shift 3
  run() { # seconds of load, command -> instructions of the whole run, requests served
    local seconds=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$@" >"$work/log" 2>&1 &
    local pid=$! requests=0 out
    for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$port/posts" 2>/dev/null && break; sleep 0.2; done
    if [ "$seconds" -gt 0 ]; then
      out=$(wrk -t1 -c8 -d"${seconds}s" "http://127.0.0.1:$port/posts")
      if grep -q 'Non-2xx' <<<"$out"; then
        echo "the proxy answered errors (is its upstream up?):" >&2; echo "$out" >&2; kill -"$signal" "$pid"; exit 1
      fi
      requests=$(awk '/requests in/ {print $1}' <<<"$out")
    fi
    # A signal can get lost while valgrind starts or stops a thread: send it again until
    # the process is gone (callgrind writes its file at exit).
    local tries=0
    while kill -"$signal" "$pid" 2>/dev/null && [ $tries -lt 60 ]; do
      tries=$((tries + 1)); sleep 1
    done
    wait "$pid" || true
    echo "$(awk '/^summary:/ {print $2}' "$work/cg.out") $requests"
  }
  local idle loaded requests
  read -r idle _ <<<"$(run 0 "$@")"
  read -r loaded requests <<<"$(run 8 "$@")"
  [ -n "${requests:-}" ] && [ -n "${idle:-}" ] && [ -n "${loaded:-}" ] || { cat "$work/log" >&2; return 1; }
  echo "requests $requests, instructions per request $(( (loaded - idle) / requests ))"
}

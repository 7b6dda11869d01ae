#!/usr/bin/env bash
# Requests/s, p99 and CPU per request of nginx, HAProxy, monoio-bare and monoio-features
# (the gateway's feature layer as written for the hyper gateway, `full`, and written lean
# for the engine, `lean`; io_uring, and lean also on epoll), each with THREADS threads /
# workers, in front of one nginx upstream with 2 workers: `wrk -t2 -cCONNS -d10s --latency`,
# ROUNDS alternating rounds (default 3), every proxy asked the same request (`GET PATH`
# with `Authorization: Bearer <the token monoio-features signed>`; nginx, HAProxy and
# monoio-bare pass the header on unchecked). Prints one line per run (round, proxy, req/s,
# p99, µs CPU per request as user + system from /proc/PID/stat, load average before it).
#   THREADS=1 CONNS=64 [PROXIES="nginx haproxy lean-uring"] \
#     bench/gateway/monoio-features/rps.sh [ROUNDS] [PATH]
# (PATH default /jobs/42, a guarded route: the JWT check is counted.)
# Binaries: target/monoio-bare/release/monoio-bare and
# target/monoio-features/release/monoio-features (see their Cargo.toml for the builds).
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-3} request_path=${2:-/jobs/42} threads=${THREADS:-1} conns=${CONNS:-64}
bare=target/monoio-bare/release/monoio-bare
features=target/monoio-features/release/monoio-features
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/*/nginx.conf; do [ -e "$f" ] && nginx -p "$(dirname "$f")" -c "$f" -s stop 2>/dev/null; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/gateway/nginx-conf.sh
source bench/gateway/nginx-conf.sh
upstream=19200
nginx_upstream_conf "$work/upstream" "$upstream" 2
# nginx drops a keepalive connection idle for 75 s (keepalive_timeout); a proxy resting
# that long between its runs would find its pooled connections closed, and
# monoio-transports' pool does not resend a request that met a stale connection (the
# gateway's pool does): keep the upstream's connections for the whole run.
sed -i 's/^http {$/http {\n  keepalive_timeout 600s;/' "$work/upstream/nginx.conf"
nginx -p "$work/upstream" -c "$work/upstream/nginx.conf"
nginx_conf "$work/nginx" "127.0.0.1:$upstream" 19201 "" "$threads"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
# shellcheck source=bench/gateway/haproxy-conf.sh
source bench/gateway/haproxy-conf.sh
haproxy_conf "$work/haproxy" "127.0.0.1:$upstream" 19206 "$threads"
haproxy -f "$work/haproxy/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!
names=(nginx haproxy bare-uring features-uring lean-uring lean-epoll)
ports=(19201 19206 19203 19205 19207 19208)
# PROXIES="nginx haproxy lean-uring" measures only those (all are started either way).
if [ -n "${PROXIES:-}" ]; then
  kept_names=() kept_ports=()
  for i in "${!names[@]}"; do
    if [[ " $PROXIES " == *" ${names[$i]} "* ]]; then
      kept_names+=("${names[$i]}"); kept_ports+=("${ports[$i]}")
    fi
  done
  names=("${kept_names[@]}") ports=("${kept_ports[@]}")
fi
declare -A pid_of
pid_of[haproxy]=$haproxy_pid
"$features" 127.0.0.1:19207 "127.0.0.1:$upstream" "$threads" uring lean >"$work/f3.log" 2>&1 &
pids+=($!); pid_of[lean-uring]=$!
"$features" 127.0.0.1:19208 "127.0.0.1:$upstream" "$threads" legacy lean >"$work/f4.log" 2>&1 &
pids+=($!); pid_of[lean-epoll]=$!
MONOIO_FEATURES_TOKEN_FILE=$work/token "$features" 127.0.0.1:19204 "127.0.0.1:$upstream" "$threads" legacy >"$work/f1.log" 2>&1 &
pids+=($!); pid_of[features-epoll]=$!
"$features" 127.0.0.1:19205 "127.0.0.1:$upstream" "$threads" uring >"$work/f2.log" 2>&1 &
pids+=($!); pid_of[features-uring]=$!
"$bare" 127.0.0.1:19202 "127.0.0.1:$upstream" "$threads" legacy >"$work/b1.log" 2>&1 &
pids+=($!); pid_of[bare-epoll]=$!
"$bare" 127.0.0.1:19203 "127.0.0.1:$upstream" "$threads" uring >"$work/b2.log" 2>&1 &
pids+=($!); pid_of[bare-uring]=$!
sleep 1
pid_of[nginx]=$(cat "$work/nginx/nginx.pid")
# Each monoio-features process signed its own token: ask each with its own.
token_of() { # name -> the token its proxy accepts
  case $1 in
    features-uring) awk '/^token / {print $2}' "$work/f2.log" ;;
    lean-uring) awk '/^token / {print $2}' "$work/f3.log" ;;
    lean-epoll) awk '/^token / {print $2}' "$work/f4.log" ;;
    *) cat "$work/token" ;;
  esac
}
for i in "${!names[@]}"; do
  for _ in $(seq 50); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $(token_of "${names[$i]}")" \
      "http://127.0.0.1:${ports[$i]}$request_path" 2>/dev/null && continue 2
    sleep 0.2
  done
  echo "${names[$i]} does not answer" >&2; exit 1
done
ticks=$(getconf CLK_TCK)
cpu() { # PID -> user and system ticks of it and its children (nginx: master + worker)
  local u=0 s=0 p a b
  for p in "$1" $(pgrep -P "$1" || true); do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}
one() { # name port seconds -> "req/s µs-per-request user system"
  local pid=${pid_of[$1]} u0 s0 u1 s1 out
  read -r u0 s0 <<<"$(cpu "$pid")"
  out=$(wrk -t2 -c"$conns" -d"$3s" --latency -H "Authorization: Bearer $(token_of "$1")" "http://127.0.0.1:$2$request_path")
  read -r u1 s1 <<<"$(cpu "$pid")"
  # Errors are shown, not hidden: a run with any is not a clean figure.
  local errors p99
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  awk -v r="$(awk '/requests in/ {print $1}' <<<"$out")" -v rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
      -v p99="$p99" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$ticks" 'BEGIN {
    printf "%.0f req/s, p99 %s, %.1f µs CPU/req (user %.1f, system %.1f)", rps, p99, (u + s) * 1e6 / hz / r, u * 1e6 / hz / r, s * 1e6 / hz / r
  }'
  if [ -n "$errors" ]; then echo ", $errors non-2xx answers"; else echo; fi
}
# Warm-up: every proxy 2 s (connections, pools, allocator, the token cache).
for i in "${!names[@]}"; do one "${names[$i]}" "${ports[$i]}" 2 >/dev/null; done
echo "start $(date -u '+%H:%M:%S') load $(cut -d' ' -f1-3 /proc/loadavg) path $request_path threads $threads connections $conns"
for round in $(seq "$rounds"); do
  # Alternate the order from round to round.
  order=("${!names[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("$i"); done
  fi
  for i in "${order[@]}"; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "round $round $(date -u '+%H:%M:%S') ${names[$i]}: $(one "${names[$i]}" "${ports[$i]}" 10) load $load"
  done
done
echo "end $(date -u '+%H:%M:%S') load $(cut -d' ' -f1-3 /proc/loadavg)"

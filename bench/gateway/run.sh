#!/usr/bin/env bash
# Gateway vs nginx as reverse proxies in front of the same trivial upstream, measured
# in the same run on the same machine with wrk (-t2 -c64), plus the gateway's RSS at
# idle and under load. The gateway runs twice: with its default HTTP threads (one per
# CPU) and with one, as many as nginx's one worker. Prints a Markdown section for
# BENCHMARKS.md.
#   bench/gateway/run.sh [DURATION_SECONDS]   (default 10)
# Needs: nginx, wrk (apt), a release build (built here).
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-10}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; nginx -p "$work" -c "$work/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$work"' EXIT
command -v nginx >/dev/null && command -v wrk >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
}
target_dir=${CARGO_TARGET_DIR:-target}
# FLOTILLA_BENCH_NO_BUILD=1 uses the release binary as it is (when another build holds the lock).
[ -n "${FLOTILLA_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p flotilla
upstream=19101 nginx_proxy=19102 gateway=19103 gateway_one=19104

# One nginx process serves both the trivial upstream and the nginx proxy in front of it.
# shellcheck source=bench/gateway/nginx-conf.sh
source bench/gateway/nginx-conf.sh
nginx_conf "$work" "127.0.0.1:$upstream" "$nginx_proxy" "$upstream"
nginx -p "$work" -c "$work/nginx.conf"

start_gateway() { # name port threads(empty = the default, one per CPU)
  env ${3:+FLOTILLA_HTTP_THREADS=$3} FLOTILLA_QUERY_URL=http://127.0.0.1:$upstream FLOTILLA_GATEWAY_RATE_LIMIT=0 RUST_LOG=warn \
    FLOTILLA_DATA_DIR="$work/$1" FLOTILLA_LISTEN=127.0.0.1:$2 \
    "$target_dir/release/flotilla" serve gateway >"$work/$1.log" 2>&1 &
  echo $! >"$work/$1.pid"
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$2/readyz" && return 0; sleep 0.1; done
  echo "gateway $1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1
}
# The default (one HTTP thread per CPU) and one thread, as many as nginx's one worker.
start_gateway gw "$gateway"
start_gateway gw1 "$gateway_one" 1
gw_pid=$(cat "$work/gw.pid")

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_rss=$(rss_kib "$gw_pid")

ms() { # percentile label -> its latency in ms from wrk's --latency table
  awk -v p="$1" '$1==p {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.out"
}
run_wrk() { # url -> "req/s p99_ms p50_ms"
  wrk -t2 -c64 -d"${duration}s" --latency "$1" >"$work/wrk.out" 2>&1
  if grep -q 'Non-2xx' "$work/wrk.out"; then
    echo "$1 answered errors; the comparison would be meaningless:" >&2; cat "$work/wrk.out" >&2; exit 1
  fi
  local rps
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  echo "$rps $(ms 99%) $(ms 50%)"
}
better() { awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," ");split(b,y," "); exit !(x[1]>y[1])}'; }

# Warm all three, then measure alternately twice and keep the better run of each.
for port in "$nginx_proxy" "$gateway" "$gateway_one"; do
  wrk -t2 -c64 -d2s "http://127.0.0.1:$port/posts" >/dev/null
done
best_n="0 0 0"; best_g="0 0 0"; best_1="0 0 0"; peak_rss=0
for _ in 1 2; do
  r=$(run_wrk "http://127.0.0.1:$nginx_proxy/posts"); better "$r" "$best_n" && best_n=$r
  run_wrk "http://127.0.0.1:$gateway/posts" >"$work/g.txt" &
  wrk_pid=$!
  while kill -0 $wrk_pid 2>/dev/null; do
    r=$(rss_kib "$gw_pid"); [ "$r" -gt "$peak_rss" ] && peak_rss=$r; sleep 0.5
  done
  r=$(cat "$work/g.txt"); better "$r" "$best_g" && best_g=$r
  r=$(run_wrk "http://127.0.0.1:$gateway_one/posts"); better "$r" "$best_1" && best_1=$r
done
read -r n_rps n_p99 n_p50 <<<"$best_n"
row() { # label "rps p99 p50" -> a table row with the ratios to nginx
  local rps p99 p50
  read -r rps p99 p50 <<<"$2"
  awk -v l="$1" -v r="$rps" -v p99="$p99" -v p50="$p50" -v nr="$n_rps" -v n99="$n_p99" \
    'BEGIN{printf "| %s | %s | %s ms | %s ms | **%.2f×** | **%.2f×** |\n", l, r, p50, p99, r/nr, p99/n99}'
}
cat <<MD
## Gateway vs nginx (reverse proxy, keepalive upstream)

\`bench/gateway/run.sh $duration\` on $(nproc) cores, $(date -u +%Y-%m-%d), wrk -t2 -c64 -d${duration}s, best of 2 alternating runs,
every proxy in front of the same nginx \`return 200\` upstream (client, proxies and upstream share the cores).

| proxy | requests/s | p50 latency | p99 latency | requests/s vs nginx | p99 vs nginx |
|---|---:|---:|---:|---:|---:|
| nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (1 worker) | $n_rps | ${n_p50} ms | ${n_p99} ms | 1.00× | 1.00× |
$(row "flotilla gateway, 1 HTTP thread" "$best_1")
$(row "flotilla gateway, default ($(nproc) HTTP threads)" "$best_g")

Gateway RSS (default threads): $((idle_rss / 1024)) MiB idle, $((peak_rss / 1024)) MiB peak under load.
MD

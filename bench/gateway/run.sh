#!/usr/bin/env bash
# Gateway vs nginx as reverse proxies in front of the same trivial upstream, measured
# in the same run on the same machine with wrk (-t2 -c64), plus the gateway's RSS at
# idle and under load. Prints a Markdown section for BENCHMARKS.md.
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
upstream=19101 nginx_proxy=19102 gateway=19103

# One nginx process serves both the trivial upstream and the nginx proxy in front of it.
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream trivial { server 127.0.0.1:$upstream; keepalive 128; }
  server { listen 127.0.0.1:$upstream; location / { return 200 "ok"; } }
  server {
    listen 127.0.0.1:$nginx_proxy;
    location / {
      proxy_pass http://trivial;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
mkdir -p "$work/logs"
nginx -p "$work" -c "$work/nginx.conf"

FLOTILLA_QUERY_URL=http://127.0.0.1:$upstream FLOTILLA_GATEWAY_RATE_LIMIT=0 RUST_LOG=warn \
FLOTILLA_DATA_DIR=$work/gw FLOTILLA_LISTEN=127.0.0.1:$gateway \
  "$target_dir/release/flotilla" serve gateway >"$work/gateway.log" 2>&1 &
echo $! >"$work/gateway.pid"
gw_pid=$(cat "$work/gateway.pid")
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$gateway/readyz" && break; sleep 0.1; done

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

# Warm both, then measure alternately twice and keep the better run of each.
wrk -t2 -c64 -d2s "http://127.0.0.1:$nginx_proxy/posts" >/dev/null
wrk -t2 -c64 -d2s "http://127.0.0.1:$gateway/posts" >/dev/null
best_n="0 0 0"; best_g="0 0 0"; peak_rss=0
for _ in 1 2; do
  r=$(run_wrk "http://127.0.0.1:$nginx_proxy/posts")
  awk -v a="$r" -v b="$best_n" 'BEGIN{split(a,x," ");split(b,y," "); exit !(x[1]>y[1])}' && best_n=$r
  run_wrk "http://127.0.0.1:$gateway/posts" >"$work/g.txt" &
  wrk_pid=$!
  while kill -0 $wrk_pid 2>/dev/null; do
    r=$(rss_kib "$gw_pid"); [ "$r" -gt "$peak_rss" ] && peak_rss=$r; sleep 0.5
  done
  r=$(cat "$work/g.txt")
  awk -v a="$r" -v b="$best_g" 'BEGIN{split(a,x," ");split(b,y," "); exit !(x[1]>y[1])}' && best_g=$r
done
read -r n_rps n_p99 n_p50 <<<"$best_n"
read -r g_rps g_p99 g_p50 <<<"$best_g"
ratio=$(awk -v g="$g_rps" -v n="$n_rps" 'BEGIN{printf "%.2f", g/n}')
p99_ratio=$(awk -v g="$g_p99" -v n="$n_p99" 'BEGIN{printf "%.2f", g/n}')
cat <<MD
## Gateway vs nginx (reverse proxy, keepalive upstream)

\`bench/gateway/run.sh $duration\` on $(nproc) cores, $(date -u +%Y-%m-%d), wrk -t2 -c64 -d${duration}s, best of 2 alternating runs,
both proxies in front of the same nginx \`return 200\` upstream (client, proxy and upstream share the cores).

| proxy | requests/s | p50 latency | p99 latency |
|---|---|---|---|
| nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') | $n_rps | ${n_p50} ms | ${n_p99} ms |
| flotilla gateway | $g_rps | ${g_p50} ms | ${g_p99} ms |
| **ratio gateway / nginx** | **$ratio×** | | **$p99_ratio×** |

Gateway RSS: $((idle_rss / 1024)) MiB idle, $((peak_rss / 1024)) MiB peak under load.
MD

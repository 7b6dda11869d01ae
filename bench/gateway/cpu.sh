#!/usr/bin/env bash
# CPU time per request of one process (user + system, from /proc/PID/stat) while wrk
# loads URL: the figure that decides throughput when client, proxy and upstream share
# the cores.   bench/gateway/cpu.sh PID URL [SECONDS]   (default 8)
set -euo pipefail
pid=$1 url=$2 seconds=${3:-8}
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15, $14, $15}' "/proc/$pid/stat"; }
read -r t0 u0 s0 <<<"$(cpu)"
out=$(wrk -t2 -c64 -d"${seconds}s" --latency "$url")
read -r t1 u1 s1 <<<"$(cpu)"
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
awk -v a="$t0" -v b="$t1" -v u="$((u1 - u0))" -v k="$((s1 - s0))" -v r="$rps" -v s="$seconds" \
    -v hz="$ticks" -v p="$p99" 'BEGIN {
  per = 1e6 / (hz * r * s)
  printf "%.0f req/s, p99 %s, %.1f µs CPU per request (user %.1f, system %.1f), %.2f cores\n",
    r, p, (b - a) * per, u * per, k * per, (b - a) / hz / s
}'

#!/usr/bin/env bash
# Throughput against connections: the flotilla gateway (`serve gateway`, default HTTP
# threads) and nginx (one worker), each a reverse proxy in front of the same trivial nginx
# upstream (bench/gateway/nginx-conf.sh, the configuration bench/gateway/run.sh uses),
# wrk -t2 -cN for each N of CONNECTIONS, the two alternating, ROUNDS rounds; median
# (min–max) requests/s per point. Prints a Markdown table; BENCH_RESULTS=FILE also writes
# the figures as JSON (bench/run-all.sh plots them).
#   bench/gateway-sweep.sh [SECONDS] [ROUNDS] [CONNECTIONS…]   (defaults 5 3 4 8 16 32 64 128 256)
# FLOTILLA_BINARY: the binary to measure (else target/release/flotilla, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5} rounds=${2:-3}
shift $(($# < 2 ? $# : 2))
connections=("$@")
[ ${#connections[@]} -gt 0 ] || connections=(4 8 16 32 64 128 256)
work=$(mktemp -d)
trap 'kill $(cat "$work"/gw.pid 2>/dev/null) 2>/dev/null || true; nginx -p "$work" -c "$work/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/lib.sh
source bench/lib.sh
need_nginx_wrk
flotilla_binary
upstream=19161 nginx_proxy=19162 gateway=19163
# shellcheck source=bench/gateway/nginx-conf.sh
source bench/gateway/nginx-conf.sh
nginx_conf "$work" "127.0.0.1:$upstream" "$nginx_proxy" "$upstream"
nginx -p "$work" -c "$work/nginx.conf"
FLOTILLA_QUERY_URL=http://127.0.0.1:$upstream FLOTILLA_GATEWAY_RATE_LIMIT=0 RUST_LOG=warn \
  FLOTILLA_DATA_DIR="$work/gw" FLOTILLA_LISTEN=127.0.0.1:$gateway \
  "$binary" serve gateway >"$work/gw.log" 2>&1 &
echo $! >"$work/gw.pid"
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$gateway/readyz" && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$gateway/posts" || { echo "gateway did not start:" >&2; cat "$work/gw.log" >&2; exit 1; }

rps() { # port connections -> requests/s (0 when wrk saw errors: a broken point is not a figure)
  local threads=$(($2 < 2 ? $2 : 2))
  wrk -t$threads -c"$2" -d"${seconds}s" "http://127.0.0.1:$1/posts" >"$work/wrk.out" 2>&1 || true
  if grep -qE 'Non-2xx|Socket errors' "$work/wrk.out"; then
    echo "errors at -c$2 on port $1: $(grep -E 'Non-2xx|Socket errors' "$work/wrk.out" | tr '\n' ' ')" >&2
  fi
  awk '/Requests\/sec/ {print $2}' "$work/wrk.out"
}
before=$(python3 bench/tools/machine.py)
wrk -t2 -c64 -d1s "http://127.0.0.1:$nginx_proxy/posts" >/dev/null
wrk -t2 -c64 -d1s "http://127.0.0.1:$gateway/posts" >/dev/null
: >"$work/points.txt"
for round in $(seq "$rounds"); do
  for c in "${connections[@]}"; do
    if [ $((round % 2)) = 1 ]; then order="nginx gateway"; else order="gateway nginx"; fi
    for system in $order; do
      if [ "$system" = nginx ]; then port=$nginx_proxy; else port=$gateway; fi
      echo "$system $c $(rps "$port" "$c")" >>"$work/points.txt"
    done
  done
  echo "round $round done" >&2
done
after=$(python3 bench/tools/machine.py)
python3 - "$work/points.txt" "$seconds" "$rounds" "$before" "$after" "$(nginx -v 2>&1 | sed 's/.*nginx\///')" "${BENCH_RESULTS:-}" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join("bench", "tools"))
from machine import describe
from spread import cell, spread
path, seconds, rounds, before, after, nginx, results = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:8]
points = {}
for line in open(path):
    parts = line.split()
    if len(parts) == 3:
        points.setdefault(parts[0], {}).setdefault(int(parts[1]), []).append(float(parts[2]))
names = {"nginx": f"nginx {nginx} (1 worker)", "gateway": "flotilla gateway (default threads)"}
connections = sorted({c for per in points.values() for c in per})
if results:
    with open(results, "w") as f:
        json.dump({"bench": "gateway-sweep", "seconds": seconds, "rounds": rounds,
                   "series": [{"name": names[s], "points": [[c, *spread(points[s][c])] for c in sorted(points[s])]}
                              for s in ("nginx", "gateway") if s in points]}, f)
print(f"**Throughput against connections** (`bench/gateway-sweep.sh {seconds} {rounds} {' '.join(map(str, connections))}`): "
      f"wrk -t2 -cN -d{seconds}s through each proxy to the same `return 200` upstream, alternating, "
      f"requests/s median (min–max) of {rounds} round(s); {describe(json.loads(before), json.loads(after))}.")
print()
print("| connections | " + " | ".join(names[s] for s in ("nginx", "gateway")) + " | gateway ÷ nginx (medians) |")
print("|---:|---:|---:|---:|")
for c in connections:
    n, g = points.get("nginx", {}).get(c, []), points.get("gateway", {}).get(c, [])
    ratio = f"{spread(g)[1] / spread(n)[1]:.2f}×" if n and g and spread(n)[1] else "—"
    print(f"| {c} | {cell(n, 0)} | {cell(g, 0)} | {ratio} |")
PY

#!/usr/bin/env bash
# The blog against its peer, the course's original Node app (bench/blog/original: five
# Express services, in memory, behind nginx routing like the course's ingress), with the
# same client (bench/blog/workload.py) through each system's one origin:
#  - creates/s: wrk, 16 connections, POST /posts/create for SECONDS;
#  - reads/s: wrk, 16 connections, GET /posts for SECONDS;
#  - RACES × (create a post, comment on it at once), 16 at a time, then the comments that
#    were acknowledged but never appear in GET /posts;
#  - event latency, SAMPLES sequential samples each: post created → visible in the view,
#    comment created → visible moderated in the view (p50/p99/max).
# Each round starts both systems fresh and runs them one after the other, the order
# swapped every round; figures are min/median/max over the rounds, with the machine and
# its load beside them. The client's own ceiling (the same wrk against nginx
# `return 201`) is measured once. Prints a Markdown section for BENCHMARKS.md.
#   bench/blog.sh [ROUNDS] [SECONDS] [SAMPLES] [RACES]   (defaults 3 10 200 500)
# FLOTILLA_BINARY: the flotilla binary to measure (else target/release/flotilla, built
# here). BENCH_RESULTS=FILE: also write the figures as JSON (bench/run-all.sh uses it).
# Needs: nginx, wrk (apt, installed here if missing), node and npm (the original's
# dependencies are installed from its package-lock.json on first use), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} seconds=${2:-10} samples=${3:-200} races=${4:-500}
clients=16
work=$(mktemp -d)
# nginx's workers run as an unprivileged user; mktemp's directory is private.
chmod 755 "$work"
flotilla_port=19201 original_port=19210 ceiling_port=19220

# shellcheck source=bench/lib.sh
source bench/lib.sh
cleanup() {
  stop_flotilla "$work"
  bench/blog/original/stop.sh "$work/original" 2>/dev/null || true
  nginx -p "$work" -c "$work/ceiling.conf" -s stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
need_nginx_wrk
flotilla_binary

start_flotilla() { start_flotilla_up $flotilla_port "$work"; }
start_original() {
  rm -rf "$work/original"; mkdir -p "$work/original"; chmod 755 "$work/original"
  bench/blog/original/start.sh "$work/original" $original_port
}
stop_original() { bench/blog/original/stop.sh "$work/original"; }

# One system, fresh: its figures as JSON in $work/$2-$1.json (an error object if it failed,
# so one bad run is reported, not the end of the benchmark).
measure() { # system round
  local out=$work/$1-$2.json port
  if [ "$1" = flotilla ]; then port=$flotilla_port; else port=$original_port; fi
  echo "round $2: $1" >&2
  if "start_$1" && python3 bench/blog/workload.py "http://127.0.0.1:$port" --seconds "$seconds" \
      --samples "$samples" --races "$races" --clients $clients >"$out" 2>"$work/workload.err"; then
    :
  else
    python3 -c 'import json,sys; print(json.dumps({"error": sys.argv[1][-300:].strip() or "failed"}))' \
      "$(tail -3 "$work/workload.err" 2>/dev/null)" >"$out"
  fi
  cat "$work/workload.err" >&2 || true
  "stop_$1" "$work" || true
}

machine_before=$(python3 bench/tools/machine.py)
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="original flotilla"; else order="flotilla original"; fi
  for system in $order; do measure "$system" "$round"; done
done
machine_after=$(python3 bench/tools/machine.py)

# The client's own ceiling: the same wrk and Lua script against nginx answering 201.
cat >"$work/ceiling.conf" <<NGINX
worker_processes auto;
pid $work/ceiling.pid;
error_log $work/ceiling-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/ceiling-body;
  server {
    listen 127.0.0.1:$ceiling_port;
    location = /posts/create { default_type application/json; return 201 '{"id":"0","title":"t"}'; }
  }
}
NGINX
nginx -p "$work" -c "$work/ceiling.conf"
python3 bench/blog/workload.py "http://127.0.0.1:$ceiling_port" --seconds "$seconds" \
  --clients $clients --creates-only >"$work/ceiling.json" 2>/dev/null || echo '{}' >"$work/ceiling.json"
nginx -p "$work" -c "$work/ceiling.conf" -s stop 2>/dev/null || true

python3 - "$work" "$rounds" "$seconds" "$samples" "$races" "$clients" \
  "$machine_before" "$machine_after" "$("$binary" --version 2>/dev/null || echo flotilla)" \
  "$(node --version)" "$(nginx -v 2>&1 | sed 's/.*nginx\///')" >"$work/results.json" <<'PY'
import json, sys
work, rounds, seconds, samples, races, clients = sys.argv[1], *map(int, sys.argv[2:7])
before, after, flotilla, node, nginx = sys.argv[7:12]
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"error": "no results"}
print(json.dumps({
    "bench": "blog",
    "command": f"bench/blog.sh {rounds} {seconds} {samples} {races}",
    "params": {"rounds": rounds, "seconds": seconds, "samples": samples, "races": races, "clients": clients},
    "machine_before": json.loads(before), "machine_after": json.loads(after),
    "versions": {"flotilla": flotilla, "node": node, "nginx": nginx},
    "rounds": [{s: load(f"{work}/{s}-{r}.json") for s in ("original", "flotilla")} for r in range(1, rounds + 1)],
    "ceiling": load(f"{work}/ceiling.json"),
}, indent=1))
PY
[ -z "${BENCH_RESULTS:-}" ] || cp "$work/results.json" "$BENCH_RESULTS"
python3 bench/blog/report.py "$work/results.json"

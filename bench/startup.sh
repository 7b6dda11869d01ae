#!/usr/bin/env bash
# Start-up time and idle memory: `flotilla up` (every service in one process, a fresh data
# directory) from exec until it prints "ready", and its resident memory after IDLE seconds
# of idling; peer: the course's original blog (bench/blog/original: five Node services and
# the nginx origin) from the first exec until the origin answers GET /posts, and the sum of
# its processes' resident memory after the same idle time. Alternating, ROUNDS rounds,
# min/median/max. Prints a Markdown section for BENCHMARKS.md.
#   bench/startup.sh [ROUNDS] [IDLE_SECONDS]   (defaults 5 5)
# FLOTILLA_BINARY: the binary to measure (else target/release/flotilla, built here).
# BENCH_RESULTS=FILE: also write the figures as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5} idle=${2:-5}
work=$(mktemp -d)
chmod 755 "$work"
port=19231 original_port=19240
cleanup() {
  [ -e "$work/flotilla.pid" ] && kill "$(cat "$work/flotilla.pid")" 2>/dev/null
  bench/blog/original/stop.sh "$work/original" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
source bench/lib.sh
flotilla_binary
# The original's dependencies are installed before the clock starts, not during it.
[ -d bench/blog/original/node_modules ] || (cd bench/blog/original && npm ci --no-audit --no-fund --silent >/dev/null)

now() { date +%s.%N; }
# Resident memory of the processes whose status files are given, summed: all of it, and
# its anonymous part (RssAnon: the heap and stacks, the processes' own memory; the rest is
# pages of their executables and libraries, which the kernel shares and can drop).
memory_kib() { awk '/^VmRSS/ {s += $2} /^RssAnon/ {a += $2} END {print s + 0, a + 0}' "$@" 2>/dev/null || echo 0 0; }

flotilla() { # -> "seconds rss_kib anon_kib"
  rm -rf "$work/data"
  local started ready rss
  started=$(now)
  FLOTILLA_LISTEN=127.0.0.1:$port FLOTILLA_DATA_DIR=$work/data RUST_LOG=warn \
    "$binary" up >"$work/flotilla.out" 2>"$work/flotilla.err" &
  echo $! >"$work/flotilla.pid"
  for _ in $(seq 6000); do grep -q ready "$work/flotilla.out" 2>/dev/null && break; sleep 0.005; done
  ready=$(now)
  grep -q ready "$work/flotilla.out" || { echo "flotilla did not start" >&2; cat "$work/flotilla.err" >&2; return 1; }
  sleep "$idle"
  rss=$(memory_kib "/proc/$(cat "$work/flotilla.pid")/status")
  kill "$(cat "$work/flotilla.pid")"; wait "$(cat "$work/flotilla.pid")" 2>/dev/null || true
  rm -f "$work/flotilla.pid"
  echo "$(awk -v a="$started" -v b="$ready" 'BEGIN {printf "%.3f", b - a}') $rss"
}

original() { # -> "seconds rss_kib anon_kib"
  rm -rf "$work/original"; mkdir -p "$work/original"; chmod 755 "$work/original"
  local started ready rss pids
  started=$(now)
  bench/blog/original/start.sh "$work/original" "$original_port" >&2
  ready=$(now)
  sleep "$idle"
  # The five services, nginx's master and its workers.
  pids=$(cat "$work/original"/original-*.pid)
  pids="$pids $(cat "$work/original/original-nginx.pid") $(pgrep -P "$(cat "$work/original/original-nginx.pid")" || true)"
  rss=$(memory_kib $(for p in $pids; do echo "/proc/$p/status"; done))
  bench/blog/original/stop.sh "$work/original"
  echo "$(awk -v a="$started" -v b="$ready" 'BEGIN {printf "%.3f", b - a}') $rss"
}

before=$(python3 bench/tools/machine.py)
: >"$work/rounds.txt"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="flotilla original"; else order="original flotilla"; fi
  for system in $order; do
    read -r seconds rss anon <<<"$("$system")"
    echo "round $round: $system ready in $seconds s, idle RSS $rss KiB (anonymous $anon KiB)" >&2
    echo "$system $seconds $rss $anon" >>"$work/rounds.txt"
  done
done
after=$(python3 bench/tools/machine.py)

python3 - "$work/rounds.txt" "$rounds" "$idle" "$before" "$after" "${BENCH_RESULTS:-}" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join("bench", "tools"))
from machine import describe
from spread import cell, spread
path, rounds, idle, before, after, results = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
data = {s: {"seconds": [], "rss_mib": [], "anon_mib": []} for s in ("flotilla", "original")}
for line in open(path):
    system, seconds, rss, anon = line.split()
    data[system]["seconds"].append(float(seconds))
    data[system]["rss_mib"].append(int(rss) / 1024)
    data[system]["anon_mib"].append(int(anon) / 1024)
if results:
    with open(results, "w") as f:
        json.dump({"bench": "startup", "rounds": rounds, "idle_s": idle, **data}, f)
print(f"`bench/startup.sh {rounds} {idle}` — {describe(json.loads(before), json.loads(after))}; "
      f"{rounds} alternating rounds, median (min–max).")
print()
print("| system | start-up until ready | resident memory after "
      f"{idle} s idle | of it anonymous (`RssAnon`: the processes' own) |")
print("|---|---:|---:|---:|")
def row(system, label):
    d = data[system]
    print(f"| {label} | {cell(d['seconds'], 2, 's')} | {cell(d['rss_mib'], 1, 'MiB')} | {cell(d['anon_mib'], 1, 'MiB')} |")
row("flotilla", "`flotilla up` (every service, one process, fresh data directory; until it prints \"ready\")")
row("original", "the course's original blog (five Node services + nginx; until the origin answers `GET /posts`)")
print()
print("Resident memory counts the pages of the executables and libraries mapped in (shared, and dropped "
      "by the kernel under pressure) besides the processes' own memory, the anonymous column.")
PY

#!/usr/bin/env bash
# What watching the system map costs: the media flow (upload → convert → email) of
# `flotilla up` with GET /admin/system/stream open against a system nobody watches.
# Each round starts a fresh system twice — once never watched (the tap has no watcher,
# nothing is observed), once with the stream open and read to the end by curl — uploads
# JOBS one-second WAVs, CONCURRENCY at a time, and times until every job is done.
#   bench/system-map/run.sh [JOBS] [CONCURRENCY] [ROUNDS]   (default 40 4 3)
#   PROFILE=debug bench/system-map/run.sh ...                 (default release)
# Goal (issue 17): throughput with the stream open within 5 % of closed. Also the CPU
# time the flotilla process spends per job (utime + stime from /proc), which a busy
# machine disturbs far less than wall-clock throughput. Prints a Markdown section for
# BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${1:-40} concurrency=${2:-4} rounds=${3:-3}
profile=${PROFILE:-release}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
target_dir=${CARGO_TARGET_DIR:-target}
# FLOTILLA_BINARY: measure that binary instead of building one.
binary=${FLOTILLA_BINARY:-}
if [ -z "$binary" ]; then
  if [ "$profile" = release ]; then cargo build --release -q -p flotilla; else cargo build -q -p flotilla; fi
  binary=$target_dir/$profile/flotilla
fi
email=bench@example.com password=bench-password
port=19301

# A one-second 16-bit mono WAV (symphonia converts it in-process).
python3 - "$work/tone.wav" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i * 0.2))) for i in range(16000)))
PY

# The CPU time process $1 has used, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One run: a fresh system, optionally watched; prints "jobs/s CPU-ms/job".
run() {
  local watched=$1 data=$work/data-$RANDOM
  FLOTILLA_DATA_DIR=$data FLOTILLA_LISTEN=127.0.0.1:$port RUST_LOG=error \
  FLOTILLA_ADMIN_EMAIL=$email FLOTILLA_ADMIN_PASSWORD=$password \
  FLOTILLA_GATEWAY_RATE_LIMIT=0 \
    "$binary" up >"$work/flotilla.log" 2>&1 &
  echo $! >"$work/flotilla.pid"
  for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done
  local token
  token=$(curl -fsS -X POST -u "$email:$password" "http://127.0.0.1:$port/login")
  if [ "$watched" = open ]; then
    curl -sN -H "Authorization: Bearer $token" "http://127.0.0.1:$port/admin/system/stream" \
      >"$work/stream.txt" &
    echo $! >"$work/stream.pid"
    sleep 1
  fi
  local started ended cpu_started cpu_ended
  cpu_started=$(cpu_ticks "$(cat "$work/flotilla.pid")")
  started=$(date +%s.%N)
  seq "$jobs" | xargs -P "$concurrency" -I{} curl -fsS -o /dev/null \
    -H "Authorization: Bearer $token" -F "file=@$work/tone.wav" "http://127.0.0.1:$port/upload"
  # Until every job is done (or failed).
  for _ in $(seq 6000); do
    local open
    open=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$port/jobs?limit=500" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); js=d["jobs"] if isinstance(d, dict) else d; print(sum(j["status"] not in ("done","failed") for j in js))')
    [ "$open" = 0 ] && break
    sleep 0.05
  done
  ended=$(date +%s.%N)
  cpu_ended=$(cpu_ticks "$(cat "$work/flotilla.pid")")
  if [ "$watched" = open ]; then
    local seen
    seen=$(grep -c '^event: message' "$work/stream.txt" || true)
    kill "$(cat "$work/stream.pid")" 2>/dev/null || true
    rm -f "$work/stream.pid"
    echo "  (stream carried $seen message events)" >&2
  fi
  kill "$(cat "$work/flotilla.pid")"; wait "$(cat "$work/flotilla.pid")" 2>/dev/null || true
  rm -f "$work/flotilla.pid"; rm -rf "$data"
  python3 -c "print(f'{$jobs / ($ended - $started):.2f} {($cpu_ended - $cpu_started) * 1000 / $(getconf CLK_TCK) / $jobs:.1f}')"
}

closed=() open=() closed_cpu=() open_cpu=()
for round in $(seq "$rounds"); do
  read -r c c_cpu <<<"$(run closed)"; read -r o o_cpu <<<"$(run open)"
  echo "round $round: closed $c jobs/s ($c_cpu CPU ms/job), open $o jobs/s ($o_cpu CPU ms/job)" >&2
  closed+=("$c"); open+=("$o"); closed_cpu+=("$c_cpu"); open_cpu+=("$o_cpu")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${closed[@]}") mo=$(median "${open[@]}")
mcc=$(median "${closed_cpu[@]}") moc=$(median "${open_cpu[@]}")
delta=$(python3 -c "print(f'{($mo - $mc) / $mc * 100:+.1f}')")
delta_cpu=$(python3 -c "print(f'{($moc - $mcc) / $mcc * 100:+.1f}')")
load=$(cut -d' ' -f1-3 /proc/loadavg)
cat <<MD
### Watching the system map (\`bench/system-map/run.sh $jobs $concurrency $rounds\`, $profile build)

| | jobs/s per round | median | CPU ms per job, per round | median |
|---|---|---|---|---|
| stream closed (nobody watches) | ${closed[*]} | $mc | ${closed_cpu[*]} | $mcc |
| \`GET /admin/system/stream\` open | ${open[*]} | $mo | ${open_cpu[*]} | $moc |

With the stream open: throughput **${delta} %**, CPU per job **${delta_cpu} %** against closed (goal: within 5 %).
$(nproc) CPUs, load average $load at the end, $jobs one-second WAVs, $concurrency uploads at a time, each round a fresh \`flotilla up\`.
MD

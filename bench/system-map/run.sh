#!/usr/bin/env bash
# What watching the system map costs: the media flow (upload → convert → email) of
# `flotilla up` with GET /admin/system/stream open against a system nobody watches.
# Each round starts a fresh system twice — once never watched (the tap has no watcher,
# nothing is observed), once with the stream open and read to the end by curl — uploads
# JOBS one-second WAVs, CONCURRENCY at a time, and times until every job is done.
#   bench/system-map/run.sh [JOBS] [CONCURRENCY] [ROUNDS]   (default 40 4 3)
#   PROFILE=debug bench/system-map/run.sh ...                 (default release)
# Goal (issue 17): throughput with the stream open within 5 % of closed. Prints a
# Markdown section for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${1:-40} concurrency=${2:-4} rounds=${3:-3}
profile=${PROFILE:-release}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
target_dir=${CARGO_TARGET_DIR:-target}
if [ "$profile" = release ]; then cargo build --release -q -p flotilla; else cargo build -q -p flotilla; fi
binary=$target_dir/$profile/flotilla
email=bench@example.com password=bench-password
port=19301

# A one-second 16-bit mono WAV (symphonia converts it in-process).
python3 - "$work/tone.wav" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i * 0.2))) for i in range(16000)))
PY

# One run: a fresh system, optionally watched; prints jobs per second.
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
  local started ended
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
  if [ "$watched" = open ]; then
    local seen
    seen=$(grep -c '^event: message' "$work/stream.txt" || true)
    kill "$(cat "$work/stream.pid")" 2>/dev/null || true
    rm -f "$work/stream.pid"
    echo "  (stream carried $seen message events)" >&2
  fi
  kill "$(cat "$work/flotilla.pid")"; wait "$(cat "$work/flotilla.pid")" 2>/dev/null || true
  rm -f "$work/flotilla.pid"; rm -rf "$data"
  python3 -c "print(f'{$jobs / ($ended - $started):.2f}')"
}

closed=() open=()
for round in $(seq "$rounds"); do
  c=$(run closed); o=$(run open)
  echo "round $round: closed $c jobs/s, open $o jobs/s" >&2
  closed+=("$c"); open+=("$o")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${closed[@]}") mo=$(median "${open[@]}")
delta=$(python3 -c "print(f'{($mo - $mc) / $mc * 100:+.1f}')")
cat <<MD
### Watching the system map (\`bench/system-map/run.sh $jobs $concurrency $rounds\`, $profile build)

| | jobs/s per round | median |
|---|---|---|
| stream closed (nobody watches) | ${closed[*]} | $mc |
| \`GET /admin/system/stream\` open | ${open[*]} | $mo |

Throughput with the stream open: **${delta} %** against closed (goal: within 5 %).
$(nproc) CPUs ($(nproc) shared with other work), $jobs one-second WAVs, $concurrency uploads at a time, each round a fresh \`flotilla up\`.
MD

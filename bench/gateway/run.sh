#!/usr/bin/env bash
# Reverse proxies side by side in front of the same trivial upstream, measured in the same
# run on the same machine with wrk (-t2): nginx and HAProxy (1 and 2 workers/threads), the
# flotilla gateway (1 and 2 HTTP threads), a bare Pingora proxy (1 and 2 threads,
# bench/gateway/pingora-bare) and a bare hyper proxy (1 and 2 threads, bench/gateway/hyper-bare:
# the ceiling of the gateway's engine, run as the gateway runs hyper — one runtime per
# thread, hyper's client connections in a per-thread pool; with --instructions also
# counted with hyper-util's legacy client).
# The upstream is an nginx `return 200` of its own (one
# worker per CPU), so no proxy's figure depends on what serving the upstream costs it.
# Rounds alternate between the proxies (the order reversed every other round); each cell
# is min / median / max over the rounds. Also each proxy's RSS (idle and peak under load)
# and, with --instructions, instructions per proxied request (callgrind, one thread).
#
#   bench/gateway/run.sh [DURATION_SECONDS] [--duration S] [--rounds N]
#                        [--connections 16,64,256] [--out DIR] [--instructions]
#
# Defaults: 10 s, 3 rounds, 64 connections, DIR = target/bench-gateway.
# Prints a Markdown section for BENCHMARKS.md and writes, for other tools (the plots):
#   DIR/gateway.md    the same Markdown
#   DIR/gateway.tsv   one row per proxy and connection count (tab-separated, header row):
#     proxy threads connections rounds rps_min rps_median rps_max p50_ms_median
#     p99_ms_min p99_ms_median p99_ms_max rss_idle_kib rss_peak_kib socket_errors
#     instructions_per_request rss_idle_anon_kib (socket_errors: wrk's, summed over the
#     rounds — timeouts; rss_idle_anon_kib: the idle RSS's RssAnon, the proxy's own memory)
#   DIR/rounds.tsv    every wrk run: proxy threads connections round rps p50_ms p99_ms
#     rss_peak_kib socket_errors
# Knobs: FLOTILLA_BINARY (default: cargo build --release -p flotilla, then
# target/release/flotilla; FLOTILLA_BENCH_NO_BUILD=1 uses that binary as it is),
# PINGORA_BARE_BINARY (default: built here from bench/gateway/pingora-bare into
# target/pingora-bare, outside the workspace), HYPER_BARE_BINARY (default: built here
# from bench/gateway/hyper-bare into target/hyper-bare, likewise).
# Needs: nginx, haproxy, wrk, cmake (apt; installed here if missing), valgrind for
# --instructions. Run it under `nice -n 19` on a shared machine (it did for BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
duration=10 rounds=3 connections=64 out=target/bench-gateway instructions=""
while [ $# -gt 0 ]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --instructions) instructions=1; shift ;;
    [0-9]*) duration=$1; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for n in $duration $rounds ${connections//,/ }; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "not a positive number: $n" >&2; exit 2; }
done
mkdir -p "$out"
shown=$out
work=$(mktemp -d)
cleanup() {
  local f
  # HAProxy keeps the SIGINT that bash ignores in background jobs; it stops on SIGTERM.
  for f in "$work"/*.pid; do
    case $f in *haproxy*) sig=TERM ;; *) sig=INT ;; esac
    [ -e "$f" ] && kill -$sig "$(cat "$f")" 2>/dev/null
  done
  for f in "$work"/*/nginx.conf; do [ -e "$f" ] && nginx -p "$(dirname "$f")" -c "$f" -s stop 2>/dev/null; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
# cmake: Pingora's zlib-ng (through flate2) is built with it.
for tool in nginx wrk haproxy cmake; do
  command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null
done
target_dir=${CARGO_TARGET_DIR:-target}
flotilla=${FLOTILLA_BINARY:-}
if [ -z "$flotilla" ]; then
  [ -n "${FLOTILLA_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p flotilla
  flotilla=$target_dir/release/flotilla
fi
pingora=${PINGORA_BARE_BINARY:-}
if [ -z "$pingora" ]; then
  cargo build --release -q --manifest-path bench/gateway/pingora-bare/Cargo.toml \
    --target-dir "$target_dir/pingora-bare"
  pingora=$target_dir/pingora-bare/release/pingora-bare
fi
hyper=${HYPER_BARE_BINARY:-}
if [ -z "$hyper" ]; then
  cargo build --release -q --manifest-path bench/gateway/hyper-bare/Cargo.toml \
    --target-dir "$target_dir/hyper-bare"
  hyper=$target_dir/hyper-bare/release/hyper-bare
fi

# shellcheck source=bench/gateway/nginx-conf.sh
source bench/gateway/nginx-conf.sh
# shellcheck source=bench/gateway/haproxy-conf.sh
source bench/gateway/haproxy-conf.sh
upstream=19101
cores=$(nproc)
nginx_upstream_conf "$work/upstream" "$upstream" "$cores"
nginx -p "$work/upstream" -c "$work/upstream/nginx.conf"

wait_up() { # name port path
  for _ in $(seq 150); do curl -fsS -o /dev/null "http://127.0.0.1:$2$3" 2>/dev/null && return 0; sleep 0.1; done
  echo "$1 did not start:" >&2; cat "$work/$1.log" "$work/$1/error.log" 2>/dev/null >&2; exit 1
}
wait_up upstream "$upstream" /

# The proxies: name, label, threads, port. Each writes its main PID to $work/NAME.pid.
names=() labels=() threads=() ports=()
add() { names+=("$1"); labels+=("$2"); threads+=("$3"); ports+=("$4"); }
port=19110
for t in 1 2; do
  port=$((port + 1)); add "nginx$t" "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')" "$t" "$port"
  nginx_conf "$work/nginx$t" "127.0.0.1:$upstream" "$port" "" "$t"
  nginx -p "$work/nginx$t" -c "$work/nginx$t/nginx.conf"

  port=$((port + 1)); add "haproxy$t" "HAProxy $(haproxy -v | awk 'NR==1 {split($3, v, "-"); print v[1]}')" "$t" "$port"
  haproxy_conf "$work/haproxy$t" "127.0.0.1:$upstream" "$port" "$t"
  haproxy -db -f "$work/haproxy$t/haproxy.cfg" >"$work/haproxy$t.log" 2>&1 &
  echo $! >"$work/haproxy$t.pid"

  port=$((port + 1)); add "gateway$t" "flotilla gateway" "$t" "$port"
  FLOTILLA_HTTP_THREADS=$t FLOTILLA_QUERY_URL=http://127.0.0.1:$upstream FLOTILLA_GATEWAY_RATE_LIMIT=0 \
    RUST_LOG=warn FLOTILLA_DATA_DIR="$work/gateway$t" FLOTILLA_LISTEN=127.0.0.1:$port \
    "$flotilla" serve gateway >"$work/gateway$t.log" 2>&1 &
  echo $! >"$work/gateway$t.pid"

  port=$((port + 1)); add "pingora$t" "Pingora $(awk -F'"' '/^name = "pingora-proxy"/ {getline; print $2}' bench/gateway/pingora-bare/Cargo.lock), bare" "$t" "$port"
  "$pingora" "127.0.0.1:$port" "127.0.0.1:$upstream" "$t" >"$work/pingora$t.log" 2>&1 &
  echo $! >"$work/pingora$t.pid"

  port=$((port + 1)); add "hyper$t" "hyper $(awk -F'"' '/^name = "hyper"/ {getline; print $2}' bench/gateway/hyper-bare/Cargo.lock), bare" "$t" "$port"
  "$hyper" "127.0.0.1:$port" "127.0.0.1:$upstream" "$t" nosteal conn >"$work/hyper$t.log" 2>&1 &
  echo $! >"$work/hyper$t.pid"
done
for i in "${!names[@]}"; do wait_up "${names[$i]}" "${ports[$i]}" /posts; done
# nginx's PID file names the master (stopped by `nginx -s stop` in cleanup, not by PID).
for t in 1 2; do cp "$work/nginx$t/nginx.pid" "$work/nginx$t.master"; done

pid_of() { # name -> the PID whose process tree is the proxy
  if [ -e "$work/$1.master" ]; then cat "$work/$1.master"; else cat "$work/$1.pid"; fi
}
status_kib() { # FIELD PID -> that /proc/PID/status field summed over it and its children
  # (nginx: master + workers), KiB. VmRSS: all it has resident; RssAnon: its own memory,
  # without the pages of its executable and libraries.
  local total=0 p r
  for p in "$2" $(pgrep -P "$2" || true); do
    r=$(awk -v f="$1:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${r:-0}))
  done
  echo "$total"
}
rss_kib() { status_kib VmRSS "$1"; }
anon_kib() { status_kib RssAnon "$1"; }
ms() { # percentile label -> its latency in ms from wrk's --latency table
  awk -v p="$1" '$1==p {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.out"
}
run_wrk() { # index connections seconds -> "req/s p50_ms p99_ms peak_rss_kib socket_errors"
  local name=${names[$1]} pid peak=0 r
  pid=$(pid_of "$name")
  wrk -t2 -c"$2" -d"$3s" --latency "http://127.0.0.1:${ports[$1]}/posts" >"$work/wrk.out" 2>&1 &
  local wrk_pid=$!
  while kill -0 "$wrk_pid" 2>/dev/null; do
    r=$(rss_kib "$pid"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.5
  done
  wait "$wrk_pid"
  if grep -q 'Non-2xx' "$work/wrk.out"; then
    echo "$name answered errors; the comparison would be meaningless:" >&2; cat "$work/wrk.out" >&2; return 1
  fi
  # Socket errors (timeouts: no answer within wrk's 2 s) are a result, not a failure of
  # the run: counted and shown beside the figures.
  local errors
  errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$work/wrk.out")
  echo "$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out") $(ms 50%) $(ms 99%) $peak ${errors:-0}"
}

declare -A idle_rss idle_anon
for i in "${!names[@]}"; do
  idle_rss[${names[$i]}]=$(rss_kib "$(pid_of "${names[$i]}")")
  idle_anon[${names[$i]}]=$(anon_kib "$(pid_of "${names[$i]}")")
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')

# Warm every proxy (connections, pools, allocator), then the alternating rounds.
for i in "${!names[@]}"; do wrk -t2 -c64 -d2s "http://127.0.0.1:${ports[$i]}/posts" >/dev/null; done
printf 'proxy\tthreads\tconnections\tround\trps\tp50_ms\tp99_ms\trss_peak_kib\tsocket_errors\n' >"$out/rounds.tsv"
order=("${!names[@]}")
for round in $(seq "$rounds"); do
  for c in ${connections//,/ }; do
    for i in "${order[@]}"; do
      result=$(run_wrk "$i" "$c" "$duration") || exit 1
      read -r rps p50 p99 peak errors <<<"$result"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${names[$i]%[12]}" "${threads[$i]}" "$c" "$round" \
        "$rps" "$p50" "$p99" "$peak" "$errors" >>"$out/rounds.tsv"
      echo "round $round, -c$c: ${labels[$i]} (${threads[$i]}): $rps req/s, p99 $p99 ms, $errors socket errors" >&2
    done
  done
  # Reverse the order every round, so no proxy always runs right after the same one.
  mapfile -t order < <(printf '%s\n' "${order[@]}" | tac)
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Instructions per proxied request, one thread each (callgrind, start-up subtracted).
declare -A instr
if [ -n "$instructions" ]; then
  up=http://127.0.0.1:$upstream
  count() { awk '/instructions per request/ {print $NF}'; }
  instr[nginx]=$(bench/gateway/instructions-nginx.sh "127.0.0.1:$upstream" | count)
  instr[haproxy]=$(bench/gateway/instructions-haproxy.sh "127.0.0.1:$upstream" | count)
  instr[gateway]=$(bench/gateway/instructions.sh "$up" "$flotilla" | count)
  instr[pingora]=$(bench/gateway/instructions-pingora.sh "127.0.0.1:$upstream" "$pingora" | count)
  instr[hyper]=$(bench/gateway/instructions-hyper.sh "127.0.0.1:$upstream" "$hyper" nosteal conn | count)
  instr[hyperlegacy]=$(bench/gateway/instructions-hyper.sh "127.0.0.1:$upstream" "$hyper" nosteal legacy | count)
fi

# Aggregate: min / median / max over the rounds of each proxy and connection count.
printf 'proxy\tthreads\tconnections\trounds\trps_min\trps_median\trps_max\tp50_ms_median\tp99_ms_min\tp99_ms_median\tp99_ms_max\trss_idle_kib\trss_peak_kib\tsocket_errors\tinstructions_per_request\trss_idle_anon_kib\n' >"$out/gateway.tsv"
stats() { # column of rounds.tsv, proxy, threads, connections -> "min median max"
  awk -F'\t' -v col="$1" -v p="$2" -v t="$3" -v c="$4" 'NR > 1 && $1 == p && $2 == t && $3 == c {print $col}' "$out/rounds.tsv" |
    sort -g | awk '{v[NR] = $1} END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print v[1], m, v[NR]}'
}
for c in ${connections//,/ }; do
  for i in "${!names[@]}"; do
    p=${names[$i]%[12]} t=${threads[$i]}
    read -r rmin rmed rmax <<<"$(stats 5 "$p" "$t" "$c")"
    read -r _ p50 _ <<<"$(stats 6 "$p" "$t" "$c")"
    read -r qmin qmed qmax <<<"$(stats 7 "$p" "$t" "$c")"
    read -r _ _ peak <<<"$(stats 8 "$p" "$t" "$c")"
    errors=$(awk -F'\t' -v p="$p" -v t="$t" -v c="$c" 'NR > 1 && $1 == p && $2 == t && $3 == c {e += $9} END {print e + 0}' "$out/rounds.tsv")
    in=""; [ "$t" = 1 ] && in=${instr[$p]:-}
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$t" "$c" "$rounds" \
      "$rmin" "$rmed" "$rmax" "$p50" "$qmin" "$qmed" "$qmax" "${idle_rss[${names[$i]}]}" "$peak" "$errors" "$in" \
      "${idle_anon[${names[$i]}]}" >>"$out/gateway.tsv"
  done
done

# Markdown: one table per connection count; ratios against nginx and HAProxy with as
# many workers/threads, on the medians.
label_of() { local i; for i in "${!names[@]}"; do [ "${names[$i]%[12]}" = "$1" ] && { echo "${labels[$i]}"; return; }; done; }
{
  model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
  cat <<MD
## Gateway vs nginx, HAProxy, bare Pingora and bare hyper (reverse proxy, keepalive upstream)

\`bench/gateway/run.sh --duration $duration --rounds $rounds --connections $connections${instructions:+ --instructions}\`,
$started, $cores cores ($model), load average $load_before before and $load_after after.
wrk -t2 -d${duration}s, $rounds alternating rounds; each cell is the median, with min–max over the rounds.
Every proxy is in front of the same trivial upstream, an nginx \`return 200\` in a process of its own
($cores workers); client, proxies and upstream share the cores. Ratios compare medians with nginx and
HAProxy with as many workers/threads (req/s: higher is better; p99: lower is better). RSS of the whole
proxy (nginx: master + workers), idle before the rounds and peak under load; in brackets the idle
figure's anonymous part (\`RssAnon\`: the process's own memory; the rest is pages of its executable
and libraries, shared and droppable). wrk timeouts: requests
without an answer within 2 s, summed over the rounds.
MD
  for c in ${connections//,/ }; do
    echo
    echo "**$c connections**"
    echo
    echo "| proxy | threads | requests/s | p50 | p99 | req/s vs nginx | req/s vs HAProxy | p99 vs nginx | p99 vs HAProxy | RSS idle (own) / peak | wrk timeouts |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v c="$c" -v nl="$(label_of nginx)" -v hl="$(label_of haproxy)" -v gl="$(label_of gateway)" -v pl="$(label_of pingora)" -v yl="$(label_of hyper)" '
      NR == 1 || $3 != c {next}
      {n++; p[n] = $1; t[n] = $2; rmin[n] = $5; r[n] = $6; rmax[n] = $7; p50[n] = $8; qmin[n] = $9; q[n] = $10; qmax[n] = $11; idle[n] = $12; peak[n] = $13; err[n] = $14; anon[n] = $16
       if ($1 == "nginx") {nr[$2] = $6; nq[$2] = $10} if ($1 == "haproxy") {hr[$2] = $6; hq[$2] = $10}}
      END {
        label["nginx"] = nl; label["haproxy"] = hl; label["gateway"] = gl; label["pingora"] = pl; label["hyper"] = yl
        split("nginx haproxy pingora hyper gateway", want, " ")
        for (w = 1; w <= 5; w++) for (th = 1; th <= 2; th++) for (i = 1; i <= n; i++) if (p[i] == want[w] && t[i] == th)
          printf "| %s | %d | %.0f (%.0f–%.0f) | %.2f ms | %.2f ms (%.2f–%.2f) | %.2f× | %.2f× | %.2f× | %.2f× | %.1f (%.1f) / %.1f MiB | %d |\n",
            label[p[i]], t[i], r[i], rmin[i], rmax[i], p50[i], q[i], qmin[i], qmax[i],
            r[i] / nr[t[i]], r[i] / hr[t[i]], q[i] / nq[t[i]], q[i] / hq[t[i]], idle[i] / 1024, anon[i] / 1024, peak[i] / 1024, err[i]
      }' "$out/gateway.tsv"
  done
  if [ -n "$instructions" ]; then
    echo
    echo "Instructions per proxied request (callgrind, one worker/thread, wrk -t1 -c8 for 8 s, start-up subtracted):"
    echo
    echo "| proxy | instructions per request | vs nginx |"
    echo "|---|---:|---:|"
    for p in nginx haproxy pingora hyper hyperlegacy gateway; do
      if [ $p = hyperlegacy ]; then l="$(label_of hyper) with hyper-util's legacy client"; else l=$(label_of $p); fi
      awk -v l="$l" -v i="${instr[$p]}" -v n="${instr[nginx]}" 'BEGIN {printf "| %s | %d | %.2f× |\n", l, i, i / n}'
    done
  fi
  echo
  echo "Machine-readable: \`$out/gateway.tsv\` (one row per proxy and connection count) and \`rounds.tsv\` (every run)."
} | tee "$out/gateway.md"

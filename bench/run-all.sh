#!/usr/bin/env bash
# Every benchmark in one command, each against its peer in the same minutes (alternating,
# min/median/max over rounds, the machine and its load beside the figures), then
# BENCHMARKS.md's generated parts and the SVG plots in docs/bench/ rebuilt from the
# results. Hand-written prose in BENCHMARKS.md is kept: only the text between
# `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` is replaced (bench/tools/regen.py).
#
#   bench/run-all.sh [--quick] [--only NAME,NAME…] [--no-update]
#
#   --quick      tiny durations and sizes: a smoke test of every benchmark end to end
#                (minutes, not an hour). Its figures mean nothing, so it never touches the
#                repository: the regenerated copy is $BENCH_OUT/BENCHMARKS.md, the plots
#                $BENCH_OUT/plots/.
#   --only       run only these (names below); the others keep their last figures.
#   --no-update  write results to $BENCH_OUT only, even for a full run.
#
# Benchmarks (NAME: what, against which peer):
#   blog           bench/blog.sh: creates/s, reads/s, race losses, event latency; the course's Node app
#   startup        bench/startup.sh: `flotilla up` start-up and idle RSS; the course's Node app
#   gateway        bench/gateway/run.sh (as it is): reverse proxy req/s and latency; nginx
#   gateway-sweep  bench/gateway-sweep.sh: req/s against connections (plot); nginx
#   bus            bus-bench: msgs/s and latency, and msgs/s against payload size (plot); raw lapin
#                  (without RabbitMQ, FLOTILLA_TEST_AMQP_URL, the embedded bus alone)
#   auth           auth-bench: token verification on one core; `openssl speed ed25519`
#   convert        convert-bench: in-process converter, and seconds against input length (plot); ffmpeg
#   upload         bench/upload/run.sh over several file sizes: MB/s and RSS against size (plot)
#   system-map     bench/system-map/run.sh: the media flow with the system map watched and not
#
# Knobs: FLOTILLA_BINARY (the flotilla binary to measure; else target/release/flotilla is
# built), BENCH_NO_BUILD=1 (use the bench crates already in $CARGO_TARGET_DIR/release),
# BENCH_OUT (default target/bench-run: sections/, data/, logs/, plots/). A benchmark that
# fails is reported at the end (and the exit status is 1) but never stops the others;
# its part of BENCHMARKS.md keeps the last figures.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0 update=1 only=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 update=0 ;;
    --no-update) update=0 ;;
    --only) only=,$2,; shift ;;
    --only=*) only=,${1#--only=},; ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
out=${BENCH_OUT:-target/bench-run}
case $out in /*) ;; *) out=$root/$out ;; esac
rm -rf "$out"; mkdir -p "$out/sections" "$out/data" "$out/logs" "$out/plots"
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
started_all=$(date +%s)
# Heavy work that is not a build runs niced (the machine may be shared); children inherit it.
renice -n 10 -p $$ >/dev/null 2>&1 || true

if [ -z "${FLOTILLA_BINARY:-}" ]; then
  echo "building the release flotilla binary (set FLOTILLA_BINARY to skip)" >&2
  cargo build --release -q -p flotilla || exit 1
  FLOTILLA_BINARY=$target_dir/release/flotilla
fi
FLOTILLA_BINARY=$(cd "$(dirname "$FLOTILLA_BINARY")" && pwd)/$(basename "$FLOTILLA_BINARY")
export FLOTILLA_BINARY
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "building the bench crates (release)" >&2
  cargo build --release -q -p bus-bench -p convert-bench -p auth-bench --no-default-features || exit 1
fi
bin=$target_dir/release

if [ "$quick" = 1 ]; then
  blog_args=(1 1 10 20) startup_args=(1 1) gateway_args=(1) sweep_args=(1 1 8 64)
  bus_messages=500 bus_rounds=1 bus_rate_messages=400 bus_sizes=(256 16384) bus_size_messages=300
  auth_seconds=1 auth_rounds=1 auth_tokens=2000 convert_runs=1 convert_lengths=2,5 convert_main=0
  upload_sizes=(8 32) upload_rounds=1 map_args=(4 2 1)
else
  blog_args=(3 10 200 500) startup_args=(5 5) gateway_args=(10) sweep_args=(5 3 4 8 16 32 64 128 256)
  bus_messages=20000 bus_rounds=3 bus_rate_messages=10000 bus_sizes=(64 256 1024 4096 16384 65536)
  bus_size_messages=5000 auth_seconds=3 auth_rounds=3 auth_tokens=100000 convert_runs=5 convert_lengths=10,30,60,120,300
  convert_main=1 upload_sizes=(64 256 1024) upload_rounds=3 map_args=(300 4 5)
fi

machine() { python3 bench/tools/machine.py; }
# Strips a leading Markdown heading: BENCHMARKS.md's headings are hand-written, outside the markers.
body() { awk 'NR == 1 && /^#/ {skip = 1; next} skip && NR == 2 && /^$/ {next} {print}'; }

bench_blog() { BENCH_RESULTS=$out/data/blog.json bench/blog.sh "${blog_args[@]}"; }
bench_startup() { BENCH_RESULTS=$out/data/startup.json bench/startup.sh "${startup_args[@]}"; }
bench_gateway() {
  # bench/gateway/run.sh measures $CARGO_TARGET_DIR/release/flotilla without building when
  # FLOTILLA_BENCH_NO_BUILD is set: point that at FLOTILLA_BINARY.
  local shim=$out/logs/gateway-target
  mkdir -p "$shim/release"; ln -sf "$FLOTILLA_BINARY" "$shim/release/flotilla"
  CARGO_TARGET_DIR=$shim FLOTILLA_BENCH_NO_BUILD=1 bench/gateway/run.sh "${gateway_args[@]}" | body
}
bench_gateway_sweep() { BENCH_RESULTS=$out/data/gateway-sweep.json bench/gateway-sweep.sh "${sweep_args[@]}"; }
bench_bus() {
  local logs=$out/logs/bus size
  mkdir -p "$logs"
  machine >"$logs/machine-before.json"
  echo "bus-bench --messages $bus_messages --rounds $bus_rounds" >"$logs/throughput.cmd"
  "$bin/bus-bench" --messages "$bus_messages" --rounds "$bus_rounds" >"$logs/throughput.txt" || return 1
  echo "bus-bench --messages $bus_rate_messages --rounds $bus_rounds --rate 2000" >"$logs/latency.cmd"
  "$bin/bus-bench" --messages "$bus_rate_messages" --rounds "$bus_rounds" --rate 2000 >"$logs/latency.txt" || return 1
  for size in "${bus_sizes[@]}"; do
    "$bin/bus-bench" --messages "$bus_size_messages" --rounds "$bus_rounds" --size "$size" >"$logs/size-$size.txt" || return 1
  done
  machine >"$logs/machine-after.json"
  python3 bench/tools/summarize.py bus "$logs" "$out/data/bus.json"
}
bench_auth() {
  local logs=$out/logs/auth round pin=()
  mkdir -p "$logs"
  # One core, the same for both, when there is more than one.
  [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null && pin=(taskset -c 1)
  machine >"$logs/machine-before.json"
  echo "${pin[*]} auth-bench --seconds $auth_seconds --tokens $auth_tokens --verify-only" | sed 's/^ //' >"$logs/auth.cmd"
  for round in $(seq "$auth_rounds"); do
    "${pin[@]}" "$bin/auth-bench" --seconds "$auth_seconds" --tokens "$auth_tokens" --verify-only >"$logs/auth-bench-$round.txt" || return 1
    "${pin[@]}" openssl speed -seconds "$auth_seconds" ed25519 >"$logs/openssl-$round.txt" 2>/dev/null || true
  done
  machine >"$logs/machine-after.json"
  python3 bench/tools/summarize.py auth "$logs"
}
bench_convert() {
  if [ "$convert_main" = 1 ]; then
    "$bin/convert-bench" --runs "$convert_runs" | body || return 1
    echo
  fi
  "$bin/convert-bench" --runs "$convert_runs" --lengths "$convert_lengths" --json "$out/data/convert.json" || return 1
  echo
  echo "Plotted in [docs/bench/convert-length.svg](docs/bench/convert-length.svg)."
}
bench_upload() {
  local logs=$out/logs/upload size round
  mkdir -p "$logs"
  machine >"$logs/machine-before.json"
  for round in $(seq "$upload_rounds"); do
    for size in "${upload_sizes[@]}"; do
      # A size this machine cannot take (flotilla answers 507 when the disk would fill)
      # is reported beside the others, not the end of the benchmark.
      BENCH_RESULTS=$logs/upload-$size-$round.json bench/upload/run.sh "$size" >>"$logs/upload.md" \
        2>"$logs/upload-$size-$round.err" ||
        echo "$size MiB, round $round: $(tail -n 1 "$logs/upload-$size-$round.err")" >>"$logs/skipped.txt"
    done
  done
  machine >"$logs/machine-after.json"
  ls "$logs"/upload-*-*.json >/dev/null 2>&1 || return 1
  python3 bench/tools/summarize.py upload "$logs" "$out/data/upload.json"
}
bench_system_map() {
  echo "\`bench/system-map/run.sh ${map_args[*]}\` (release build):"
  echo
  bench/system-map/run.sh "${map_args[@]}" | body
}

names=(blog startup gateway gateway-sweep bus auth convert upload system-map)
declare -A status seconds
for name in "${names[@]}"; do
  if [ -n "$only" ] && [[ $only != *",$name,"* ]]; then continue; fi
  echo "== $name ($(date -u +%H:%M:%S))" >&2
  begun=$(date +%s)
  if "bench_${name//-/_}" >"$out/sections/$name.part" 2>"$out/logs/$name.log" \
      && [ -s "$out/sections/$name.part" ]; then
    mv "$out/sections/$name.part" "$out/sections/$name.md"
    status[$name]=ok
  else
    rm -f "$out/sections/$name.part"
    status[$name]="FAILED: $(tail -n 3 "$out/logs/$name.log" | tr '\n' ' ' | cut -c1-300)"
  fi
  seconds[$name]=$(($(date +%s) - begun))
  echo "   ${status[$name]} in ${seconds[$name]} s" >&2
done

python3 bench/tools/plots.py "$out/data" "$out/plots"
cp BENCHMARKS.md "$out/BENCHMARKS.md"
python3 bench/tools/regen.py "$out/BENCHMARKS.md" "$out/sections"
if [ "$update" = 1 ]; then
  mkdir -p docs/bench
  cp "$out"/plots/*.svg docs/bench/ 2>/dev/null || true
  cp "$out/BENCHMARKS.md" BENCHMARKS.md
  echo "updated BENCHMARKS.md and docs/bench/" >&2
fi

failed=0
echo
echo "| benchmark | result | seconds |"
echo "|---|---|---:|"
for name in "${names[@]}"; do
  [ -n "${status[$name]:-}" ] || continue
  echo "| $name | ${status[$name]} | ${seconds[$name]} |"
  [ "${status[$name]}" = ok ] || failed=1
done
echo
echo "all in $(($(date +%s) - started_all)) s; results in $out"
exit $failed

#!/usr/bin/env bash
# Uploading a large file through the gateway of `flotilla up` (release build), on
# loopback: throughput (MB/s, curl's own figure) and how much the process's resident
# memory grows while the file streams to the blob store — in the same run.
#   bench/upload/run.sh [SIZE_MIB]   (default 1024, i.e. 1 GiB)
# Goals (issue 6): RSS growth < 64 MiB, throughput >= 200 MB/s. Prints a Markdown
# section for BENCHMARKS.md; BENCH_RESULTS=FILE also writes the figures as JSON (for
# bench/run-all.sh, which runs it over several sizes).
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-1024}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
# FLOTILLA_BINARY: measure that binary instead of building target/release/flotilla.
# shellcheck source=bench/lib.sh
source bench/lib.sh
flotilla_binary
port=19201
email=bench@example.com password=bench-password

# One worker and no ffmpeg keep the converter's work on the (garbage) upload small:
# it is refused as "not a media file" after the measurement anyway.
FLOTILLA_DATA_DIR=$work/data FLOTILLA_LISTEN=127.0.0.1:$port RUST_LOG=warn \
FLOTILLA_ADMIN_EMAIL=$email FLOTILLA_ADMIN_PASSWORD=$password \
FLOTILLA_GATEWAY_RATE_LIMIT=0 FLOTILLA_CONVERTER_WORKERS=1 FLOTILLA_CONVERTER_FFMPEG=off \
  "$binary" up >"$work/flotilla.log" 2>&1 &
echo $! >"$work/flotilla.pid"
pid=$(cat "$work/flotilla.pid")
for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done

# Random bytes (not zeros) so nothing along the way can take a shortcut.
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/upload.bin"
token=$(curl -fsS -X POST -u "$email:$password" "http://127.0.0.1:$port/login")

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Warm up the upload path (allocator pools, connections, SQLite pages) with a small file.
head -c $((8 * 1024 * 1024)) /dev/urandom >"$work/warm.bin"
curl -fsS -o /dev/null -H "Authorization: Bearer $token" -F "file=@$work/warm.bin" \
  "http://127.0.0.1:$port/upload"
sleep 1
before=$(rss_kib "$pid")

# Sample RSS every 50 ms while the upload runs; keep the peak.
( peak=0; while kill -0 "$pid" 2>/dev/null && [ ! -e "$work/done" ]; do
    r=$(rss_kib "$pid"); [ "$r" -gt "$peak" ] && peak=$r; echo "$peak" >"$work/peak"; sleep 0.05
  done ) &
echo $! >"$work/sampler.pid"
result=$(curl -fsS -o "$work/answer" -w '%{http_code} %{time_total} %{speed_upload}' \
  -H "Authorization: Bearer $token" -F "file=@$work/upload.bin" "http://127.0.0.1:$port/upload")
touch "$work/done"; sleep 0.2
peak=$(cat "$work/peak")
read -r code seconds bytes_per_s <<<"$result"
[ "$code" = 200 ] || { echo "upload failed: HTTP $code: $(cat "$work/answer")" >&2; exit 1; }

mb_s=$(awk -v b="$bytes_per_s" 'BEGIN {printf "%.0f", b / 1e6}')
growth_mib=$(awk -v p="$peak" -v b="$before" 'BEGIN {printf "%.1f", (p - b) / 1024}')
[ -z "${BENCH_RESULTS:-}" ] || printf '{"size_mib": %s, "mb_s": %s, "seconds": %s, "rss_before_kib": %s, "rss_peak_kib": %s}\n' \
  "$size_mib" "$mb_s" "$seconds" "$before" "$peak" >"$BENCH_RESULTS"
cat <<EOF
### Upload through the gateway ($size_mib MiB, loopback, release build)

\`bench/upload/run.sh $size_mib\` on $(nproc) cores, $(date -u +%Y-%m-%d):

| measure | result | goal |
|---|---|---|
| throughput (curl \`speed_upload\`) | $mb_s MB/s ($seconds s) | >= 200 MB/s |
| RSS before the upload | $((before / 1024)) MiB | |
| RSS peak during the upload | $((peak / 1024)) MiB | |
| RSS growth | $growth_mib MiB | < 64 MiB |
EOF

#!/usr/bin/env bash
# Proves the image starts and runs the system: builds it (deploy/build-image.sh, one
# release build), checks its labels and `flotilla --version`, then runs auth, media,
# converter and the gateway as containers (host network, distinct ports, read-only root,
# non-root) against the RabbitMQ and PostgreSQL already running on this host, and drives
# the media curl flow through the gateway: signup, login, upload, job done, download.
#   deploy/test-image.sh [IMAGE]    (default: builds localhost/flotilla:test)
# Needs FLOTILLA_TEST_POSTGRES_URL and FLOTILLA_TEST_AMQP_URL (scripts/ci/start-servers.sh
# writes them), podman, runc, psql, rabbitmqctl, ffmpeg and curl. Exits non-zero on the
# first failure, with the containers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FLOTILLA_TEST_POSTGRES_URL:?source /tmp/flotilla-test-env.sh first}"
: "${FLOTILLA_TEST_AMQP_URL:?source /tmp/flotilla-test-env.sh first}"

image=${1:-}
if [ -z "$image" ]; then
  deploy/build-image.sh test >/dev/null
  image=localhost/flotilla:test
fi
# The flags that work on these machines (see deploy/README.md): vfs storage, runc
# (crun fails on hybrid cgroups), cgroupfs, and rlimits no higher than the host's.
podman=(podman --storage-driver vfs)
run=("${podman[@]}" --runtime runc --cgroup-manager cgroupfs run
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network host --read-only)

prefix="img$$"
work=$(mktemp -d)
containers=()
fail() {
  echo "FAIL: $*" >&2
  for c in "${containers[@]}"; do
    echo "--- logs of $c" >&2
    "${podman[@]}" logs "$c" 2>&1 | tail -n 15 >&2 || true
  done
  exit 1
}
cleanup() {
  for c in "${containers[@]}"; do "${podman[@]}" rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
  rabbitmqctl -q delete_vhost "$prefix" >/dev/null 2>&1 || true
  for s in auth media converter; do
    psql "$FLOTILLA_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS ${prefix}_$s" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# 1. The image: labels, and the binary runs.
for label in source version revision; do
  value=$("${podman[@]}" image inspect "$image" --format "{{index .Config.Labels \"org.opencontainers.image.$label\"}}")
  [ -n "$value" ] && [ "$value" != "<no value>" ] || fail "label org.opencontainers.image.$label is missing"
done
version=$("${run[@]}" --rm "$image" --version) || fail "the image does not start"
[[ $version == "flotilla "* ]] || fail "unexpected --version output: $version"
echo "ok: $version"

# 2. Fresh broker vhost and databases for this run.
rabbitmqctl -q add_vhost "$prefix"
user=$(sed -E 's#^amqp://([^:]+):.*#\1#' <<<"$FLOTILLA_TEST_AMQP_URL")
rabbitmqctl -q set_permissions -p "$prefix" "$user" '.*' '.*' '.*'
amqp="${FLOTILLA_TEST_AMQP_URL%/*}/$prefix"
pg_base="${FLOTILLA_TEST_POSTGRES_URL%/*}"
for s in auth media converter; do
  psql "$FLOTILLA_TEST_POSTGRES_URL" -qc "CREATE DATABASE ${prefix}_$s"
done
# The blob store media and converter share; the containers' user must write it.
mkdir -p "$work/blobs" && chmod 0777 "$work/blobs"

port=$((20000 + RANDOM % 20000))
declare -A ports=([gateway]=$port [auth]=$((port + 1)) [media]=$((port + 2)) [converter]=$((port + 3)))
auth_url="http://127.0.0.1:${ports[auth]}"
start() { # name, extra run args… -- (the service name is the container's command)
  local name=$1; shift
  local c="${prefix}-$name"
  containers+=("$c")
  "${run[@]}" -d --name "$c" -e FLOTILLA_LISTEN="127.0.0.1:${ports[$name]}" "$@" "$image" serve "$name" >/dev/null \
    || fail "container $name did not start"
}
wait_ready() { # name
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:${ports[$1]}/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "$1 not ready within 30 s"
}
start auth -e FLOTILLA_DATABASE_URL="$pg_base/${prefix}_auth"
for s in media converter; do
  start "$s" -e FLOTILLA_DATABASE_URL="$pg_base/${prefix}_$s" -e FLOTILLA_BUS_URL="$amqp" \
    -e FLOTILLA_BLOB_URL=file:///blobs -v "$work/blobs:/blobs" -e FLOTILLA_AUTH_URL="$auth_url"
done
start gateway -e FLOTILLA_AUTH_URL="$auth_url" -e FLOTILLA_MEDIA_URL="http://127.0.0.1:${ports[media]}"
for s in auth media converter gateway; do wait_ready "$s"; done
echo "ok: auth, media, converter and gateway containers ready"

# 3. Every process in every container runs as non-root.
for c in "${containers[@]}"; do
  users=$("${podman[@]}" top "$c" user huser | tail -n +2)
  [ -n "$users" ] || fail "no process in $c"
  while read -r u hu; do
    [ "$u" != root ] && [ "$u" != 0 ] && [ "$hu" != root ] && [ "$hu" != 0 ] || fail "$c runs a process as root"
  done <<<"$users"
done
echo "ok: every container process runs as a non-root user"

# 4. The media curl flow, through the gateway.
gw="http://127.0.0.1:${ports[gateway]}"
email="img$$@example.com"
curl -fsS -X POST "$gw/signup" -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"correct horse\"}" -o /dev/null || fail "signup"
token=$(curl -fsS -X POST "$gw/login" -u "$email:correct horse") || fail "login"
ffmpeg -loglevel error -f lavfi -i sine=frequency=440:duration=2 -f lavfi -i color=size=64x64:duration=2 \
  -shortest -c:a aac -c:v libx264 -pix_fmt yuv420p "$work/video.mp4" || fail "making the test video"
receipt=$(curl -fsS -X POST -F "file=@$work/video.mp4" -H "Authorization: Bearer $token" \
  -H 'accept: application/json' "$gw/upload") || fail "upload"
job=$(sed -E 's/.*"job_id":"([^"]+)".*/\1/' <<<"$receipt")
for _ in $(seq 600); do
  status=$(curl -fsS -H "Authorization: Bearer $token" "$gw/jobs/$job") || fail "GET /jobs/$job"
  case $status in *'"done"'*) break ;; *'"failed"'*) fail "conversion failed: $status" ;; esac
  sleep 0.1
done
[[ $status == *'"done"'* ]] || fail "job not done within 60 s: $status"
fid=$(sed -E 's/.*"mp3_fid":"([^"]+)".*/\1/' <<<"$status")
curl -fsS -o "$work/out.mp3" -H "Authorization: Bearer $token" "$gw/download?fid=$fid" || fail "download"
[ "$(stat -c %s "$work/out.mp3")" -gt 1000 ] || fail "the MP3 is too small"
ffprobe -loglevel error -show_entries format=format_name -of csv=p=0 "$work/out.mp3" | grep -q mp3 \
  || fail "the download is not an MP3"
echo "ok: signup, login, upload, job done, download through the gateway container"

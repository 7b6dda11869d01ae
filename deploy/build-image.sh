#!/usr/bin/env bash
# Builds localhost/flotilla:TAG with podman, without pulling any base image:
# the release binary plus exactly the shared libraries `ldd` says it needs.
#   deploy/build-image.sh [TAG]        (default TAG: dev)
# Run it:  podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs run --rm \
#            --network host localhost/flotilla:dev serve gateway
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-dev}
cargo build --release --locked -p flotilla
rootfs=deploy/rootfs
rm -rf "$rootfs"
install -D -m 0755 target/release/flotilla "$rootfs/usr/local/bin/flotilla"
for lib in $(ldd target/release/flotilla | grep -oE '/[^ ]+\.so[^ ]*'); do
  install -D -m 0644 "$lib" "$rootfs$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -d -m 1777 "$rootfs/data" "$rootfs/tmp"
podman --storage-driver vfs build --isolation chroot -t "localhost/flotilla:$tag" -f deploy/Containerfile deploy
echo "built localhost/flotilla:$tag"

#!/usr/bin/env bash
# Builds localhost/flotilla:TAG with podman, without pulling any base image:
# the stripped release binary plus exactly the shared libraries `ldd` says it needs.
#   deploy/build-image.sh [TAG]        (default TAG: dev)
# Settings (env): FLOTILLA_IMAGE_SOURCE, the repository URL of the
# org.opencontainers.image.source label (default: the `origin` remote, when there is one).
# Run it:  podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs run --rm \
#            --network host localhost/flotilla:dev serve gateway
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-dev}
cargo build --release --locked -p flotilla
binary=${CARGO_TARGET_DIR:-target}/release/flotilla
rootfs=deploy/rootfs
rm -rf "$rootfs"
# Stripped: the symbols are for debugging a build, not for running it (≈ a third smaller).
install -D -m 0755 -s "$binary" "$rootfs/usr/local/bin/flotilla"
# The ELF interpreter (ld-linux) is itself executed by the kernel, so every library keeps
# the execute bit: with 0644 the image fails with "exec …: permission denied".
for lib in $(ldd "$binary" | grep -oE '/[^ ]+\.so[^ ]*'); do
  install -D -m 0755 "$lib" "$rootfs$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -d -m 1777 "$rootfs/data" "$rootfs/tmp"
# Where compose mounts the blob volume media and converter share (file:///blobs).
install -d -o 65532 -g 65532 -m 0755 "$rootfs/blobs"

version=$("$binary" --version | awk '{print $2}')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then revision+="-dirty"; fi
source_url=${FLOTILLA_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo unknown)}
podman --storage-driver vfs build --isolation chroot -t "localhost/flotilla:$tag" \
  --label "org.opencontainers.image.source=$source_url" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.title=flotilla" \
  -f deploy/Containerfile deploy
echo "built localhost/flotilla:$tag"

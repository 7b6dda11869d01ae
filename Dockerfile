# syntax=docker/dockerfile:1
# The flotilla image for machines with Docker (or podman) and registry access:
#   docker build -t flotilla:dev .
# The base images are build arguments, so the same file builds from a mirror or from
# local images: --build-arg RUST_IMAGE=… --build-arg RUNTIME_IMAGE=…
# (Offline, as in this project's CI, deploy/build-image.sh stages the same image FROM
# scratch instead.)
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- build: the release binary, stripped
FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flotilla \
    && install -D -m 0755 -s target/release/flotilla /out/flotilla \
    && install -d /out/data /out/blobs

# --- runtime: glibc, CA certificates, a non-root user, nothing else
FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="flotilla" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/flotilla /usr/local/bin/flotilla
# /blobs: where compose mounts the blob volume media and converter share.
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build --chown=65532:65532 /out/blobs /blobs
ENV FLOTILLA_LISTEN=0.0.0.0:8080 \
    FLOTILLA_DATA_DIR=/data \
    RUST_LOG=info
# The only writable places under a read-only root filesystem.
VOLUME ["/data", "/tmp"]
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["serve", "gateway"]

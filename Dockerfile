# syntax=docker/dockerfile:1
# The weft image: `weft` (the router and the operator commands) and
# `weft-cni` (the CNI plugin, installed onto the host by the entrypoint).
# Build:  docker build -t weft:dev .
# Deploy: deploy/README.md.

# ---- build: the official Rust image, the same toolchain as CI ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between
# builds; the binaries are written to /out in the same step, since the
# target directory is not part of the image. scripts/build-dist.sh builds
# the release binaries (`cargo build --release --locked -p weft`, then the
# plugin's final link static with `cargo rustc --release --locked -p
# weft-cni`: the kubelet runs it on hosts with an older glibc) and strips
# them, keeping the debug info in /out/*.debug.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ./scripts/build-dist.sh /out

# ---- symbols: the debug info, a build artefact, not in the image ----
# docker build --target symbols -o type=local,dest=symbols .
FROM scratch AS symbols
COPY --from=build /out/weft.debug /out/weft-cni.debug /

# ---- runtime: a small Debian with the tools an operator reaches for ----
FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="weft" \
      org.opencontainers.image.description="An encrypted mesh overlay network for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
# The router runs `nft -f -` for its table (forward, anti-spoofing,
# masquerade); iproute2 is for `kubectl exec ... ip route` when debugging a
# node (the router itself speaks netlink). Debian
# stable's versions are taken as they come (pinning them breaks the build
# at every point release).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 nftables iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weft /out/weft-cni /usr/local/bin/
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/weft-entrypoint
# The router needs CAP_NET_ADMIN in the host network namespace: it runs as
# root in a hostNetwork pod (deploy/daemonset.yaml), not as a user here.
ENTRYPOINT ["/usr/local/bin/weft-entrypoint"]

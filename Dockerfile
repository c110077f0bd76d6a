# syntax=docker/dockerfile:1
#
# livefeed-bridge container image.
#
#   docker build -t livefeed-bridge .                  compiles in the `build` stage
#   docker build --target sandbox -t livefeed-sandbox . the demo's fake portal and workspace
#
# CI packages binaries it has already compiled instead (scripts/container/smoke.sh):
#   podman build --build-arg BIN_FROM=prebuilt .   with dist/livefeed-bridge,
#   dist/livefeed-sandbox and an empty dist/data/ in the context. BuildKit and buildah skip
#   the stage they do not use, so the compile stage is never entered on that path.
ARG BIN_FROM=build

# ---- compile -------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds: an edit recompiles only what changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p livefeed-bridge -p livefeed-sandbox \
 && mkdir -p /out/data \
 && cp target/release/livefeed-bridge target/release/livefeed-sandbox /out/

# ---- or take them from the context ---------------------------------------------------------
FROM scratch AS prebuilt
COPY dist/ /out/

# hadolint ignore=DL3006
FROM ${BIN_FROM} AS bin

# ---- the demo's fakes (docker compose --profile demo) --------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS sandbox
COPY --from=bin /out/livefeed-sandbox /usr/local/bin/livefeed-sandbox
# The generated bridge config is shared with the demo bridge through a volume on /demo.
COPY --from=bin --chown=65532:65532 /out/data /demo
USER 65532:65532
EXPOSE 18024 18025
ENTRYPOINT ["/usr/local/bin/livefeed-sandbox"]
CMD ["--listen", "0.0.0.0", "--write-config", "/demo/bridge.yaml", "--store-path", "/data", "--bridge-listen", "0.0.0.0:8080"]

# ---- the bridge (default target) -----------------------------------------------------------
# distroless/cc: glibc, libgcc, the CA bundle rustls needs to trust Bitrix24, Slack and the
# homeserver, a nonroot user (65532), and no shell.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="livefeed-bridge" \
      org.opencontainers.image.description="Bridges the Bitrix24 Live Feed with Slack and Matrix" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.documentation="README.md, section Deploy with Docker Compose"
COPY --from=bin /out/livefeed-bridge /usr/local/bin/livefeed-bridge
# The store (ID map, journal, cursors, Matrix device keys) must be writable by the nonroot
# user; a named volume mounted here starts as a copy of this directory, owner included.
COPY --from=bin --chown=65532:65532 /out/data /data
# bridge.yaml reads these through ${LIVEFEED_STORE_PATH:-…} and ${LIVEFEED_HTTP_LISTEN:-…}.
ENV LIVEFEED_BRIDGE_CONFIG=/etc/livefeed-bridge/bridge.yaml \
    LIVEFEED_STORE_PATH=/data \
    LIVEFEED_HTTP_LISTEN=0.0.0.0:8080
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# No shell or curl in the image: the binary probes its own /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/livefeed-bridge", "health"]
ENTRYPOINT ["/usr/local/bin/livefeed-bridge"]
CMD ["run"]

#!/usr/bin/env bash
# Makes the base images the Dockerfile names, locally, for machines that reach Debian's
# package mirror but no container registry. Each is tagged with its upstream name, so the
# Dockerfile builds unmodified and offline (`podman build --pull=never`).
#
#   scripts/container/base-images.sh            gcr.io/distroless/cc-debian12:nonroot
#   scripts/container/base-images.sh --builder  also rust:1.95-bookworm (from debian:bookworm-slim
#                                               and the host's toolchain), for the compile stage
#
# These are stand-ins with the upstream contents that matter (glibc, libgcc, the CA bundle,
# the nonroot user 65532), not the upstream layers. Needs root, podman, apt-get and dpkg-deb;
# `--builder` also needs debootstrap. Image tarballs are cached under
# ${LIVEFEED_IMAGE_CACHE:-$HOME/.cache/livefeed-bridge/images}.
set -euo pipefail

CACHE="${LIVEFEED_IMAGE_CACHE:-$HOME/.cache/livefeed-bridge/images}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}"
mkdir -p "$CACHE"
log() { printf '[base-images] %s\n' "$*" >&2; }

have() { podman image exists "$1"; }

# Load from the cache, else make with "$2" and cache it.
ensure() {
  local image=$1 make=$2 tar="$CACHE/$(echo "$1" | tr '/:' '__').tar"
  if have "$image"; then return; fi
  if [ -s "$tar" ] && podman load -q -i "$tar" >/dev/null && have "$image"; then
    log "$image: loaded from $tar"
    return
  fi
  log "$image: making it"
  "$make" "$image"
  podman save -q -o "$tar.tmp" "$image" && mv "$tar.tmp" "$tar"
}

# distroless/cc is Debian packages unpacked, plus passwd/group entries: the same here.
make_distroless() {
  local root work
  work=$(mktemp -d)
  chmod 755 "$work"   # apt-get download runs as _apt
  root="$work/root"
  mkdir -p "$root"
  (cd "$work" && apt-get download -q libc6 libgcc-s1 libssl3 libstdc++6 ca-certificates \
    base-files netbase tzdata >/dev/null)
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$root/etc/group"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian"
  tar -C "$root" -c . | podman import -q --change 'USER 65532' - "$1" >/dev/null
  rm -rf "$work"
}

make_debian() {
  local root
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  # What the official slim image does so RUN apt-get layers stay small.
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\nBinary::apt::APT::Keep-Downloaded-Packages "false";\n' \
    > "$root/etc/apt/apt.conf.d/docker-clean"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import -q - "$1" >/dev/null
  rm -rf "$root"
}

# rust:1.95-bookworm: debian plus a C toolchain and this machine's Rust toolchain. The host
# may reach crates.io through a TLS-intercepting proxy whose CA only the host trusts, so the
# host's CA bundle is baked in for cargo (a build-time -v is not available to compose builds).
make_rust() {
  local ctx toolchain
  ensure docker.io/library/debian:bookworm-slim make_debian
  toolchain=$(rustc --print sysroot)
  ctx=$(mktemp -d)
  mkdir -p "$ctx/toolchain"
  cp -a "$toolchain/bin" "$toolchain/lib" "$ctx/toolchain/"
  [ -d "$toolchain/libexec" ] && cp -a "$toolchain/libexec" "$ctx/toolchain/"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
  cat > "$ctx/Containerfile" <<'CONTAINERFILE'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates make && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/
COPY host-ca.crt /usr/local/share/host-ca/ca-certificates.crt
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HTTP_CAINFO=/usr/local/share/host-ca/ca-certificates.crt
CONTAINERFILE
  podman build -q --pull=never -t "$1" "$ctx" >/dev/null
  rm -rf "$ctx"
}

ensure gcr.io/distroless/cc-debian12:nonroot make_distroless
if [ "${1:-}" = --builder ]; then
  ensure docker.io/library/rust:1.95-bookworm make_rust
fi
log "ready: $(podman images --format '{{.Repository}}:{{.Tag}}' | grep -E 'distroless|rust:|debian:' | tr '\n' ' ')"

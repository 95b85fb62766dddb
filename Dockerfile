# kakuremichi: one image, three roles.
#
#   docker/build                      # builds once, tags kakuremichi, kakuremichi/{control,gateway,agent}
#   docker build --target gateway -t kakuremichi/gateway .   # or one role at a time
#
# The role images differ only in their default command, exposed ports and HEALTHCHECK; all share
# the same layers. Works with the classic builder and with BuildKit (no BuildKit-only syntax).

ARG RUST_VERSION=1.95

# --- recipe: the workspace's manifests with empty sources, so dependencies build in their own
# cached layer that only a change to a Cargo.toml or Cargo.lock invalidates (as cargo-chef does).
FROM debian:bookworm-slim AS recipe
WORKDIR /src
COPY . .
RUN set -eu; mkdir /recipe; \
    for manifest in Cargo.toml crates/*/Cargo.toml; do \
        dir=$(dirname "$manifest"); mkdir -p "/recipe/$dir"; cp "$manifest" "/recipe/$manifest"; \
        if [ "$dir" != . ]; then \
            mkdir -p "/recipe/$dir/src"; : > "/recipe/$dir/src/lib.rs"; \
            echo 'fn main() {}' > "/recipe/$dir/src/main.rs"; \
        fi; \
    done; \
    cp Cargo.lock /recipe/

# --- build: the Rust toolchain. CARGO_NET_OFFLINE=true builds from crates already in the
# builder image's CARGO_HOME (how the offline test feeds it); the default fetches from crates.io.
# The binary is static (musl, profile dist: what scripts/release ships), so the runtime image
# needs no libc. A binary already built (scripts/release) can be packaged instead of compiling:
# `docker/build --binary dist/kakuremichi-linux-amd64` puts it in docker/prebuilt/.
FROM rust:${RUST_VERSION}-bookworm AS build
ARG CARGO_NET_OFFLINE=false
ENV CARGO_NET_OFFLINE=${CARGO_NET_OFFLINE} \
    CARGO_TERM_COLOR=never
# musl-gcc for the C inside ring and mimalloc; Debian's static busybox and bash for the runtime's
# few shell tools (the entrypoint is sh; compose-init is bash). The offline builder has them.
RUN set -eu; missing=; \
    for p in musl-tools busybox-static bash-static; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    if [ -n "$missing" ]; then apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; fi; \
    target=$(uname -m)-unknown-linux-musl; \
    [ -d "$(rustc --print sysroot)/lib/rustlib/$target/lib" ] || rustup target add "$target"; \
    echo "$target" > /target
WORKDIR /src
COPY --from=recipe /recipe/ ./
# Patched dependencies (vendor/README.md) build with the others, in the cached layer.
COPY vendor vendor
COPY docker/prebuilt /prebuilt
RUN if [ -x /prebuilt/kakuremichi ]; then echo "packaging docker/prebuilt/kakuremichi"; \
    else cargo build --profile dist --locked -p kakuremichi --target "$(cat /target)"; fi
COPY crates crates
# --version names the commit; the build context has no .git (docker/build passes it).
ARG KAKUREMICHI_COMMIT=
# The real sources are older than the placeholder build: touch them so cargo rebuilds our crates.
# `strip = true` leaves the symbol table in a static-pie linked by gcc (28.2 MB, 23.3 stripped).
RUN set -eu; target=$(cat /target); \
    if [ -x /prebuilt/kakuremichi ]; then install -D -m 0755 /prebuilt/kakuremichi /out/kakuremichi; \
    else find crates -name '*.rs' -exec touch {} + \
        && KAKUREMICHI_COMMIT=$KAKUREMICHI_COMMIT cargo build --profile dist --locked -p kakuremichi --target "$target" \
        && install -D -m 0755 "target/$target/dist/kakuremichi" /out/kakuremichi \
        && strip --strip-all /out/kakuremichi; fi; \
    if readelf -l /out/kakuremichi | grep -q INTERP; then echo "kakuremichi is not static" >&2; exit 1; fi; \
    /out/kakuremichi --version
# The runtime's files: CA certificates, the user, /tmp, the data directory, busybox with the
# applets the scripts use, and bash.
RUN set -eu; r=/rootfs; \
    mkdir -p $r/bin $r/etc/ssl/certs $r/tmp $r/data $r/usr/local/bin $r/usr/local/lib/kakuremichi; \
    cp /etc/ssl/certs/ca-certificates.crt $r/etc/ssl/certs/; \
    printf 'root:x:0:0:root:/root:/bin/sh\nkakuremichi:x:10001:10001:kakuremichi:/data:/bin/sh\n' > $r/etc/passwd; \
    printf 'root:x:0:\nkakuremichi:x:10001:\n' > $r/etc/group; \
    cp /bin/busybox $r/bin/busybox; \
    for applet in sh cat head mv rm cp sed tr base64 test [ sleep mkdir ls env id timeout chmod printf echo; do \
        ln -s busybox "$r/bin/$applet"; done; \
    cp /bin/bash-static $r/bin/bash; \
    chmod 1777 $r/tmp; chmod 0700 $r/data

# --- kakuremichi: the runtime image every role uses. No distribution: the static binary, the
# files above and the entrypoint scripts, run as the non-root user 10001.
FROM scratch AS kakuremichi
COPY --from=build /rootfs/bin /bin
COPY --from=build /rootfs/etc /etc
COPY --from=build /rootfs/tmp /tmp
COPY --from=build --chown=10001:10001 /rootfs/data /data
COPY --from=build /out/kakuremichi /usr/local/bin/kakuremichi
COPY docker/entrypoint docker/compose-init /usr/local/lib/kakuremichi/
ENV KAKUREMICHI_DATA_DIR=/data \
    PATH=/usr/local/bin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["/usr/local/lib/kakuremichi/entrypoint"]
CMD ["--help"]

# --- the roles. Binding :80/:443 needs no capability: Docker Engine >= 20.10 sets
# net.ipv4.ip_unprivileged_port_start=0 in each container's network namespace (the compose
# files set it too, for older engines and other runtimes).
FROM kakuremichi AS agent
CMD ["agent"]
# Healthy once the agent has received its configuration from Control (kept on disk, so it also
# serves after a restart while Control is away). It needs no port and no capability.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD test -s "${KAKUREMICHI_DATA_DIR:-/data}/agent-config.json"

FROM kakuremichi AS gateway
ENV KAKUREMICHI_HTTP_LISTEN=0.0.0.0:80 \
    KAKUREMICHI_WG_LISTEN=0.0.0.0:51820 \
    KAKUREMICHI_ADMIN_LISTEN=127.0.0.1:9090
EXPOSE 80/tcp 443/tcp 51820/udp
CMD ["gateway"]
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD kakuremichi healthcheck --url "http://127.0.0.1:${KAKUREMICHI_ADMIN_LISTEN##*:}/healthz"

FROM kakuremichi AS control
ENV KAKUREMICHI_LISTEN=0.0.0.0:8780
EXPOSE 8780/tcp
CMD ["control"]
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD kakuremichi healthcheck --url "http://127.0.0.1:${KAKUREMICHI_LISTEN##*:}/readyz"

# Plain `docker build .` gives the role-less image.
FROM kakuremichi

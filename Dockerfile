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
FROM rust:${RUST_VERSION}-bookworm AS build
ARG CARGO_NET_OFFLINE=false
ENV CARGO_NET_OFFLINE=${CARGO_NET_OFFLINE} \
    CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_DEBUG=false
WORKDIR /src
COPY --from=recipe /recipe/ ./
# Patched dependencies (vendor/README.md) build with the others, in the cached layer.
COPY vendor vendor
RUN cargo build --release --locked -p kakuremichi
COPY crates crates
# The real sources are older than the placeholder build: touch them so cargo rebuilds our crates.
RUN find crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p kakuremichi \
 && install -D -m 0755 target/release/kakuremichi /out/kakuremichi \
 && /out/kakuremichi --version

# --- kakuremichi: the runtime image every role uses. Plain Debian, no shell tools added, no
# package manager run: a non-root user, the binary and the entrypoint.
FROM debian:bookworm-slim AS kakuremichi
RUN groupadd --system --gid 10001 kakuremichi \
 && useradd --system --uid 10001 --gid kakuremichi --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin kakuremichi \
 && install -d -o kakuremichi -g kakuremichi -m 0700 /data
COPY --from=build /out/kakuremichi /usr/local/bin/kakuremichi
COPY docker/entrypoint docker/compose-init /usr/local/lib/kakuremichi/
ENV KAKUREMICHI_DATA_DIR=/data
USER kakuremichi:kakuremichi
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

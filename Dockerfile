# syntax=docker/dockerfile:1
# portcullis in a small image that runs as a non-root user.
#
#   make image                       # docker build -t portcullis:0.1.0 .
#   docker run --rm -p 9001:9001 -p 8000:8000 -p 9090:9090 portcullis:0.1.0
#
# The runtime image is distroless: glibc, libgcc, CA certificates (for JWKS over https), no
# shell, no package manager, user `nonroot` (65532). deploy/k8s/ mounts the policies over
# /etc/portcullis/policies; the example policies of this repository are the default.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Every file the manifest names: Cargo reads the declared benches and examples even when it
# builds only the server (tests/image proves this list against the manifest).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY core ./core
COPY benches ./benches
COPY examples ./examples
# Registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portcullis \
    && install -D -m 0755 target/release/portcullis /out/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/portcullis /usr/local/bin/portcullis
COPY policies /etc/portcullis/policies
USER nonroot:nonroot
# ext_authz gRPC (Check), HTTP forward-auth, admin (/healthz, /readyz, /metrics).
EXPOSE 9001 8000 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
# The admin door listens on loopback unless told otherwise; in a container, probes and scrapes
# come from outside it.
CMD ["serve", "--policies", "/etc/portcullis/policies", "--log-format", "json", "--admin-listen", "0.0.0.0:9090"]

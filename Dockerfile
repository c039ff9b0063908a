# anchor-pdp in a container: built in a Rust image, run from debian-slim as a non-root user
# with the built-in policies and the packaged config. (Not built in this project's CI: it has
# no container engine. The Debian package is: tests/package.rs.)
#
#   docker build -t anchor-pdp .
#   docker run -p 50051:50051 -e ANCHOR_PDP_LISTEN=0.0.0.0:50051 \
#       -e ANCHOR_PDP_TOKENS='ops-1:admin:sha256:…' -v pdp-data:/var/lib/anchor-pdp anchor-pdp
#
# Beyond loopback the server refuses to start without caller tokens (ANCHOR_PDP_TOKENS).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# No system protoc needed: the protos are compiled in-process (protox).
RUN cargo build --release --locked --bin anchor-pdp

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/anchor-pdp --shell /usr/sbin/nologin anchor-pdp \
    && install -d -o anchor-pdp -g anchor-pdp -m 0750 /var/lib/anchor-pdp
COPY --from=build /src/target/release/anchor-pdp /usr/bin/anchor-pdp
COPY packaging/debian/config.toml /etc/anchor-pdp/config.toml
RUN /usr/bin/anchor-pdp policy export /etc/anchor-pdp/policies
USER anchor-pdp
VOLUME /var/lib/anchor-pdp
EXPOSE 50051 9464
ENTRYPOINT ["/usr/bin/anchor-pdp", "serve", "--config", "/etc/anchor-pdp/config.toml"]

# syntax=docker/dockerfile:1
# smartgate container image: the release binary on distroless (glibc, CA certificates, no shell,
# no package manager), running as the non-root user 65532.
#
#   docker build -t smartgate .
#   docker run --rm -v "$PWD/smartgate.yaml:/etc/smartgate/smartgate.yaml:ro" \
#     -p 8443:8443 -p 9464:9464 smartgate
#   docker run --rm -v "$PWD/smartgate.yaml:/etc/smartgate/smartgate.yaml:ro" smartgate \
#     check --config /etc/smartgate/smartgate.yaml
#   docker build --build-arg FEATURES=otel -t smartgate:otel .   # with OpenTelemetry export

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Cargo features, e.g. `otel` (OpenTelemetry trace export); none by default.
ARG FEATURES=""
COPY . .
# BuildKit cache mounts keep the crate registry and compiled dependencies between builds;
# the binary is copied out of the cached target dir so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features "$FEATURES" \
 && cp target/release/smartgate /smartgate

# --- runtime -----------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /smartgate /smartgate
USER 65532:65532
# 8443: public FHIR port (config `listen`); 9464: /healthz /readyz /metrics (`admin_listen`).
EXPOSE 8443 9464
ENTRYPOINT ["/smartgate"]
CMD ["serve", "--config", "/etc/smartgate/smartgate.yaml"]

# Multi-stage: a static healthgate binary in a minimal, non-root image.
#
#   docker build -t healthgate .
#   docker run -p 9000:9000 \
#     -v $PWD/configs/healthgate.yaml:/etc/healthgate/healthgate.yaml:ro healthgate
#
# The admin endpoint (metrics, /backends, pprof when asked) listens on the
# container's loopback only. To reach it from outside, say so on purpose:
#
#   docker run -p 9000:9000 -p 127.0.0.1:9901:9901 healthgate \
#     -config /etc/healthgate/healthgate.yaml -listen 0.0.0.0:9000 -listen-plaintext \
#     -admin 0.0.0.0:9901 -admin-public
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/healthgate ./cmd/healthgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/healthgate /usr/local/bin/healthgate
# The documented example; mount your own at the same path.
COPY configs/healthgate.yaml /etc/healthgate/healthgate.yaml
USER nonroot:nonroot
EXPOSE 9000
# The probe asks the gateway's own grpc.health.v1 for "" (the gateway as a
# whole); it turns NOT_SERVING first when the gateway drains.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/healthgate", "probe", "-addr", "127.0.0.1:9000", "-timeout", "2s"]
ENTRYPOINT ["/usr/local/bin/healthgate"]
# Plaintext h2c inside the container network; set listen_tls in the config
# (and drop -listen-plaintext) to terminate TLS here.
CMD ["-config", "/etc/healthgate/healthgate.yaml", "-listen", "0.0.0.0:9000", "-listen-plaintext", "-admin", "127.0.0.1:9901"]

# Multi-stage: a static healthgate binary in a minimal, non-root image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/healthgate ./cmd/healthgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/healthgate /usr/local/bin/healthgate
# Mount your own at the same path; this one is the documented example.
COPY configs/healthgate.yaml /etc/healthgate/healthgate.yaml
USER nonroot:nonroot
EXPOSE 9000 9901
ENTRYPOINT ["/usr/local/bin/healthgate"]
CMD ["-config", "/etc/healthgate/healthgate.yaml", "-listen", "0.0.0.0:9000", "-admin", "0.0.0.0:9901"]

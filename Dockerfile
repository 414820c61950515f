# One small non-root image with the three binaries: ingress (the default),
# processor and spoolctl (migrate, dlq, jobs). No shell: probes use the HTTP
# endpoints (/healthz, /readyz) from outside.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/ingress ./cmd/processor ./cmd/spoolctl

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="spool" \
      org.opencontainers.image.description="Kafka-buffered bulk writes into PostgreSQL, exactly once in effect" \
      org.opencontainers.image.source="https://github.com/spoolhq/spool"
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
# ingress: http.addr; processor: metrics.addr
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/ingress"]

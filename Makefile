# The two commands a new machine needs: `make run` and `make test`.
GO ?= go

.PHONY: run test build bench faults vet clean

## run: the whole system in one process (embedded broker, PostgreSQL at 127.0.0.1:5432, ingress on :8080)
run:
	@scripts/ensure-postgres
	$(GO) run ./cmd/spoolctl dev

## test: every test, with the race detector, against the real PostgreSQL and an in-process broker
test:
	@scripts/ensure-postgres
	@scripts/ensure-kcat
	@scripts/ensure-browser
	$(GO) test -race -count=1 -timeout 20m ./...

## build: the three binaries into bin/
build:
	$(GO) build -o bin/ ./cmd/ingress ./cmd/processor ./cmd/spoolctl ./cmd/spool-bench ./cmd/spool-faults

BENCH_N ?= 1000000
BENCH_UPLOAD_MIB ?= 1024
BENCH_LATENCY_FOR ?= 10s
BENCH_ARGS ?=

## bench: spool against this machine's limits, side by side (docs/benchmarks.md)
bench: build
	@scripts/ensure-postgres
	bin/spool-bench -n $(BENCH_N) -upload-mib $(BENCH_UPLOAD_MIB) -latency-for $(BENCH_LATENCY_FOR) $(BENCH_ARGS)

FAULTS_N ?= 200000
FAULTS_SEED ?= 0
FAULTS_ARGS ?=
# Restarting PostgreSQL needs its cluster tools; without them the suite only
# terminates spool's backends.
FAULTS_PG_RESTART ?= $(shell command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 | sed 's/.*/pg_ctlcluster --skip-systemctl-redirect & main restart/')

## faults: the real binaries under crashes, restarts and rebalances, checked against an audit (docs/reliability.md)
faults: build
	@scripts/ensure-postgres
	bin/spool-faults -n $(FAULTS_N) -seed $(FAULTS_SEED) -postgres-restart "$(FAULTS_PG_RESTART)" $(FAULTS_ARGS)

## vet: go vet, gofmt, and golangci-lint (.golangci.yaml: the package boundaries, and the linters)
vet:
	$(GO) vet ./...
	"$$(scripts/ensure-golangci-lint)" run ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	@! $(GO) list -deps ./cmd/ingress ./cmd/processor | grep -q kfake || { echo "ingress/processor must not link kfake"; exit 1; }

clean:
	rm -rf bin .tools .spool-dev .spool-broker

# The two commands a new machine needs: `make run` and `make test`.
GO ?= go

.PHONY: run test build vet clean

## run: the whole system in one process (embedded broker, PostgreSQL at 127.0.0.1:5432, ingress on :8080)
run:
	@scripts/ensure-postgres
	$(GO) run ./cmd/spoolctl dev

## test: every test, with the race detector, against the real PostgreSQL and an in-process broker
test:
	@scripts/ensure-postgres
	$(GO) test -race -count=1 -timeout 20m ./...

## build: the three binaries into bin/
build:
	$(GO) build -o bin/ ./cmd/ingress ./cmd/processor ./cmd/spoolctl

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	@! $(GO) list -deps ./cmd/ingress ./cmd/processor | grep -q kfake || { echo "ingress/processor must not link kfake"; exit 1; }

clean:
	rm -rf bin .spool-dev .spool-broker

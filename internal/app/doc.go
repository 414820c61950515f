// Package app composes spool's long-lived parts from a config.Config: the
// ingress server and the processor, each with Run(ctx) error, and the
// processor's Maintenance (repair, settle, sweeps) with its own Run. The
// ingress and processor binaries and spoolctl dev all start them from
// here, so the three run the same code. Each Run starts its parts in an
// errgroup and returns only once every goroutine it started has ended.
//
// Files: main.go (the binaries' main, the logger), ingress.go,
// processor.go, maintenance.go, startup.go (waiting for PostgreSQL and
// Kafka, topics), limits.go (record size limits), ops.go (health, metrics
// and pprof endpoints), ratelimit.go.
package app

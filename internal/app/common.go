package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sort"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/time/rate"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// NewRateLimiter paces to perSecond events with room for burst at once; the
// processor's write rate and a dead-letter replay's send rate use it.
func NewRateLimiter(perSecond float64, burst int) pipeline.Limiter {
	return rate.NewLimiter(rate.Limit(perSecond), max(1, burst))
}

// NewLogger builds the process logger from config.
func NewLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// openDatabase connects and loads the configured entities from the
// catalog, waiting with backoff while PostgreSQL is starting or its
// connections fail; a configuration error (a missing table, say) fails at
// once.
func openDatabase(ctx context.Context, c *config.Config, logger *slog.Logger) (*postgres.DB, pipeline.Entities, error) {
	specs, err := entitySpecs(c.Entities)
	if err != nil {
		return nil, nil, err
	}
	pool, err := postgres.Open(ctx, c.Database.URL, c.Database.MaxConns)
	if err != nil {
		return nil, nil, err
	}
	var es pipeline.Entities
	err = backoff.Retry(func() error {
		if err := pool.Ping(ctx); err != nil {
			logger.Warn("waiting for PostgreSQL", "database", c.Database, "error", err)
			return err
		}
		es, err = postgres.LoadEntities(ctx, pool, specs)
		if err != nil && pipeline.ClassOf(err) != pipeline.ClassTransient {
			return backoff.Permanent(fmt.Errorf("loading entities: %w", err))
		}
		if err != nil {
			logger.Warn("retrying to load entities", "error", err)
		}
		return err
	}, backoff.WithContext(startupBackoff(), ctx))
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	if len(es) == 0 {
		logger.Warn("no entities configured: every command will be rejected; add an entities: section to spool.yaml")
	}
	return pool, es, nil
}

func entitySpecs(m map[string]config.EntityConfig) ([]postgres.EntitySpec, error) {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	specs := make([]postgres.EntitySpec, 0, len(m))
	for _, n := range names {
		e := m[n]
		schema, table, err := e.SplitTable()
		if err != nil {
			return nil, fmt.Errorf("config entities.%s.table: %w", n, err)
		}
		specs = append(specs, postgres.EntitySpec{Name: n, Schema: schema, Table: table, Key: e.Key, VersionColumn: e.VersionColumn})
	}
	return specs, nil
}

// listen opens the listener configured at key, naming the key on failure.
func listen(key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s: %w", key, addr, err)
	}
	return ln, nil
}

func startupBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 200 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 2 * time.Minute
	return b
}

// retryBackoff is the policy for transient errors while processing: it
// never gives up on its own; the context ends it.
func retryBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 10 * time.Second
	b.MaxElapsedTime = 0
	return b
}

// every calls fn now and then every interval until ctx is done.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serveOps serves the operator's endpoints on ln: /healthz, /readyz,
// /metrics and, when metrics.pprof is on, Go's profiling endpoints. They
// live on a listener of their own, never the API's, so that a profile (a
// heap dump holds request bodies) is only as reachable as that port is.
// The caller closes the server.
func serveOps(ln net.Listener, logger *slog.Logger, metrics http.Handler, pprofOn bool, deps ...httpapi.Dependency) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/", httpapi.HealthHandler(logger, deps...))
	mux.Handle("GET /metrics", metrics)
	if pprofOn {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: mux, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	go func() { _ = srv.Serve(ln) }()
	return srv
}

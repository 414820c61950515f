package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/metrics"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// lagEvery is how often ingress measures the backlog when ingress.max_lag
// bounds it.
var lagEvery = 2 * time.Second

// Ingress is the HTTP upload service.
type Ingress struct {
	cfg    *config.Config
	logger *slog.Logger
	ln     net.Listener
	// metricsLn serves the operator's endpoints, apart from the API.
	metricsLn net.Listener
}

// NewIngress listens on http.addr and ingress.metrics_addr at once, so
// that the caller knows the addresses (":0" picks a free port) before Run.
func NewIngress(c *config.Config, logger *slog.Logger) (*Ingress, error) {
	ln, err := listen("http.addr", c.HTTP.Addr)
	if err != nil {
		return nil, err
	}
	metricsLn, err := listen("ingress.metrics_addr", c.Ingress.MetricsAddr)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &Ingress{cfg: c, logger: logger, ln: ln, metricsLn: metricsLn}, nil
}

// Addr is the address ingress serves the API on.
func (in *Ingress) Addr() net.Addr { return in.ln.Addr() }

// MetricsAddr is the address of ingress's metrics, health and profiling
// endpoints.
func (in *Ingress) MetricsAddr() net.Addr { return in.metricsLn.Addr() }

// Run serves until ctx is done, then shuts down gracefully: uploads in
// flight finish and get their answers.
func (in *Ingress) Run(ctx context.Context) error { return stopped(ctx, in.run(ctx)) }

func (in *Ingress) run(ctx context.Context) error {
	defer in.ln.Close()
	defer in.metricsLn.Close()
	c := in.cfg
	tracer, stopTracing, err := startTracing(ctx, c.Tracing, "spool-ingress")
	if err != nil {
		return err
	}
	defer stopTracing()
	pool, catalog, err := openDatabase(ctx, c, tracer.statements, in.logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	m := metrics.New(metrics.NewRegistry())
	m.ObservePool(func() metrics.PoolStats { return metrics.PoolStats(pool.Stats()) })
	cluster, err := KafkaCluster(c.Kafka)
	if err != nil {
		return err
	}
	if err := ensureTopics(ctx, c, cluster, in.logger); err != nil {
		return err
	}
	limit := recordLimit(ctx, cluster, c.Kafka.Topic, in.logger)
	checkRecordLimit(c, limit, httpapi.DefaultTenant, in.logger)
	producer, err := kafka.NewProducer(kafka.ProducerConfig{
		Cluster: cluster, MaxBufferedBytes: kafka.UploadBufferBytes, Linger: kafka.UploadLinger,
		BatchMaxBytes: limit, Hooks: []any{m.KafkaHooks("producer")}, Logger: in.logger,
	})
	if err != nil {
		return err
	}
	defer producer.Close()
	var backlog func() int64
	var lag *kafka.LagMonitor
	if c.Ingress.MaxLag > 0 {
		if lag, err = kafka.NewLagMonitor(cluster, c.Kafka.Topic, c.Kafka.Group, lagEvery, in.logger); err != nil {
			return err
		}
		defer lag.Close()
		backlog = lag.Lag
	}
	keys := httpapi.Keys{}
	for _, k := range c.Auth.Keys {
		p := httpapi.Principal{Tenant: k.Tenant}
		if len(k.Entities) > 0 {
			p.Entities = map[string]bool{}
			for _, e := range k.Entities {
				p.Entities[e] = true
			}
		}
		keys[k.KeySHA256] = p
	}
	if len(keys) == 0 {
		in.logger.Warn("auth is disabled: every request acts as tenant " + httpapi.DefaultTenant)
	}
	store := postgres.NewStore(pool, catalog.Catalog, c.Kafka.Group, in.logger)
	api := httpapi.New(httpapi.Config{
		Jobs:              store,
		Idempotency:       store,
		IdempotencyWindow: c.Ingress.IdempotencyWindow,
		Producer:          producer,
		Catalog:           refresher{catalog, ingressRefreshEvery},
		Topic:             c.Kafka.Topic,
		Keys:              keys,
		Backlog:           backlog,
		Limits: httpapi.Limits{
			ReadIdleTimeout: c.Ingress.ReadIdleTimeout,
			MaxBodyBytes:    c.Ingress.MaxBodyBytes, MaxRecordBytes: c.Ingress.MaxRecordBytes, MaxKafkaRecordBytes: limit,
			MaxRecords: c.Ingress.MaxRecords, MaxRejections: c.Ingress.MaxRejections, MaxLag: c.Ingress.MaxLag,
			MaxDecompressedBytes: c.Ingress.MaxDecompressedBytes, MaxDecompressionRatio: c.Ingress.MaxDecompressionRatio,
			MaxUploads: c.Ingress.MaxConcurrentUploads, MaxUploadsPerTenant: c.Ingress.MaxConcurrentUploadsPerTenant,
			MinBytesPerSecond: c.Ingress.MinUploadBytesPerSecond,
		},
		NewJobID: func() pipeline.JobID { return pipeline.JobID(uuid.Must(uuid.NewV7()).String()) },
		Observer: m,
		Tracer:   tracer.uploads,
		Metrics:  m.Handler(),
		Logger:   in.logger,
	})
	stopOps := serveOps(in.metricsLn, in.logger, m.Handler(), c.Metrics.Pprof,
		httpapi.Dependency{Name: "PostgreSQL", Ping: store.Ping}, httpapi.Dependency{Name: "Kafka", Ping: producer.Ping})
	defer stopOps()
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(in.logger.Handler(), slog.LevelWarn),
	}
	// The parts run until one fails or the stop comes; Run waits for all
	// of them, so nothing outlives it.
	g, gctx := errgroup.WithContext(ctx)
	if lag != nil {
		g.Go(func() error { lag.Run(gctx); return nil })
	}
	g.Go(func() error { catalog.reloadOnSIGHUP(gctx, c); return nil })
	g.Go(func() error {
		if err := srv.Serve(in.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// Uploads in flight finish and get their answers.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutting down http: %w", err)
		}
		return nil
	})
	in.logger.Info("ingress listening", "addr", in.ln.Addr().String(), "metrics_addr", in.metricsLn.Addr().String(), "topic", c.Kafka.Topic)
	return g.Wait()
}

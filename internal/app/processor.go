package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/metrics"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// settleInterval is how often the processor's maintenance repairs rows
// behind recent tombstones and settles every open job, to catch a processor
// that died between a commit and the follow-up it runs after each commit.
const settleInterval = 5 * time.Second

// ledgerSweepEvery is how many settle intervals pass between sweeps.
const ledgerSweepEvery = 12

// Processor consumes the commands topic and applies it to PostgreSQL.
type Processor struct {
	cfg    *config.Config
	logger *slog.Logger
	ln     net.Listener
}

// NewProcessor listens on metrics.addr at once for health checks.
func NewProcessor(c *config.Config, logger *slog.Logger) (*Processor, error) {
	ln, err := listen("metrics.addr", c.Metrics.Addr)
	if err != nil {
		return nil, err
	}
	return &Processor{cfg: c, logger: logger, ln: ln}, nil
}

// Addr is the address of the metrics and health endpoints.
func (p *Processor) Addr() net.Addr { return p.ln.Addr() }

// Run consumes until ctx is done, then flushes, commits and leaves the
// group.
func (p *Processor) Run(ctx context.Context) error { return stopped(ctx, p.run(ctx)) }

func (p *Processor) run(ctx context.Context) error {
	defer p.ln.Close()
	c := p.cfg
	if c.Processor.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(c.Processor.MemoryLimit)
	}
	tracer, stopTracing, err := startTracing(ctx, c.Tracing, "spool-processor")
	if err != nil {
		return err
	}
	defer stopTracing()
	pool, catalog, err := openDatabase(ctx, c, tracer.statements, p.logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	store := postgres.NewStore(pool, catalog.Catalog, c.Kafka.Group, p.logger)
	store.LimitWrites(c.Processor.WriteConcurrency)
	cluster, err := KafkaCluster(c.Kafka)
	if err != nil {
		return err
	}
	if err := ensureTopics(ctx, c, cluster, p.logger); err != nil {
		return err
	}
	m := metrics.New(metrics.NewRegistry())
	m.ObservePool(func() metrics.PoolStats { return metrics.PoolStats(pool.Stats()) })
	m.ObserveWrites(func() metrics.WriteStats { return metrics.WriteStats(store.WriteStats()) })
	// Dead letters are bounded by what the dead-letter topic takes, and the
	// producer's batch limit agrees, so that a dead letter always fits.
	dlqLimit := recordLimit(ctx, cluster, c.Kafka.DLQTopic, p.logger)
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: cluster, BatchMaxBytes: dlqLimit,
		Hooks: []any{m.KafkaHooks("dlq-producer")}, Logger: p.logger})
	if err != nil {
		return err
	}
	defer producer.Close()
	host, _ := os.Hostname()
	instance := fmt.Sprintf("%s/%d", host, os.Getpid())
	deadLetters := dlq.NewPublisher(producer, c.Kafka.DLQTopic, instance)
	deadLetters.MaxRecordBytes = dlqLimit

	// One bucket for the whole processor, so its partitions share the rate;
	// the burst is one batch, the most a worker asks for at once.
	var limiter pipeline.Limiter
	if c.Processor.RateLimit > 0 {
		limiter = NewRateLimiter(c.Processor.RateLimit, c.Processor.BatchSize)
	}

	consumer, err := kafka.NewConsumer(kafka.ConsumerConfig{
		Cluster: cluster, Topic: c.Kafka.Topic, Group: c.Kafka.Group,
		FetchMaxBytes: c.Processor.FetchMaxBytes, FetchMaxPartitionBytes: c.Processor.FetchMaxPartitionBytes,
		// A rebalance waits for revoked partitions' last flushes.
		SessionTimeout: c.Processor.SessionTimeout, RebalanceTimeout: c.Processor.FlushTimeout + 30*time.Second,
		Protocol: c.Kafka.GroupProtocol,
		Offsets:  store, Backoff: retryBackoff, Hooks: []any{m.KafkaHooks("consumer")}, FetchFailed: m.FetchFailed, Logger: p.logger,
		NewWorker: func(partition int32, next int64, committed func(int64)) *pipeline.Worker {
			return pipeline.NewWorker(pipeline.WorkerConfig{
				Topic: c.Kafka.Topic, Partition: partition, NextOffset: next,
				BatchSize: c.Processor.BatchSize, BatchMaxWait: c.Processor.BatchMaxWait,
				FlushTimeout: c.Processor.FlushTimeout,
				Catalog:      catalog.Catalog, Refresh: func(ctx context.Context, e string) { catalog.refresh(ctx, e, 0) }, Store: store, DeadLetters: deadLetters, Limiter: limiter, Committed: committed,
				LoadOffset: func(ctx context.Context) (int64, error) { return store.LoadOffset(ctx, c.Kafka.Topic, partition) },
				Recent:     pipeline.NewRecent(c.Dedupe.CacheSize, c.Dedupe.Window),
				Backoff:    retryBackoff, Observer: m, Tracer: tracer.batches, Logger: p.logger.With("partition", partition),
			}, c.Processor.Queue)
		},
	})
	if err != nil {
		return err
	}

	lag, err := kafka.NewLagMonitor(cluster, c.Kafka.Topic, c.Kafka.Group, lagEvery, p.logger)
	if err != nil {
		return err
	}
	defer lag.Close()

	stopOps := serveOps(p.ln, p.logger, m.Handler(), c.Metrics.Pprof,
		httpapi.Dependency{Name: "PostgreSQL", Ping: store.Ping}, httpapi.Dependency{Name: "Kafka", Ping: producer.Ping})
	defer stopOps()

	maintenance := &Maintenance{Store: store, Metrics: m, Logger: p.logger,
		Interval: settleInterval, SweepEvery: ledgerSweepEvery,
		DedupeWindow: c.Dedupe.Window, IdempotencyWindow: c.Ingress.IdempotencyWindow, JobRetention: c.Jobs.Retention,
		OpenTimeout: c.Jobs.OpenTimeout}
	// The parts run until one fails, the consumer ends or the stop comes;
	// Run waits for all of them, so nothing outlives it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return maintenance.Run(ctx) })
	g.Go(func() error { catalog.reloadOnSIGHUP(ctx, c); return nil })
	g.Go(func() error {
		every(ctx, lagEvery, func() {
			if byPartition, err := lag.MeasurePartitions(ctx); err == nil {
				m.SetLag(byPartition)
			}
		})
		return nil
	})
	g.Go(func() error {
		defer cancel()
		p.logger.Info("processor consuming", "topic", c.Kafka.Topic, "group", c.Kafka.Group, "instance", instance)
		return consumer.Run(ctx)
	})
	return g.Wait()
}

// retryBackoff is the policy for transient errors while processing: it
// never gives up on its own; the context ends it. Once the interval reaches
// its 2 s cap, attempts are 1-3 s apart (the default jitter of ±50%, so
// that partitions do not retry in step), and writes resume within about
// that of PostgreSQL's return (a restart, connections freed); an attempt is
// one batch a partition, which costs a database that is down nothing to
// refuse.
func retryBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 2 * time.Second
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

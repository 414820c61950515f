package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/metrics"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// settleInterval is how often the processor settles every open job and
// repairs rows behind recent tombstones, to catch a processor that died
// between a commit and the follow-up it runs after each commit.
const settleInterval = 5 * time.Second

// ledgerSweepEvery is how many settle intervals pass between ledger sweeps.
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
	pool, entities, err := openDatabase(ctx, c, p.logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	store := postgres.NewStore(pool, entities, c.Kafka.Group, p.logger)
	if err := ensureTopics(ctx, c, p.logger); err != nil {
		return err
	}
	m := metrics.New(metrics.NewRegistry())
	// Dead letters are bounded by what the dead-letter topic takes, and the
	// producer's batch limit agrees, so that a dead letter always fits.
	dlqLimit := recordLimit(ctx, c, c.Kafka.DLQTopic, p.logger)
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Brokers: c.Kafka.Brokers, BatchMaxBytes: dlqLimit,
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
		Brokers: c.Kafka.Brokers, Topic: c.Kafka.Topic, Group: c.Kafka.Group,
		FetchMaxBytes: c.Processor.FetchMaxBytes, FetchMaxPartitionBytes: c.Processor.FetchMaxPartitionBytes,
		// A rebalance waits for revoked partitions' last flushes.
		SessionTimeout: c.Processor.SessionTimeout, RebalanceTimeout: c.Processor.FlushTimeout + 30*time.Second,
		Protocol: c.Kafka.GroupProtocol,
		Offsets:  store, Hooks: []any{m.KafkaHooks("consumer")}, Logger: p.logger,
		NewWorker: func(partition int32, next int64, committed func(int64)) *pipeline.Worker {
			return pipeline.NewWorker(pipeline.WorkerConfig{
				Topic: c.Kafka.Topic, Partition: partition, NextOffset: next,
				BatchSize: c.Processor.BatchSize, BatchMaxWait: c.Processor.BatchMaxWait,
				FlushTimeout: c.Processor.FlushTimeout,
				Entities:     entities, Store: store, DeadLetters: deadLetters, Limiter: limiter, Committed: committed,
				LoadOffset: func(ctx context.Context) (int64, error) { return store.LoadOffset(ctx, c.Kafka.Topic, partition) },
				Recent:     pipeline.NewRecent(c.Dedupe.CacheSize, c.Dedupe.Window),
				Backoff:    retryBackoff, Observer: m, Logger: p.logger.With("partition", partition),
			}, c.Processor.Queue)
		},
	})
	if err != nil {
		return err
	}

	lag, err := kafka.NewLagMonitor(c.Kafka.Brokers, c.Kafka.Topic, c.Kafka.Group, lagEvery, p.logger)
	if err != nil {
		return err
	}
	defer lag.Close()

	ops := serveOps(p.ln, p.logger, m.Handler(), c.Metrics.Pprof,
		httpapi.Dependency{Name: "PostgreSQL", Ping: store.Ping}, httpapi.Dependency{Name: "Kafka", Ping: producer.Ping})
	defer ops.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go p.sweepLoop(ctx, store, m)
	go every(ctx, lagEvery, func() {
		if byPartition, err := lag.MeasurePartitions(ctx); err == nil {
			m.SetLag(byPartition)
		}
	})
	p.logger.Info("processor consuming", "topic", c.Kafka.Topic, "group", c.Kafka.Group, "instance", instance)
	return consumer.Run(ctx)
}

func (p *Processor) sweepLoop(ctx context.Context, store *postgres.Store, m *metrics.Metrics) {
	t := time.NewTicker(settleInterval)
	defer t.Stop()
	// The first repair looks an hour back, to cover a restart; later ones
	// start where the last successful one did.
	repairFrom := time.Now().Add(-time.Hour)
	for tick := 0; ; tick++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		warn := func(what string, err error) {
			if err != nil && ctx.Err() == nil {
				p.logger.Warn(what, "error", err)
			}
		}
		// Repair first: a job settles as completed only once no row of it
		// can still be behind a tombstone.
		started, err := store.RepairSince(ctx, repairFrom)
		warn("repairing rows behind recent tombstones", err)
		if err == nil {
			repairFrom = started.Add(-time.Minute)
			warn("settling open jobs", store.SettleOpenJobs(ctx))
		}
		abandoned, err := store.AbandonJobs(ctx)
		warn("marking abandoned uploads failed", err)
		if abandoned > 0 {
			p.logger.Warn("marked uploads failed whose ingress stopped mid-upload", "jobs", abandoned)
		}
		if tick%ledgerSweepEvery == 0 {
			ids, tombstones, err := store.SweepLedger(ctx, p.cfg.Dedupe.Window)
			warn("sweeping the dedupe ledger", err)
			if err == nil {
				m.Swept(metrics.SweepLedger, ids)
				m.Swept(metrics.SweepTombstones, tombstones)
			}
			keys, err := store.SweepIdempotencyKeys(ctx, p.cfg.Ingress.IdempotencyWindow)
			warn("sweeping idempotency keys", err)
			if err == nil {
				m.Swept(metrics.SweepIdempotencyKeys, keys)
			}
			jobs, err := store.PruneJobs(ctx, p.cfg.Jobs.Retention)
			warn("pruning finished jobs", err)
			if err == nil {
				m.Swept(metrics.SweepJobs, jobs)
			}
			if rows, err := store.LedgerRows(ctx); err == nil {
				m.SetLedgerRows(rows)
			}
		}
	}
}

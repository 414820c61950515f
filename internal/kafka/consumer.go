package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

// OffsetStore says where a partition resumes: the database, not Kafka, is
// the source of truth, because offsets commit there with the writes.
type OffsetStore interface {
	LoadOffset(ctx context.Context, topic string, partition int32) (int64, error)
}

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	Brokers                []string
	Topic                  string
	Group                  string
	FetchMaxBytes          int32
	FetchMaxPartitionBytes int32
	Offsets                OffsetStore
	// NewWorker builds the worker of a newly assigned partition, starting
	// at next (the stored offset, or -1). Committed must be wired to the
	// worker's WorkerConfig.Committed.
	NewWorker func(partition int32, next int64, committed func(next int64)) *pipeline.Worker
	Logger    *slog.Logger
}

// Consumer is a member of the processors' consumer group. Each assigned
// partition gets a worker goroutine; records go to it in fetch order.
//
// Rebalances use franz-go's default cooperative-sticky balancer with plain
// callbacks: on revoke the worker finishes its in-flight batch before the
// partition moves on; on loss it is cancelled. Correctness does not depend
// on either: every batch moves the stored offset by compare-and-set, so a
// worker that lost its partition cannot commit over the new owner's work.
type Consumer struct {
	cfg ConsumerConfig
	cl  *kgo.Client

	mu      sync.Mutex
	workers map[int32]*running
	offsets map[int32]int64 // start offsets loaded on assignment
	failed  chan error
}

type running struct {
	w      *pipeline.Worker
	cancel context.CancelFunc
	done   chan struct{}
}

// NewConsumer connects a group member; Run starts consuming.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	c := &Consumer{cfg: cfg, workers: make(map[int32]*running), offsets: make(map[int32]int64), failed: make(chan error, 1)}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxBytes(cfg.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(cfg.FetchMaxPartitionBytes),
		kgo.OnPartitionsAssigned(c.assigned),
		kgo.AdjustFetchOffsetsFn(c.startOffsets),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		kgo.WithLogger(slogLogger{cfg.Logger}),
	)
	if err != nil {
		return nil, fmt.Errorf("creating kafka consumer: %w", err)
	}
	c.cl = cl
	return c, nil
}

// Run polls until ctx is done, then stops every worker (each flushes what
// it holds) and leaves the group.
func (c *Consumer) Run(ctx context.Context) error {
	defer c.close()
	for {
		fetches := c.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		select {
		case err := <-c.failed:
			return err
		default:
		}
		fetches.EachError(func(t string, p int32, err error) {
			c.cfg.Logger.Warn("fetching", "topic", t, "partition", p, "error", err)
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) > 0 {
				c.dispatch(ctx, p.Partition, p.Records)
			}
		})
	}
}

// dispatch hands records to their partition's worker. When the worker's
// queue is full the partition is paused and a goroutine waits to hand them
// over, so that one slow partition neither blocks the others nor makes the
// client buffer more.
func (c *Consumer) dispatch(ctx context.Context, partition int32, krecs []*kgo.Record) {
	c.mu.Lock()
	r := c.workers[partition]
	c.mu.Unlock()
	if r == nil {
		return // revoked since the fetch; the next owner refetches from the stored offset
	}
	recs := make([]pipeline.Record, len(krecs))
	for i, kr := range krecs {
		recs[i] = fromKgo(kr)
	}
	if r.w.TryFeed(recs) {
		return
	}
	tp := map[string][]int32{c.cfg.Topic: {partition}}
	c.cl.PauseFetchPartitions(tp)
	go func() {
		if err := r.w.Feed(ctx, recs); err == nil {
			c.cl.ResumeFetchPartitions(tp)
		}
	}()
}

func (c *Consumer) assigned(ctx context.Context, _ *kgo.Client, assigned map[string][]int32) {
	for _, p := range assigned[c.cfg.Topic] {
		next, err := c.cfg.Offsets.LoadOffset(ctx, c.cfg.Topic, p)
		if err != nil {
			c.fail(fmt.Errorf("loading offset of partition %d: %w", p, err))
			return
		}
		wctx, cancel := context.WithCancel(context.Background())
		r := &running{cancel: cancel, done: make(chan struct{})}
		r.w = c.cfg.NewWorker(p, next, c.committer(p))
		c.mu.Lock()
		c.workers[p] = r
		c.offsets[p] = next
		c.mu.Unlock()
		go func() {
			defer close(r.done)
			if err := r.w.Run(wctx); err != nil {
				if errors.Is(err, pipeline.ErrFenced) {
					c.cfg.Logger.Info("partition taken over by another processor", "partition", p)
					return
				}
				c.fail(fmt.Errorf("partition %d: %w", p, err))
			}
		}()
	}
}

// startOffsets points each assigned partition at its offset stored in
// PostgreSQL (the earliest offset when none is stored yet).
func (c *Consumer) startOffsets(_ context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p := range offsets[c.cfg.Topic] {
		next, ok := c.offsets[p]
		switch {
		case !ok:
			continue
		case next < 0:
			offsets[c.cfg.Topic][p] = kgo.NewOffset().AtStart()
		default:
			offsets[c.cfg.Topic][p] = kgo.NewOffset().At(next).WithEpoch(-1)
		}
	}
	return offsets, nil
}

func (c *Consumer) committer(p int32) func(int64) {
	return func(next int64) {
		// The Kafka offset only follows the database, for lag tools; a failed
		// or skipped commit loses nothing. A revoked partition's last flush
		// is not committed: the group has moved on.
		c.mu.Lock()
		_, owned := c.workers[p]
		c.mu.Unlock()
		if !owned {
			return
		}
		c.cl.CommitOffsets(context.Background(), map[string]map[int32]kgo.EpochOffset{c.cfg.Topic: {p: {Epoch: -1, Offset: next}}}, nil)
	}
}

// revoked lets each revoked partition's worker flush its batch and stop.
func (c *Consumer) revoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	c.stop(revoked[c.cfg.Topic])
}

// lost stops workers of partitions that may already belong to another
// member; whatever they still try to commit is fenced by the database.
func (c *Consumer) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	c.stop(lost[c.cfg.Topic])
}

func (c *Consumer) stop(partitions []int32) {
	var rs []*running
	c.mu.Lock()
	for _, p := range partitions {
		if r := c.workers[p]; r != nil {
			rs = append(rs, r)
			delete(c.workers, p)
			delete(c.offsets, p)
		}
	}
	c.mu.Unlock()
	for _, r := range rs {
		r.cancel()
	}
	for _, r := range rs {
		<-r.done
	}
	if len(partitions) > 0 {
		c.cl.ResumeFetchPartitions(map[string][]int32{c.cfg.Topic: partitions})
	}
}

func (c *Consumer) fail(err error) {
	select {
	case c.failed <- err:
	default:
	}
}

// close stops every worker, then leaves the group.
func (c *Consumer) close() {
	c.mu.Lock()
	ps := make([]int32, 0, len(c.workers))
	for p := range c.workers {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	c.stop(ps)
	c.cl.Close()
}

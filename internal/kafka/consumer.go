package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
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
	Cluster                Cluster
	Topic                  string
	Group                  string
	FetchMaxBytes          int32
	FetchMaxPartitionBytes int32
	// SessionTimeout is how long the group waits for a member that stopped
	// heartbeating; RebalanceTimeout how long a rebalance waits for members
	// to rejoin, which includes flushing revoked partitions.
	SessionTimeout, RebalanceTimeout time.Duration
	// Protocol is the group protocol: "consumer" (KIP-848, where the
	// brokers support it) or "classic".
	Protocol string
	Offsets  OffsetStore
	// Backoff makes the retry policy for transient errors loading a
	// partition's stored offset (the workers' own, WorkerConfig.Backoff).
	Backoff func() backoff.BackOff
	// NewWorker builds the worker of a newly assigned partition, starting
	// at next (the stored offset, or -1). committed must be wired to the
	// worker's WorkerConfig.Committed.
	NewWorker func(partition int32, next int64, committed func(next int64)) *pipeline.Worker
	// Hooks are franz-go hooks (client metrics) for the consumer's client.
	Hooks []any
	// FetchFailed, when set, hears of each fetch error, classified
	// (pipeline.ClassOf tells transient from internal).
	FetchFailed func(err error)
	Logger      *slog.Logger
}

// heartbeatInterval is how often a member tells the group it lives, and
// hears of rebalances.
const heartbeatInterval = time.Second

// fetchMaxWait bounds how long a fetch waits for records to arrive.
const fetchMaxWait = 250 * time.Millisecond

// Consumer is a member of the processors' consumer group. Each assigned
// partition gets a worker goroutine; records go to it in fetch order.
//
// Partitions are assigned by the brokers under KIP-848 (Protocol
// "consumer"), or by franz-go's cooperative-sticky balancer under the
// classic protocol, with the same callbacks either way: on revoke the worker
// finishes its in-flight batch before the partition moves on; on loss it is
// abandoned without a flush. Every batch moves the stored offset by
// compare-and-set, so a worker that lost its partition cannot commit over
// the new owner's work, and a fenced worker reloads the stored offset. The
// callbacks wait for a poll's records to be dispatched (BlockRebalanceOnPoll),
// so records never reach a worker of a later assignment than they were
// fetched under.
type Consumer struct {
	cfg ConsumerConfig
	cl  *kgo.Client

	mu      sync.Mutex
	workers map[int32]*running
	offsets map[int32]int64 // start offsets loaded on assignment

	failMu   sync.Mutex
	failErr  error
	stopPoll context.CancelFunc
	// life ends when Run is told to stop (its context, or a failure): a
	// callback waiting on the database (assigned's offset load) gives up
	// then, since polls — and so Run's return — wait for callbacks
	// (BlockRebalanceOnPoll).
	life    context.Context
	endLife context.CancelFunc

	// polled, when set (by a test), is called with a poll's records in
	// hand, before they are dispatched.
	polled func()
}

// running is one partition's worker and its feeder. When the worker's queue
// is full, fetched slices wait in pending (the partition paused meanwhile)
// and one feeder goroutine hands them over in order.
type running struct {
	w      *pipeline.Worker
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	pending [][]pipeline.Record
	feeding bool
}

// NewConsumer connects a group member; Run starts consuming.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	if cfg.Backoff == nil {
		return nil, errors.New("kafka: ConsumerConfig.Backoff is required")
	}
	c := &Consumer{cfg: cfg, workers: make(map[int32]*running), offsets: make(map[int32]int64)}
	c.life, c.endLife = context.WithCancel(context.Background())
	var protocol []kgo.Opt
	if cfg.Protocol == ProtocolConsumer {
		// The cooperative-sticky balancer is what franz-go asks for under
		// KIP-848, and what it falls back to on brokers without it.
		protocol = []kgo.Opt{kgo.Balancers(kgo.CooperativeStickyBalancer()), kgo.ServerSideBalancer()}
	}
	cl, err := cfg.Cluster.newClient(append(protocol,
		kgo.ConsumerGroup(cfg.Group),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.RebalanceTimeout(cfg.RebalanceTimeout),
		// Members learn of a rebalance from their heartbeat's answer, and a
		// cooperative rebalance that moves partitions takes two: with
		// Kafka's default of 3 s, a processor joining a busy group left most
		// partitions unowned for 3.5 s. A heartbeat a second costs nothing.
		kgo.HeartbeatInterval(heartbeatInterval),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxBytes(cfg.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(cfg.FetchMaxPartitionBytes),
		// A fetch waits at most this long for data: with the default 5 s, a
		// record could sit that long in a broker that does not wake waiting
		// fetches at once (seen with the embedded broker under load).
		kgo.FetchMaxWait(fetchMaxWait),
		// Rebalances wait for a poll's records to be dispatched (Run).
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsCallbackBlocked(func(context.Context, *kgo.Client) {
			cfg.Logger.Debug("a rebalance waits for the records polled to reach their workers")
		}),
		kgo.OnPartitionsAssigned(c.assigned),
		kgo.AdjustFetchOffsetsFn(c.startOffsets),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		kgo.WithLogger(slogLogger{cfg.Logger}),
		kgo.WithHooks(hooks(cfg.Hooks)...),
		kgo.WithPools(&fetchPools{}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("creating kafka consumer: %w", err)
	}
	c.cl = cl
	return c, nil
}

// Run polls until ctx is done or a worker fails, then stops every worker
// (each flushes what it holds) and leaves the group.
func (c *Consumer) Run(ctx context.Context) error {
	defer c.close()
	pollCtx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	context.AfterFunc(pollCtx, c.endLife) // pollCtx ends with Run
	if c.cfg.Protocol == ProtocolConsumer && c.configureGroup(ctx) {
		var configuring sync.WaitGroup
		configuring.Go(func() { c.keepGroupConfigured(pollCtx) })
		defer func() { stopPoll(); configuring.Wait() }() // before close
	}
	c.failMu.Lock()
	c.stopPoll = stopPoll
	c.failMu.Unlock()
	for {
		fetches := c.cl.PollFetches(pollCtx)
		err, stopped := c.failure(), pollCtx.Err() != nil
		if err == nil && !stopped {
			fetches.EachError(func(t string, p int32, err error) {
				err = classify(err)
				c.cfg.Logger.Warn("fetching", "topic", t, "partition", p, "error_class", pipeline.ClassOf(err), "error", err)
				if c.cfg.FetchFailed != nil {
					c.cfg.FetchFailed(err)
				}
			})
			if c.polled != nil && !fetches.Empty() {
				c.polled()
			}
			fetches.EachPartition(func(p kgo.FetchTopicPartition) {
				if len(p.Records) > 0 {
					c.dispatch(p.Partition, p.Records)
				}
			})
		}
		// Under kgo.BlockRebalanceOnPoll no rebalance callback runs from
		// a poll until here: the records polled are with the workers that
		// owned their partitions when they were fetched (or dropped), never
		// with a worker a later assignment made, which would take them for
		// its own start and skip what lies between.
		c.cl.AllowRebalance()
		if err != nil {
			return err
		}
		if stopped {
			return nil
		}
	}
}

// dispatch hands records to their partition's worker, or queues them for
// the partition's feeder and pauses the partition, so that one slow
// partition neither blocks the others nor makes the client buffer more.
func (c *Consumer) dispatch(partition int32, krecs []*kgo.Record) {
	c.mu.Lock()
	r := c.workers[partition]
	c.mu.Unlock()
	if r == nil {
		return // revoked since the fetch; the next owner refetches from the stored offset
	}
	recs := fromKgo(krecs)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.feeding && r.w.TryFeed(recs) {
		return
	}
	r.pending = append(r.pending, recs)
	if !r.feeding {
		r.feeding = true
		c.cl.PauseFetchPartitions(map[string][]int32{c.cfg.Topic: {partition}})
		go c.feed(partition, r)
	}
}

// feed hands pending slices to the worker in order, then resumes the
// partition if the worker still owns it.
func (c *Consumer) feed(partition int32, r *running) {
	for {
		r.mu.Lock()
		if len(r.pending) == 0 {
			r.feeding = false
			c.mu.Lock()
			current := c.workers[partition] == r
			c.mu.Unlock()
			if current {
				c.cl.ResumeFetchPartitions(map[string][]int32{c.cfg.Topic: {partition}})
			}
			r.mu.Unlock()
			return
		}
		recs := r.pending[0]
		r.pending = r.pending[1:]
		r.mu.Unlock()
		if err := r.w.Feed(r.ctx, recs); err != nil {
			r.mu.Lock()
			r.pending, r.feeding = nil, false // the worker stopped; its records are refetched by the next owner
			r.mu.Unlock()
			return
		}
	}
}

// loadOffset reads a newly assigned partition's stored offset, retrying
// what is not permanent (a database restart, a terminated backend) until
// ctx ends: a processor must not stop over a transient error (SPEC §4.5).
func (c *Consumer) loadOffset(ctx context.Context, p int32) (int64, error) {
	var next int64
	err := pipeline.RetryTransient(ctx, c.cfg.Backoff(), func(err error) {
		c.cfg.Logger.Warn("loading a partition's stored offset; retrying", "partition", p, "error", err)
	}, func() (err error) {
		next, err = c.cfg.Offsets.LoadOffset(ctx, c.cfg.Topic, p)
		return err
	})
	return next, err
}

func (c *Consumer) assigned(ctx context.Context, cl *kgo.Client, assigned map[string][]int32) {
	ps := assigned[c.cfg.Topic]
	if len(ps) > 0 {
		c.cfg.Logger.Info("partitions assigned", "partitions", ps)
	}
	// A pause left from an earlier ownership must not outlive it. (The
	// callback's client, since c.cl may not be set yet on the first call.)
	cl.ResumeFetchPartitions(map[string][]int32{c.cfg.Topic: ps})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.life, cancel)()
	for _, p := range ps {
		next, err := c.loadOffset(ctx, p)
		if err != nil {
			c.fail(fmt.Errorf("loading offset of partition %d: %w", p, err))
			return
		}
		wctx, cancel := context.WithCancel(context.Background())
		r := &running{ctx: wctx, cancel: cancel, done: make(chan struct{})}
		r.w = c.cfg.NewWorker(p, next, c.committer(p))
		c.mu.Lock()
		c.workers[p] = r
		c.offsets[p] = next
		c.mu.Unlock()
		go func() {
			defer close(r.done)
			if err := r.w.Run(wctx); err != nil {
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
	if ps := revoked[c.cfg.Topic]; len(ps) > 0 {
		c.cfg.Logger.Info("partitions revoked; flushing their batches", "partitions", ps)
		c.stop(ps, false)
	}
}

// lost abandons workers of partitions that may already belong to another
// member: they stop without flushing, and whatever they were committing is
// fenced by the database.
func (c *Consumer) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	if ps := lost[c.cfg.Topic]; len(ps) > 0 {
		c.cfg.Logger.Warn("partitions lost; abandoning their batches", "partitions", ps)
		c.stop(ps, true)
	}
}

func (c *Consumer) stop(partitions []int32, abandon bool) {
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
		if abandon {
			r.w.Abandon()
		}
		r.cancel()
	}
	for _, r := range rs {
		<-r.done
	}
}

// fail records the first worker failure and stops polling, so that Run
// returns it even while every partition is idle or paused.
func (c *Consumer) fail(err error) {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	if c.failErr == nil {
		c.failErr = err
		if c.stopPoll != nil {
			c.stopPoll()
		}
	}
}

func (c *Consumer) failure() error {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	return c.failErr
}

// close stops every worker, then leaves the group.
func (c *Consumer) close() {
	c.mu.Lock()
	ps := make([]int32, 0, len(c.workers))
	for p := range c.workers {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	c.stop(ps, false)
	c.cl.Close()
}

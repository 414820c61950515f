package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// LagMonitor measures the processors' backlog: per partition, the end
// offset less the group's committed offset (the start offset where the
// group has none), summed. The committed offsets follow the database, so
// the figure may lag the truth by a batch.
type LagMonitor struct {
	adm    *kadm.Client
	cl     *kgo.Client
	topic  string
	group  string
	every  time.Duration
	logger *slog.Logger
	lag    atomic.Int64
}

// NewLagMonitor connects; Run measures every interval. Close it when done.
func NewLagMonitor(cluster Cluster, topic, group string, every time.Duration, logger *slog.Logger) (*LagMonitor, error) {
	cl, err := cluster.newClient(kgo.WithLogger(slogLogger{logger}))
	if err != nil {
		return nil, fmt.Errorf("creating kafka lag client: %w", err)
	}
	return &LagMonitor{adm: kadm.NewClient(cl), cl: cl, topic: topic, group: group, every: every, logger: logger}, nil
}

// Lag is the backlog as last measured (0 before the first measurement).
func (m *LagMonitor) Lag() int64 { return m.lag.Load() }

// Close disconnects.
func (m *LagMonitor) Close() { m.cl.Close() }

// Run measures until ctx is done.
func (m *LagMonitor) Run(ctx context.Context) {
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		if lag, err := m.Measure(ctx); err == nil {
			m.lag.Store(lag)
		} else if ctx.Err() == nil {
			m.logger.Warn("measuring consumer lag", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Measure reads the backlog now: the records past the group's committed
// offsets, or past the start of the log where the group has none. For a
// group that never consumes, that is every record in the topic.
func (m *LagMonitor) Measure(ctx context.Context) (int64, error) {
	byPartition, err := m.MeasurePartitions(ctx)
	var total int64
	for _, n := range byPartition {
		total += n
	}
	return total, err
}

// MeasurePartitions is Measure partition by partition.
func (m *LagMonitor) MeasurePartitions(ctx context.Context) (map[int32]int64, error) {
	ends, err := m.adm.ListEndOffsets(ctx, m.topic)
	if err != nil {
		return nil, classify(err)
	}
	starts, err := m.adm.ListStartOffsets(ctx, m.topic)
	if err != nil {
		return nil, classify(err)
	}
	committed, err := m.adm.FetchOffsets(ctx, m.group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		// No processor has joined yet: nothing is committed, all is backlog.
		committed, err = nil, nil
	}
	if err != nil {
		return nil, classify(err)
	}
	lag := map[int32]int64{}
	ends.Each(func(end kadm.ListedOffset) {
		if end.Err != nil || end.Offset < 0 {
			return
		}
		from := int64(0)
		if s, ok := starts.Lookup(end.Topic, end.Partition); ok && s.Err == nil {
			from = s.Offset
		}
		if c, ok := committed.Lookup(end.Topic, end.Partition); ok && c.Err == nil && c.At > from {
			from = c.At
		}
		lag[end.Partition] = max(0, end.Offset-from)
	})
	return lag, nil
}

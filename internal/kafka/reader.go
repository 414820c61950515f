package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

// Reader reads whole topics without a consumer group: the tools' view of
// the dead-letter topic and the replay checkpoint.
type Reader struct {
	Cluster Cluster
	Logger  *slog.Logger
}

// Read calls fn for every record of topic (or of one partition, when
// partition ≥ 0) from the log start to the end offsets as of the call,
// partition by partition in offset order. Records appended meanwhile are
// left for the next read. A missing topic reads as empty.
func (r Reader) Read(ctx context.Context, topic string, partition int32, fn func(pipeline.Record) error) error {
	starts, ends, err := r.bounds(ctx, topic)
	if err != nil {
		return err
	}
	from := map[int32]kgo.Offset{}
	remaining := map[int32]int64{} // partition → end offset still to reach
	var missing error
	ends.Each(func(end kadm.ListedOffset) {
		if errors.Is(end.Err, kerr.UnknownTopicOrPartition) {
			return
		}
		if end.Err != nil {
			missing = end.Err
			return
		}
		if partition >= 0 && end.Partition != partition {
			return
		}
		start := int64(0)
		if s, ok := starts.Lookup(topic, end.Partition); ok && s.Err == nil {
			start = s.Offset
		}
		if end.Offset > start {
			from[end.Partition] = kgo.NewOffset().At(start)
			remaining[end.Partition] = end.Offset
		}
	})
	if missing != nil {
		return classify(fmt.Errorf("listing offsets of %s: %w", topic, missing))
	}
	// One partition at a time keeps the order a reader expects and the
	// memory to one fetch.
	for _, p := range sortedKeys(remaining) {
		if err := r.readPartition(ctx, topic, p, from[p], remaining[p], fn); err != nil {
			return err
		}
	}
	return nil
}

// stallTimeout bounds the wait for a partition's next record: the end offset
// was listed, so records up to it exist; a broker that sends none for this
// long is an error, not the end of the topic.
const stallTimeout = 15 * time.Second

// ReadOne returns the record at offset of a topic's partition.
func (r Reader) ReadOne(ctx context.Context, topic string, partition int32, offset int64) (pipeline.Record, error) {
	starts, ends, err := r.bounds(ctx, topic)
	if err != nil {
		return pipeline.Record{}, err
	}
	s, sok := starts.Lookup(topic, partition)
	e, eok := ends.Lookup(topic, partition)
	if !sok || !eok || s.Err != nil || e.Err != nil {
		return pipeline.Record{}, fmt.Errorf("topic %s has no partition %d", topic, partition)
	}
	if offset < s.Offset || offset >= e.Offset {
		return pipeline.Record{}, fmt.Errorf("partition %d of %s holds offsets %d to %d, not %d", partition, topic, s.Offset, e.Offset-1, offset)
	}
	var rec pipeline.Record
	found := false
	err = r.readPartition(ctx, topic, partition, kgo.NewOffset().At(offset), offset+1, func(got pipeline.Record) error {
		rec, found = got, true
		return nil
	})
	if err == nil && !found {
		err = fmt.Errorf("partition %d of %s has no record at offset %d (compacted?)", partition, topic, offset)
	}
	return rec, err
}

// EndOffsets sums the end offsets of topic's partitions: a group that has
// consumed it all has committed offsets summing to that.
func (r Reader) EndOffsets(ctx context.Context, topic string) (int64, error) {
	ends, err := r.PartitionEnds(ctx, topic)
	var total int64
	for _, end := range ends {
		total += end
	}
	return total, err
}

// PartitionEnds is EndOffsets partition by partition.
func (r Reader) PartitionEnds(ctx context.Context, topic string) (map[int32]int64, error) {
	_, ends, err := r.bounds(ctx, topic)
	out := map[int32]int64{}
	ends.Each(func(end kadm.ListedOffset) {
		if end.Err != nil && err == nil {
			err = classify(fmt.Errorf("listing offsets of %s partition %d: %w", topic, end.Partition, end.Err))
		}
		out[end.Partition] = max(end.Offset, 0)
	})
	return out, err
}

// bounds lists each partition's first offset and its last stable offset
// (not the high watermark: records of a transaction still open are not
// read yet).
func (r Reader) bounds(ctx context.Context, topic string) (starts, ends kadm.ListedOffsets, err error) {
	cl, err := r.Cluster.newClient(kgo.WithLogger(slogLogger{r.logger()}))
	if err != nil {
		return nil, nil, fmt.Errorf("creating kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if starts, err = adm.ListStartOffsets(ctx, topic); err == nil {
		ends, err = adm.ListCommittedOffsets(ctx, topic)
	}
	if err != nil {
		return nil, nil, classify(fmt.Errorf("listing offsets of %s: %w", topic, err))
	}
	return starts, ends, nil
}

func (r Reader) readPartition(ctx context.Context, topic string, p int32, from kgo.Offset, end int64, fn func(pipeline.Record) error) error {
	cl, err := r.Cluster.newClient(kgo.WithLogger(slogLogger{r.logger()}),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: from}}),
		// Transaction markers come through, so that a partition ending in
		// one is seen to end; aborted records do not.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return fmt.Errorf("creating kafka client: %w", err)
	}
	defer cl.Close()
	next := int64(-1)
	for {
		pollCtx, cancel := context.WithTimeout(ctx, stallTimeout)
		fs := cl.PollFetches(pollCtx)
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		if pollCtx.Err() != nil && fs.NumRecords() == 0 {
			return classify(fmt.Errorf("reading %s partition %d: nothing arrived for %s after offset %d, before the end offset %d",
				topic, p, stallTimeout, next, end))
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return classify(fmt.Errorf("reading %s partition %d: %w", topic, p, ferr))
		}
		var done bool
		var cbErr error
		fs.EachRecord(func(rec *kgo.Record) {
			if done || cbErr != nil || rec.Offset >= end {
				done = true
				return
			}
			next = rec.Offset + 1 // read before fromKgo, which recycles rec
			if next >= end {
				done = true
			}
			if !rec.Attrs.IsControl() {
				cbErr = fn(fromKgo([]*kgo.Record{rec})[0])
			}
		})
		if cbErr != nil {
			return cbErr
		}
		if done {
			return nil
		}
	}
}

func (r Reader) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func sortedKeys(m map[int32]int64) []int32 {
	keys := make([]int32, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

package kafka

import (
	"context"
	"hash/fnv"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

// toKgo makes r a record for topic; ctx becomes its Context, which carries
// its route (routed) where it has one.
func toKgo(ctx context.Context, r *pipeline.Record, topic string) *kgo.Record {
	hs := make([]kgo.RecordHeader, len(r.Headers))
	for i, h := range r.Headers {
		hs[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
	}
	if r.Route != nil {
		if ctx == nil {
			ctx = context.Background() // what franz-go would make a nil one
		}
		ctx = &routed{Context: ctx, route: r.Route}
	}
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs, Context: ctx}
}

// routed is a produced record's Context with its route
// (pipeline.Record.Route), for routePartitioner.
type routed struct {
	context.Context
	route []byte
}

// routePartitioner places a record by its route where it has one, else as
// franz-go's default partitioner does (UniformBytesPartitioner(64 KiB,
// adaptive, keys)): a keyed record by Kafka's murmur2 hash of its key, as
// any Kafka client places it, one without a key by the partitions' backlog.
// It has no OnNewBatch, so that franz-go buffers records without holding
// the topic's partitioning lock, as with its default.
type routePartitioner struct{}

func (routePartitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return routeTopicPartitioner{kgo.UniformBytesPartitioner(64<<10, true, true, nil).ForTopic(topic).(defaultTopicPartitioner)}
}

// defaultTopicPartitioner is what franz-go's default partitioner is for a
// topic.
type defaultTopicPartitioner interface {
	kgo.TopicPartitioner
	kgo.TopicBackupPartitioner
}

type routeTopicPartitioner struct{ base defaultTopicPartitioner }

// routeHash places a route: a stable hash (every ingress places one route
// alike), mapped to a partition as Kafka maps its key hashes.
var routeHash = kgo.KafkaHasher(func(b []byte) uint32 {
	h := fnv.New32a()
	h.Write(b)
	return h.Sum32()
})

func (p routeTopicPartitioner) RequiresConsistency(r *kgo.Record) bool {
	return routeOf(r) != nil || p.base.RequiresConsistency(r)
}

// Partition is not called: franz-go calls PartitionByBackup instead.
func (p routeTopicPartitioner) Partition(r *kgo.Record, n int) int {
	return p.PartitionByBackup(r, n, nil)
}

func (p routeTopicPartitioner) PartitionByBackup(r *kgo.Record, n int, backup kgo.TopicBackupIter) int {
	if route := routeOf(r); route != nil {
		return routeHash(route, n)
	}
	return p.base.PartitionByBackup(r, n, backup)
}

func routeOf(r *kgo.Record) []byte {
	if rc, ok := r.Context.(*routed); ok {
		return rc.route
	}
	return nil
}

// fromKgo copies fetched records out of franz-go's buffers, all of a
// fetched slice into one buffer for their bytes and one slice for their
// headers, and recycles them (fetchPools). A fetched record points into its
// batch's decompressed buffer, which it would keep whole, framing and all,
// for as long as it waits for its batch to be written; copied, the slice's
// records keep only their own bytes, until the last of them is written. Two
// allocations a slice, not two a record.
func fromKgo(krecs []*kgo.Record) []pipeline.Record {
	size, headers := 0, 0
	for _, kr := range krecs {
		size += len(kr.Key) + len(kr.Value)
		for _, h := range kr.Headers {
			size += len(h.Value)
		}
		headers += len(kr.Headers)
	}
	buf := make([]byte, 0, size)
	keep := func(b []byte) []byte {
		if b == nil {
			return nil // a null key or value stays null
		}
		start := len(buf)
		buf = append(buf, b...)
		return buf[start:len(buf):len(buf)]
	}
	recs, slab := make([]pipeline.Record, len(krecs)), make([]pipeline.Header, headers)
	for i, kr := range krecs {
		hs := slab[:len(kr.Headers):len(kr.Headers)]
		slab = slab[len(kr.Headers):]
		for j, h := range kr.Headers {
			hs[j] = pipeline.Header{Key: headerName(h.Key), Value: keep(h.Value)}
		}
		recs[i] = pipeline.Record{
			Topic: kr.Topic, Partition: kr.Partition, Offset: kr.Offset,
			Key: keep(kr.Key), Value: keep(kr.Value), Headers: hs, Timestamp: kr.Timestamp,
		}
	}
	for _, kr := range krecs {
		kr.Recycle() // nothing of it is kept; a no-op for a client without pools
	}
	return recs
}

// fetchPools lend franz-go the buffers a consumer's fetches are
// decompressed into and the slices their records are decoded into
// (kgo.WithPools). fromKgo copies every record out at once and recycles
// it, so a fetch's buffers serve the next fetch instead of the garbage
// collector: in a backlog drain they were an eighth of what the processor
// allocated. A slice too small for a fetch is grown by franz-go, and the
// grown one comes back.
type fetchPools struct{ bytes, records sync.Pool }

var (
	_ kgo.PoolDecompressBytes = (*fetchPools)(nil)
	_ kgo.PoolRecords         = (*fetchPools)(nil)
)

func (p *fetchPools) GetDecompressBytes([]byte, kgo.CompressionCodecType) []byte {
	if b, ok := p.bytes.Get().(*[]byte); ok {
		return *b
	}
	return nil
}

func (p *fetchPools) PutDecompressBytes(b []byte) { p.bytes.Put(&b) }

func (p *fetchPools) GetRecords(n int) []kgo.Record {
	if r, ok := p.records.Get().(*[]kgo.Record); ok && cap(*r) >= n {
		return *r
	}
	return make([]kgo.Record, 0, n)
}

func (p *fetchPools) PutRecords(r []kgo.Record) { p.records.Put(&r) }

// headerName returns the constant for a header ingress sets, so that
// buffered records share one string per name.
func headerName(key string) string {
	for _, known := range [...]string{pipeline.HeaderJobID, pipeline.HeaderTenant, pipeline.HeaderIndex, pipeline.HeaderReplayOf} {
		if key == known {
			return known
		}
	}
	return key
}

package kafka

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/pipeline"
)

// TestFromKgoCopies: fetched records are copied out of franz-go's buffers
// whole, a null key or value staying null, so that the buffers can go.
func TestFromKgoCopies(t *testing.T) {
	t.Parallel()
	fetched := []byte("c-1{\"id\":\"c-1\"}job-1")
	at := time.Unix(1700000000, 0)
	krecs := []*kgo.Record{
		{Topic: "t", Partition: 3, Offset: 7, Timestamp: at, Key: fetched[:3], Value: fetched[3:15],
			Headers: []kgo.RecordHeader{{Key: pipeline.HeaderJobID, Value: fetched[15:]}, {Key: "other", Value: nil}}},
		{Topic: "t", Partition: 3, Offset: 8, Timestamp: at},
	}
	recs := fromKgo(krecs)
	require.Equal(t, []pipeline.Record{
		{Topic: "t", Partition: 3, Offset: 7, Timestamp: at, Key: []byte("c-1"), Value: []byte(`{"id":"c-1"}`),
			Headers: []pipeline.Header{{Key: pipeline.HeaderJobID, Value: []byte("job-1")}, {Key: "other"}}},
		{Topic: "t", Partition: 3, Offset: 8, Timestamp: at, Headers: []pipeline.Header{}},
	}, recs)
	require.Nil(t, recs[1].Key)
	require.Nil(t, recs[1].Value)
	require.Nil(t, recs[0].Headers[1].Value)
	clear(fetched) // franz-go reuses its buffers
	require.Equal(t, `{"id":"c-1"}`, string(recs[0].Value))
	require.Equal(t, "job-1", string(recs[0].Headers[0].Value))
}

// countedPools counts what franz-go hands back to fetchPools.
type countedPools struct {
	fetchPools
	bytesBack, recordsBack atomic.Int64
}

func (p *countedPools) PutDecompressBytes(b []byte) {
	p.bytesBack.Add(1)
	p.fetchPools.PutDecompressBytes(b)
}

func (p *countedPools) PutRecords(r []kgo.Record) {
	p.recordsBack.Add(1)
	p.fetchPools.PutRecords(r)
}

// TestPooledFetchesKeepTheirRecords: with fetchPools lending a consumer
// its fetches' buffers, and fromKgo recycling every record it copied, the
// buffers do serve one fetch after another, and the records copied out of
// earlier fetches keep their bytes while later fetches reuse the buffers
// (compressed batches of distinct records, read over many small fetches).
func TestPooledFetchesKeepTheirRecords(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := kafkatest.NewCluster(t)
	require.NoError(t, EnsureTopics(ctx, Plaintext(b.Addr()), 1, -1, "pooled"))
	const n = 3000
	producer, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.DefaultProduceTopic("pooled"),
		kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	require.NoError(t, err)
	defer producer.Close()
	value := func(i int) string { return fmt.Sprintf(`{"id":"c-%05d","data":{"n":%d}}`, i, i*7) }
	for i := range n {
		producer.Produce(ctx, &kgo.Record{Key: []byte(fmt.Sprintf("k-%d", i)), Value: []byte(value(i)),
			Headers: []kgo.RecordHeader{{Key: pipeline.HeaderJobID, Value: []byte(fmt.Sprintf("job-%d", i%5))}}}, nil)
		if i%100 == 99 { // batches of 100, so that a small fetch holds a few
			require.NoError(t, producer.Flush(ctx))
		}
	}

	pools := &countedPools{}
	consumer, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.ConsumeTopics("pooled"), kgo.WithPools(pools),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(4<<10), kgo.FetchMaxPartitionBytes(4<<10))
	require.NoError(t, err)
	defer consumer.Close()
	var got []pipeline.Record
	fetches := 0
	for len(got) < n {
		fs := consumer.PollFetches(ctx)
		require.NoError(t, fs.Err())
		got = append(got, fromKgo(fs.Records())...)
		fetches++
	}
	require.Len(t, got, n)
	require.Greater(t, fetches, 2, "the records came in several fetches")
	require.Positive(t, pools.bytesBack.Load(), "decompressed buffers came back to the pool")
	require.Positive(t, pools.recordsBack.Load(), "record slices came back to the pool")
	for i, r := range got {
		require.Equal(t, int64(i), r.Offset)
		require.Equal(t, value(i), string(r.Value), "record %d", i)
		require.Equal(t, fmt.Sprintf("k-%d", i), string(r.Key))
		require.Equal(t, fmt.Sprintf("job-%d", i%5), string(r.Headers[0].Value))
	}
}

// TestProducerPlacesRecordsByRoute: records with a route (a command's
// entity and key) share a partition whatever their keys, routes spread
// over the partitions, and a record without one lands where any Kafka
// client puts its key (franz-go's default partitioner, Kafka's murmur2).
func TestProducerPlacesRecordsByRoute(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := kafkatest.NewCluster(t)
	require.NoError(t, EnsureTopics(ctx, Plaintext(b.Addr()), 12, -1, "routed", "keyed"))
	p, err := NewProducer(ProducerConfig{Cluster: Plaintext(b.Addr())})
	require.NoError(t, err)
	defer p.Close()
	const routes, perRoute, unrouted = 24, 10, 100
	var recs []pipeline.Record
	for i := range routes * perRoute {
		recs = append(recs, pipeline.Record{Key: fmt.Appendf(nil, "c-%d", i), Value: []byte("{}"),
			Route: fmt.Appendf(nil, "customers\x00cust-%d", i%routes)})
	}
	for i := range unrouted {
		recs = append(recs, pipeline.Record{Key: fmt.Appendf(nil, "u-%d", i), Value: []byte("{}")})
	}
	require.NoError(t, p.ProduceSync(ctx, "routed", recs...))

	// The unrouted keys as a client with franz-go's defaults places them.
	plain, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.DefaultProduceTopic("keyed"))
	require.NoError(t, err)
	defer plain.Close()
	for _, r := range recs[routes*perRoute:] {
		require.NoError(t, plain.ProduceSync(ctx, &kgo.Record{Key: r.Key, Value: r.Value}).FirstErr())
	}

	placed := func(topic string) map[string]int32 {
		at := map[string]int32{}
		require.NoError(t, Reader{Cluster: Plaintext(b.Addr())}.Read(ctx, topic, -1, func(r pipeline.Record) error {
			at[string(r.Key)] = r.Partition
			return nil
		}))
		return at
	}
	routed, keyed := placed("routed"), placed("keyed")
	require.Len(t, routed, len(recs))
	used := map[int32]bool{}
	for i := range routes * perRoute {
		require.Equal(t, routed[fmt.Sprintf("c-%d", i%routes)], routed[fmt.Sprintf("c-%d", i)], "record %d", i)
		used[routed[fmt.Sprintf("c-%d", i)]] = true
	}
	require.GreaterOrEqual(t, len(used), 8, "24 routes over 12 partitions")
	for i := range unrouted {
		k := fmt.Sprintf("u-%d", i)
		require.Equal(t, keyed[k], routed[k], "unrouted record %s", k)
	}
}

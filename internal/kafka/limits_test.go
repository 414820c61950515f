package kafka_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/pipeline"
)

// recordOf returns a record with spool's headers whose BatchBytes is size,
// its value incompressible, so that the broker sees it as it is (franz-go
// sends a batch compressed only when that is smaller).
func recordOf(t *testing.T, size int) pipeline.Record {
	r := pipeline.Record{Key: []byte("c-1"), Headers: []pipeline.Header{
		{Key: pipeline.HeaderJobID, Value: []byte("0193a6f2-0000-7000-8000-000000000000")},
		{Key: pipeline.HeaderTenant, Value: []byte("acme")},
		{Key: pipeline.HeaderIndex, Value: []byte("7")},
	}}
	r.Value = make([]byte, size-r.BatchBytes())
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range r.Value {
		r.Value[i] = byte(rnd.Uint32())
	}
	for r.BatchBytes() > size { // the value's length varint grew
		r.Value = r.Value[:len(r.Value)-1]
	}
	require.Equal(t, size, r.BatchBytes())
	return r
}

// TestBatchBytesPinsTheLimits: pipeline.Record.BatchBytes is never less
// than what franz-go measures against ProducerBatchMaxBytes nor what the
// broker measures against max.message.bytes, and at most 4 bytes more: a
// record of exactly the limit goes; 4 bytes more (5 for the broker) are
// refused, as too_large.
func TestBatchBytesPinsTheLimits(t *testing.T) {
	t.Parallel()
	b := kafkatest.NewCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	brokers := []string{b.Addr()}
	const limit = 200_000
	require.NoError(t, kafka.EnsureTopicsWith(ctx, kafka.Plaintext(brokers...), 1, -1,
		map[string]string{"max.message.bytes": strconv.Itoa(limit)}, "small"))
	require.NoError(t, kafka.EnsureTopics(ctx, kafka.Plaintext(brokers...), 1, -1, "default"))

	got, err := kafka.MaxMessageBytes(ctx, kafka.Plaintext(brokers...), "small", "default")
	require.NoError(t, err)
	require.Equal(t, limit, got["small"])
	require.Positive(t, got["default"])
	_, err = kafka.MaxMessageBytes(ctx, kafka.Plaintext(brokers...), "missing")
	require.Error(t, err)

	// The producer's own limit.
	p, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(brokers...), BatchMaxBytes: limit})
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.ProduceSync(ctx, "small", recordOf(t, limit)))
	err = p.ProduceSync(ctx, "small", recordOf(t, limit+4))
	require.Equal(t, pipeline.ClassTooLarge, pipeline.ClassOf(err), "%v", err)

	// The broker's: a producer allowing more, the topic's max.message.bytes
	// refuses what BatchBytes says is over it.
	loose, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(brokers...), BatchMaxBytes: 2 * limit})
	require.NoError(t, err)
	defer loose.Close()
	require.NoError(t, loose.ProduceSync(ctx, "small", recordOf(t, limit)))
	err = loose.ProduceSync(ctx, "small", recordOf(t, limit+5))
	require.Equal(t, pipeline.ClassTooLarge, pipeline.ClassOf(err), "%v", err)
	require.True(t, pipeline.IsPermanent(err))
}

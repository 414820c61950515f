package kafka_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/pipeline"
)

// TestReaderReadsToTheEnd: a partition whose log ends in transaction
// markers (an aborted transaction's records, then a committed one's) reads
// to its end at once, the aborted records left out; an empty topic and a
// missing one read as empty.
func TestReaderReadsToTheEnd(t *testing.T) {
	t.Parallel()
	b := kafkatest.NewCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	brokers := []string{b.Addr()}
	require.NoError(t, kafka.EnsureTopics(ctx, kafka.Plaintext(brokers...), 2, -1, "t", "empty"))

	plain, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(brokers...)})
	require.NoError(t, err)
	defer plain.Close()
	for i := range 3 {
		require.NoError(t, plain.ProduceSync(ctx, "t", pipeline.Record{Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")}))
	}
	txn, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID("reader-test"), kgo.DefaultProduceTopic("t"))
	require.NoError(t, err)
	defer txn.Close()
	for _, commit := range []kgo.TransactionEndTry{kgo.TryAbort, kgo.TryCommit} {
		require.NoError(t, txn.BeginTransaction())
		require.NoError(t, txn.ProduceSync(ctx, &kgo.Record{Key: []byte(fmt.Sprintf("txn-%v", bool(commit))), Value: []byte("v")}).FirstErr())
		require.NoError(t, txn.EndTransaction(ctx, commit))
	}

	r := kafka.Reader{Cluster: kafka.Plaintext(brokers...)}
	var keys []string
	start := time.Now()
	require.NoError(t, r.Read(ctx, "t", -1, func(rec pipeline.Record) error {
		keys = append(keys, string(rec.Key))
		return nil
	}))
	require.Less(t, time.Since(start), 10*time.Second, "no wait for a record past the markers")
	require.ElementsMatch(t, []string{"k0", "k1", "k2", "txn-true"}, keys)

	for _, topic := range []string{"empty", "missing"} {
		require.NoError(t, r.Read(ctx, topic, -1, func(pipeline.Record) error {
			t.Fatalf("%s has no records", topic)
			return nil
		}))
	}
}

// TestEnsureTopicsWithConfigs: a topic created with configs carries them
// (the replay checkpoint is created compacted).
func TestEnsureTopicsWithConfigs(t *testing.T) {
	t.Parallel()
	b := kafkatest.NewCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, kafka.EnsureTopicsWith(ctx, kafka.Plaintext(b.Addr()), 1, -1, map[string]string{"cleanup.policy": "compact"}, "compacted"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()))
	require.NoError(t, err)
	defer cl.Close()
	configs, err := kadm.NewClient(cl).DescribeTopicConfigs(ctx, "compacted")
	require.NoError(t, err)
	rc, err := configs.On("compacted", nil)
	require.NoError(t, err)
	var policy string
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" && c.Value != nil {
			policy = *c.Value
		}
	}
	require.Equal(t, "compact", policy)
}

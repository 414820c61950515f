package harness_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/tools/harness"
)

// TestKafkaProxyCutsOneClient: behind a broker that advertises the proxy,
// a client that is cut off cannot reach the broker while another can, and
// once restored it reaches it again on its own.
func TestKafkaProxyCutsOneClient(t *testing.T) {
	addr, err := harness.FreeAddr()
	require.NoError(t, err)
	proxy, err := harness.NewKafkaProxy(addr)
	require.NoError(t, err)
	defer proxy.Close()
	b, err := broker.Start(broker.Config{Addr: addr, Advertise: proxy.Addr(), Partitions: 1})
	require.NoError(t, err)
	defer b.Close()
	require.Equal(t, proxy.Addr(), b.Addr(), "the broker advertises the proxy")
	require.Equal(t, addr, b.ListenAddr())

	client := func(id string) *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(proxy.Addr()), kgo.ClientID(id), kgo.DefaultProduceTopic("t"),
			kgo.RequestTimeoutOverhead(time.Second))
		require.NoError(t, err)
		t.Cleanup(cl.Close)
		return cl
	}
	produce := func(cl *kgo.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cl.ProduceSync(ctx, &kgo.Record{Value: []byte("x")}).FirstErr()
	}
	a, other := client("a"), client("b")
	_, err = kadm.NewClient(other).CreateTopic(context.Background(), 1, 1, nil, "t")
	require.NoError(t, err)
	require.NoError(t, produce(a))
	require.NoError(t, produce(other))

	require.Positive(t, proxy.Cut("a"), "a's connections are cut")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.Error(t, a.Ping(ctx), "a cut-off client reaches nothing")
	require.NoError(t, produce(other), "another client is not cut")

	proxy.Restore("a")
	require.NoError(t, produce(a), "a restored client reaches the broker again")
}

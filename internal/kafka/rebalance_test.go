package kafka

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/pipeline"
)

// noOffsets has nothing stored: every partition starts at its beginning.
type noOffsets struct{}

func (noOffsets) LoadOffset(context.Context, string, int32) (int64, error) { return -1, nil }

// acceptAll applies every batch and takes every dead letter.
type acceptAll struct{}

func (acceptAll) WriteBatch(_ context.Context, b *pipeline.Batch, _ *pipeline.Deduped) ([]pipeline.Outcome, error) {
	out := make([]pipeline.Outcome, len(b.Messages))
	for i := range out {
		out[i] = pipeline.OutcomeApplied
	}
	return out, nil
}

func (acceptAll) DeadLetter(context.Context, []*pipeline.Message) error { return nil }

// logLines is a slog handler's output, read while it is written.
type logLines struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.buf.String(), s)
}

// startTopic starts a broker with topic t of the given partitions, and a
// context that ends with the test (or a minute).
func startTopic(t *testing.T, partitions int32) (*broker.Broker, Cluster, context.Context, context.CancelFunc) {
	t.Helper()
	b := kafkatest.NewCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cluster := Plaintext(b.Addr())
	require.NoError(t, EnsureTopics(ctx, cluster, partitions, -1, "t"))
	return b, cluster, ctx, cancel
}

// newTestMember is a member of group g on topic t whose workers apply
// everything (acceptAll), logging to logs at debug level.
func newTestMember(t *testing.T, cluster Cluster, name string, logs io.Writer, fetchFailed func(error)) *Consumer {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("member", name)
	c, err := NewConsumer(ConsumerConfig{
		Cluster: cluster, Topic: "t", Group: "g", FetchMaxBytes: 1 << 20, FetchMaxPartitionBytes: 1 << 20,
		SessionTimeout: 10 * time.Second, RebalanceTimeout: 30 * time.Second, Protocol: ProtocolConsumer,
		Offsets: noOffsets{}, Backoff: fastRetries, Logger: logger, FetchFailed: fetchFailed,
		NewWorker: func(p int32, next int64, committed func(int64)) *pipeline.Worker {
			return pipeline.NewWorker(pipeline.WorkerConfig{Topic: "t", Partition: p, NextOffset: next, BatchSize: 1000,
				BatchMaxWait: 10 * time.Millisecond, FlushTimeout: time.Second, Catalog: pipeline.NewCatalog(nil),
				Store: acceptAll{}, DeadLetters: acceptAll{}, Committed: committed,
				LoadOffset: func(context.Context) (int64, error) { return -1, nil }, Logger: logger,
				Backoff: func() backoff.BackOff { return &backoff.StopBackOff{} }}, 1)
		},
	})
	require.NoError(t, err)
	return c
}

// TestRebalanceWaitsForPolledRecords: records a member has polled reach the
// workers of the assignment they were fetched under before any rebalance
// callback runs. A second member joins while the first holds a poll's
// records; the revocation it needs waits (franz-go says the callback is
// blocked) until the records are dispatched. Were it to run first, the
// records could reach a worker made by a later assignment of their
// partition, which would take them for its start and skip what lies
// between.
func TestRebalanceWaitsForPolledRecords(t *testing.T) {
	t.Parallel()
	_, cluster, ctx, cancel := startTopic(t, 2)
	producer, err := NewProducer(ProducerConfig{Cluster: cluster})
	require.NoError(t, err)
	defer producer.Close()
	for i := range 20 {
		require.NoError(t, producer.ProduceSync(ctx, "t", pipeline.Record{Key: fmt.Appendf(nil, "k%d", i), Value: []byte("{}")}))
	}

	var first logLines
	a := newTestMember(t, cluster, "a", &first, nil)
	holding, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a.polled = func() {
		once.Do(func() {
			close(holding)
			<-release
		})
	}
	runs := make(chan error, 2)
	go func() { runs <- a.Run(ctx) }()
	<-holding // a has its first records in hand

	second := newTestMember(t, cluster, "b", io.Discard, nil)
	go func() { runs <- second.Run(ctx) }()
	require.Eventually(t, func() bool { return first.has("a rebalance waits for the records polled") },
		30*time.Second, 10*time.Millisecond, "b's join asks a to give a partition up")
	require.False(t, first.has("partitions revoked"), "no revocation while a's records are in hand")
	close(release)
	require.Eventually(t, func() bool { return first.has("partitions revoked") }, 30*time.Second, 10*time.Millisecond,
		"once dispatched, the revocation runs")
	cancel()
	for range 2 {
		require.NoError(t, <-runs)
	}
}

// TestFetchErrorsAreClassified: a fetch the broker refuses (not allowed to
// read the topic) reaches FetchFailed as an internal error, for the
// spool_processor_fetch_errors_total metric.
func TestFetchErrorsAreClassified(t *testing.T) {
	t.Parallel()
	b, cluster, ctx, cancel := startTopic(t, 1)
	b.Cluster().ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		fetch := req.(*kmsg.FetchRequest)
		resp := fetch.ResponseKind().(*kmsg.FetchResponse)
		for _, rt := range fetch.Topics {
			st := kmsg.NewFetchResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewFetchResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.TopicAuthorizationFailed.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	failed := make(chan error, 16)
	c := newTestMember(t, cluster, "a", io.Discard, func(err error) {
		select {
		case failed <- err:
		default:
		}
	})
	runs := make(chan error, 1)
	go func() { runs <- c.Run(ctx) }()
	select {
	case err := <-failed:
		require.ErrorIs(t, err, kerr.TopicAuthorizationFailed)
		require.Equal(t, pipeline.ClassInternal, pipeline.ClassOf(err))
	case <-ctx.Done():
		t.Fatal("no fetch error reached FetchFailed")
	}
	cancel()
	require.NoError(t, <-runs)
}

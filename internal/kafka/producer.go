package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

// ProducerConfig configures a Producer.
type ProducerConfig struct {
	Cluster Cluster
	// MaxBufferedBytes bounds what may wait for acknowledgement; Produce
	// blocks past it, which is how a slow broker slows an upload down.
	MaxBufferedBytes int
	// Linger lets records gather into bigger batches.
	Linger time.Duration
	// BatchMaxBytes is franz-go's ProducerBatchMaxBytes: the largest record
	// batch it sends, and so the largest record it takes
	// (pipeline.Record.BatchBytes). Set it to the topic's max.message.bytes
	// (MaxMessageBytes); 0 leaves franz-go's default, 1,000,012.
	BatchMaxBytes int
	// Hooks are franz-go hooks (client metrics) for the producer's client.
	Hooks  []any
	Logger *slog.Logger
}

// The upload producer's settings, chosen with the ingress benchmark
// (docs/benchmarks.md): the buffer bounds ingress memory and slows an upload
// to the broker's pace, and a short linger fills batches without adding
// latency an upload would notice.
const (
	UploadBufferBytes = 64 << 20
	UploadLinger      = 5 * time.Millisecond
)

// Producer produces with the idempotent producer and acks=all, so that an
// acknowledged record is durably in Kafka and a retried send is not written
// twice.
type Producer struct {
	cl *kgo.Client
}

// NewProducer connects a producer.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	opts := []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(cfg.Linger),
		kgo.RecordDeliveryTimeout(30 * time.Second),
		kgo.RecordPartitioner(routePartitioner{}),
		kgo.WithLogger(slogLogger{cfg.Logger}),
		kgo.WithHooks(hooks(cfg.Hooks)...),
	}
	if cfg.MaxBufferedBytes > 0 {
		opts = append(opts, kgo.MaxBufferedBytes(cfg.MaxBufferedBytes))
	}
	if cfg.BatchMaxBytes > 0 {
		opts = append(opts, kgo.ProducerBatchMaxBytes(int32(min(cfg.BatchMaxBytes, MaxBatchBytes))))
	}
	cl, err := cfg.Cluster.newClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("creating kafka producer: %w", err)
	}
	return &Producer{cl: cl}, nil
}

// Produce sends r to topic; done is called once with the broker's verdict.
// It blocks while the producer's buffer is full.
func (p *Producer) Produce(ctx context.Context, topic string, r *pipeline.Record, done func(error)) {
	p.cl.Produce(ctx, toKgo(ctx, r, topic), func(_ *kgo.Record, err error) { done(classify(err)) })
}

// ProduceSync sends records to topic and returns once all are acknowledged.
func (p *Producer) ProduceSync(ctx context.Context, topic string, recs ...pipeline.Record) error {
	ks := make([]*kgo.Record, len(recs))
	for i := range recs {
		ks[i] = toKgo(ctx, &recs[i], topic)
	}
	return classify(p.cl.ProduceSync(ctx, ks...).FirstErr())
}

// Ping checks that a broker answers.
func (p *Producer) Ping(ctx context.Context) error { return classify(p.cl.Ping(ctx)) }

// Close flushes nothing: callers wait for their own records. It closes the
// client.
func (p *Producer) Close() { p.cl.Close() }

func hooks(hs []any) []kgo.Hook {
	out := make([]kgo.Hook, len(hs))
	for i, h := range hs {
		out[i] = h
	}
	return out
}

// EnsureTopics creates the topics that do not exist yet.
func EnsureTopics(ctx context.Context, cluster Cluster, partitions int32, replication int16, topics ...string) error {
	return EnsureTopicsWith(ctx, cluster, partitions, replication, nil, topics...)
}

// EnsureTopicsWith is EnsureTopics with topic configs (cleanup.policy, …)
// for the topics it creates; existing topics are left as they are.
func EnsureTopicsWith(ctx context.Context, cluster Cluster, partitions int32, replication int16, configs map[string]string, topics ...string) error {
	var cfg map[string]*string
	if len(configs) > 0 {
		cfg = make(map[string]*string, len(configs))
		for k, v := range configs {
			cfg[k] = &v
		}
	}
	// Its caller waits for the brokers with backoff of its own, and logs
	// each try: franz-go's retries would only hide them.
	cl, err := cluster.newClient(kgo.RetryTimeout(dialTimeout))
	if err != nil {
		return fmt.Errorf("creating kafka admin client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	resps, err := adm.CreateTopics(ctx, partitions, replication, cfg, topics...)
	if err != nil {
		if why := cluster.explainClosed(ctx, err); why != nil {
			return pipeline.Classify(pipeline.ClassInternal, why)
		}
		return classify(fmt.Errorf("creating topics: %w", err))
	}
	for _, r := range resps.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return classify(fmt.Errorf("creating topic %s: %w", r.Topic, r.Err))
		}
	}
	return nil
}

// classify marks Kafka errors: a record too large for the topic or the
// producer (the broker's MESSAGE_TOO_LARGE or RECORD_LIST_TOO_LARGE, or
// franz-go refusing a record larger than its batch limit before sending it,
// which it reports as MESSAGE_TOO_LARGE too) is permanent for that record,
// since the same bytes will never fit; retriable protocol errors, timeouts
// and connection failures are transient; the rest is internal (never
// permanent, since a broker problem is not the command's fault).
func classify(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		return pipeline.Classify(pipeline.ClassTooLarge, err)
	}
	if access := accessError(err); access != nil {
		return pipeline.Classify(pipeline.ClassInternal, access)
	}
	if kerr.IsRetriable(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kgo.ErrRecordTimeout) ||
		errors.Is(err, kgo.ErrRecordRetries) || isNetErr(err) {
		return pipeline.Classify(pipeline.ClassTransient, err)
	}
	return pipeline.Classify(pipeline.ClassInternal, err)
}

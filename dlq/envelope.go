package dlq

import (
	"context"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/spoolhq/spool/pipeline"
)

// Header names added to a dead-lettered record.
const (
	HeaderErrorClass      = "spool-dlq-error-class"
	HeaderError           = "spool-dlq-error"
	HeaderSourceTopic     = "spool-dlq-source-topic"
	HeaderSourcePartition = "spool-dlq-source-partition"
	HeaderSourceOffset    = "spool-dlq-source-offset"
	HeaderAttempt         = "spool-dlq-attempt"
	HeaderFirstFailure    = "spool-dlq-first-failure"
	HeaderLastFailure     = "spool-dlq-last-failure"
	HeaderCommandID       = "spool-dlq-command-id"
	HeaderInstance        = "spool-dlq-processor"
)

// maxErrorHeader bounds the error message header, so that a long database
// message cannot push a dead letter past the broker's record size.
const maxErrorHeader = 1024

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// Producer sends records and returns once all are acknowledged.
type Producer interface {
	ProduceSync(ctx context.Context, topic string, recs ...pipeline.Record) error
}

// Publisher parks messages in the dead-letter topic.
type Publisher struct {
	producer Producer
	topic    string
	instance string
	now      func() time.Time
}

// NewPublisher returns a publisher writing to topic; instance names this
// processor in the records it writes.
func NewPublisher(p Producer, topic, instance string) *Publisher {
	return &Publisher{producer: p, topic: topic, instance: instance, now: time.Now}
}

// DeadLetter implements pipeline.DeadLetterer.
func (p *Publisher) DeadLetter(ctx context.Context, msgs []*pipeline.Message) error {
	recs := make([]pipeline.Record, len(msgs))
	for i, m := range msgs {
		recs[i] = p.envelope(m)
	}
	return p.producer.ProduceSync(ctx, p.topic, recs...)
}

// envelope keeps the original key, value and headers (earlier dlq headers
// excepted) and appends the dead-letter headers.
func (p *Publisher) envelope(m *pipeline.Message) pipeline.Record {
	now := p.now().UTC().Format(time.RFC3339Nano)
	first, attempt := now, 1
	src := m.Record
	hs := make([]pipeline.Header, 0, len(src.Headers)+10)
	for _, h := range src.Headers {
		switch h.Key {
		case HeaderFirstFailure:
			first = string(h.Value)
			continue
		case HeaderAttempt:
			if n, err := strconv.Atoi(string(h.Value)); err == nil {
				attempt = n + 1
			}
			continue
		case HeaderErrorClass, HeaderError, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset,
			HeaderLastFailure, HeaderCommandID, HeaderInstance:
			continue
		}
		hs = append(hs, h)
	}
	add := func(k, v string) { hs = append(hs, pipeline.Header{Key: k, Value: []byte(v)}) }
	add(HeaderErrorClass, string(pipeline.ClassOf(m.Err)))
	add(HeaderError, truncate(m.Err.Error(), maxErrorHeader))
	add(HeaderSourceTopic, src.Topic)
	add(HeaderSourcePartition, strconv.Itoa(int(src.Partition)))
	add(HeaderSourceOffset, strconv.FormatInt(src.Offset, 10))
	add(HeaderAttempt, strconv.Itoa(attempt))
	add(HeaderFirstFailure, first)
	add(HeaderLastFailure, now)
	add(HeaderCommandID, string(src.Key))
	add(HeaderInstance, p.instance)
	return pipeline.Record{Key: src.Key, Value: src.Value, Headers: hs}
}

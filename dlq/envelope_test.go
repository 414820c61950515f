package dlq

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

type captured struct {
	topic string
	recs  []pipeline.Record
}

func (c *captured) ProduceSync(_ context.Context, topic string, recs ...pipeline.Record) error {
	c.topic, c.recs = topic, append(c.recs, recs...)
	return nil
}

func headers(r pipeline.Record) map[string]string {
	hs := map[string]string{}
	for _, h := range r.Headers {
		hs[h.Key] = string(h.Value)
	}
	return hs
}

func TestEnvelopeKeepsOriginalAndCountsAttempts(t *testing.T) {
	t.Parallel()
	var out captured
	p := NewPublisher(&out, "spool.commands.dlq", "host/1")
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p.now = func() time.Time { return first }
	src := pipeline.Record{Topic: "spool.commands", Partition: 3, Offset: 42, Key: []byte("c-1"), Value: []byte(`{"id":"c-1"}`),
		Headers: []pipeline.Header{{Key: pipeline.HeaderJobID, Value: []byte("job-9")}}}
	m := &pipeline.Message{Record: src, Err: pipeline.Errorf(pipeline.ClassConstraint, "violates check constraint")}
	require.NoError(t, p.DeadLetter(context.Background(), []*pipeline.Message{m}))
	require.Equal(t, "spool.commands.dlq", out.topic)
	r := out.recs[0]
	require.Equal(t, src.Key, r.Key)
	require.Equal(t, src.Value, r.Value)
	hs := headers(r)
	require.Equal(t, map[string]string{
		pipeline.HeaderJobID:  "job-9",
		HeaderErrorClass:      "constraint_violation",
		HeaderError:           "violates check constraint",
		HeaderSourceTopic:     "spool.commands",
		HeaderSourcePartition: "3",
		HeaderSourceOffset:    "42",
		HeaderAttempt:         "1",
		HeaderFirstFailure:    "2026-01-02T03:04:05Z",
		HeaderLastFailure:     "2026-01-02T03:04:05Z",
		HeaderCommandID:       "c-1",
		HeaderInstance:        "host/1",
	}, hs)

	// The same command failing again (after a replay) keeps its first
	// failure time and counts one more attempt; no header is doubled.
	p.now = func() time.Time { return first.Add(time.Hour) }
	again := &pipeline.Message{Record: pipeline.Record{Topic: "spool.commands", Partition: 1, Offset: 7, Key: r.Key, Value: r.Value, Headers: r.Headers},
		Err: pipeline.Errorf(pipeline.ClassConstraint, "still bad")}
	require.NoError(t, p.DeadLetter(context.Background(), []*pipeline.Message{again}))
	r2 := out.recs[1]
	hs2 := headers(r2)
	require.Equal(t, "2", hs2[HeaderAttempt])
	require.Equal(t, "2026-01-02T03:04:05Z", hs2[HeaderFirstFailure])
	require.Equal(t, "2026-01-02T04:04:05Z", hs2[HeaderLastFailure])
	require.Equal(t, "still bad", hs2[HeaderError])
	require.Len(t, r2.Headers, len(r.Headers))
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	require.Equal(t, "short", truncate("short", 10))
	got := truncate("ééééé", 7) // é is two bytes; the cut lands on a rune boundary
	require.Equal(t, "éé…", got)
	require.LessOrEqual(t, len(got), 7)
}

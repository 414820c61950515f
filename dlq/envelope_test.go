package dlq

import (
	"context"
	"strings"
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

	// Replayed and failing again, the command keeps its first failure time
	// and counts one more attempt; no header is doubled.
	e, err := Parse(withCoordinates(r, "spool.commands.dlq", 0, 5))
	require.NoError(t, err)
	replay := e.ReplayRecord()
	require.Equal(t, "spool.commands", replay.Topic)
	rh := headers(replay)
	require.Equal(t, "2", rh[HeaderAttempt])
	require.Equal(t, "spool.commands.dlq:0:5", rh[HeaderReplayOf])
	require.Equal(t, "job-9", rh[pipeline.HeaderJobID])
	require.NotContains(t, rh, HeaderErrorClass, "a replayed command carries no dead-letter verdict")

	p.now = func() time.Time { return first.Add(time.Hour) }
	replay.Partition, replay.Offset = 1, 7
	again := &pipeline.Message{Record: replay, Err: pipeline.Errorf(pipeline.ClassConstraint, "still bad")}
	require.NoError(t, p.DeadLetter(context.Background(), []*pipeline.Message{again}))
	r2 := out.recs[1]
	hs2 := headers(r2)
	require.Equal(t, "2", hs2[HeaderAttempt])
	require.Equal(t, "2026-01-02T03:04:05Z", hs2[HeaderFirstFailure])
	require.Equal(t, "2026-01-02T04:04:05Z", hs2[HeaderLastFailure])
	require.Equal(t, "still bad", hs2[HeaderError])
	require.Equal(t, "spool.commands.dlq:0:5", hs2[HeaderReplayOf])
	require.Len(t, r2.Headers, len(r.Headers)+1, "one more header: replay-of")
	e2, err := Parse(r2)
	require.NoError(t, err)
	require.Equal(t, 2, e2.Attempt)
	require.Equal(t, int32(1), e2.SourcePartition)
}

func withCoordinates(r pipeline.Record, topic string, p int32, o int64) pipeline.Record {
	r.Topic, r.Partition, r.Offset = topic, p, o
	return r
}

func TestParseRoundTrip(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.UTC)
	e := &Envelope{
		Key: []byte("c-7"), Value: []byte(`{"id":"c-7","entity":"customers"}`),
		Headers:    []pipeline.Header{{Key: "trace", Value: []byte("abc")}},
		ErrorClass: pipeline.ClassConstraint, Error: "violates check constraint \"positive\"",
		SourceTopic: "spool.commands", SourcePartition: 4, SourceOffset: 99, Attempt: 3,
		FirstFailure: at, LastFailure: at.Add(time.Minute), JobID: "job-1", Tenant: "acme",
		CommandID: "c-7", Index: 12, Instance: "host/9", ReplayOf: "spool.commands.dlq:4:2",
		Topic: "spool.commands.dlq", Partition: 2, Offset: 8,
	}
	got, err := Parse(withCoordinates(e.Record(), e.Topic, e.Partition, e.Offset))
	require.NoError(t, err)
	require.Equal(t, e, got)
	require.Equal(t, "customers", got.Entity())
	require.Equal(t, "2:8", got.Coordinates())
}

func TestParseNamesTheBadHeader(t *testing.T) {
	t.Parallel()
	good := (&Envelope{ErrorClass: "internal", SourceTopic: "t", Attempt: 1, Index: -1}).Record()
	set := func(key, value string) pipeline.Record {
		r := good
		r.Headers = nil
		for _, h := range good.Headers {
			if h.Key == key {
				if value == "<drop>" {
					continue
				}
				h = pipeline.Header{Key: key, Value: []byte(value)}
			}
			r.Headers = append(r.Headers, h)
		}
		return r
	}
	for _, tc := range []struct{ key, value, want string }{
		{HeaderErrorClass, "<drop>", "header spool-dlq-error-class is missing"},
		{HeaderSourcePartition, "x", `header spool-dlq-source-partition="x" is not an integer`},
		{HeaderAttempt, "0", "attempts count from 1"},
		{HeaderFirstFailure, "yesterday", `header spool-dlq-first-failure="yesterday" is not an RFC 3339 time`},
	} {
		_, err := Parse(set(tc.key, tc.value))
		require.ErrorContains(t, err, tc.want)
	}
	dup := good
	dup.Headers = append(append([]pipeline.Header{}, good.Headers...), pipeline.Header{Key: HeaderAttempt, Value: []byte("2")})
	_, err := Parse(dup)
	require.ErrorContains(t, err, "header spool-dlq-attempt appears twice")
	_, err = Parse(pipeline.Record{Value: []byte(`{"id":"x"}`)})
	require.ErrorContains(t, err, "not a dead letter")
}

// FuzzParse: Parse never panics, and what it accepts encodes back to a
// record it parses to the same envelope.
func FuzzParse(f *testing.F) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	seed := (&Envelope{Key: []byte("k"), Value: []byte("{}"), ErrorClass: "constraint_violation", Error: "e",
		SourceTopic: "spool.commands", SourcePartition: 1, SourceOffset: 2, Attempt: 1, FirstFailure: at, LastFailure: at,
		JobID: "j", Tenant: "t", CommandID: "k", Index: 3, Instance: "i"}).Record()
	var names, values []string
	for _, h := range seed.Headers {
		names, values = append(names, h.Key), append(values, string(h.Value))
	}
	f.Add(strings.Join(names, "\n"), strings.Join(values, "\n"), "k", "{}")
	f.Add("spool-dlq-attempt\nspool-dlq-attempt", "1\n2", "", "")
	f.Fuzz(func(t *testing.T, keys, vals, key, value string) {
		ks, vs := strings.Split(keys, "\n"), strings.Split(vals, "\n")
		r := pipeline.Record{Key: []byte(key), Value: []byte(value)}
		for i := range min(len(ks), len(vs)) {
			r.Headers = append(r.Headers, pipeline.Header{Key: ks[i], Value: []byte(vs[i])})
		}
		e, err := Parse(r)
		if err != nil {
			return
		}
		e.Error = truncate(e.Error, maxErrorHeader)
		again, err := Parse(e.Record())
		require.NoError(t, err)
		again.Topic, again.Partition, again.Offset, again.Timestamp = e.Topic, e.Partition, e.Offset, e.Timestamp
		require.Equal(t, e.ErrorClass, again.ErrorClass)
		require.Equal(t, e.Attempt, again.Attempt)
		require.Equal(t, e.SourceOffset, again.SourceOffset)
		require.True(t, e.FirstFailure.Equal(again.FirstFailure))
		require.Equal(t, e.Index, again.Index)
		require.Equal(t, e.JobID, again.JobID)
	})
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	require.Equal(t, "short", truncate("short", 10))
	got := truncate("ééééé", 7) // é is two bytes; the cut lands on a rune boundary
	require.Equal(t, "éé…", got)
	require.LessOrEqual(t, len(got), 7)
}

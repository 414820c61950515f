package dlq

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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
	m := &pipeline.Message{Record: &src, Err: pipeline.Errorf(pipeline.ClassConstraint, "violates check constraint")}
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
	replay := e.ReplayRecord("spool.commands")
	require.Equal(t, "spool.commands", replay.Topic)
	rh := headers(replay)
	require.Equal(t, "2", rh[HeaderAttempt])
	require.Equal(t, "spool.commands.dlq:0:5", rh[HeaderReplayOf])
	require.Equal(t, "job-9", rh[pipeline.HeaderJobID])
	require.NotContains(t, rh, HeaderErrorClass, "a replayed command carries no dead-letter verdict")

	p.now = func() time.Time { return first.Add(time.Hour) }
	replay.Partition, replay.Offset = 1, 7
	again := &pipeline.Message{Record: &replay, Err: pipeline.Errorf(pipeline.ClassConstraint, "still bad")}
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
		again, err := Parse(e.Record())
		require.NoError(t, err)
		again.Topic, again.Partition, again.Offset, again.Timestamp = e.Topic, e.Partition, e.Offset, e.Timestamp
		require.Equal(t, e.ErrorClass, again.ErrorClass)
		require.Equal(t, e.Attempt, again.Attempt)
		require.Equal(t, e.SourceOffset, again.SourceOffset)
		require.True(t, e.FirstFailure.Equal(again.FirstFailure))
		require.Equal(t, e.Index, again.Index)
		require.Equal(t, pipeline.Printable(string(e.JobID), maxHeader), string(again.JobID))
		require.Equal(t, pipeline.Printable(e.Error, maxErrorHeader), again.Error)
		require.Equal(t, e.ValueTruncated, again.ValueTruncated)
	})
}

// TestDeadLetterAlwaysFits: a dead letter is bounded by the topic's limit
// whatever the record held. The value is kept whole when it fits, cut with
// its original size in spool-dlq-value-truncated when not, and every header
// carrying user bytes is bounded and printable; the message is marked so
// that the store keeps the whole command in the failure row.
func TestDeadLetterAlwaysFits(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	var out captured
	p := NewPublisher(&out, "spool.commands.dlq", "host/1")
	p.MaxRecordBytes = limit
	value := []byte(`{"id":"c-1","data":{"note":"` + strings.Repeat("é", 40_000) + `"}}`)
	hs := []pipeline.Header{
		{Key: pipeline.HeaderJobID, Value: []byte("job-1")},
		{Key: pipeline.HeaderTenant, Value: []byte("acme")},
		{Key: pipeline.HeaderIndex, Value: []byte("3")},
	}
	small := &pipeline.Message{Record: &pipeline.Record{Topic: "spool.commands", Key: []byte("c-0"), Value: []byte(`{"id":"c-0"}`), Headers: hs},
		Err: pipeline.Errorf(pipeline.ClassConstraint, "violates check constraint")}
	big := &pipeline.Message{Record: &pipeline.Record{Topic: "spool.commands", Key: []byte("c-1"), Value: value, Headers: hs},
		Err: pipeline.Errorf(pipeline.ClassConstraint, "violates check constraint: %s", strings.Repeat("\x1b[31m", 1000))}
	// Another producer's record: a huge key and headers of its own.
	hostile := &pipeline.Message{Record: &pipeline.Record{Topic: "spool.commands", Key: []byte(strings.Repeat("k\n", 40_000)),
		Value: value, Headers: []pipeline.Header{
			{Key: "trace", Value: make([]byte, 70_000)},
			{Key: pipeline.HeaderTenant, Value: []byte(strings.Repeat("\x1b", 5000))},
			{Key: pipeline.HeaderReplayOf, Value: []byte(strings.Repeat("r", 5000))},
		}}, Err: pipeline.Errorf(pipeline.ClassInvalidCommand, "not a command")}
	require.NoError(t, p.DeadLetter(context.Background(), []*pipeline.Message{small, big, hostile}))
	require.Len(t, out.recs, 3)
	for _, r := range out.recs {
		require.LessOrEqual(t, r.BatchBytes(), limit)
		for _, h := range r.Headers {
			if h.Key != "trace" {
				require.LessOrEqual(t, len(h.Value), maxErrorHeader, h.Key)
				require.Equal(t, pipeline.Printable(string(h.Value), maxErrorHeader), string(h.Value), h.Key)
			}
		}
	}

	require.Equal(t, small.Record.Value, out.recs[0].Value, "kept whole when it fits")
	require.False(t, small.KeepValue)
	_, marked := out.recs[0].Header(HeaderValueTruncated)
	require.False(t, marked)

	require.True(t, big.KeepValue)
	size, _ := out.recs[1].Header(HeaderValueTruncated)
	require.Equal(t, strconv.Itoa(len(value)), size)
	require.True(t, bytes.HasPrefix(value, out.recs[1].Value))
	require.Greater(t, len(out.recs[1].Value), limit-4<<10, "as much of the value as fits")
	require.True(t, utf8.Valid(out.recs[1].Value), "cut on a rune boundary")
	e, err := Parse(out.recs[1])
	require.NoError(t, err)
	require.Equal(t, len(value), e.ValueTruncated)

	require.True(t, hostile.KeepValue)
	require.Empty(t, out.recs[2].Value)
	require.LessOrEqual(t, len(out.recs[2].Key), maxHeader)
	_, kept := out.recs[2].Header("trace")
	require.False(t, kept, "the minimal dead letter drops the original's other headers")
}

// tooLarge refuses records over limit as the broker would.
type tooLarge struct {
	captured
	limit int
	calls int
}

func (p *tooLarge) ProduceSync(ctx context.Context, topic string, recs ...pipeline.Record) error {
	p.calls++
	for _, r := range recs {
		if r.BatchBytes() > p.limit {
			return pipeline.Errorf(pipeline.ClassTooLarge, "MESSAGE_TOO_LARGE")
		}
	}
	return p.captured.ProduceSync(ctx, topic, recs...)
}

// TestDeadLetterTooLargeIsSentMinimal: when the topic refuses a dead letter
// as too large after all (its limit lowered since it was read), the
// publisher sends it once more without its value, instead of failing for
// ever behind its partition.
func TestDeadLetterTooLargeIsSentMinimal(t *testing.T) {
	t.Parallel()
	out := &tooLarge{limit: 8 << 10}
	p := NewPublisher(out, "spool.commands.dlq", "host/1")
	p.MaxRecordBytes = 1 << 20 // what it was told; the topic takes less
	m := &pipeline.Message{Record: &pipeline.Record{Topic: "spool.commands", Key: []byte("c-1"), Value: make([]byte, 100_000)},
		Err: pipeline.Errorf(pipeline.ClassConstraint, "violates check constraint")}
	require.NoError(t, p.DeadLetter(context.Background(), []*pipeline.Message{m}))
	require.Equal(t, 2, out.calls)
	require.Len(t, out.recs, 1)
	require.Empty(t, out.recs[0].Value)
	size, _ := out.recs[0].Header(HeaderValueTruncated)
	require.Equal(t, "100000", size)
	require.True(t, m.KeepValue)

	// Anything else is the worker's to retry.
	out = &tooLarge{limit: 10}
	p = NewPublisher(out, "spool.commands.dlq", "host/1")
	require.Error(t, p.DeadLetter(context.Background(), []*pipeline.Message{m}))
	require.Equal(t, 2, out.calls)
}

// FuzzRecordWithin: whatever the envelope holds and whatever the limit (a
// few kilobytes and up), the dead letter fits, parses, and says the value's
// original size exactly when it does not carry it whole.
func FuzzRecordWithin(f *testing.F) {
	f.Add([]byte("c-1"), []byte(`{"id":"c-1"}`), "job", "acme", "boom", 4096)
	f.Add([]byte(strings.Repeat("k", 3000)), []byte(strings.Repeat("é", 3000)), strings.Repeat("j", 600), "\x1b[2J", strings.Repeat("e", 5000), 6000)
	f.Fuzz(func(t *testing.T, key, value []byte, job, tenant, msg string, limit int) {
		limit = 6<<10 + abs(limit)%(64<<10)
		at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		e := &Envelope{Key: key, Value: value, Headers: []pipeline.Header{{Key: "x", Value: key}},
			ErrorClass: pipeline.ClassConstraint, Error: msg, SourceTopic: "spool.commands", Attempt: 1,
			FirstFailure: at, LastFailure: at, JobID: pipeline.JobID(job), Tenant: tenant, CommandID: pipeline.CommandID(key),
			Index: 1, Instance: "host/1"}
		r, cut := e.RecordWithin(limit)
		require.LessOrEqual(t, r.BatchBytes(), limit)
		got, err := Parse(r)
		require.NoError(t, err)
		if !cut {
			require.Equal(t, value, got.Value)
			require.Zero(t, got.ValueTruncated)
			return
		}
		require.Equal(t, max(len(value), 1), got.ValueTruncated)
		require.True(t, bytes.HasPrefix(value, got.Value))
	})
}

func abs(n int) int {
	if n < 0 {
		return -(n + 1)
	}
	return n
}

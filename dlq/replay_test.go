package dlq

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

// memTopics is an in-memory Reader and Producer for the replay's logic; the
// end-to-end tests run it against a broker.
type memTopics map[string][]pipeline.Record

func (m memTopics) Read(_ context.Context, topic string, partition int32, fn func(pipeline.Record) error) error {
	for _, r := range m[topic] {
		if partition >= 0 && r.Partition != partition {
			continue
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (m memTopics) ProduceSync(_ context.Context, topic string, recs ...pipeline.Record) error {
	for _, r := range recs {
		r.Topic, r.Offset = topic, int64(len(m[topic]))
		m[topic] = append(m[topic], r)
	}
	return nil
}

func deadLetters(n int, attempt func(i int) int) memTopics {
	m := memTopics{}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		e := &Envelope{Key: fmt.Appendf(nil, "c-%d", i), Value: []byte(`{}`), ErrorClass: pipeline.ClassConstraint,
			SourceTopic: "spool.commands", Attempt: attempt(i), FirstFailure: at, LastFailure: at.Add(time.Duration(i) * time.Hour),
			JobID: pipeline.JobID(fmt.Sprintf("job-%d", i%2)), Index: int64(i), CommandID: pipeline.CommandID(fmt.Sprintf("c-%d", i))}
		r := e.Record()
		r.Topic, r.Offset = "dlq", int64(i)
		m["dlq"] = append(m["dlq"], r)
	}
	m["dlq"] = append(m["dlq"], pipeline.Record{Topic: "dlq", Offset: int64(n), Value: []byte("not a dead letter")})
	return m
}

func TestReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := deadLetters(10, func(i int) int { return 1 + i/8 }) // the last two have failed twice
	var bad int
	opts := ReplayOptions{MaxAttempts: 2, Unreadable: func(pipeline.Record, error) { bad++ }}

	dry := opts
	dry.DryRun = true
	res, err := Replay(ctx, m, nil, "dlq", dry)
	require.NoError(t, err)
	require.Equal(t, ReplayResult{Selected: 10, Replayed: 8, Parked: 2, DryRun: true}, res)
	require.Empty(t, m["spool.commands"], "a dry run sends nothing")
	require.Equal(t, 1, bad)

	limited := opts
	limited.Limit = 3
	res, err = Replay(ctx, m, m, "dlq", limited)
	require.NoError(t, err)
	require.Equal(t, ReplayResult{Selected: 3, Replayed: 3}, res)
	require.Len(t, m["spool.commands"], 3)

	var told []Action
	opts.OnRecord = func(_ *Envelope, a Action) { told = append(told, a) }
	res, err = Replay(ctx, m, m, "dlq", opts)
	require.NoError(t, err)
	require.Equal(t, ReplayResult{Selected: 10, Replayed: 5, AlreadyReplayed: 3, Parked: 2}, res, "resumes where the limited run stopped")
	require.Len(t, m["spool.commands"], 8)
	require.Len(t, told, 10)

	res, err = Replay(ctx, m, m, "dlq", opts)
	require.NoError(t, err)
	require.Equal(t, 0, res.Replayed, "the same replay twice sends nothing twice")
	require.Len(t, m["spool.commands"], 8)

	// Each sent record names its dead letter and is the next attempt.
	seen := map[string]bool{}
	for _, r := range m["spool.commands"] {
		of, _ := r.Header(HeaderReplayOf)
		require.False(t, seen[of])
		seen[of] = true
		a, _ := r.Header(HeaderAttempt)
		require.Equal(t, "2", a)
	}
}

func TestFilter(t *testing.T) {
	t.Parallel()
	m := deadLetters(10, func(int) int { return 1 })
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	count := func(f Filter) int {
		n := 0
		require.NoError(t, Scan(context.Background(), m, "dlq", f, func(*Envelope) error { n++; return nil }, nil))
		return n
	}
	all := Filter{}
	require.Equal(t, 10, count(all))
	f := all
	f.Job = "job-1"
	require.Equal(t, 5, count(f))
	f = all
	f.Since, f.Until = at.Add(2*time.Hour), at.Add(5*time.Hour)
	require.Equal(t, 3, count(f), "since is inclusive, until exclusive")
	f = all
	f.ErrorClass = pipeline.ClassInternal
	require.Equal(t, 0, count(f))
	f = all
	f.Entity = "customers"
	require.Equal(t, 0, count(f))
	f = all
	zero, one := int32(0), int32(1)
	f.Partition = &zero
	require.Equal(t, 10, count(f))
	f.Partition = &one
	require.Equal(t, 0, count(f))
}

// failingTopic refuses produces to one topic.
type failingTopic struct {
	memTopics
	topic string
}

func (f failingTopic) ProduceSync(ctx context.Context, topic string, recs ...pipeline.Record) error {
	if topic == f.topic {
		return errors.New("broker away")
	}
	return f.memTopics.ProduceSync(ctx, topic, recs...)
}

// TestReplayRecordsWhatWasSent: when one source topic fails, what went to
// the others is checkpointed and counted, and the rerun sends the rest only.
func TestReplayRecordsWhatWasSent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := memTopics{}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 6 {
		e := &Envelope{Key: fmt.Appendf(nil, "c-%d", i), ErrorClass: pipeline.ClassConstraint, SourceTopic: []string{"a", "b"}[i%2],
			Attempt: 1, FirstFailure: at, LastFailure: at, Index: -1}
		r := e.Record()
		r.Topic, r.Offset = "dlq", int64(i)
		m["dlq"] = append(m["dlq"], r)
	}
	res, err := Replay(ctx, m, failingTopic{m, "b"}, "dlq", ReplayOptions{})
	require.ErrorContains(t, err, "broker away")
	require.Equal(t, 3, res.Replayed)
	require.Len(t, m["a"], 3)
	require.Len(t, m[CheckpointTopic("dlq")], 3)
	res, err = Replay(ctx, m, m, "dlq", ReplayOptions{})
	require.NoError(t, err)
	require.Equal(t, ReplayResult{Selected: 6, Replayed: 3, AlreadyReplayed: 3}, res)
	require.Len(t, m["a"], 3)
	require.Len(t, m["b"], 3)
}

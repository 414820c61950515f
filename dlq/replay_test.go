package dlq

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
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

// memLedger is what spool recorded of its dead letters, by job and index.
type memLedger map[pipeline.Origin]*pipeline.DeadLetterRecord

func (l memLedger) LookupDeadLetter(_ context.Context, job pipeline.JobID, index int64) (*pipeline.DeadLetterRecord, error) {
	return l[pipeline.Origin{Job: job, Index: index}], nil
}

// record notes e as a dead letter spool wrote.
func (l memLedger) record(e *Envelope) {
	sum := sha256.Sum256(e.Value)
	l[pipeline.Origin{Job: e.JobID, Index: e.Index}] = &pipeline.DeadLetterRecord{
		Tenant: e.Tenant, ID: e.CommandID, ValueHash: sum[:]}
}

// deadLetters writes n genuine dead letters (recorded in the ledger) and a
// record that is not a dead letter.
func deadLetters(n int, attempt func(i int) int) (memTopics, memLedger) {
	m, l := memTopics{}, memLedger{}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		e := &Envelope{Key: fmt.Appendf(nil, "c-%d", i), Value: []byte(`{}`), ErrorClass: pipeline.ClassConstraint,
			SourceTopic: "spool.commands", Attempt: attempt(i), FirstFailure: at, LastFailure: at.Add(time.Duration(i) * time.Hour),
			JobID: pipeline.JobID(fmt.Sprintf("job-%d", i%2)), Tenant: "acme", Index: int64(i), CommandID: pipeline.CommandID(fmt.Sprintf("c-%d", i))}
		l.record(e)
		m.add("dlq", e.Record())
	}
	m["dlq"] = append(m["dlq"], pipeline.Record{Topic: "dlq", Offset: int64(n), Value: []byte("not a dead letter")})
	return m, l
}

func (m memTopics) add(topic string, r pipeline.Record) {
	r.Topic, r.Offset = topic, int64(len(m[topic]))
	m[topic] = append(m[topic], r)
}

func TestReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m, ledger := deadLetters(10, func(i int) int { return 1 + i/8 }) // the last two have failed twice
	var bad int
	opts := ReplayOptions{Topic: "spool.commands", Ledger: ledger, MaxAttempts: 2, Unreadable: func(pipeline.Record, error) { bad++ }}

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
	m, _ := deadLetters(10, func(int) int { return 1 })
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

// failAfter is a producer that fails its sends to topic after n of them.
type failAfter struct {
	memTopics
	topic string
	n     *int
}

func (f failAfter) ProduceSync(ctx context.Context, topic string, recs ...pipeline.Record) error {
	if topic == f.topic {
		if *f.n == 0 {
			return errors.New("broker away")
		}
		*f.n--
	}
	return f.memTopics.ProduceSync(ctx, topic, recs...)
}

// TestReplayRecordsWhatWasSent: when a send fails, what went before is
// checkpointed and counted, and the rerun sends the rest only.
func TestReplayRecordsWhatWasSent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m, ledger := deadLetters(6, func(int) int { return 1 })
	opts := ReplayOptions{Topic: "spool.commands", Ledger: ledger, BatchSize: 3}
	sends := 1
	res, err := Replay(ctx, m, failAfter{m, "spool.commands", &sends}, "dlq", opts)
	require.ErrorContains(t, err, "broker away")
	require.Equal(t, 3, res.Replayed)
	require.Len(t, m["spool.commands"], 3)
	require.Len(t, m[CheckpointTopic("dlq")], 3)
	res, err = Replay(ctx, m, m, "dlq", opts)
	require.NoError(t, err)
	require.Equal(t, ReplayResult{Selected: 6, Replayed: 3, AlreadyReplayed: 3}, res)
	require.Len(t, m["spool.commands"], 6)
}

// TestReplayRefusesWhatSpoolDidNotRecord: the dead-letter topic is not
// trusted. A dead letter is sent only to the commands topic, and only when
// its job, index, tenant, command id, key and value match what spool
// recorded; everything else is refused, counted, listed and never sent. A
// dead letter whose value was cut is sent with the whole command.
func TestReplayRefusesWhatSpoolDidNotRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	genuine := func(i int) *Envelope {
		return &Envelope{Key: fmt.Appendf(nil, "c-%d", i), Value: fmt.Appendf(nil, `{"id":"c-%d"}`, i),
			ErrorClass: pipeline.ClassConstraint, SourceTopic: "spool.commands", Attempt: 1, FirstFailure: at, LastFailure: at,
			JobID: "job-a", Tenant: "acme", Index: int64(i), CommandID: pipeline.CommandID(fmt.Sprintf("c-%d", i))}
	}
	m, ledger := memTopics{}, memLedger{}
	for i := range 4 {
		ledger.record(genuine(i))
	}
	send := func(e *Envelope) { m.add("dlq", e.Record()) }
	send(genuine(0)) // sent
	forged := genuine(1)
	forged.SourceTopic = "payments" // chooses where it goes
	send(forged)
	forged = genuine(1)
	forged.Tenant = "globex" // whom it counts against
	send(forged)
	forged = genuine(2)
	forged.Index = 99 // never dead-lettered
	send(forged)
	forged = genuine(2)
	forged.JobID, forged.Index = "", -1 // no origin at all
	send(forged)
	forged = genuine(2)
	forged.CommandID, forged.Key = "c-x", []byte("c-x")
	send(forged)
	forged = genuine(2)
	forged.Key = []byte("c-x") // the header right, the key another
	send(forged)
	forged = genuine(2)
	forged.Value = []byte(`{"id":"c-2","entity":"payouts"}`) // genuine headers, another value
	send(forged)
	// Cut to fit its topic: sent whole from the failure row; refused when
	// the row keeps no command.
	whole := genuine(3).Record()
	cut, _ := genuine(3).RecordWithin(whole.BatchBytes() - 4)
	m.add("dlq", cut)
	ledger[pipeline.Origin{Job: "job-a", Index: 3}].Command = genuine(3).Value
	noCommand := genuine(1)
	noCommand.Value, noCommand.ValueTruncated = nil, 20
	send(noCommand)

	res, err := Replay(ctx, m, m, "dlq", ReplayOptions{Topic: "spool.commands", Ledger: ledger})
	require.NoError(t, err)
	require.Equal(t, 10, res.Selected)
	require.Equal(t, 2, res.Replayed)
	require.Equal(t, 8, res.Refused)
	require.Len(t, res.Refusals, 8)
	for _, want := range []string{"source-topic header names \"payments\"", "tenant header \"globex\"",
		"no dead-lettered command at index 99", "names no job", "command id \"c-x\"", "key \"c-x\"",
		"value is not the one", "keeps no command"} {
		found := false
		for _, f := range res.Refusals {
			found = found || strings.Contains(f.Reason, want)
		}
		require.True(t, found, "a refusal says %s: %+v", want, res.Refusals)
	}
	sent := m["spool.commands"]
	require.Len(t, sent, 2)
	require.Equal(t, genuine(0).Value, sent[0].Value)
	require.Equal(t, genuine(3).Value, sent[1].Value, "the whole command from the failure row")
	_, marked := sent[1].Header(HeaderValueTruncated)
	require.False(t, marked)

	// Nothing refused is checkpointed: a rerun refuses the same again.
	res, err = Replay(ctx, m, m, "dlq", ReplayOptions{Topic: "spool.commands", Ledger: ledger})
	require.NoError(t, err)
	require.Equal(t, ReplayResult{Selected: 10, AlreadyReplayed: 2, Refused: 8, Refusals: res.Refusals}, res)

	// --to-topic: the operator names the topic; the source header is not
	// asked, the ledger still is.
	res, err = Replay(ctx, m, m, "dlq", ReplayOptions{Topic: "payments", AnySource: true, Ledger: ledger})
	require.NoError(t, err)
	require.Equal(t, 1, res.Replayed)
	require.Equal(t, 7, res.Refused)
	require.Len(t, m["payments"], 1)
	require.Equal(t, genuine(1).Value, m["payments"][0].Value)

	_, err = Replay(ctx, m, m, "dlq", ReplayOptions{Topic: "spool.commands"})
	require.ErrorContains(t, err, "job ledger")
}

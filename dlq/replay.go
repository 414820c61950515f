package dlq

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// CheckpointTopic is where replays record what they sent: one record per
// replayed dead letter, keyed by its PARTITION:OFFSET. A replay skips what
// the checkpoint holds, so running the same replay twice sends nothing
// twice. (Compaction suits it: only the keys matter.)
func CheckpointTopic(dlqTopic string) string { return dlqTopic + ".replayed" }

// Action is what a replay does with one selected dead letter.
type Action string

const (
	// ActionReplay means it was sent back to its source topic (or would be, in a dry run).
	ActionReplay Action = "replay"
	// ActionSkip means an earlier replay sent it already.
	ActionSkip Action = "already_replayed"
	// ActionPark means it failed MaxAttempts times; it stays in the dead-letter
	// topic until an operator raises the bound.
	ActionPark Action = "parked"
	// ActionRefuse means it does not match what spool recorded when it
	// dead-lettered the command (or names another topic): never sent.
	ActionRefuse Action = "refused"
)

// Ledger is what spool recorded of the commands it dead-lettered
// (postgres.Store implements it). The dead-letter topic is only as
// trustworthy as whoever may write to it, so a replay sends a dead letter
// only when it matches this record.
type Ledger interface {
	// LookupDeadLetter returns the record of the command spool
	// dead-lettered at index of job, or nil when there is none: spool
	// never dead-lettered it, or it was replayed and settled since.
	LookupDeadLetter(ctx context.Context, job pipeline.JobID, index int64) (*pipeline.DeadLetterRecord, error)
}

// maxRefusals bounds the refusals a ReplayResult lists; all are counted.
const maxRefusals = 1000

// Refusal is a dead letter a replay would not send, and why.
type Refusal struct {
	DeadLetter string             `json:"dead_letter"`
	JobID      pipeline.JobID     `json:"job_id,omitempty"`
	Index      int64              `json:"index"`
	CommandID  pipeline.CommandID `json:"command_id"`
	Reason     string             `json:"reason"`
}

// ReplayOptions tune a replay.
type ReplayOptions struct {
	// Topic is where dead letters are sent: the configured commands topic.
	// A dead letter whose source-topic header names another is refused,
	// unless AnySource.
	Topic string
	// AnySource sends every selected dead letter to Topic whatever its
	// source-topic header says (the operator named Topic explicitly).
	AnySource bool
	// Ledger checks each dead letter against what spool recorded; required.
	Ledger Ledger
	Filter Filter
	// Limit bounds how many dead letters are sent (0: no bound).
	Limit int
	// MaxAttempts parks a dead letter whose command has failed this many
	// times (0: never park).
	MaxAttempts int
	// DryRun decides as a replay would and sends nothing.
	DryRun bool
	// Limiter, when set, paces the sends (records per second).
	Limiter pipeline.Limiter
	// BatchSize bounds the records sent together (default 100); a batch is
	// also sent once its first record has waited FlushEvery.
	BatchSize  int
	FlushEvery time.Duration
	// OnRecord is told each selected dead letter's action; for ActionReplay
	// after it was sent (at once in a dry run).
	OnRecord func(*Envelope, Action)
	// Unreadable is told of each record of the topic that is not a dead
	// letter.
	Unreadable func(pipeline.Record, error)
}

// ReplayResult counts what a replay did.
type ReplayResult struct {
	Selected        int  `json:"selected"`
	Replayed        int  `json:"replayed"`
	AlreadyReplayed int  `json:"already_replayed"`
	Parked          int  `json:"parked"`
	Refused         int  `json:"refused"`
	DryRun          bool `json:"dry_run"`
	// Refusals lists the refused dead letters (the first maxRefusals).
	Refusals []Refusal `json:"refusals,omitempty"`
}

// Replay sends the dead letters of dlqTopic that the filter selects back to
// o.Topic with the original key, value and headers, the next attempt number
// and a replay-of header, and records each in the checkpoint topic once the
// broker acknowledged it. The processor's dedupe ledger and version guard
// still apply to every replayed command, so a replay can neither
// double-apply nor overwrite newer data.
//
// The dead-letter topic is not trusted: a dead letter is sent only if its
// source-topic header names o.Topic (or o.AnySource) and its job, index,
// tenant, command id and value match the failure row spool recorded when it
// dead-lettered the command (o.Ledger). Anything else is refused, counted and
// listed, and never sent. A dead letter whose value was cut to fit its topic
// is sent with the whole command kept in that row.
//
// A replay cut off between a send and its checkpoint may send those records
// (at most one batch) again when rerun; the processor counts such a repeat
// as nothing new.
func Replay(ctx context.Context, r Reader, p Producer, dlqTopic string, o ReplayOptions) (ReplayResult, error) {
	res := ReplayResult{DryRun: o.DryRun}
	if o.Topic == "" || o.Ledger == nil {
		return res, errors.New("replaying needs the topic to send to and the job ledger (the database) to check against")
	}
	done := map[string]bool{}
	err := r.Read(ctx, CheckpointTopic(dlqTopic), AllPartitions, func(rec pipeline.Record) error {
		done[string(rec.Key)] = true
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("reading the replay checkpoint %s: %w", CheckpointTopic(dlqTopic), err)
	}
	s := &sender{p: p, checkpoint: CheckpointTopic(dlqTopic), topic: o.Topic, o: o}
	if s.o.BatchSize <= 0 {
		s.o.BatchSize = 100
	}
	if s.o.FlushEvery <= 0 {
		s.o.FlushEvery = 200 * time.Millisecond
	}
	planned := 0 // replays decided, sent or not yet
	err = Scan(ctx, r, dlqTopic, o.Filter, func(e *Envelope) error {
		if done[e.Coordinates()] {
			res.Selected++
			res.AlreadyReplayed++
			s.tell(e, ActionSkip)
			return nil
		}
		e, reason, err := check(ctx, o, e)
		if err != nil {
			return err
		}
		action := ActionReplay
		switch {
		case reason != "":
			action = ActionRefuse
			res.Refused++
			if len(res.Refusals) < maxRefusals {
				res.Refusals = append(res.Refusals, Refusal{DeadLetter: e.Topic + ":" + e.Coordinates(),
					JobID: e.JobID, Index: e.Index, CommandID: e.CommandID, Reason: reason})
			}
		case o.MaxAttempts > 0 && e.Attempt >= o.MaxAttempts:
			action = ActionPark
			res.Parked++
		case o.Limit > 0 && planned >= o.Limit:
			return ErrStop
		default:
			planned++
		}
		res.Selected++
		if action != ActionReplay || o.DryRun {
			s.tell(e, action)
			return nil
		}
		return s.add(ctx, e)
	}, o.Unreadable)
	if err == nil {
		err = s.flush(ctx)
	}
	res.Replayed = s.sent
	if o.DryRun {
		res.Replayed = planned
	}
	return res, err
}

// check matches a dead letter against what spool recorded. It returns the
// envelope to send (with the whole command when the dead letter carries it
// cut), or why it must not be sent.
func check(ctx context.Context, o ReplayOptions, e *Envelope) (*Envelope, string, error) {
	if !o.AnySource && e.SourceTopic != o.Topic {
		return e, fmt.Sprintf("its source-topic header names %s, not %s (--to-topic sends it there)",
			pipeline.Quote(e.SourceTopic), o.Topic), nil
	}
	if e.JobID == "" || e.Index < 0 {
		return e, "it names no job and index: spool never dead-lettered it", nil
	}
	rec, err := o.Ledger.LookupDeadLetter(ctx, e.JobID, e.Index)
	if err != nil {
		return e, "", fmt.Errorf("looking up dead letter %s of job %s: %w", e.Coordinates(), e.JobID, err)
	}
	switch {
	case rec == nil:
		return e, fmt.Sprintf("job %s has no dead-lettered command at index %d (spool never dead-lettered it, or it was replayed and settled since)",
			pipeline.Quote(string(e.JobID)), e.Index), nil
	case rec.Tenant != e.Tenant:
		return e, fmt.Sprintf("its tenant header %s is not the job's tenant", pipeline.Quote(e.Tenant)), nil
	case rec.ID != e.CommandID || string(e.Key) != string(rec.ID):
		return e, fmt.Sprintf("its command id %s (key %s) is not the one dead-lettered at that index",
			pipeline.Quote(string(e.CommandID)), pipeline.Quote(string(e.Key))), nil
	}
	value := e.Value
	if e.ValueTruncated > 0 {
		if rec.Command == nil {
			return e, fmt.Sprintf("its value was cut to fit the dead-letter topic (%d bytes) and the job's failure row keeps no command", e.ValueTruncated), nil
		}
		value = rec.Command
	}
	if rec.ValueHash != nil {
		if sum := sha256.Sum256(value); !bytes.Equal(sum[:], rec.ValueHash) {
			return e, "its value is not the one dead-lettered at that index", nil
		}
	}
	if e.ValueTruncated > 0 {
		whole := *e
		whole.Value, whole.ValueTruncated = value, 0
		return &whole, "", nil
	}
	return e, "", nil
}

// sender batches replayed records and their checkpoints.
type sender struct {
	p          Producer
	topic      string
	checkpoint string
	o          ReplayOptions
	pending    []*Envelope
	since      time.Time
	sent       int // replays sent and checkpointed
}

func (s *sender) tell(e *Envelope, a Action) {
	if s.o.OnRecord != nil {
		s.o.OnRecord(e, a)
	}
}

func (s *sender) add(ctx context.Context, e *Envelope) error {
	if s.o.Limiter != nil {
		if err := s.o.Limiter.WaitN(ctx, 1); err != nil {
			return err
		}
	}
	if len(s.pending) == 0 {
		s.since = time.Now()
	}
	s.pending = append(s.pending, e)
	if len(s.pending) >= s.o.BatchSize || time.Since(s.since) >= s.o.FlushEvery {
		return s.flush(ctx)
	}
	return nil
}

type mark struct {
	ReplayedAt time.Time `json:"replayed_at"`
	Attempt    int       `json:"attempt"`
	To         string    `json:"to"`
}

// flush sends the pending replays, then their checkpoints.
func (s *sender) flush(ctx context.Context) error {
	es := s.pending
	s.pending = s.pending[:0]
	if len(es) == 0 {
		return nil
	}
	recs, marks := make([]pipeline.Record, len(es)), make([]pipeline.Record, len(es))
	now := time.Now().UTC()
	for i, e := range es {
		recs[i] = e.ReplayRecord(s.topic)
		v, _ := json.Marshal(mark{ReplayedAt: now, Attempt: e.Attempt + 1, To: s.topic})
		marks[i] = pipeline.Record{Key: []byte(e.Coordinates()), Value: v}
	}
	if err := s.p.ProduceSync(ctx, s.topic, recs...); err != nil {
		return fmt.Errorf("replaying %d dead letters to %s: %w", len(recs), s.topic, err)
	}
	if err := s.p.ProduceSync(ctx, s.checkpoint, marks...); err != nil {
		return fmt.Errorf("recording %d replays in %s (they were sent; a rerun resends them harmlessly): %w",
			len(marks), s.checkpoint, err)
	}
	s.sent += len(es)
	for _, e := range es {
		s.tell(e, ActionReplay)
	}
	return nil
}

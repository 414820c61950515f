package dlq

import (
	"context"
	"encoding/json"
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
	// ActionReplay: sent back to its source topic (or would be, in a dry run).
	ActionReplay Action = "replay"
	// ActionSkip: an earlier replay sent it already.
	ActionSkip Action = "already_replayed"
	// ActionPark: it failed MaxAttempts times; it stays in the dead-letter
	// topic until an operator raises the bound.
	ActionPark Action = "parked"
)

// ReplayOptions tune a replay.
type ReplayOptions struct {
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
	DryRun          bool `json:"dry_run"`
}

// Replay sends the dead letters of dlqTopic that the filter selects back to
// their source topics with the original key, value and headers, the next
// attempt number and a replay-of header, and records each in the checkpoint
// topic once the broker acknowledged it. The processor's dedupe ledger and
// version guard still apply to every replayed command, so a replay can
// neither double-apply nor overwrite newer data.
//
// A replay cut off between a send and its checkpoint may send those records
// (at most one batch) again when rerun; the processor counts such a repeat
// as nothing new.
func Replay(ctx context.Context, r Reader, p Producer, dlqTopic string, o ReplayOptions) (ReplayResult, error) {
	res := ReplayResult{DryRun: o.DryRun}
	done := map[string]bool{}
	err := r.Read(ctx, CheckpointTopic(dlqTopic), AllPartitions, func(rec pipeline.Record) error {
		done[string(rec.Key)] = true
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("reading the replay checkpoint %s: %w", CheckpointTopic(dlqTopic), err)
	}
	s := &sender{p: p, checkpoint: CheckpointTopic(dlqTopic), o: o}
	if s.o.BatchSize <= 0 {
		s.o.BatchSize = 100
	}
	if s.o.FlushEvery <= 0 {
		s.o.FlushEvery = 200 * time.Millisecond
	}
	planned := 0 // replays decided, sent or not yet
	err = Scan(ctx, r, dlqTopic, o.Filter, func(e *Envelope) error {
		action := ActionReplay
		switch {
		case done[e.Coordinates()]:
			action = ActionSkip
			res.AlreadyReplayed++
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

// sender batches replayed records and their checkpoints.
type sender struct {
	p          Producer
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

// flush sends the pending replays topic by topic, each topic's followed by
// its checkpoints, so that what was sent is recorded even when a later
// topic fails.
func (s *sender) flush(ctx context.Context) error {
	byTopic := map[string][]*Envelope{}
	var order []string
	for _, e := range s.pending {
		if _, ok := byTopic[e.SourceTopic]; !ok {
			order = append(order, e.SourceTopic)
		}
		byTopic[e.SourceTopic] = append(byTopic[e.SourceTopic], e)
	}
	s.pending = s.pending[:0]
	for _, topic := range order {
		es := byTopic[topic]
		recs, marks := make([]pipeline.Record, len(es)), make([]pipeline.Record, len(es))
		now := time.Now().UTC()
		for i, e := range es {
			recs[i] = e.ReplayRecord()
			v, _ := json.Marshal(mark{ReplayedAt: now, Attempt: e.Attempt + 1, To: topic})
			marks[i] = pipeline.Record{Key: []byte(e.Coordinates()), Value: v}
		}
		if err := s.p.ProduceSync(ctx, topic, recs...); err != nil {
			return fmt.Errorf("replaying %d dead letters to %s: %w", len(recs), topic, err)
		}
		if err := s.p.ProduceSync(ctx, s.checkpoint, marks...); err != nil {
			return fmt.Errorf("recording %d replays in %s (they were sent; a rerun resends them harmlessly): %w",
				len(marks), s.checkpoint, err)
		}
		s.sent += len(es)
		for _, e := range es {
			s.tell(e, ActionReplay)
		}
	}
	return nil
}

package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
)

// Batch is a contiguous run of one partition's records, applied in one
// database transaction together with the partition's stored offset.
type Batch struct {
	Topic     string
	Partition int32
	// PrevOffset is the partition's next offset as stored before this batch
	// (-1 when nothing is stored yet). The Store moves it to NextOffset only
	// if it still holds PrevOffset: that compare-and-set fences off a
	// processor that lost the partition but is still writing.
	PrevOffset int64
	// NextOffset is the offset after the batch's last record.
	NextOffset int64
	Messages   []*Message
	// Recent, when set, settles repeats of ids this worker saw committed
	// without asking the database.
	Recent *Recent
}

// ErrFenced is returned by a Store when the partition's stored offset is not
// the batch's PrevOffset: another processor owns the partition now.
var ErrFenced = errors.New("partition offset was moved by another processor")

// ErrJobNotFound is returned for a job that does not exist, or belongs to
// another tenant: the two are indistinguishable on purpose.
var ErrJobNotFound = errors.New("job not found")

// Errors of jobs in parts: a part received already, and a job completed
// while a part is still being received.
var (
	ErrPartReceived  = errors.New("the part was received already")
	ErrPartsInFlight = errors.New("a part is still being received")
)

// ErrNoResults is returned for the results of a job created without them.
var ErrNoResults = errors.New("the job keeps no results: upload it with results=true")

// JobFinishedError is returned for a change a finished job does not take
// (an abort of a completed job).
type JobFinishedError struct {
	ID    JobID
	State JobState
}

func (e *JobFinishedError) Error() string {
	return fmt.Sprintf("job %s is %s already", e.ID, e.State)
}

// Store applies batches. Implementations must be atomic: the dedupe claims,
// the writes, the job counters, the failures and the offset commit together
// or not at all. pipeline/storetest is the suite a Store must pass.
type Store interface {
	// WriteBatch applies b, of which the worker's Dedupe settled what it
	// could without the database (d), and returns each message's outcome,
	// in the order of b.Messages: d.Outcomes with the candidates' filled
	// in (and a settled one turned redelivered where the store knows its
	// record counted already).
	WriteBatch(ctx context.Context, b *Batch, d *Deduped) ([]Outcome, error)
}

// Deduped is what Dedupe settled of a batch before the database is asked.
type Deduped struct {
	// Outcomes has a slot per message of the batch: the outcome Dedupe
	// gave it, or "" for a candidate.
	Outcomes []Outcome
	// Candidates are the messages left for the store to claim and write:
	// the first occurrence of each id the pre-filter does not know.
	Candidates []*Message
	// Repeats are each candidate's later occurrences in the batch: should
	// the store know the candidate's id, they are settled against what it
	// knows, as the candidate is.
	Repeats map[*Message][]*Message
}

// Key identifies a command id within its tenant, the scope of dedupe.
type Key struct {
	Tenant string
	ID     CommandID
}

// Dedupe settles repeats before the database is asked: records delivered
// twice inside the batch (redelivered), ids the Recent pre-filter knows,
// and repeats inside the batch (the first occurrence of an id stays a
// candidate, a later one with the same payload is a duplicate, with another
// payload a conflict). Messages that failed decoding are dead-lettered. The
// worker calls it before each attempt at writing the batch.
func (b *Batch) Dedupe() *Deduped { return b.DedupeAborting(nil) }

// DedupeAborting is Dedupe with the messages aborted says yes to (the
// commands of an aborted job) settled as aborted, unless they were
// delivered twice in the batch or failed decoding: they take no part in
// the dedupe, so that a later repeat of their id is a candidate.
func (b *Batch) DedupeAborting(aborted func(*Message) bool) *Deduped {
	outcomes := make([]Outcome, len(b.Messages))
	var repeats map[*Message][]*Message
	seen := make(map[Key]*Message, len(b.Messages))
	delivered := make(map[Origin]*Message, len(b.Messages))
	candidates := make([]*Message, 0, len(b.Messages))
	for i, m := range b.Messages {
		if o, ok := m.Origin(); ok {
			if first, ok := delivered[o]; ok && first.Hash == m.Hash {
				outcomes[i] = OutcomeRedelivered
				continue
			}
			delivered[o] = m
		}
		if m.Err != nil {
			outcomes[i] = OutcomeDeadLettered
			continue
		}
		if aborted != nil && aborted(m) {
			outcomes[i] = OutcomeAborted
			continue
		}
		k := Key{m.Tenant, m.Command.ID}
		if e, ok := b.Recent.lookup(k); ok {
			switch o, identified := m.Origin(); {
			case e.hash != m.Hash:
				outcomes[i] = OutcomeConflict
			case identified && e.hasOrigin && e.origin == o.Sum():
				outcomes[i] = OutcomeRedelivered
			default:
				outcomes[i] = OutcomeDuplicate
			}
			continue
		}
		if first, ok := seen[k]; ok {
			if first.Hash == m.Hash {
				outcomes[i] = OutcomeDuplicate
			} else {
				outcomes[i] = OutcomeConflict
			}
			if repeats == nil {
				repeats = map[*Message][]*Message{}
			}
			repeats[first] = append(repeats[first], m)
			continue
		}
		seen[k] = m
		candidates = append(candidates, m)
	}
	return &Deduped{Outcomes: outcomes, Candidates: candidates, Repeats: repeats}
}

// Group is a set of commands written by one set-based statement: same
// entity, same op, same data columns, each key at most once.
type Group struct {
	Entity *Entity
	Op     Op
	// Columns are the data columns other than the key, sorted; empty for
	// deletes.
	Columns []string
	// Messages are the commands the group stands for, one per row; Rows
	// holds the values each row writes (a command's data, or for commands
	// merged within the batch, theirs combined in offset order).
	Messages []*Message
	Rows     []Fields
	// Generation orders groups: a row deleted and then upserted in one
	// batch is written by two statements, the delete's first; so is a row
	// inserted or updated after another command of the batch.
	Generation int
}

// Plan collapses fresh commands per row and groups the survivors into
// statements, keeping the effect of applying them one by one in offset
// order. Where the entity is versioned, the highest version wins and the
// others are stale (on a tie the first in offset order wins, as it would
// applied one by one). Without versions, later upserts of a row merge their
// columns over earlier ones, a delete supersedes what came before it, and an
// upsert after a delete starts a new generation; superseded commands count
// as applied, having been overwritten within the batch. Inserts and updates
// of a row are never merged with its other commands: each starts a new
// generation, and so does a command after one (a batch that repeats one key
// with such ops costs a statement a command for that key). fresh must be in
// offset order. Plan returns the outcome it decided for each superseded
// command.
func Plan(fresh []*Message, es Entities) ([]Group, map[*Message]Outcome, error) {
	type rowKey struct{ entity, key string }
	type slot struct {
		gen  int
		key  string
		msg  *Message
		data Fields
	}
	current := make(map[rowKey]*slot, len(fresh))
	// In order of creation, one allocation for all: a message makes at most
	// one slot, so the pointers into it stay valid.
	slots := make([]slot, 0, len(fresh))
	add := func(sl slot) *slot {
		slots = append(slots, sl)
		return &slots[len(slots)-1]
	}
	superseded := make(map[*Message]Outcome)
	for _, m := range fresh {
		e := es[m.Command.Entity]
		if e == nil {
			return nil, nil, Errorf(ClassUnknownEntity, "entity %s is not configured", Quote(m.Command.Entity))
		}
		key, err := e.KeyOf(m.Command.Data)
		if err != nil {
			return nil, nil, err
		}
		rk := rowKey{e.Name, key}
		cur, ok := current[rk]
		switch {
		case !ok:
			current[rk] = add(slot{key: key, msg: m, data: m.Command.Data})
		case m.Command.Op.Conditional() || cur.msg.Command.Op.Conditional():
			// An insert or an update, or a command after one: its effect
			// depends on whether the row is there, which only the database
			// knows once the command before has run. It runs after that
			// one, in a generation of its own.
			current[rk] = add(slot{gen: cur.gen + 1, key: key, msg: m, data: m.Command.Data})
		case e.Versioned():
			if *m.Command.Version > *cur.msg.Command.Version {
				superseded[cur.msg] = OutcomeStale
				cur.msg, cur.data = m, m.Command.Data
			} else {
				superseded[m] = OutcomeStale
			}
		case m.Command.Op == OpDelete:
			superseded[cur.msg] = OutcomeApplied
			cur.msg, cur.data = m, m.Command.Data
		case cur.msg.Command.Op == OpUpsert:
			superseded[cur.msg] = OutcomeApplied
			cur.msg, cur.data = m, merge(cur.data, m.Command.Data)
		default: // an upsert after a delete: the delete must run first
			current[rk] = add(slot{gen: cur.gen + 1, key: key, msg: m, data: m.Command.Data})
		}
	}

	// A group is a generation, entity, op and column set; its signature is
	// made in one reused buffer, so that only a new group allocates.
	type sigKey struct {
		gen int
		sig string
	}
	groups := make(map[sigKey]*Group)
	var sigs []sigKey
	var sig []byte
	var cols []string
	for i := range slots {
		sl := &slots[i]
		m := sl.msg
		e := es[m.Command.Entity]
		cols = cols[:0]
		if m.Command.Op.Writes() {
			cols = dataColumns(cols, e, sl.data)
		}
		sig = append(append(append(sig[:0], e.Name...), 0), m.Command.Op...)
		for _, c := range cols {
			sig = append(append(sig, 0), c...)
		}
		g, ok := groups[sigKey{sl.gen, string(sig)}]
		if !ok {
			sk := sigKey{sl.gen, string(sig)}
			g = &Group{Entity: e, Op: m.Command.Op, Columns: slices.Clone(cols), Generation: sl.gen}
			groups[sk] = g
			sigs = append(sigs, sk)
		}
		g.Messages = append(g.Messages, m)
		g.Rows = append(g.Rows, sl.data)
	}
	sort.Slice(sigs, func(i, j int) bool {
		if sigs[i].gen != sigs[j].gen {
			return sigs[i].gen < sigs[j].gen
		}
		return sigs[i].sig < sigs[j].sig
	})
	out := make([]Group, 0, len(sigs))
	for _, sk := range sigs {
		out = append(out, *groups[sk])
	}
	return out, superseded, nil
}

// merge returns new Fields: base's columns overwritten by over's.
func merge(base, over Fields) Fields {
	m := make(Fields, len(base), len(base)+len(over))
	copy(m, base)
	for _, f := range over {
		m.set(f.Name, f.Value)
	}
	return m
}

// dataColumns appends the data's columns other than the key to cols,
// sorted.
func dataColumns(cols []string, e *Entity, data Fields) []string {
	for _, f := range data {
		if !e.isKey(f.Name) {
			cols = append(cols, f.Name)
		}
	}
	slices.Sort(cols)
	return cols
}

func (e *Entity) isKey(col string) bool {
	for _, k := range e.Key {
		if k == col {
			return true
		}
	}
	return false
}

// JobCounts sums outcomes per job. Replayed commands are not counted here:
// each was counted once already, as dead-lettered, and ReplayMoves says how
// its count moves.
func JobCounts(msgs []*Message, outcomes []Outcome) map[JobID]*Counts {
	counts := make(map[JobID]*Counts)
	for i, m := range msgs {
		if m.ReplayOf != "" {
			continue
		}
		c := counts[m.JobID]
		if c == nil {
			c = &Counts{}
			counts[m.JobID] = c
		}
		c.Add(outcomes[i])
	}
	return counts
}

// Move is a replayed command's new outcome: its job's count moves from
// dead_lettered to Outcome, if the job still holds the command as a dead
// letter. The Store checks that, so that a dead letter replayed twice moves
// once.
type Move struct {
	Job     JobID
	Index   int64
	Outcome Outcome
}

// ReplayMoves lists the moves of a batch's replayed commands. One that is
// dead-lettered again stays where it was counted. Two replays of one command
// in a batch (two copies of a dead letter) move once, by the first: the
// later copy is its duplicate.
func ReplayMoves(msgs []*Message, outcomes []Outcome) []Move {
	var moves []Move
	seen := map[Move]bool{}
	for i, m := range msgs {
		if m.ReplayOf == "" || m.JobID == "" || m.Index < 0 || outcomes[i] == OutcomeDeadLettered {
			continue
		}
		if k := (Move{Job: m.JobID, Index: m.Index}); !seen[k] {
			seen[k] = true
			moves = append(moves, Move{Job: m.JobID, Index: m.Index, Outcome: outcomes[i]})
		}
	}
	return moves
}

package pipeline

import (
	"context"
	"errors"
	"sort"
	"strings"
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

// Store applies batches. Implementations must be atomic: the dedupe claims,
// the writes, the job counters, the failures and the offset commit together
// or not at all.
type Store interface {
	// WriteBatch returns each message's outcome, in the order of b.Messages.
	WriteBatch(ctx context.Context, b *Batch) ([]Outcome, error)
}

// Key identifies a command id within its tenant, the scope of dedupe.
type Key struct {
	Tenant string
	ID     CommandID
}

// Dedupe settles repeats before the database is asked: ids the Recent
// pre-filter knows, and repeats inside the batch (the first occurrence of an
// id stays a candidate, a later one with the same payload is a duplicate,
// with another payload a conflict). Messages that failed decoding are
// dead-lettered. It returns the candidates.
func (b *Batch) Dedupe(outcomes []Outcome) []*Message {
	seen := make(map[Key]*Message, len(b.Messages))
	candidates := make([]*Message, 0, len(b.Messages))
	for i, m := range b.Messages {
		if m.Err != nil {
			outcomes[i] = OutcomeDeadLettered
			continue
		}
		k := Key{m.Tenant, m.Command.ID}
		if hash, ok := b.Recent.lookup(k); ok {
			outcomes[i] = OutcomeDuplicate
			if hash != m.Hash {
				outcomes[i] = OutcomeConflict
			}
			continue
		}
		if first, ok := seen[k]; ok {
			if first.Hash == m.Hash {
				outcomes[i] = OutcomeDuplicate
			} else {
				outcomes[i] = OutcomeConflict
			}
			continue
		}
		seen[k] = m
		candidates = append(candidates, m)
	}
	return candidates
}

// Group is a set of commands written by one set-based statement: same
// entity, same op, same data columns, each key at most once.
type Group struct {
	Entity *Entity
	Op     Op
	// Columns are the data columns other than the key, sorted; empty for
	// deletes.
	Columns  []string
	Messages []*Message
	// Keys holds each message's canonical key text (Entity.KeyOf).
	Keys []string
}

// Plan collapses fresh commands per row and groups the survivors into
// statements. Where the entity is versioned, the highest version wins and
// the others are stale (on a tie the first in offset order wins, as it would
// applied one by one); without versions the last in offset order wins and
// the earlier ones count as applied, having been overwritten within the
// batch. fresh must be in offset order. Plan returns the outcome it decided
// for each superseded command.
func Plan(fresh []*Message, es Entities) ([]Group, map[*Message]Outcome, error) {
	type rowKey struct{ entity, key string }
	keys := make(map[*Message]string, len(fresh))
	winners := make(map[rowKey]*Message, len(fresh))
	superseded := make(map[*Message]Outcome)
	order := make([]rowKey, 0, len(fresh))
	for _, m := range fresh {
		e := es[m.Command.Entity]
		if e == nil {
			return nil, nil, Errorf(ClassUnknownEntity, "entity %q is not configured", m.Command.Entity)
		}
		key, err := e.KeyOf(&m.Command)
		if err != nil {
			return nil, nil, err
		}
		keys[m] = key
		rk := rowKey{e.Name, key}
		w, ok := winners[rk]
		switch {
		case !ok:
			winners[rk] = m
			order = append(order, rk)
		case e.Versioned():
			if *m.Command.Version > *w.Command.Version {
				winners[rk] = m
				superseded[w] = OutcomeStale
			} else {
				superseded[m] = OutcomeStale
			}
		default:
			winners[rk] = m
			superseded[w] = OutcomeApplied
		}
	}

	groups := make(map[string]*Group)
	var sigs []string
	for _, rk := range order {
		m := winners[rk]
		e := es[m.Command.Entity]
		var cols []string
		if m.Command.Op == OpUpsert {
			cols = dataColumns(e, &m.Command)
		}
		sig := e.Name + "\x00" + string(m.Command.Op) + "\x00" + strings.Join(cols, "\x00")
		g, ok := groups[sig]
		if !ok {
			g = &Group{Entity: e, Op: m.Command.Op, Columns: cols}
			groups[sig] = g
			sigs = append(sigs, sig)
		}
		g.Messages = append(g.Messages, m)
		g.Keys = append(g.Keys, keys[m])
	}
	sort.Strings(sigs)
	out := make([]Group, 0, len(sigs))
	for _, s := range sigs {
		out = append(out, *groups[s])
	}
	return out, superseded, nil
}

func dataColumns(e *Entity, cmd *Command) []string {
	cols := make([]string, 0, len(cmd.Data))
	for c := range cmd.Data {
		if !e.isKey(c) {
			cols = append(cols, c)
		}
	}
	sort.Strings(cols)
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

// JobCounts sums outcomes per job.
func JobCounts(msgs []*Message, outcomes []Outcome) map[JobID]*Counts {
	counts := make(map[JobID]*Counts)
	for i, m := range msgs {
		c := counts[m.JobID]
		if c == nil {
			c = &Counts{}
			counts[m.JobID] = c
		}
		c.Add(outcomes[i])
	}
	return counts
}

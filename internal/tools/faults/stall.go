package faults

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/tools/tooldb"
)

// stallEvery is how often the stall watch samples the backlog.
const stallEvery = 250 * time.Millisecond

// stallWatch measures the processors' longest stall: the longest stretch in
// which records waited in the topic and the processors committed none
// (their stored offsets, which every batch moves, did not move). A
// stretch without writes for want of records (the uploads waiting on their
// resends) is not a stall. Samples the broker or the database cannot
// answer are skipped: a stall spans them. It also measures the longest
// stall of any one partition, which the others' commits hide from the
// whole: a partition held by a member that is gone waits for its session
// timeout however busy the others are.
type stallWatch struct {
	audit   *tooldb.Audit
	brokers []string
	start   time.Time

	mu      sync.Mutex
	longest time.Duration
	at      time.Duration // when the longest began, since the run began
	samples []sample

	partLongest   time.Duration
	partAt        time.Duration
	partLongestOf int32
}

// sample is one look at the backlog: the processors' stored offsets and
// the topic's end offsets, summed over partitions.
type sample struct {
	at        time.Time
	done, end int64
}

// run samples until ctx ends.
func (w *stallWatch) run(ctx context.Context) {
	t := time.NewTicker(stallEvery)
	defer t.Stop()
	whole := &partWatch{last: -1} // the topic as one: its stall is the run's
	parts := map[int32]*partWatch{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		dones, err1 := w.audit.Offsets(ctx, group, topic)
		ends, err2 := kafka.Reader{Cluster: kafka.Plaintext(w.brokers...)}.PartitionEnds(ctx, topic)
		now := time.Now()
		var done, end int64
		for p, e := range ends {
			done, end = done+dones[p], end+e
		}
		if errors.Join(err1, err2) == nil { // else unknown: a stall spans it
			w.mu.Lock()
			w.samples = append(w.samples, sample{at: now, done: done, end: end})
			w.mu.Unlock()
			for p, e := range ends {
				pw := parts[p]
				if pw == nil {
					pw = &partWatch{last: -1}
					parts[p] = pw
				}
				if d, began, ok := pw.observe(now, dones[p], e); ok {
					w.notePartition(p, d, began.Sub(w.start))
				}
			}
			whole.observe(now, done, end)
		}
		if !whole.since.IsZero() { // a sample that failed is spanned
			w.note(now.Sub(whole.since), whole.since.Sub(w.start))
		}
	}
}

func (w *stallWatch) note(d, at time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d > w.longest {
		w.longest, w.at = d, at
	}
}

// partWatch follows a stall: of one partition, or of the whole topic.
type partWatch struct {
	last  int64     // the stored offset last seen
	since time.Time // records have waited, none committed, since then
}

// observe takes a sample of the stored and end offsets and reports how
// long they have stalled, if they have.
func (pw *partWatch) observe(now time.Time, done, end int64) (d time.Duration, began time.Time, stalled bool) {
	switch {
	case done != pw.last:
		pw.last, pw.since = done, time.Time{}
	case end <= done:
		pw.since = time.Time{}
	case pw.since.IsZero():
		pw.since = now
	}
	if pw.since.IsZero() {
		return 0, time.Time{}, false
	}
	return now.Sub(pw.since), pw.since, true
}

func (w *stallWatch) notePartition(p int32, d, at time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d > w.partLongest {
		w.partLongest, w.partAt, w.partLongestOf = d, at, p
	}
}

// partitionResult is the longest stall of one partition, which, and when
// it began.
func (w *stallWatch) partitionResult() (longest time.Duration, partition int32, at time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.partLongest, w.partLongestOf, w.partAt
}

// result is the longest stall and when it began.
func (w *stallWatch) result() (longest, at time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.longest, w.at
}

// recovery is how long after began the processors first committed
// records that were waiting: from the fault, or from when records next
// waited if none did then, to the first sample whose stored offsets moved
// past that. ok is false when no records waited from began until next
// (the next fault, which the wait would be laid to as well).
func (w *stallWatch) recovery(began, next time.Time) (d time.Duration, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var from time.Time
	var base int64
	for _, s := range w.samples {
		switch {
		case s.at.Before(began):
		case from.IsZero() && !s.at.Before(next):
			return 0, false
		case from.IsZero() && s.end > s.done:
			from, base = s.at, s.done
			if s.at.Sub(began) <= stallEvery {
				from = began // records were already waiting when the fault came
			}
		case !from.IsZero() && s.done > base:
			return s.at.Sub(from), true
		}
	}
	return 0, false
}

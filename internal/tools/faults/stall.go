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
// answer are skipped: a stall spans them.
type stallWatch struct {
	audit   *tooldb.Audit
	brokers []string
	start   time.Time

	mu      sync.Mutex
	longest time.Duration
	at      time.Duration // when the longest began, since the run began
	samples []sample
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
	last := int64(-1)
	var since time.Time // records have waited, none committed, since then
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		done, err1 := w.audit.SumOffsets(ctx, group, topic)
		end, err2 := kafka.Reader{Cluster: kafka.Plaintext(w.brokers...)}.EndOffsets(ctx, topic)
		now := time.Now()
		if errors.Join(err1, err2) == nil { // else unknown: a stall spans it
			w.mu.Lock()
			w.samples = append(w.samples, sample{at: now, done: done, end: end})
			w.mu.Unlock()
			switch {
			case done != last:
				last, since = done, time.Time{}
			case end <= done:
				since = time.Time{}
			case since.IsZero():
				since = now
			}
		}
		if !since.IsZero() {
			w.note(now.Sub(since), since.Sub(w.start))
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

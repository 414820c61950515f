package faults

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/postgres"
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
	audit   *postgres.Audit
	brokers []string
	start   time.Time

	mu      sync.Mutex
	longest time.Duration
	at      time.Duration // when the longest began, since the run began
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
		end, err2 := kafka.Reader{Brokers: w.brokers}.EndOffsets(ctx, topic)
		now := time.Now()
		switch {
		case errors.Join(err1, err2) != nil:
		case done != last:
			last, since = done, time.Time{}
		case end <= done:
			since = time.Time{}
		case since.IsZero():
			since = now
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

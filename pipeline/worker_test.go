package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
)

// fakeStore is a pure stand-in for the database: it refuses any batch that
// holds a poison id (as a CHECK constraint would), fails transiently a set
// number of times, and enforces the offset compare-and-set.
type fakeStore struct {
	mu        sync.Mutex
	poison    map[CommandID]bool
	transient int
	next      int64
	applied   []CommandID
	dead      []CommandID
}

func (s *fakeStore) WriteBatch(_ context.Context, b *Batch, _ *Deduped) ([]Outcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.transient > 0 {
		s.transient--
		return nil, Errorf(ClassTransient, "connection reset")
	}
	if b.PrevOffset != s.next {
		return nil, ErrFenced
	}
	for _, m := range b.Messages {
		if m.Err == nil && s.poison[m.Command.ID] {
			return nil, Errorf(ClassConstraint, "check constraint violated by %s", m.Command.ID)
		}
	}
	for _, m := range b.Messages {
		if m.Err != nil {
			s.dead = append(s.dead, CommandID(m.Record.Key))
		} else {
			s.applied = append(s.applied, m.Command.ID)
		}
	}
	s.next = b.NextOffset
	return make([]Outcome, len(b.Messages)), nil
}

type fakeDLQ struct {
	mu   sync.Mutex
	fail int
	got  []CommandID
}

func (d *fakeDLQ) DeadLetter(_ context.Context, msgs []*Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail > 0 {
		d.fail--
		return Errorf(ClassTransient, "broker unavailable")
	}
	for _, m := range msgs {
		d.got = append(d.got, CommandID(m.Record.Key))
	}
	return nil
}

func records(n int, next int64) []Record {
	recs := make([]Record, n)
	for i := range recs {
		id := fmt.Sprintf("c-%d", i)
		line := fmt.Sprintf(`{"id":%q,"entity":"customers","version":1,"data":{"customer_id":"k%d"}}`, id, i)
		recs[i] = Record{Offset: next + int64(i), Key: []byte(id), Value: []byte(line)}
	}
	return recs
}

// testWorkerConfig is a worker on partition 0 with quick retries.
// fenceFirstBatch makes the worker believe it starts at 0 while store
// holds a later offset: its first batch is fenced, and it reloads store's.
func fenceFirstBatch(cfg *WorkerConfig, store *fakeStore) {
	cfg.NextOffset = 0
	cfg.LoadOffset = func(context.Context) (int64, error) {
		store.mu.Lock()
		defer store.mu.Unlock()
		return store.next, nil
	}
}

// waitNext waits until store has committed the records below next.
func waitNext(t *testing.T, store *fakeStore, next int64, msgAndArgs ...any) {
	t.Helper()
	require.Eventually(t, func() bool {
		store.mu.Lock()
		defer store.mu.Unlock()
		return store.next == next
	}, 5*time.Second, time.Millisecond, msgAndArgs...)
}

func testWorkerConfig(store *fakeStore, dl *fakeDLQ, batch int, wait time.Duration) WorkerConfig {
	return WorkerConfig{
		NextOffset: store.next, BatchSize: batch, BatchMaxWait: wait, FlushTimeout: time.Second,
		Catalog: NewCatalog(testEntities()), Store: store, DeadLetters: dl,
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func runWorker(t *testing.T, store *fakeStore, dl *fakeDLQ, recs []Record) error {
	t.Helper()
	var committed []int64
	cfg := testWorkerConfig(store, dl, 100, 10*time.Millisecond)
	cfg.Committed = func(n int64) { committed = append(committed, n) }
	w := NewWorker(cfg, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	require.NoError(t, w.Feed(ctx, recs))
	deadline := time.Now().Add(5 * time.Second)
	for {
		store.mu.Lock()
		n := store.next
		store.mu.Unlock()
		if n == recs[len(recs)-1].Offset+1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	err := <-done
	if len(committed) > 0 {
		require.Equal(t, store.next, committed[len(committed)-1])
	}
	return err
}

func TestWorkerIsolatesPoison(t *testing.T) {
	t.Parallel()
	store := &fakeStore{poison: map[CommandID]bool{"c-17": true, "c-63": true}, transient: 3, next: 0}
	dl := &fakeDLQ{fail: 2}
	recs := records(100, 0)
	recs[40].Value = []byte("garbage") // undecodable: dead-lettered without touching the store
	require.NoError(t, runWorker(t, store, dl, recs))
	require.ElementsMatch(t, []CommandID{"c-17", "c-40", "c-63"}, dl.got)
	require.ElementsMatch(t, []CommandID{"c-17", "c-40", "c-63"}, store.dead)
	require.Len(t, store.applied, 97)
	require.Equal(t, int64(100), store.next)
}

// TestWorkerReloadsWhenFenced: when the stored offset moved (another
// processor, or our own commit whose acknowledgement was lost), the worker
// reloads it, skips the records below it and goes on. Reading it while
// the database is away is retried, never the end of the worker (and with
// it the processor).
func TestWorkerReloadsWhenFenced(t *testing.T) {
	t.Parallel()
	for _, failures := range []int{0, 2} {
		t.Run(fmt.Sprintf("%d failed reads", failures), func(t *testing.T) {
			t.Parallel()
			store := &fakeStore{next: 5} // records 0–4 were applied elsewhere
			cfg := testWorkerConfig(store, &fakeDLQ{}, 10, time.Millisecond)
			fenceFirstBatch(&cfg, store)
			load, left := cfg.LoadOffset, failures
			cfg.LoadOffset = func(ctx context.Context) (int64, error) {
				if left > 0 {
					left--
					return 0, Errorf(ClassTransient, "the database is restarting")
				}
				return load(ctx)
			}
			w := NewWorker(cfg, 1)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- w.Run(ctx) }()
			require.NoError(t, w.Feed(ctx, records(10, 0)))
			waitNext(t, store, 10)
			cancel()
			require.NoError(t, <-done)
			require.Zero(t, left)
			require.Equal(t, []CommandID{"c-5", "c-6", "c-7", "c-8", "c-9"}, store.applied)
		})
	}
}

// TestWorkerAbandonDropsTheBuffer: a lost partition's worker stops without
// writing what it holds.
func TestWorkerAbandonDropsTheBuffer(t *testing.T) {
	t.Parallel()
	store := &fakeStore{}
	w := NewWorker(testWorkerConfig(store, &fakeDLQ{}, 100, time.Hour), 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	require.NoError(t, w.Feed(ctx, records(10, 0)))
	w.Abandon()
	cancel()
	require.NoError(t, <-done)
	require.Empty(t, store.applied)
	require.Error(t, w.Feed(context.Background(), records(1, 10)), "a stopped worker takes nothing")
}

// slowLimiter refuses any wait its context's deadline would not allow, as
// golang.org/x/time/rate's does: it never has room.
type slowLimiter struct{}

func (slowLimiter) WaitN(ctx context.Context, n int) error {
	if _, ok := ctx.Deadline(); ok {
		return errors.New("rate: Wait(n) would exceed context deadline")
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestWorkerGivesUpALastFlushItCannotMake: a worker leaving its partition
// whose last flush cannot get through in processor.flush_timeout (here the
// rate limiter asks for longer) gives it up and ends cleanly: its records
// are the next owner's, and ending the processor over them would stop every
// other partition (a processor stopped so under the fault suite).
func TestWorkerGivesUpALastFlushItCannotMake(t *testing.T) {
	t.Parallel()
	store := &fakeStore{}
	cfg := testWorkerConfig(store, &fakeDLQ{}, 100, time.Hour)
	cfg.Limiter, cfg.FlushTimeout = slowLimiter{}, time.Second
	w := NewWorker(cfg, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	require.NoError(t, w.Feed(ctx, records(10, 0)))
	cancel()
	require.NoError(t, <-done)
	require.Empty(t, store.applied)
	require.Zero(t, store.next, "the stored offset stays where the next owner starts")
}

// TestWorkerQueueBoundsWaitingSlices: with queue 1 the one slice that may
// wait is the feeder's: a worker that is writing takes no other, so that
// its partition's fetching pauses instead of another slice being held.
func TestWorkerQueueBoundsWaitingSlices(t *testing.T) {
	t.Parallel()
	store := &fakeStore{}
	w := NewWorker(testWorkerConfig(store, &fakeDLQ{}, 10, time.Hour), 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	store.mu.Lock() // the database hangs
	require.NoError(t, w.Feed(ctx, records(10, 0)))
	require.False(t, w.TryFeed(records(1, 10)), "a worker writing a batch takes no slice")
	store.mu.Unlock()
	require.Eventually(t, func() bool { return w.TryFeed(records(1, 10)) }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.Len(t, store.applied, 11)
}

// TestWorkerFlushesAfterAFencedTimedFlush: a batch flushed for its age (not
// its size) that is fenced keeps the records above the reloaded offset, and
// they are written without waiting for more records to come: at the end of
// a partition no more come, and the partition would stall behind them.
func TestWorkerFlushesAfterAFencedTimedFlush(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const wait = time.Second
		store := &fakeStore{next: 5} // records 0–4 were applied by another processor
		cfg := testWorkerConfig(store, &fakeDLQ{}, 100, wait)
		fenceFirstBatch(&cfg, store)
		w := NewWorker(cfg, 1)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- w.Run(ctx) }()
		require.NoError(t, w.Feed(ctx, records(10, 0))) // fewer than a batch: only the timer flushes them
		applied := func() int {
			synctest.Wait()
			store.mu.Lock()
			defer store.mu.Unlock()
			return len(store.applied)
		}
		time.Sleep(wait + time.Millisecond) // the timed flush, fenced: the stored offset reloaded
		require.Zero(t, applied())
		time.Sleep(wait) // due again one BatchMaxWait later, with no more records coming
		require.Equal(t, 5, applied(), "the records above the stored offset were never written")
		cancel()
		require.NoError(t, <-done)
		require.Equal(t, []CommandID{"c-5", "c-6", "c-7", "c-8", "c-9"}, store.applied)
	})
}

// slowStore takes a while over each batch, noting when each began.
type slowStore struct {
	fakeStore
	took   time.Duration
	starts []time.Time
}

func (s *slowStore) WriteBatch(ctx context.Context, b *Batch, d *Deduped) ([]Outcome, error) {
	s.mu.Lock()
	s.starts = append(s.starts, time.Now())
	s.mu.Unlock()
	time.Sleep(s.took)
	return s.fakeStore.WriteBatch(ctx, b, d)
}

// runSlowWorker runs a worker whose store takes wait over each batch, the
// worker's BatchMaxWait too; stop ends it and checks it ended cleanly.
func runSlowWorker(t *testing.T, batch int, wait time.Duration) (store *slowStore, w *Worker, ctx context.Context, stop func()) {
	t.Helper()
	store = &slowStore{took: wait}
	cfg := testWorkerConfig(&store.fakeStore, &fakeDLQ{}, batch, wait)
	cfg.Store = store
	w = NewWorker(cfg, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	return store, w, ctx, func() {
		cancel()
		require.NoError(t, <-done)
	}
}

// Records handed over while a batch is written have waited from then on:
// their batch is due BatchMaxWait after the hand-over, not after the write.
// On synctest's clock, so the gap is exact.
func TestWorkerCountsTheWaitFromTheHandOver(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const wait = 400 * time.Millisecond
		store, w, ctx, stop := runSlowWorker(t, 100, wait)
		recs := records(20, 0)
		require.NoError(t, w.Feed(ctx, recs[:10])) // fewer than a batch: flushed for its age
		time.Sleep(wait)
		synctest.Wait()
		require.Len(t, store.starts, 1, "the first batch is being written")
		require.NoError(t, w.Feed(ctx, recs[10:])) // handed over now, taken once the write ends
		waitNext(t, &store.fakeStore, 20)
		stop()
		// Handed over at the first write's start, due BatchMaxWait later: as
		// the first write ends. Counted from the take, it would be one more
		// BatchMaxWait.
		require.Equal(t, wait, store.starts[1].Sub(store.starts[0]))
	})
}

// TestWorkerTopsUpADueBatch: a batch due for its age takes in the slice
// that waits for the worker as it falls due, rather than going out without
// it and leaving it a small batch of its own; a slice that brings more than
// a batch is written batch after batch, none left to wait another
// BatchMaxWait. The worker's select between its timer and the waiting
// slice picks either, so each case runs 20 times: without the top-up the
// first comes out as three batches in about half of them.
func TestWorkerTopsUpADueBatch(t *testing.T) {
	t.Parallel()
	for _, waiting := range []int{3, 25} {
		for range 20 {
			synctest.Test(t, func(t *testing.T) {
				const wait = 400 * time.Millisecond
				store, w, ctx, stop := runSlowWorker(t, 10, wait)
				recs := records(15+waiting, 0)
				require.NoError(t, w.Feed(ctx, recs[:15])) // a full batch written at once, 5 left, due as it ends
				time.Sleep(wait / 4)
				go func() { _ = w.Feed(ctx, recs[15:]) }() // waits for the worker through the write
				waitNext(t, &store.fakeStore, int64(len(recs)))
				stop()
				require.Len(t, store.starts, (len(recs)+9)/10, "%d waiting: full batches", waiting)
				for i := 1; i < len(store.starts); i++ {
					require.Equal(t, wait, store.starts[i].Sub(store.starts[i-1]), "%d waiting: batch %d waited after the one before", waiting, i)
				}
			})
		}
	}
}

// TestWorkerRechecksAgainstTheCatalog: before an attempt, a command that
// failed for a column is checked again once its entity was read again (the
// table gained the column), and one checked against an older catalog is
// checked against the new one: a column since dropped is a schema error
// for a command ingress accepted (it has a job), unknown_column for one
// another producer wrote.
func TestWorkerRechecksAgainstTheCatalog(t *testing.T) {
	t.Parallel()
	catalog := NewCatalog(testEntities())
	without := func(drop, add string) *Entity {
		e := *catalog.Entities()["customers"]
		e.Columns = maps.Clone(e.Columns)
		delete(e.Columns, drop)
		if add != "" {
			e.Columns[add] = Column{Name: add, Type: "text", Kind: KindText}
		}
		return &e
	}
	var refreshed []string
	w := NewWorker(WorkerConfig{Catalog: catalog, Refresh: func(_ context.Context, entity string) {
		refreshed = append(refreshed, entity)
		catalog.Update(without("", "tier")) // the table gained tier
	}}, 1)
	message := func(line string, job JobID) *Message {
		cmd, err := DecodeCommand([]byte(line))
		require.NoError(t, err)
		rec, err := NewRecord(&cmd, job, "t", 0)
		require.NoError(t, err)
		m := DecodeRecord(rec, catalog.Entities())
		m.catalog = catalog.Version()
		return &m
	}
	tier := message(`{"id":"a","entity":"customers","version":1,"data":{"customer_id":"k","tier":"gold"}}`, "job")
	require.Equal(t, ClassUnknownColumn, ClassOf(tier.Err))
	visits := message(`{"id":"b","entity":"customers","version":1,"data":{"customer_id":"k","visits":3}}`, "job")
	foreign := message(`{"id":"c","entity":"customers","version":1,"data":{"customer_id":"k","visits":3}}`, "")
	require.NoError(t, visits.Err)

	w.recheck(t.Context(), []*Message{tier, visits, foreign})
	require.Equal(t, []string{"customers"}, refreshed, "read again once for the entity")
	require.NoError(t, tier.Err, "the table has tier now")
	require.NoError(t, visits.Err)

	catalog.Update(without("visits", "tier")) // visits dropped
	w.recheck(t.Context(), []*Message{tier, visits, foreign})
	require.NoError(t, tier.Err)
	require.Equal(t, ClassSchema, ClassOf(visits.Err), "%v", visits.Err)
	require.Contains(t, visits.Err.Error(), "the table changed after ingress accepted the command")
	require.Equal(t, ClassUnknownColumn, ClassOf(foreign.Err), "a record from another producer")
}

// TestWorkerTimerDueForWrittenRecordsWritesNothing: a timer due for
// records a full batch already wrote finds the buffer empty and leaves a
// slice waiting then to its own wait, BatchMaxWait from its hand-over,
// instead of writing it at once. (The worker's select takes the timer or
// the slice first at random, so the scenario runs 20 times.)
func TestWorkerTimerDueForWrittenRecordsWritesNothing(t *testing.T) {
	t.Parallel()
	for range 20 {
		synctest.Test(t, func(t *testing.T) {
			const wait = 400 * time.Millisecond
			store, w, ctx, stop := runSlowWorker(t, 10, wait)
			store.took = wait * 12 / 10 // the full batch's write outlasts the timer its first records armed
			recs := records(13, 0)
			require.NoError(t, w.Feed(ctx, recs[:10])) // due at wait; written at once, as a full batch
			time.Sleep(wait * 11 / 10)
			handedOver := time.Now()
			go func() { _ = w.Feed(ctx, recs[10:]) }() // waits for the worker through the write
			waitNext(t, &store.fakeStore, int64(len(recs)))
			stop()
			require.Len(t, store.starts, 2)
			require.Equal(t, wait, store.starts[1].Sub(handedOver), "the slice waited BatchMaxWait from its hand-over")
		})
	}
}

package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// DeadLetterer parks messages that failed permanently. DeadLetter returns
// only once the dead-letter topic has acknowledged every message: the
// worker moves the source offset past them only after that.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, msgs []*Message) error
}

// Limiter paces writes to the database; one is shared by every worker of a
// processor, so partitions share the rate fairly (golang.org/x/time/rate's
// Limiter fits).
type Limiter interface {
	WaitN(ctx context.Context, n int) error
}

// Observer is told what workers do, for metrics. Its methods must be cheap
// and safe for concurrent use.
type Observer interface {
	// BatchWritten: a batch of size records committed, with its outcomes,
	// d after it was taken up (rate-limit wait and retries included).
	BatchWritten(size int, d time.Duration, outcomes []Outcome)
	// Retried: a batch failed with a transient error and will be retried.
	Retried(class ErrorClass)
	// DeadLettered: the dead-letter topic acknowledged a message.
	DeadLettered(class ErrorClass)
	// RateWaited: a batch waited d for the rate limiter.
	RateWaited(d time.Duration)
	// InFlight: a batch started (+1) or ended (-1).
	InFlight(delta int)
}

type nopObserver struct{}

func (nopObserver) BatchWritten(int, time.Duration, []Outcome) {}
func (nopObserver) Retried(ErrorClass)                         {}
func (nopObserver) DeadLettered(ErrorClass)                    {}
func (nopObserver) RateWaited(time.Duration)                   {}
func (nopObserver) InFlight(int)                               {}

// WorkerConfig wires one partition's worker.
type WorkerConfig struct {
	Topic     string
	Partition int32
	// NextOffset is the partition's offset as stored in the database when
	// the worker starts (-1 when nothing is stored).
	NextOffset   int64
	BatchSize    int
	BatchMaxWait time.Duration
	// FlushTimeout bounds the last flush on shutdown, which runs even though
	// the worker's context is done so that a nearly done batch is kept.
	FlushTimeout time.Duration
	// Catalog is the entities the records are decoded and checked against.
	Catalog *Catalog
	// Refresh, when set, reads an entity's table from the database again
	// into the catalog (as often as it allows: it may do nothing). The
	// worker asks for it when a command names a column the catalog lacks
	// or a value its column refuses, and when the database says a table
	// changed under a statement.
	Refresh     func(ctx context.Context, entity string)
	Store       Store
	DeadLetters DeadLetterer
	// Limiter, when set, is waited on for each batch's rows before it is
	// written; the wait holds the partition's records, so fetching stops
	// rather than memory growing.
	Limiter Limiter
	// Committed is called after each database commit with the new next
	// offset, so that the Kafka group offset can follow the database.
	Committed func(next int64)
	// LoadOffset reads the partition's stored offset. When a batch is
	// fenced (another processor moved the offset, or our own commit
	// succeeded but its acknowledgement was lost) the worker reloads it and
	// skips the records below it, which are applied already.
	LoadOffset func(ctx context.Context) (int64, error)
	// Recent is this partition's dedupe pre-filter (nil: none).
	Recent *Recent
	// Backoff makes the retry policy for transient errors.
	Backoff func() backoff.BackOff
	// Observer, when set, is told of batches, retries and dead letters.
	Observer Observer
	// Tracer, when set, traces each batch written, linked to the uploads
	// its records came from.
	Tracer Tracer
	Logger *slog.Logger
}

// Worker applies one partition's records in batches, in offset order.
// Records come in through Feed; Run flushes on size or age.
type Worker struct {
	cfg       WorkerConfig
	in        chan fed
	done      chan struct{}
	abandoned atomic.Bool
	next      int64     // the stored offset: where the next batch starts
	tail      int64     // the offset of the last record taken in
	buf       []*Record // into the fetched slices, which hold the records anyway
}

// NewWorker returns a worker; queue (at least 1) bounds how many fetched
// slices may wait for it. The last of them waits with its feeder, blocked in
// Feed (or kept after TryFeed refused it): the channel holds one fewer, so
// that no slice is fetched beyond the bound while the worker writes.
func NewWorker(cfg WorkerConfig, queue int) *Worker {
	return &Worker{cfg: cfg, in: make(chan fed, queue-1), done: make(chan struct{}), next: cfg.NextOffset, tail: -1}
}

// fed is a slice of fetched records and when it was handed to the worker:
// its records wait from then, taken in or not.
type fed struct {
	recs []Record
	at   time.Time
}

// Feed hands fetched records to the worker, blocking while its queue is full
// so that a slow database slows fetching instead of growing memory. It
// fails once the worker has stopped. The records are the worker's from then
// on: it keeps pointers to them until they are written.
func (w *Worker) Feed(ctx context.Context, recs []Record) error {
	if w.stopped() {
		return errWorkerStopped
	}
	select {
	case w.in <- fed{recs: recs, at: time.Now()}:
		return nil
	case <-w.done:
		return errWorkerStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errWorkerStopped = errors.New("worker stopped")

func (w *Worker) stopped() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// Abandon makes Run return without flushing when its context ends: for a
// partition that was lost, whose records may already be another
// processor's.
func (w *Worker) Abandon() { w.abandoned.Store(true) }

// Run batches until ctx is done, then flushes what it holds under a fresh
// timeout (unless abandoned).
func (w *Worker) Run(ctx context.Context) error {
	defer close(w.done)
	timer := time.NewTimer(w.cfg.BatchMaxWait)
	defer timer.Stop()
	for {
		select {
		case f := <-w.in:
			if len(w.buf) == 0 {
				// Due when its oldest record is BatchMaxWait old, counted
				// from its hand-over: a slice handed over while the last
				// batch was written has waited that long already.
				timer.Reset(max(0, w.cfg.BatchMaxWait-time.Since(f.at)))
			}
			w.take(f.recs)
			if err := w.flushFull(ctx); err != nil {
				return w.ended(ctx, err)
			}
		case <-timer.C:
			if len(w.buf) == 0 {
				continue // due for records a full batch took: a slice waiting now arms its own wait
			}
			last := w.topUp()
			err := w.flush(ctx, min(len(w.buf), w.cfg.BatchSize))
			if err == nil {
				err = w.flushFull(ctx) // a large slice topped up
			}
			if err != nil {
				return w.ended(ctx, err)
			}
			// What is left came with the last slice topped up (due
			// BatchMaxWait after its hand-over), or a fenced flush kept
			// it (the records above the reloaded offset, due again in
			// BatchMaxWait). Without the timer they would wait for a full
			// batch, forever at a partition's end.
			if len(w.buf) > 0 {
				due := w.cfg.BatchMaxWait
				if !last.IsZero() {
					due -= time.Since(last)
				}
				timer.Reset(max(0, due))
			}
		case <-ctx.Done():
			return w.drain()
		}
	}
}

// flushFull flushes full batches while the buffer holds one.
func (w *Worker) flushFull(ctx context.Context) error {
	for len(w.buf) >= w.cfg.BatchSize {
		if err := w.flush(ctx, w.cfg.BatchSize); err != nil {
			return err
		}
	}
	return nil
}

// topUp takes in the slices already waiting for the worker while it holds
// less than a batch, and returns the hand-over of the last one taken (zero
// if none). A batch due for its age then goes out with the records fetched
// meanwhile instead of leaving them for a small batch of their own: under
// a backlog, records wait for the worker's write, and batches flushed for
// age would hold only what one write's time let in.
func (w *Worker) topUp() (last time.Time) {
	for len(w.buf) < w.cfg.BatchSize {
		select {
		case f := <-w.in:
			w.take(f.recs)
			last = f.at
		default:
			return last
		}
	}
	return last
}

// take buffers records in offset order, dropping any the worker already
// has (a refetch after a pause can repeat them).
func (w *Worker) take(recs []Record) {
	for i := range recs {
		if r := &recs[i]; r.Offset > w.tail {
			w.buf = append(w.buf, r)
			w.tail = r.Offset
		}
	}
}

func (w *Worker) ended(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return w.drain()
	}
	return err
}

// drain flushes what is buffered, including records still queued, under
// context.WithoutCancel plus a timeout. A flush that does not get through
// in that time (the database away, the rate limiter asking for longer) is
// given up, not an error: the worker is leaving its partition, whose next
// owner — another processor, or this one again — reads what is not written
// from the stored offset. Ending the process over it would only lose the
// partitions that are still writing.
func (w *Worker) drain() error {
	if w.abandoned.Load() {
		return nil
	}
	for {
		select {
		case f := <-w.in:
			w.take(f.recs)
			continue
		default:
		}
		break
	}
	if len(w.buf) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(context.Background()), w.cfg.FlushTimeout)
	defer cancel()
	for len(w.buf) > 0 {
		if err := w.flush(ctx, min(len(w.buf), w.cfg.BatchSize)); err != nil {
			w.cfg.Logger.Warn("gave up the last flush of a partition this worker leaves; its next owner writes the rest from the stored offset",
				"records", len(w.buf), "error", BoundError(err))
			return nil
		}
	}
	return nil
}

// flush applies the first n buffered records. Records below the committed
// offset are skipped: after a split batch was interrupted half way, its first
// half is already in the database.
func (w *Worker) flush(ctx context.Context, n int) error {
	skip := 0
	for skip < n && w.buf[skip].Offset < w.next {
		skip++
	}
	if skip == n {
		w.drop(n)
		return nil
	}
	recs := w.buf[skip:n]
	// One allocation for the batch's messages, not one each.
	slab, msgs := make([]Message, len(recs)), make([]*Message, len(recs))
	var prev *Message
	es, version := w.cfg.Catalog.Snapshot()
	for i := range recs {
		slab[i] = decodeRecord(recs[i], es, prev)
		slab[i].catalog = version
		prev, msgs[i] = &slab[i], &slab[i]
	}
	err := w.apply(ctx, msgs)
	if errors.Is(err, ErrFenced) {
		// The records below the stored offset are applied; the next flush
		// skips them and goes on from there.
		next, lerr := w.loadOffset(ctx)
		if lerr != nil {
			return lerr
		}
		w.cfg.Logger.Info("partition offset moved under us; resuming from the stored offset", "stored", next, "ours", w.next)
		w.next = next
		return nil
	}
	if err != nil {
		return err
	}
	w.drop(n)
	return nil
}

// loadOffset reads the stored offset, retrying transient errors (a
// database restarting) for as long as ctx lives: a fenced batch must not
// stop the processor because the database was away just then.
func (w *Worker) loadOffset(ctx context.Context) (int64, error) {
	var next int64
	err := RetryTransient(ctx, w.cfg.Backoff(), func(err error) {
		w.cfg.Logger.Warn("reading the stored offset after a fenced batch; retrying", "error", BoundError(err))
	}, func() (err error) {
		next, err = w.cfg.LoadOffset(ctx)
		return err
	})
	return next, err
}

// drop removes the first n buffered records. The slots they leave are
// cleared: the buffer's spare capacity must not keep written records' bytes
// alive.
func (w *Worker) drop(n int) {
	rest := copy(w.buf, w.buf[n:])
	clear(w.buf[rest:])
	w.buf = w.buf[:rest]
}

// apply writes msgs as one batch; when the database refuses it for a
// permanent reason it splits the batch in halves until the offending command
// stands alone, and dead-letters only that command.
func (w *Worker) apply(ctx context.Context, msgs []*Message) error {
	err := w.write(ctx, msgs)
	if err == nil || !IsPermanent(err) || errors.Is(err, ErrFenced) {
		return err
	}
	if len(msgs) == 1 {
		msgs[0].Err = err
		return w.write(ctx, msgs)
	}
	half := len(msgs) / 2
	if err := w.apply(ctx, msgs[:half]); err != nil {
		return err
	}
	return w.apply(ctx, msgs[half:])
}

// write dead-letters what is already known to be bad, then commits the
// batch, retrying transient failures with backoff for as long as ctx lives.
func (w *Worker) write(ctx context.Context, msgs []*Message) (err error) {
	obs := w.cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	start := time.Now()
	obs.InFlight(1)
	defer obs.InFlight(-1)
	if w.cfg.Tracer != nil {
		var end func(error)
		ctx, end = w.cfg.Tracer.StartBatch(ctx, w.cfg.Partition, len(msgs), traceparents(msgs))
		defer func() { end(err) }()
	}
	b := &Batch{
		Topic:      w.cfg.Topic,
		Partition:  w.cfg.Partition,
		PrevOffset: w.next,
		NextOffset: msgs[len(msgs)-1].Record.Offset + 1,
		Messages:   msgs,
		Recent:     w.cfg.Recent,
	}
	if w.cfg.Limiter != nil {
		if err := w.cfg.Limiter.WaitN(ctx, len(msgs)); err != nil {
			return err
		}
		obs.RateWaited(time.Since(start))
	}
	var outcomes []Outcome
	op := func() error {
		// Each attempt checks the commands against the catalog as it is
		// now: a table may have changed since they were decoded.
		w.recheck(ctx, msgs)
		var dead []*Message
		for _, m := range msgs {
			if m.Err != nil && !m.parked {
				dead = append(dead, m)
			}
		}
		if len(dead) > 0 {
			if err := w.cfg.DeadLetters.DeadLetter(ctx, dead); err != nil {
				return err
			}
			for _, m := range dead {
				m.parked = true
				obs.DeadLettered(ClassOf(m.Err))
			}
		}
		// Repeats the worker can tell without the database are settled
		// before each attempt: the pre-filter learns from each commit.
		var err error
		outcomes, err = w.cfg.Store.WriteBatch(ctx, b, b.Dedupe())
		if err == nil && len(outcomes) == len(msgs) {
			w.cfg.Recent.remember(msgs, outcomes)
		}
		if err != nil && (IsPermanent(err) || errors.Is(err, ErrFenced)) {
			return backoff.Permanent(err)
		}
		if ClassOf(err) == ClassSchema {
			w.refresh(ctx, msgs, func(*Message) bool { return true })
		}
		if err != nil && ctx.Err() == nil {
			obs.Retried(ClassOf(err))
			w.cfg.Logger.Warn("retrying batch", "records", len(msgs), "error", BoundError(err))
		}
		return err
	}
	if err := backoff.Retry(op, backoff.WithContext(w.cfg.Backoff(), ctx)); err != nil {
		return err
	}
	obs.BatchWritten(len(msgs), time.Since(start), outcomes)
	w.next = b.NextOffset
	if w.cfg.Committed != nil {
		w.cfg.Committed(w.next)
	}
	return nil
}

// recheck checks the commands not parked yet against the catalog as it is
// now, where it changed since they were checked, or where they failed for
// a column (the catalog is read again first: the table may have gained the
// column). A column a command accepted by ingress names but the table no
// longer has, or a value its column now refuses, is a schema error: the
// command is dead-lettered, to replay once the table takes it again.
func (w *Worker) recheck(ctx context.Context, msgs []*Message) {
	w.refresh(ctx, msgs, func(m *Message) bool { return !m.parked && columnError(m.Err) })
	es, version := w.cfg.Catalog.Snapshot()
	for _, m := range msgs {
		if m.parked || m.Command.ID == "" || (m.catalog == version && !columnError(m.Err)) {
			continue
		}
		if m.Err != nil && !columnError(m.Err) && ClassOf(m.Err) != ClassSchema {
			continue // failed for another reason, which a table change does not mend
		}
		m.catalog = version
		err := es.validateFields(m.Command.ID, &m.Command.Entity, &m.Command.Op, m.Command.Version, m.Command.Data)
		if columnError(err) && m.JobID != "" {
			err = Errorf(ClassSchema, "%v: the table changed after ingress accepted the command; replay it once the table takes it", err)
		}
		m.Err = err
	}
}

// refresh asks for the catalog of each entity of the messages that need
// it to be read again, once an entity.
func (w *Worker) refresh(ctx context.Context, msgs []*Message, need func(*Message) bool) {
	if w.cfg.Refresh == nil {
		return
	}
	var asked map[string]bool
	for _, m := range msgs {
		if m.Command.Entity == "" || !need(m) || asked[m.Command.Entity] {
			continue
		}
		if asked == nil {
			asked = map[string]bool{}
		}
		asked[m.Command.Entity] = true
		w.cfg.Refresh(ctx, m.Command.Entity)
	}
}

// columnError tells whether err is a command's column failing the catalog:
// a column it lacks, or a value its type refuses.
func columnError(err error) bool {
	if err == nil {
		return false // most commands: without ClassOf's allocation
	}
	c := ClassOf(err)
	return c == ClassUnknownColumn || c == ClassTypeMismatch
}

// TryFeed hands records to the worker if its queue has room (or drops
// them if the worker has stopped).
func (w *Worker) TryFeed(recs []Record) bool {
	if w.stopped() {
		return true // dropped: the partition's next owner refetches them
	}
	select {
	case w.in <- fed{recs: recs, at: time.Now()}:
		return true
	default:
		return false
	}
}

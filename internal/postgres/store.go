package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spoolhq/spool/pipeline"
)

// Store applies batches and keeps jobs. It is safe for concurrent use by
// every partition's worker.
type Store struct {
	logger  *slog.Logger
	pool    *pgxpool.Pool
	catalog *pipeline.Catalog
	group   string
	// sqlCache holds the statements built at run time, by signature
	// (entity and its catalog generation, op, column set). The column set is the client's choice, up to
	// 2^columns of them per entity, so the cache is bounded: a miss only
	// costs building the text again.
	sqlCache *lru.Cache[string, string]
	// aborted holds jobs known to be aborted (a job never comes back from
	// it): their commands are taken out of a batch before it is written.
	// Each batch also asks for its other jobs; one found aborted then
	// restarts the batch. Bounded: an evicted job is found again.
	aborted *lru.Cache[pipeline.JobID, struct{}]
	// writes holds a token for each batch transaction in flight, when
	// LimitWrites bounds them; nil: only the pool bounds them. waited and
	// waitedFor count the batches that found no turn free and how long
	// they waited (WriteStats).
	writes    chan struct{}
	waited    atomic.Int64
	waitedFor atomic.Int64
	// waitsCut counts the times a batch gave way (errGaveWay) and was
	// written again (WriteStats).
	waitsCut atomic.Int64
}

// abortedCacheSize bounds the jobs a store remembers as aborted.
const abortedCacheSize = 4096

// sqlCacheSize bounds the statement cache: room for every shape a few
// busy entities use, far below what a client choosing column sets can ask.
const sqlCacheSize = 1024

// NewStore returns a store writing the catalog's entities; group names the
// consumer group whose offsets it keeps.
func NewStore(db *DB, catalog *pipeline.Catalog, group string, logger *slog.Logger) *Store {
	return newStore(db.pool, catalog, group, logger, sqlCacheSize)
}

func newStore(pool *pgxpool.Pool, catalog *pipeline.Catalog, group string, logger *slog.Logger, cacheSize int) *Store {
	if catalog == nil {
		catalog = pipeline.NewCatalog(nil)
	}
	cache, err := lru.New[string, string](cacheSize)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	aborted, err := lru.New[pipeline.JobID, struct{}](abortedCacheSize)
	if err != nil {
		panic(err)
	}
	return &Store{pool: pool, catalog: catalog, group: group, logger: logger, sqlCache: cache, aborted: aborted}
}

// LimitWrites bounds the batch transactions the store runs at once, all
// partitions together, to n (n <= 0: only the pool bounds them); a batch
// past the bound waits its turn. Concurrent bulk writes contend inside
// PostgreSQL (for index pages, the WAL, each other's rows): past the cores
// the database gives them, more at once only makes each command dearer
// (docs/benchmarks.md, "Concurrent writes"). The work that follows a
// commit (repair, settle) is not counted. Call it before the store is used.
func (s *Store) LimitWrites(n int) {
	s.writes = nil
	if n > 0 {
		s.writes = make(chan struct{}, n)
	}
}

// LoadOffset returns the partition's next offset as stored, or -1.
func (s *Store) LoadOffset(ctx context.Context, topic string, partition int32) (int64, error) {
	var next int64
	err := s.pool.QueryRow(ctx, `SELECT next_offset FROM spool_offsets
		WHERE consumer_group = $1 AND topic = $2 AND partition = $3`, s.group, topic, partition).Scan(&next)
	if errors.Is(err, pgx.ErrNoRows) {
		return -1, nil
	}
	if err != nil {
		return 0, classify(fmt.Errorf("loading offset of %s/%d: %w", topic, partition, err))
	}
	return next, nil
}

// WriteBatch applies b in one transaction: it claims the command ids in the
// ledger (ids already claimed are duplicates, or conflicts when their
// payload differs), collapses the fresh commands per row, writes each group
// with one set-based statement under the version guard, adds the job
// counters, records failures and moves the stored offset from b.PrevOffset
// to b.NextOffset. Nothing of it is visible unless all of it commits.
//
// Statements that do not wait for each other's answers travel together: the
// begin with the claim, the redelivery check with the groups' writes, the
// counters with the offset; the claim answers what the ledger knew of the
// ids it did not insert. So a batch is three round trips and the commit,
// and a row written by the batch stays locked for the last of them and the
// commit only.
//
// The commands of an aborted job (but replays, an operator's own decision)
// end aborted: they claim nothing, so that their ids can be sent again.
// The first round trip asks which of the batch's jobs are aborted; one
// that is and was not known to be restarts the batch without its commands.
//
// Under LimitWrites the transaction waits for its turn, and gives it back
// before the repair and settle that follow its commit.
func (s *Store) WriteBatch(ctx context.Context, b *pipeline.Batch, d *pipeline.Deduped) ([]pipeline.Outcome, error) {
	jobs := jobsOf(b)
	cuts, restarts := 0, 0
	for {
		if err := s.takeTurn(ctx); err != nil {
			return nil, classify(fmt.Errorf("waiting for a turn to write a batch of %d: %w", len(b.Messages), err))
		}
		patient := cuts == maxWaitCuts
		outcomes, after, err := s.writeBatch(ctx, b, d, jobs, patient)
		s.giveTurn()
		if after != nil {
			after()
		}
		switch {
		case errors.Is(err, errGaveWay): // never from a patient attempt
			cuts++
			s.waitsCut.Add(1)
		case errors.Is(err, errAbortedMeanwhile) && restarts < 2:
			restarts++
		default:
			// Aborted jobs evicted as fast as they are found, too: the
			// worker retries.
			return outcomes, err
		}
	}
}

// takeTurn waits for a batch transaction's turn (LimitWrites).
func (s *Store) takeTurn(ctx context.Context) error {
	if s.writes == nil {
		return nil
	}
	select {
	case s.writes <- struct{}{}:
		return nil
	default:
	}
	start := time.Now()
	defer func() {
		s.waited.Add(1)
		s.waitedFor.Add(int64(time.Since(start)))
	}()
	select {
	case s.writes <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// giveTurn ends the turn takeTurn gave.
func (s *Store) giveTurn() {
	if s.writes != nil {
		<-s.writes
	}
}

// WriteStats is the store's bound on batch transactions at a moment, for
// metrics.
type WriteStats struct {
	// InFlight is the batch transactions running; Limit is their bound
	// (processor.write_concurrency), 0 when only the pool bounds them.
	InFlight, Limit int
	// Waited counts the batches that found no turn free; WaitTime is how
	// long they waited, all together.
	Waited   int64
	WaitTime time.Duration
	// WaitsCut counts the times a batch whose rows were locked first
	// waited for a lock past lockedWaitTimeout in its writes: it gave way
	// and was written again.
	WaitsCut int64
}

// WriteStats reads the bound's statistics.
func (s *Store) WriteStats() WriteStats {
	return WriteStats{InFlight: len(s.writes), Limit: cap(s.writes), Waited: s.waited.Load(),
		WaitTime: time.Duration(s.waitedFor.Load()), WaitsCut: s.waitsCut.Load()}
}

// lockedWaitTimeout bounds a wait for a lock by the writes of a locked
// entity (lockedEntities, queueLockTimeout). Its rows locked, such a write
// waits for a key another batch inserted or committed since the lock, which
// can close a cycle PostgreSQL would break only after deadlock_timeout (1 s
// by default), or for what the lock does not cover: a tombstone another
// batch writes, a foreign key's parent row, a trigger's lock elsewhere.
const lockedWaitTimeout = "100ms"

// maxWaitCuts bounds how often a batch gives way (lockedWaitTimeout) in a
// row; the next attempt waits as long as it takes, so that a long wait
// that is no cycle cannot keep a batch from ever committing.
const maxWaitCuts = 3

// errGaveWay is a batch whose writes, its rows locked, waited for a lock
// past lockedWaitTimeout: rolled back, it is written again as soon as it
// has a turn (WriteBatch).
var errGaveWay = pipeline.Errorf(pipeline.ClassTransient, "a batch's writes waited for a lock past %s after its rows were locked", lockedWaitTimeout)

// errAbortedMeanwhile restarts a batch one of whose jobs was found aborted.
var errAbortedMeanwhile = pipeline.Errorf(pipeline.ClassTransient, "a job of the batch was aborted while the batch was written")

// writeBatch runs b's transaction. What must follow a commit (or a commit
// whose answer was lost) it returns as after, for WriteBatch to run once
// the batch's turn to write is over.
func (s *Store) writeBatch(ctx context.Context, b *pipeline.Batch, d *pipeline.Deduped, jobs []pipeline.JobID, patient bool) (outcomes []pipeline.Outcome, after func(), err error) {
	d, skipped := s.skipAborted(b, d, jobs)
	outcomes, candidates := slices.Clone(d.Outcomes), d.Candidates
	index := make(map[*pipeline.Message]int, len(b.Messages))
	for i, m := range b.Messages {
		index[m] = i
	}
	set := func(m *pipeline.Message, o pipeline.Outcome) { outcomes[index[m]] = o }

	var q pgx.Batch
	q.BeginTx(pgx.TxOptions{})
	// The batch's jobs that are aborted or keep results (a look-up by
	// primary key, in the round trip the claim makes anyway).
	abortedNow, results := false, map[pipeline.JobID]bool{}
	if len(jobs) > 0 {
		q.Queue(`SELECT job_id, state = 'aborted', results FROM spool_jobs
			WHERE job_id = ANY ($1) AND (state = 'aborted' OR results)`, jobs).Query(func(rows pgx.Rows) error {
			var id pipeline.JobID
			var aborted, kept bool
			_, err := pgx.ForEachRow(rows, []any{&id, &aborted, &kept}, func() error {
				if aborted && !skipped[id] {
					s.aborted.Add(id, struct{}{})
					abortedNow = true
				}
				results[id] = kept
				return nil
			})
			return err
		})
	}
	c := queueClaim(&q, candidates)
	br := s.pool.SendBatch(ctx, &q)
	tx := br.Tx()
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if err := br.Close(); err != nil {
		return nil, nil, classify(fmt.Errorf("claiming %d command ids: %w", len(candidates), err))
	}
	if abortedNow {
		return nil, nil, errAbortedMeanwhile
	}
	c.settleRepeats(d.Repeats, set)
	fresh := make([]*pipeline.Message, 0, len(candidates)-len(c.known))
	for _, m := range candidates {
		if _, known := c.known[m]; !known {
			fresh = append(fresh, m)
		}
	}
	groups, superseded, err := pipeline.Plan(fresh, s.catalog.Entities())
	if err != nil {
		return nil, nil, err
	}
	for m, o := range superseded {
		set(m, o)
	}

	q = pgx.Batch{}
	// Redeliveries are among duplicates, conflicts, dead letters and
	// aborted commands, all known by now; what the groups' writes find
	// stale is not among them.
	queueRedeliveries(&q, b, outcomes)
	queueAbortedRedeliveries(&q, b, outcomes)
	var repairs []keys
	var gated []int // of repairs: the keys of upserts, inserts and updates
	var writes pgx.Batch
	written := make([]keys, len(groups))
	locked := lockedEntities(groups)
	bounded := false // the writes queued so far run under lockedWaitTimeout
	for i, g := range groups {
		for _, m := range g.Messages {
			set(m, pipeline.OutcomeApplied)
		}
		if on := locked[g.Entity] && !patient; on != bounded {
			queueLockTimeout(&writes, on)
			bounded = on
		}
		if written[i], err = s.queueGroup(&writes, &g, set, bounded); err != nil {
			return nil, nil, err
		}
		if !g.Entity.Versioned() {
			continue
		}
		if g.Op != pipeline.OpDelete {
			// A delete's tombstones log its transaction (triggers of
			// spool_delete_log); the other writes repair their keys only
			// if one they could not see did (repairSQL).
			gated = append(gated, len(repairs))
		}
		repairs = append(repairs, written[i])
	}
	if bounded {
		queueLockTimeout(&writes, false)
	}
	s.queueLocks(&q, groups, written, locked)
	var snapshot, xid string
	if len(gated) > 0 {
		// Before the writes, so that no delete they could not see is
		// visible in it (taken later, it might see one they missed); and
		// the transaction's own id, whose deletes its writes see.
		q.Queue(`SELECT pg_current_snapshot()::text, pg_current_xact_id()::text`).QueryRow(func(row pgx.Row) error {
			return row.Scan(&snapshot, &xid)
		})
	}
	q.QueuedQueries = append(q.QueuedQueries, writes.QueuedQueries...)
	if err := tx.SendBatch(ctx, &q).Close(); err != nil {
		if errors.Is(err, errGaveWay) {
			return nil, nil, err
		}
		return nil, nil, classify(err)
	}
	for _, i := range gated {
		repairs[i].snapshot, repairs[i].xid = snapshot, xid
	}

	q = pgx.Batch{}
	queueCounts(&q, b, outcomes)
	queueResults(&q, b, outcomes, results)
	queueMoves(&q, b, outcomes)
	queueFailures(&q, b, outcomes)
	pending := repairsPending(repairs)
	if pending {
		// clock_timestamp, not the transaction's start: the mark's age is
		// counted from about its commit (pendingGrace).
		q.Queue(`INSERT INTO spool_repairs_pending (consumer_group, topic, partition, next_offset, jobs, created_at)
			VALUES ($1, $2, $3, $4, $5, clock_timestamp()) ON CONFLICT DO NOTHING`, s.group, b.Topic, b.Partition, b.NextOffset, jobStrings(jobs))
	}
	q.Queue(`INSERT INTO spool_offsets AS o (consumer_group, topic, partition, next_offset)
		VALUES ($1, $2, $3, $5)
		ON CONFLICT (consumer_group, topic, partition) DO UPDATE
		SET next_offset = EXCLUDED.next_offset, updated_at = now()
		WHERE o.next_offset = $4`,
		s.group, b.Topic, b.Partition, b.PrevOffset, b.NextOffset).Exec(func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() != 1 {
			return pipeline.ErrFenced
		}
		return nil
	})
	if err := tx.SendBatch(ctx, &q).Close(); err != nil {
		if errors.Is(err, pipeline.ErrFenced) {
			return nil, nil, err
		}
		return nil, nil, classify(fmt.Errorf("recording batch of %d: %w", len(b.Messages), err))
	}
	// What follows the commit must not be cut short by a worker being
	// stopped (a revoke cancels its context right after a commit).
	afterCommit := func(jobs []pipeline.JobID) func() {
		return func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterCommitTimeout)
			defer cancel()
			s.afterCommit(ctx, b, repairs, pending, jobs)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		// The commit may have happened with its answer lost: repair anyway,
		// which is always safe.
		return nil, afterCommit(nil), classify(fmt.Errorf("committing batch of %d: %w", len(b.Messages), err))
	}
	return outcomes, afterCommit(jobs), nil
}

// skipAborted settles as aborted the commands of the jobs known to be
// aborted (but replays), dedupe done again without them, and returns
// those jobs.
func (s *Store) skipAborted(b *pipeline.Batch, d *pipeline.Deduped, jobs []pipeline.JobID) (*pipeline.Deduped, map[pipeline.JobID]bool) {
	var known map[pipeline.JobID]bool
	for _, j := range jobs {
		if s.aborted.Contains(j) {
			if known == nil {
				known = map[pipeline.JobID]bool{}
			}
			known[j] = true
		}
	}
	if known == nil {
		return d, nil
	}
	return b.DedupeAborting(func(m *pipeline.Message) bool { return m.ReplayOf == "" && known[m.JobID] }), known
}

// afterCommit repairs the keys of a committed batch's versioned groups and
// settles its jobs. After the commit, so that the last of two racing
// transactions sees both: the later of a delete and an older upsert of one
// key sees the tombstone and the row, and the last batch of a job sees all
// its counters. The repairs and the removal of the batch's pending mark
// (pending: spool_repairs_pending) are one implicit transaction, so the mark
// goes only with the repair it stands for; the settle follows once that
// committed, for the same reason as the counters: of two batches of one job
// removing their marks at once, each settling inside its own removal would
// see the other's mark and leave the job processing until the periodic
// sweep (a lost wake-up that held jobs seconds past their last batch),
// while settled after its removal commits, the later settle sees both gone.
// What fails here (briefly retried) the periodic sweep (repair, then
// settle) catches, and until then the mark keeps the batch's jobs from
// completing.
func (s *Store) afterCommit(ctx context.Context, b *pipeline.Batch, repairs []keys, pending bool, jobs []pipeline.JobID) {
	ids := jobStrings(jobs)
	err := briefly(ctx, func() error {
		var q pgx.Batch
		for _, r := range repairs {
			s.queueRepair(&q, r)
		}
		if pending {
			q.Queue(`DELETE FROM spool_repairs_pending WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $4`,
				s.group, b.Topic, b.Partition, b.NextOffset)
		}
		if q.Len() > 0 {
			if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
				return classify(fmt.Errorf("repairing rows behind tombstones: %w", err))
			}
		}
		if len(ids) == 0 {
			return nil
		}
		return s.settle(ctx, ids)
	})
	if err != nil {
		s.logger.Warn("repairing and settling after a batch; the periodic sweep will retry", "partition", b.Partition, "error", err)
	}
}

// jobStrings is ids as text, for a text[] parameter.
func jobStrings(ids []pipeline.JobID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = string(id)
	}
	return out
}

// afterCommitTimeout bounds the repair and settling that follow a commit.
const afterCommitTimeout = 10 * time.Second

// briefAttempts bounds the work after a commit (repair, settling); each
// attempt takes a fresh connection from the pool, so a killed connection
// costs one attempt.
const briefAttempts = 5

// briefly runs fn until it succeeds, fails permanently, ctx ends or
// briefAttempts are spent, backing off from 50 ms (with jitter, so that
// partitions failing together do not retry together).
func briefly(ctx context.Context, fn func() error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	var last error
	err := backoff.Retry(func() error {
		last = fn()
		if last != nil && pipeline.IsPermanent(last) {
			return backoff.Permanent(last)
		}
		return last
	}, backoff.WithContext(backoff.WithMaxRetries(b, briefAttempts-1), ctx))
	if err != nil && last != nil {
		return last // the database's word, not the context's, for the log
	}
	return err
}

func jobsOf(b *pipeline.Batch) []pipeline.JobID {
	seen := make(map[pipeline.JobID]bool)
	var ids []pipeline.JobID
	for _, m := range b.Messages {
		if m.JobID != "" && !seen[m.JobID] {
			seen[m.JobID] = true
			ids = append(ids, m.JobID)
		}
	}
	return ids
}

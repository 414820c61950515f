package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spoolhq/spool/pipeline"
)

// CreateJob records a new job in state receiving, or open for parts.
func (s *Store) CreateJob(ctx context.Context, id pipeline.JobID, tenant string, o pipeline.JobOptions) error {
	state := pipeline.JobReceiving
	if o.Parts {
		state = pipeline.JobOpen
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO spool_jobs (job_id, tenant, state, results, parts) VALUES ($1, $2, $3, $4, $5)`,
		id, tenant, state, o.Results, o.Parts)
	if err != nil {
		return classify(fmt.Errorf("creating job: %w", err))
	}
	return nil
}

// AddFailures records rejected records of a job.
func (s *Store) AddFailures(ctx context.Context, id pipeline.JobID, fs []pipeline.Failure) error {
	if len(fs) == 0 {
		return nil
	}
	jobs := make([]string, len(fs))
	for i := range jobs {
		jobs[i] = string(id)
	}
	var q pgx.Batch
	queueFailureRows(&q, jobs, fs)
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return classify(fmt.Errorf("recording %d failures: %w", len(fs), err))
	}
	return nil
}

// FinishUpload moves a job out of receiving: to queued, or to failed when
// the upload broke off. Then it settles the job at once, since the
// processor may have applied everything while the upload was streaming.
func (s *Store) FinishUpload(ctx context.Context, id pipeline.JobID, r pipeline.UploadResult) error {
	state, msg := pipeline.JobQueued, (*string)(nil)
	if r.Err != nil {
		state = pipeline.JobFailed
		m := clean(r.Err.Error())
		msg = &m
	}
	// A job aborted while its upload ran stays aborted, with the upload's
	// final counts.
	_, err := s.pool.Exec(ctx, `UPDATE spool_jobs
		SET state = CASE WHEN state = 'aborted' THEN state ELSE $2 END, received = $3, accepted = $4, rejected = $5,
			error = CASE WHEN state = 'aborted' THEN error ELSE $6 END, updated_at = now()
		WHERE job_id = $1`, id, state, r.Received, r.Accepted, r.Rejected, msg)
	if err != nil {
		return classify(fmt.Errorf("finishing upload of job %s: %w", id, err))
	}
	return s.SettleJobs(ctx, []pipeline.JobID{id})
}

// ProgressJob records how far a receiving job's upload has got; it is the
// upload's heartbeat, so that AbandonJobs leaves the job alone.
func (s *Store) ProgressJob(ctx context.Context, id pipeline.JobID, r pipeline.UploadResult) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool_jobs SET received = $2, accepted = $3, rejected = $4, updated_at = now()
		WHERE job_id = $1 AND (state = 'receiving' OR (state = 'aborted' AND received <= $2))`, id, r.Received, r.Accepted, r.Rejected)
	if err != nil {
		return classify(fmt.Errorf("recording the progress of job %s: %w", id, err))
	}
	return nil
}

// AbortJob aborts a tenant's job that is open (in parts: it keeps the
// counts of the parts received), receiving, queued or processing:
// the processors skip its commands not applied yet, which end aborted
// (counted as such, so the job's counts still add up), and it is aborted
// from now on. Commands applied before stay applied. A finished job is a
// *pipeline.JobFinishedError.
func (s *Store) AbortJob(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	var state pipeline.JobState
	err := s.pool.QueryRow(ctx, `
		WITH j AS (SELECT job_id, state FROM spool_jobs WHERE job_id = $1 AND tenant = $2 FOR UPDATE),
		p AS (`+partsTotals("$1")+`),
		a AS (UPDATE spool_jobs t SET state = 'aborted', completed_at = now(), updated_at = now(),
				received = CASE WHEN j.state = 'open' THEN p.received ELSE t.received END,
				accepted = CASE WHEN j.state = 'open' THEN p.accepted ELSE t.accepted END,
				rejected = CASE WHEN j.state = 'open' THEN p.rejected ELSE t.rejected END
			FROM j, p WHERE t.job_id = j.job_id AND j.state IN ('open', 'receiving', 'queued', 'processing'))
		SELECT state FROM j`, id, tenant).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, pipeline.ErrJobNotFound
	}
	if err != nil {
		return nil, classify(fmt.Errorf("aborting job %s: %w", id, err))
	}
	if state.Finished() {
		return nil, &pipeline.JobFinishedError{ID: id, State: state}
	}
	return s.Job(ctx, tenant, id)
}

// abandonedError is the error of a job whose ingress died mid-upload.
const abandonedError = "the upload was abandoned: the ingress receiving it stopped before it answered. " +
	"Counts show what was accepted by the upload's last heartbeat; what Kafka took is still applied and counted. " +
	"Retrying the upload (with its Idempotency-Key) is safe"

// openTimedOutError is the error of a job in parts left open.
const openTimedOutError = "the job was opened for parts and neither received a part nor was completed for jobs.open_timeout. " +
	"What its parts sent is still applied and counted"

// AbandonJobs marks failed the jobs still receiving whose ingress has not
// been heard from for UploadLease: it died mid-upload, and no answer will
// ever finish them; and the jobs in parts left open, with no part
// received, for openTimeout. It returns how many it marked.
func (s *Store) AbandonJobs(ctx context.Context, openTimeout time.Duration) (int64, error) {
	var q pgx.Batch
	var n int64
	count := func(tag pgconn.CommandTag) error { n += tag.RowsAffected(); return nil }
	q.Queue(`UPDATE spool_jobs SET state = $1, error = $2, updated_at = now()
		WHERE state = $3 AND updated_at < now() - $4::interval`,
		pipeline.JobFailed, abandonedError, pipeline.JobReceiving, UploadLease).Exec(count)
	q.Queue(`UPDATE spool_jobs j SET state = $1, error = $2, updated_at = now(),
			received = p.received, accepted = p.accepted, rejected = p.rejected
		FROM spool_jobs o, LATERAL (`+partsTotals("o.job_id")+`) p
		WHERE o.state = $3 AND o.updated_at < now() - $4::interval
			AND j.job_id = o.job_id AND j.state = $3 AND j.updated_at < now() - $4::interval`,
		pipeline.JobFailed, openTimedOutError, pipeline.JobOpen, openTimeout).Exec(count)
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return 0, classify(fmt.Errorf("marking abandoned uploads failed: %w", err))
	}
	return n, nil
}

// SettleJobs moves the named queued and processing jobs forward by their
// counters: to processing once a command has an outcome, to completed (or
// completed_with_errors) once every accepted command has one. The processor
// calls it after each commit, so the last commit of a job always sees every
// counter.
func (s *Store) SettleJobs(ctx context.Context, ids []pipeline.JobID) error {
	if len(ids) == 0 {
		return nil
	}
	arg := jobStrings(ids)
	return briefly(ctx, func() error { return s.settle(ctx, arg) })
}

// SettleOpenJobs settles every open job. The processor runs it now and then
// to catch a processor that died between its commit and SettleJobs.
func (s *Store) SettleOpenJobs(ctx context.Context) error {
	return briefly(ctx, func() error { return s.settle(ctx, nil) })
}

// settle sets each job's state from its counts: processing while commands
// are outstanding, then completed or completed_with_errors. Named jobs are
// settled whatever their state (but receiving and failed), so that a job
// whose dead letters a replay moved reopens or completes again; without
// names, the open jobs are.
func (s *Store) settle(ctx context.Context, ids []string) error {
	var q pgx.Batch
	var changing []string
	queueSettleCheck(&q, ids, &changing)
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return classify(fmt.Errorf("settling jobs: %w", err))
	}
	return s.settleChanging(ctx, changing)
}

// queueSettleCheck queues the search for the jobs (the named ones, or the
// open ones when ids is nil) whose state their counts would change; once it
// has run, changing holds them. Most settles change nothing (a job stays
// processing), and the search takes no lock.
func queueSettleCheck(q *pgx.Batch, ids []string, changing *[]string) {
	// Two filters rather than one with OR, so that each plan uses its index.
	filter, args := "j.state IN ('queued', 'processing')", []any{}
	if ids != nil {
		filter = "j.job_id = ANY ($1) AND j.state IN ('queued', 'processing', 'completed', 'completed_with_errors')"
		args = append(args, ids)
	}
	q.Queue(strings.Replace(settleState, "{{filter}}", filter, 1)+`
		SELECT n.job_id FROM n JOIN c USING (job_id) WHERE c.state <> n.state`, args...).Query(func(rows pgx.Rows) error {
		var err error
		*changing, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
}

// settleChanging moves the jobs a settle check found to their new state.
func (s *Store) settleChanging(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	// Lock the jobs (in one order, so that settles never deadlock) and
	// read their counts again in a second statement, whose snapshot is
	// taken after the locks: a settle that read counts before another
	// settle's commit can then never write an older state over a newer one.
	// One batch is one implicit transaction and one round trip.
	filter := "j.job_id = ANY ($1) AND j.state IN ('queued', 'processing', 'completed', 'completed_with_errors')"
	var q pgx.Batch
	q.Queue(`SELECT j.job_id FROM spool_jobs j WHERE `+filter+` ORDER BY j.job_id FOR UPDATE`, ids)
	q.Queue(strings.Replace(settleState, "{{filter}}", filter, 1)+`
		UPDATE spool_jobs j SET
			state = n.state,
			completed_at = CASE WHEN n.state LIKE 'completed%' THEN now() END,
			updated_at = now()
		FROM n
		WHERE j.job_id = n.job_id AND j.state <> n.state`, ids)
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return classify(fmt.Errorf("settling jobs: %w", err))
	}
	return nil
}

// settleState computes the state of each job {{filter}} selects from its
// counts: CTE c holds the sums, n the state. A job a batch's repair still
// waits for (spool_repairs_pending) is processing, whatever its counts.
const settleState = `
	WITH c AS (
		SELECT j.job_id, j.state, j.accepted, j.rejected,
			coalesce(sum(c.applied + c.duplicate + c.stale + c.conflict + c."exists" + c.missing + c.aborted + c.dead_lettered), 0) AS done,
			coalesce(sum(c.conflict + c.dead_lettered), 0) AS bad
		FROM spool_jobs j LEFT JOIN spool_job_counts c ON c.job_id = j.job_id
		WHERE {{filter}}
		GROUP BY j.job_id
	), n AS (
		SELECT job_id, CASE
			WHEN done < accepted AND done = 0 AND state = 'queued' THEN 'queued'
			WHEN done < accepted THEN 'processing'
			WHEN EXISTS (SELECT 1 FROM spool_repairs_pending r WHERE c.job_id = ANY (r.jobs)) THEN 'processing'
			WHEN bad > 0 OR rejected > 0 THEN 'completed_with_errors'
			ELSE 'completed' END AS state
		FROM c
	)`

// jobSelect reads jobs with their counters summed; scanJob reads a row of it.
const jobSelect = `
	SELECT j.job_id, j.tenant, j.state, j.results, j.parts, j.received, j.accepted, j.rejected, j.error,
		j.created_at, j.updated_at, j.completed_at,
		coalesce(c.applied, 0), coalesce(c.duplicate, 0), coalesce(c.stale, 0), coalesce(c.conflict, 0),
		coalesce(c."exists", 0), coalesce(c.missing, 0), coalesce(c.aborted, 0), coalesce(c.dead_lettered, 0)
	FROM spool_jobs j LEFT JOIN LATERAL (
		SELECT sum(applied) AS applied, sum(duplicate) AS duplicate, sum(stale) AS stale, sum(conflict) AS conflict,
			sum("exists") AS "exists", sum(missing) AS missing, sum(aborted) AS aborted, sum(dead_lettered) AS dead_lettered
		FROM spool_job_counts WHERE job_id = j.job_id) c ON true`

func scanJob(row pgx.Row) (*pipeline.Job, error) {
	var j pipeline.Job
	var errMsg *string
	err := row.Scan(&j.ID, &j.Tenant, &j.State, &j.Results, &j.InParts, &j.Received, &j.Accepted, &j.Rejected, &errMsg,
		&j.CreatedAt, &j.UpdatedAt, &j.CompletedAt,
		&j.Counts.Applied, &j.Counts.Duplicate, &j.Counts.Stale, &j.Counts.Conflict,
		&j.Counts.Exists, &j.Counts.Missing, &j.Counts.Aborted, &j.Counts.DeadLettered)
	if err != nil {
		return nil, err
	}
	if errMsg != nil {
		j.Error = *errMsg
	}
	return &j, nil
}

// Job returns a tenant's job with its counters summed.
func (s *Store) Job(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	j, err := scanJob(s.pool.QueryRow(ctx, jobSelect+` WHERE j.job_id = $1 AND j.tenant = $2`, id, tenant))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, pipeline.ErrJobNotFound
	}
	if err != nil {
		return nil, classify(fmt.Errorf("reading job %s: %w", id, err))
	}
	if j.InParts {
		if j.Parts, err = s.parts(ctx, id); err != nil {
			return nil, err
		}
	}
	return j, nil
}

// Jobs lists a tenant's jobs, newest first, from after q.After.
func (s *Store) Jobs(ctx context.Context, tenant string, q pipeline.JobQuery) ([]*pipeline.Job, error) {
	where, args := []string{"j.tenant = $1"}, []any{tenant}
	if q.State != "" {
		args = append(args, q.State)
		where = append(where, fmt.Sprintf("j.state = $%d", len(args)))
	}
	if q.After != nil {
		args = append(args, q.After.CreatedAt, q.After.ID)
		where = append(where, fmt.Sprintf("(j.created_at, j.job_id) < ($%d, $%d)", len(args)-1, len(args)))
	}
	args = append(args, q.Limit)
	rows, err := s.pool.Query(ctx, jobSelect+` WHERE `+strings.Join(where, " AND ")+
		fmt.Sprintf(` ORDER BY j.created_at DESC, j.job_id DESC LIMIT $%d`, len(args)), args...)
	if err != nil {
		return nil, classify(fmt.Errorf("listing jobs: %w", err))
	}
	defer rows.Close()
	var jobs []*pipeline.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, classify(fmt.Errorf("listing jobs: %w", err))
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Errorf("listing jobs: %w", err))
	}
	return jobs, nil
}

// listingChunk is how many rows one query of a listing reads.
const listingChunk = 1000

// Failures streams a tenant's job's failures in input order to fn, a chunk
// of rows at a time: a job with a million failures is never held in
// memory, and no connection is held while fn runs (a client that reads
// slowly must not starve the pool). It returns pipeline.ErrJobNotFound,
// before calling fn, when the tenant has no such job.
func (s *Store) Failures(ctx context.Context, tenant string, id pipeline.JobID, fn func(pipeline.Failure) error) error {
	_, pl, err := s.jobListing(ctx, tenant, id)
	if err != nil {
		return err
	}
	var f pipeline.Failure
	return listChunks(ctx, s, "failures of job "+string(id), func(after int64) (pgx.Rows, error) {
		return s.pool.Query(ctx, `SELECT idx, command_id, stage, outcome, error_class, error
			FROM spool_job_failures WHERE job_id = $1 AND idx > $2 ORDER BY idx LIMIT $3`, id, after, listingChunk)
	}, []any{&f.Index, &f.ID, &f.Stage, &f.Outcome, &f.Class, &f.Error}, func() (int64, pipeline.Failure) {
		stored := f.Index
		f.Index = pl.place(stored)
		return stored, f
	}, fn)
}

// Results streams a tenant's job's commands with their outcomes in input
// order to fn, as Failures does: the outcomes the processors recorded and
// the records ingress rejected, only those with one of outcomes when any
// are given. A command not settled yet is not listed. It returns
// pipeline.ErrJobNotFound or pipeline.ErrNoResults before calling fn.
func (s *Store) Results(ctx context.Context, tenant string, id pipeline.JobID, outcomes []pipeline.Outcome, fn func(pipeline.Result) error) error {
	kept, pl, err := s.jobListing(ctx, tenant, id)
	if err != nil {
		return err
	}
	if !kept {
		return pipeline.ErrNoResults
	}
	var filter []string // nil: every outcome
	for _, o := range outcomes {
		filter = append(filter, string(o))
	}
	var x pipeline.Result
	return listChunks(ctx, s, "results of job "+string(id), func(after int64) (pgx.Rows, error) {
		return s.pool.Query(ctx, `
			SELECT idx, command_id, outcome FROM (
				(SELECT idx, command_id, outcome FROM spool_job_results
				WHERE job_id = $1 AND idx > $2 AND ($4::text[] IS NULL OR outcome = ANY ($4)) ORDER BY idx LIMIT $3)
				UNION ALL
				(SELECT idx, command_id, outcome FROM spool_job_failures
				WHERE job_id = $1 AND idx > $2 AND outcome = 'rejected' AND ($4::text[] IS NULL OR outcome = ANY ($4))
				ORDER BY idx LIMIT $3)) r
			ORDER BY idx LIMIT $3`, id, after, listingChunk, filter)
	}, []any{&x.Index, &x.ID, &x.Outcome}, func() (int64, pipeline.Result) {
		stored := x.Index
		x.Index = pl.place(stored)
		return stored, x
	}, fn)
}

// jobListing tells whether a tenant's job keeps results and how its
// indices become places in its upload, or that it has no such job
// (pipeline.ErrJobNotFound).
func (s *Store) jobListing(ctx context.Context, tenant string, id pipeline.JobID) (bool, placer, error) {
	var kept, inParts bool
	err := s.pool.QueryRow(ctx, `SELECT results, parts FROM spool_jobs WHERE job_id = $1 AND tenant = $2`, id, tenant).Scan(&kept, &inParts)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil, pipeline.ErrJobNotFound
	}
	if err != nil {
		return false, nil, classify(fmt.Errorf("reading job %s: %w", id, err))
	}
	pl, err := s.placer(ctx, id, inParts)
	return kept, pl, err
}

// listChunks runs query for chunk after chunk of a listing ordered by
// index, scanning each row into dest and handing row() to fn once the
// chunk is read, so that no connection is held while fn runs.
func listChunks[T any](ctx context.Context, s *Store, what string, query func(after int64) (pgx.Rows, error),
	dest []any, row func() (int64, T), fn func(T) error,
) error {
	after := int64(-1)
	chunk := make([]T, 0, listingChunk)
	for {
		rows, err := query(after)
		if err != nil {
			return classify(fmt.Errorf("reading %s: %w", what, err))
		}
		chunk = chunk[:0]
		_, err = pgx.ForEachRow(rows, dest, func() error {
			idx, v := row()
			chunk, after = append(chunk, v), idx
			return nil
		})
		if err != nil {
			return classify(fmt.Errorf("reading %s: %w", what, err))
		}
		for _, v := range chunk {
			if err := fn(v); err != nil {
				return err
			}
		}
		if len(chunk) < listingChunk {
			return nil
		}
	}
}

// DeadLetters counts a tenant's dead-lettered commands by error class, over
// the jobs still kept.
func (s *Store) DeadLetters(ctx context.Context, tenant string) (map[pipeline.ErrorClass]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT f.error_class, count(*)
		FROM spool_jobs j JOIN spool_job_failures f ON f.job_id = j.job_id
		WHERE j.tenant = $1 AND f.outcome = 'dead_lettered'
		GROUP BY f.error_class`, tenant)
	if err != nil {
		return nil, classify(fmt.Errorf("counting dead letters: %w", err))
	}
	defer rows.Close()
	out := map[pipeline.ErrorClass]int64{}
	for rows.Next() {
		var c pipeline.ErrorClass
		var n int64
		if err := rows.Scan(&c, &n); err != nil {
			return nil, classify(fmt.Errorf("counting dead letters: %w", err))
		}
		out[c] = n
	}
	if err := rows.Err(); err != nil {
		return nil, classify(fmt.Errorf("counting dead letters: %w", err))
	}
	return out, nil
}

// pruneBatch bounds the jobs one pruning statement removes, so that it
// holds its locks briefly.
const pruneBatch = 1000

// PruneJobs removes jobs that finished (completed, completed_with_errors,
// failed or aborted) more than retention ago, with their counters and
// failures. It returns how many went.
func (s *Store) PruneJobs(ctx context.Context, retention time.Duration) (int64, error) {
	var total int64
	for {
		var n int64
		err := s.pool.QueryRow(ctx, `
			WITH gone AS (
				DELETE FROM spool_jobs WHERE job_id IN (
					SELECT job_id FROM spool_jobs
					WHERE state IN ('completed', 'completed_with_errors', 'failed', 'aborted')
					  AND coalesce(completed_at, updated_at) < now() - $1::interval
					LIMIT $2)
				RETURNING job_id),
			counts AS (DELETE FROM spool_job_counts WHERE job_id IN (SELECT job_id FROM gone)),
			failures AS (DELETE FROM spool_job_failures WHERE job_id IN (SELECT job_id FROM gone)),
			repeats AS (DELETE FROM spool_job_repeats WHERE job_id IN (SELECT job_id FROM gone)),
			replays AS (DELETE FROM spool_job_replays WHERE job_id IN (SELECT job_id FROM gone)),
			results AS (DELETE FROM spool_job_results WHERE job_id IN (SELECT job_id FROM gone)),
			parts AS (DELETE FROM spool_job_parts WHERE job_id IN (SELECT job_id FROM gone))
			SELECT count(*) FROM gone`, retention, pruneBatch).Scan(&n)
		if err != nil {
			return total, classify(fmt.Errorf("pruning jobs: %w", err))
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
	}
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// LookupDeadLetter returns what was recorded when the command at index of
// job was dead-lettered (its failure row, with outcome dead_lettered, and
// the job's tenant), or nil when there is none. It implements dlq.Ledger.
func (s *Store) LookupDeadLetter(ctx context.Context, job pipeline.JobID, index int64) (*pipeline.DeadLetterRecord, error) {
	var r pipeline.DeadLetterRecord
	err := s.pool.QueryRow(ctx, `SELECT j.tenant, f.command_id, f.value_sha256, f.command
		FROM spool_job_failures f JOIN spool_jobs j ON j.job_id = f.job_id
		WHERE f.job_id = $1 AND f.idx = $2 AND f.outcome = 'dead_lettered'`, clean(string(job)), index).
		Scan(&r.Tenant, &r.ID, &r.ValueHash, &r.Command)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, classify(fmt.Errorf("looking up dead letter %d of job %s: %w", index, job, err))
	}
	return &r, nil
}

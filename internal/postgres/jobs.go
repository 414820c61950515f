package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// CreateJob records a new job in state receiving.
func (s *Store) CreateJob(ctx context.Context, id pipeline.JobID, tenant string) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO spool_jobs (job_id, tenant, state) VALUES ($1, $2, $3)`,
		id, tenant, pipeline.JobReceiving)
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
	_, err := s.pool.Exec(ctx, `UPDATE spool_jobs
		SET state = $2, received = $3, accepted = $4, rejected = $5, error = $6, updated_at = now()
		WHERE job_id = $1`, id, state, r.Received, r.Accepted, r.Rejected, msg)
	if err != nil {
		return classify(fmt.Errorf("finishing upload of job %s: %w", id, err))
	}
	return s.SettleJobs(ctx, []pipeline.JobID{id})
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
	arg := make([]string, len(ids))
	for i, id := range ids {
		arg[i] = string(id)
	}
	return s.settle(ctx, arg)
}

// SettleOpenJobs settles every open job. The processor runs it now and then
// to catch a processor that died between its commit and SettleJobs.
func (s *Store) SettleOpenJobs(ctx context.Context) error { return s.settle(ctx, nil) }

// settle sets each job's state from its counts: processing while commands
// are outstanding, then completed or completed_with_errors. Named jobs are
// settled whatever their state (but receiving and failed), so that a job
// whose dead letters a replay moved reopens or completes again; without
// names, the open jobs are.
func (s *Store) settle(ctx context.Context, ids []string) error {
	// Two filters rather than one with OR, so that each plan uses its index.
	filter, args := "j.state IN ('queued', 'processing')", []any{}
	if ids != nil {
		filter = "j.job_id = ANY ($1) AND j.state IN ('queued', 'processing', 'completed', 'completed_with_errors')"
		args = append(args, ids)
	}
	_, err := s.pool.Exec(ctx, `
		WITH c AS (
			SELECT j.job_id, j.state, j.accepted, j.rejected,
				coalesce(sum(c.applied + c.duplicate + c.stale + c.conflict + c.dead_lettered), 0) AS done,
				coalesce(sum(c.conflict + c.dead_lettered), 0) AS bad
			FROM spool_jobs j LEFT JOIN spool_job_counts c ON c.job_id = j.job_id
			WHERE `+filter+`
			GROUP BY j.job_id
		), n AS (
			SELECT job_id, CASE
				WHEN done < accepted AND done = 0 AND state = 'queued' THEN 'queued'
				WHEN done < accepted THEN 'processing'
				WHEN bad > 0 OR rejected > 0 THEN 'completed_with_errors'
				ELSE 'completed' END AS state
			FROM c
		)
		UPDATE spool_jobs j SET
			state = n.state,
			completed_at = CASE WHEN n.state LIKE 'completed%' THEN now() END,
			updated_at = now()
		FROM n
		WHERE j.job_id = n.job_id AND j.state <> n.state`, args...)
	if err != nil {
		return classify(fmt.Errorf("settling jobs: %w", err))
	}
	return nil
}

// Job returns a tenant's job with its counters summed.
func (s *Store) Job(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	var j pipeline.Job
	var errMsg *string
	err := s.pool.QueryRow(ctx, `
		SELECT j.job_id, j.tenant, j.state, j.received, j.accepted, j.rejected, j.error,
			j.created_at, j.updated_at, j.completed_at,
			coalesce(sum(c.applied), 0), coalesce(sum(c.duplicate), 0), coalesce(sum(c.stale), 0),
			coalesce(sum(c.conflict), 0), coalesce(sum(c.dead_lettered), 0)
		FROM spool_jobs j LEFT JOIN spool_job_counts c ON c.job_id = j.job_id
		WHERE j.job_id = $1 AND j.tenant = $2
		GROUP BY j.job_id`, id, tenant).Scan(
		&j.ID, &j.Tenant, &j.State, &j.Received, &j.Accepted, &j.Rejected, &errMsg,
		&j.CreatedAt, &j.UpdatedAt, &j.CompletedAt,
		&j.Counts.Applied, &j.Counts.Duplicate, &j.Counts.Stale, &j.Counts.Conflict, &j.Counts.DeadLettered)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, pipeline.ErrJobNotFound
	}
	if err != nil {
		return nil, classify(fmt.Errorf("reading job %s: %w", id, err))
	}
	if errMsg != nil {
		j.Error = *errMsg
	}
	return &j, nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

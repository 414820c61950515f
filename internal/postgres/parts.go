package postgres

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// StartPart records that part n of a tenant's job opened for parts starts
// streaming. The job must be open: pipeline.ErrJobNotFound when the tenant
// has no such job, a *pipeline.JobFinishedError (with the job's state) when
// it is not open or not in parts, pipeline.ErrPartReceived when the part was
// received (done or refused). A part broken, or receiving when its ingress
// stopped, starts again. The job's row is share-locked meanwhile, so that a CompleteJob either
// waits for this or is seen here.
func (s *Store) StartPart(ctx context.Context, tenant string, id pipeline.JobID, n int) error {
	var state pipeline.JobState
	var inParts, started bool
	err := s.pool.QueryRow(ctx, `
		WITH j AS (SELECT state, parts FROM spool_jobs WHERE job_id = $1 AND tenant = $2 FOR SHARE),
		p AS (INSERT INTO spool_job_parts (job_id, part, state)
			SELECT $1, $3, 'receiving' FROM j WHERE j.state = 'open' AND j.parts
			ON CONFLICT (job_id, part) DO UPDATE SET state = 'receiving', error = NULL, updated_at = now()
			WHERE spool_job_parts.state IN ('receiving', 'broken')
			RETURNING 1)
		SELECT state, parts, EXISTS (SELECT 1 FROM p) FROM j`, id, tenant, n).Scan(&state, &inParts, &started)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return pipeline.ErrJobNotFound
	case err != nil:
		return classify(fmt.Errorf("starting part %d of job %s: %w", n, id, err))
	case state != pipeline.JobOpen || !inParts:
		return &pipeline.JobFinishedError{ID: id, State: state}
	case !started:
		return pipeline.ErrPartReceived
	}
	return nil
}

// HeartbeatPart records how far part n of a job has got, and keeps it, and
// the job, from looking abandoned while the part streams. A part whose
// ingress stops keeps those counts: a broken part's.
func (s *Store) HeartbeatPart(ctx context.Context, id pipeline.JobID, n int, r pipeline.UploadResult) error {
	var q pgx.Batch
	q.Queue(`UPDATE spool_job_parts SET updated_at = now(), received = greatest(received, $3), accepted = greatest(accepted, $4),
			rejected = greatest(rejected, $5)
		WHERE job_id = $1 AND part = $2 AND state = 'receiving'`, id, n, r.Received, r.Accepted, r.Rejected)
	q.Queue(`UPDATE spool_jobs SET updated_at = now() WHERE job_id = $1 AND state = 'open'`, id)
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return classify(fmt.Errorf("recording the progress of part %d of job %s: %w", n, id, err))
	}
	return nil
}

// FinishPart records how part p.Number of a job ended: p.State done
// (with the SHA-256 of its body), refused or broken (with p.Error), with
// its counts; with p.State empty, it forgets a part none of whose records
// reached Kafka, so that the part can be sent again, corrected. A part
// sent again after it broke keeps the most records any attempt got into
// Kafka, which are applied whatever the later attempts do: one that ends
// before any record leaves it broken, not forgotten.
func (s *Store) FinishPart(ctx context.Context, id pipeline.JobID, p pipeline.Part, sha256 []byte) error {
	var q pgx.Batch
	if p.State == "" {
		q.Queue(`UPDATE spool_job_parts SET state = 'broken', updated_at = now()
			WHERE job_id = $1 AND part = $2 AND state = 'receiving' AND received > 0`, id, p.Number)
		q.Queue(`DELETE FROM spool_job_parts WHERE job_id = $1 AND part = $2 AND state = 'receiving' AND received = 0`, id, p.Number)
	} else {
		var msg *string
		if p.Error != "" {
			m := clean(p.Error)
			msg = &m
		}
		q.Queue(`UPDATE spool_job_parts SET state = $3, received = greatest(received, $4), accepted = greatest(accepted, $5),
			rejected = greatest(rejected, $6), sha256 = $7, error = $8, updated_at = now() WHERE job_id = $1 AND part = $2`,
			id, p.Number, p.State, p.Received, p.Accepted, p.Rejected, sha256, msg)
	}
	q.Queue(`UPDATE spool_jobs SET updated_at = now() WHERE job_id = $1 AND state = 'open'`, id)
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return classify(fmt.Errorf("recording part %d of job %s: %w", p.Number, id, err))
	}
	return nil
}

// CompleteJob closes a tenant's job opened for parts: it is queued from
// then on, with the counts of the parts it received, and settles as any
// job. pipeline.ErrJobNotFound, a *pipeline.JobFinishedError when the job
// is not open, pipeline.ErrPartsInFlight while a part streams, a
// *pipeline.PartsBrokenError while parts are broken (a part whose ingress
// stopped beating for UploadLease is broken too): some of their records
// are in Kafka, so the job is not whole until they are sent again.
func (s *Store) CompleteJob(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	var state pipeline.JobState
	var inFlight bool
	var broken []int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT state FROM spool_jobs WHERE job_id = $1 AND tenant = $2 AND parts FOR UPDATE`,
			id, tenant).Scan(&state)
		if err != nil || state != pipeline.JobOpen {
			return err
		}
		// Its own statement, so its own snapshot: taken once the lock is
		// held, it sees every part a StartPart recorded before.
		err = tx.QueryRow(ctx, `SELECT coalesce(bool_or(state = 'receiving' AND updated_at > now() - $2::interval), false),
				coalesce(array_agg(part ORDER BY part) FILTER (WHERE state = 'broken' OR state = 'receiving'), '{}')
			FROM spool_job_parts WHERE job_id = $1`, id, UploadLease).Scan(&inFlight, &broken)
		if err != nil || inFlight || len(broken) > 0 {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE spool_jobs j SET state = 'queued', updated_at = now(),
				received = p.received, accepted = p.accepted, rejected = p.rejected
			FROM (`+partsTotals("$1")+`) p
			WHERE j.job_id = $1`, id)
		return err
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, pipeline.ErrJobNotFound
	case err != nil:
		return nil, classify(fmt.Errorf("completing job %s: %w", id, err))
	case state != pipeline.JobOpen:
		return nil, &pipeline.JobFinishedError{ID: id, State: state}
	case inFlight:
		return nil, pipeline.ErrPartsInFlight
	case len(broken) > 0:
		return nil, &pipeline.PartsBrokenError{ID: id, Parts: broken}
	}
	if err := s.SettleJobs(ctx, []pipeline.JobID{id}); err != nil {
		return nil, err
	}
	return s.Job(ctx, tenant, id)
}

// partsTotals sums the counts of the parts of job (an SQL expression: a
// parameter, or a column of an outer query): what it accepted when it is
// completed, aborted or timed out. A part broken, or receiving when the job
// is aborted or times out, counts the records of it that reached Kafka (as
// its last heartbeat knew them), since they are applied.
func partsTotals(job string) string {
	return `SELECT coalesce(sum(received), 0) AS received, coalesce(sum(accepted), 0) AS accepted,
	coalesce(sum(rejected), 0) AS rejected FROM spool_job_parts WHERE job_id = ` + job
}

// parts reads a job's parts, in order.
func (s *Store) parts(ctx context.Context, id pipeline.JobID) ([]pipeline.Part, error) {
	rows, err := s.pool.Query(ctx, `SELECT part, state, received, accepted, rejected, sha256, coalesce(error, '')
		FROM spool_job_parts WHERE job_id = $1 ORDER BY part`, id)
	if err != nil {
		return nil, classify(fmt.Errorf("reading the parts of job %s: %w", id, err))
	}
	out := []pipeline.Part{}
	var p pipeline.Part
	var sum []byte
	_, err = pgx.ForEachRow(rows, []any{&p.Number, &p.State, &p.Received, &p.Accepted, &p.Rejected, &sum, &p.Error}, func() error {
		p.SHA256 = hex.EncodeToString(sum)
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, classify(fmt.Errorf("reading the parts of job %s: %w", id, err))
	}
	return out, nil
}

// placer turns the indices of a job in parts into places in the whole
// upload: a record's index in its part after the records of the received
// parts before it. For a job not in parts it keeps them.
type placer map[int]int64

func (s *Store) placer(ctx context.Context, id pipeline.JobID, inParts bool) (placer, error) {
	if !inParts {
		return nil, nil
	}
	ps, err := s.parts(ctx, id)
	if err != nil {
		return nil, err
	}
	bases := placer{}
	var before int64
	for _, p := range ps {
		bases[p.Number] = before
		before += p.Received
	}
	return bases, nil
}

func (pl placer) place(index int64) int64 {
	if pl == nil {
		return index
	}
	part, local := pipeline.PartOf(index)
	return pl[part] + local
}

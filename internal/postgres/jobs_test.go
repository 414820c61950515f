package postgres_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

func (b *testBundle) writeMessages(t *testing.T, p int32, edit func(i int, m *pipeline.Message), lines ...string) []pipeline.Outcome {
	t.Helper()
	out, err := b.writeEdited(t, p, edit, lines...)
	require.NoError(t, err)
	return out
}

func (b *testBundle) job(t *testing.T) *pipeline.Job {
	t.Helper()
	j, err := b.store.Job(context.Background(), "tenant", "job-1")
	require.NoError(t, err)
	return j
}

// TestJobStateMachine walks a job through every state: receiving, queued,
// processing, completed_with_errors once a command is dead-lettered, back
// to completed when a replay of it applies (twice replayed, it moves once),
// and failed for an upload that broke off.
func TestJobStateMachine(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{}))
	require.Equal(t, pipeline.JobReceiving, b.job(t).State)
	require.NoError(t, b.store.FinishUpload(ctx, "job-1", pipeline.UploadResult{Received: 3, Accepted: 3}))
	require.Equal(t, pipeline.JobQueued, b.job(t).State)

	keep := func(int, *pipeline.Message) {}
	b.writeMessages(t, 0, keep, cust("c-0", "k0", 1, "a"))
	require.Equal(t, pipeline.JobProcessing, b.job(t).State)

	poison := func(i int, m *pipeline.Message) {
		if i == 1 {
			m.Err = pipeline.Errorf(pipeline.ClassConstraint, "refused")
		}
	}
	out := b.writeMessages(t, 0, poison, cust("c-1", "k1", 1, "b"), cust("c-2", "k2", 1, "c"))
	require.Equal(t, []pipeline.Outcome{pipeline.OutcomeApplied, pipeline.OutcomeDeadLettered}, out)
	j := b.job(t)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.State)
	require.Equal(t, pipeline.Counts{Applied: 2, DeadLettered: 1}, j.Counts)
	require.NotNil(t, j.CompletedAt)
	var failures []pipeline.Failure
	require.NoError(t, b.store.Failures(ctx, "tenant", "job-1", func(f pipeline.Failure) error {
		failures = append(failures, f)
		return nil
	}))
	require.Len(t, failures, 1)
	require.Equal(t, pipeline.OutcomeDeadLettered, failures[0].Outcome)

	// The replay of the dead letter (input index 2: the batch's index is
	// its offset) applies, on another partition: the job's count
	// moves and it completes. The same dead letter replayed again is a
	// duplicate that moves nothing.
	replay := func(i int, m *pipeline.Message) {
		m.ReplayOf = "spool.commands.dlq:0:0"
		m.Index = 2
	}
	// Two copies of the dead letter in one batch move once, as applied;
	// another copy later moves nothing; a copy that fails again (a later
	// config change, say) neither lists nor counts anything anew.
	out = b.writeMessages(t, 3, replay, cust("c-2", "k2", 1, "c"), cust("c-2", "k2", 1, "c"))
	require.Equal(t, []pipeline.Outcome{pipeline.OutcomeApplied, pipeline.OutcomeDuplicate}, out)
	for _, edit := range []func(int, *pipeline.Message){replay, func(i int, m *pipeline.Message) {
		replay(i, m)
		m.Err = pipeline.Errorf(pipeline.ClassConstraint, "refused again")
	}} {
		j = b.job(t)
		require.Equal(t, pipeline.JobCompleted, j.State)
		require.Equal(t, pipeline.Counts{Applied: 3}, j.Counts)
		require.NoError(t, b.store.Failures(ctx, "tenant", "job-1", func(f pipeline.Failure) error {
			return errors.New("no failure should be left")
		}))
		b.writeMessages(t, 3, edit, cust("c-2", "k2", 1, "c"))
	}
	require.Equal(t, pipeline.Counts{Applied: 3}, b.job(t).Counts)

	require.NoError(t, b.store.CreateJob(ctx, "job-2", "tenant", pipeline.JobOptions{}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-2", pipeline.UploadResult{Received: 5, Accepted: 2, Err: errors.New("broker away")}))
	j2, err := b.store.Job(ctx, "tenant", "job-2")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobFailed, j2.State)
	require.Equal(t, "broker away", j2.Error)
	require.ErrorIs(t, b.store.Failures(ctx, "other-tenant", "job-2", nil), pipeline.ErrJobNotFound)
}

// TestAbortJob: a job can be aborted while receiving, queued or
// processing, only by its tenant; its upload finishing afterwards records
// the counts and keeps it aborted; its state never settles again; a
// finished job answers JobFinishedError.
func TestAbortJob(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{}))
	_, err := b.store.AbortJob(ctx, "other-tenant", "job-1")
	require.ErrorIs(t, err, pipeline.ErrJobNotFound)
	j, err := b.store.AbortJob(ctx, "tenant", "job-1")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobAborted, j.State)
	require.NotNil(t, j.CompletedAt)
	require.NoError(t, b.store.ProgressJob(ctx, "job-1", pipeline.UploadResult{Received: 1, Accepted: 1}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-1", pipeline.UploadResult{Received: 2, Accepted: 2}))
	j = b.job(t)
	require.Equal(t, pipeline.JobAborted, j.State, "the upload's end keeps the abort")
	require.Equal(t, int64(2), j.Accepted)

	out := b.writeMessages(t, 0, func(int, *pipeline.Message) {}, cust("c-0", "k0", 1, "a"), cust("c-1", "k1", 1, "b"))
	require.Equal(t, []pipeline.Outcome{pipeline.OutcomeAborted, pipeline.OutcomeAborted}, out)
	j = b.job(t)
	require.Equal(t, pipeline.JobAborted, j.State, "settling leaves an aborted job alone")
	require.Equal(t, pipeline.Counts{Aborted: 2}, j.Counts)
	require.Equal(t, 1.0, j.Progress())

	var finished *pipeline.JobFinishedError
	_, err = b.store.AbortJob(ctx, "tenant", "job-1")
	require.ErrorAs(t, err, &finished)
	require.Equal(t, pipeline.JobAborted, finished.State)

	require.NoError(t, b.store.CreateJob(ctx, "job-2", "tenant", pipeline.JobOptions{}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-2", pipeline.UploadResult{Received: 0, Accepted: 0}))
	_, err = b.store.AbortJob(ctx, "tenant", "job-2")
	require.ErrorAs(t, err, &finished, "an empty job completes at once")
	require.Equal(t, pipeline.JobCompleted, finished.State)
	_, err = b.store.AbortJob(ctx, "tenant", "nope")
	require.ErrorIs(t, err, pipeline.ErrJobNotFound)
}

// TestJobInParts: an open job takes parts; completing waits for a part
// still streaming, forgets one none of whose records reached Kafka, and
// refuses while a part is broken (cut off, or receiving when its ingress
// stopped) until it is sent again; a refused part is final; the completed
// job has its parts' counts and takes no more; its failures are placed
// across the parts in part order.
func TestJobInParts(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	done := func(n int, counts ...int64) pipeline.Part {
		return pipeline.Part{Number: n, State: pipeline.PartDone, Received: counts[0], Accepted: counts[1], Rejected: counts[2]}
	}
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{Parts: true}))
	require.Equal(t, pipeline.JobOpen, b.job(t).State)
	require.ErrorIs(t, b.store.StartPart(ctx, "other-tenant", "job-1", 1), pipeline.ErrJobNotFound)
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 1))
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 2))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", done(1, 3, 2, 1), []byte{1}))
	require.ErrorIs(t, b.store.StartPart(ctx, "tenant", "job-1", 1), pipeline.ErrPartReceived)
	_, err := b.store.CompleteJob(ctx, "tenant", "job-1")
	require.ErrorIs(t, err, pipeline.ErrPartsInFlight, "part 2 still streams")
	require.NoError(t, b.store.FinishPart(ctx, "job-1", pipeline.Part{Number: 2}, nil)) // refused before any record
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 3))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", done(3, 2, 1, 1), []byte{3}))

	// Part 4 is cut off after 5 records reached Kafka: broken until sent
	// again, which it may be.
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 4))
	require.NoError(t, b.store.HeartbeatPart(ctx, "job-1", 4, pipeline.UploadResult{Received: 4, Accepted: 4}))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", pipeline.Part{Number: 4, State: pipeline.PartBroken, Received: 5, Accepted: 5,
		Error: "the connection broke"}, nil))
	var broken *pipeline.PartsBrokenError
	_, err = b.store.CompleteJob(ctx, "tenant", "job-1")
	require.ErrorAs(t, err, &broken)
	require.Equal(t, []int{4}, broken.Parts)
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 4), "a broken part is sent again")
	require.NoError(t, b.store.FinishPart(ctx, "job-1", done(4, 7, 7, 0), []byte{4}))

	// Part 5 is refused for what it holds after 4 records: final.
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 5))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", pipeline.Part{Number: 5, State: pipeline.PartRefused, Received: 4, Accepted: 3, Rejected: 1,
		Error: "the body is larger than 100 bytes"}, nil))
	require.ErrorIs(t, b.store.StartPart(ctx, "tenant", "job-1", 5), pipeline.ErrPartReceived, "a refused part is final")

	// Part 6's ingress stops beating mid-part: broken, with the counts of
	// its last heartbeat.
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 6))
	require.NoError(t, b.store.HeartbeatPart(ctx, "job-1", 6, pipeline.UploadResult{Received: 1, Accepted: 1}))
	b.db.Exec(t, `UPDATE spool_job_parts SET updated_at = now() - interval '1 hour' WHERE job_id = 'job-1' AND part = 6`)
	_, err = b.store.CompleteJob(ctx, "tenant", "job-1")
	require.ErrorAs(t, err, &broken, "a part whose ingress stopped is broken")
	require.Equal(t, []int{6}, broken.Parts)
	parts := b.job(t).Parts
	require.Equal(t, pipeline.PartReceiving, parts[len(parts)-1].State)
	require.EqualValues(t, 1, parts[len(parts)-1].Accepted, "the heartbeat's counts")
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 6))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", done(6, 2, 2, 0), []byte{6}))

	// Part 7 breaks after 3 records; sent again, it ends before any record
	// (the connection drops at once): it stays broken, with the 3 records
	// that reached Kafka, rather than being forgotten.
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 7))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", pipeline.Part{Number: 7, State: pipeline.PartBroken, Received: 3, Accepted: 3}, nil))
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 7))
	require.NoError(t, b.store.HeartbeatPart(ctx, "job-1", 7, pipeline.UploadResult{Received: 1, Accepted: 1}))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", pipeline.Part{Number: 7}, nil))
	_, err = b.store.CompleteJob(ctx, "tenant", "job-1")
	require.ErrorAs(t, err, &broken, "a broken part sent again without a record is still broken")
	require.Equal(t, []int{7}, broken.Parts)
	parts = b.job(t).Parts
	require.EqualValues(t, 3, parts[len(parts)-1].Accepted, "the most records any attempt got into Kafka")
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-1", 7))
	require.NoError(t, b.store.FinishPart(ctx, "job-1", done(7, 3, 3, 0), []byte{7}))

	require.NoError(t, b.store.AddFailures(ctx, "job-1", []pipeline.Failure{
		{Index: pipeline.PartBase(1) + 1, ID: "a", Stage: pipeline.StageIngress, Outcome: pipeline.OutcomeRejected, Class: pipeline.ClassMissingKey, Error: "x"},
		{Index: pipeline.PartBase(3) + 0, ID: "b", Stage: pipeline.StageIngress, Outcome: pipeline.OutcomeRejected, Class: pipeline.ClassMissingKey, Error: "x"},
		{Index: pipeline.PartBase(5) + 2, ID: "c", Stage: pipeline.StageIngress, Outcome: pipeline.OutcomeRejected, Class: pipeline.ClassMissingKey, Error: "x"},
	}))
	j, err := b.store.CompleteJob(ctx, "tenant", "job-1")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobQueued, j.State)
	require.Equal(t, [3]int64{3 + 2 + 7 + 4 + 2 + 3, 2 + 1 + 7 + 3 + 2 + 3, 1 + 1 + 0 + 1 + 0 + 0}, [3]int64{j.Received, j.Accepted, j.Rejected})
	var states []string
	for _, p := range j.Parts {
		states = append(states, fmt.Sprintf("%d %s %s", p.Number, p.State, p.Error))
	}
	require.Equal(t, []string{"1 done ", "3 done ", "4 done ", "5 refused the body is larger than 100 bytes", "6 done ", "7 done "}, states,
		"part 2 is forgotten; part 4, sent again, is done")
	var finished *pipeline.JobFinishedError
	require.ErrorAs(t, b.store.StartPart(ctx, "tenant", "job-1", 8), &finished)
	_, err = b.store.CompleteJob(ctx, "tenant", "job-1")
	require.ErrorAs(t, err, &finished)

	var places []int64
	require.NoError(t, b.store.Failures(ctx, "tenant", "job-1", func(f pipeline.Failure) error {
		places = append(places, f.Index)
		return nil
	}))
	require.Equal(t, []int64{1, 3, 3 + 2 + 7 + 2}, places, "each part follows the records of the parts before it")

	// Aborted while open, a job keeps its parts' counts, a broken part's
	// included (its records reached Kafka), and with nothing left to count
	// its progress is whole.
	require.NoError(t, b.store.CreateJob(ctx, "job-2", "tenant", pipeline.JobOptions{Parts: true}))
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-2", 1))
	require.NoError(t, b.store.FinishPart(ctx, "job-2", done(1, 2, 2, 0), []byte{1}))
	require.NoError(t, b.store.StartPart(ctx, "tenant", "job-2", 2))
	require.NoError(t, b.store.FinishPart(ctx, "job-2", pipeline.Part{Number: 2, State: pipeline.PartBroken, Received: 3, Accepted: 3}, nil))
	j2, err := b.store.AbortJob(ctx, "tenant", "job-2")
	require.NoError(t, err)
	require.Equal(t, [2]int64{5, 5}, [2]int64{j2.Received, j2.Accepted})
	require.NoError(t, b.store.CreateJob(ctx, "job-3", "tenant", pipeline.JobOptions{Parts: true}))
	j3, err := b.store.AbortJob(ctx, "tenant", "job-3")
	require.NoError(t, err)
	require.Equal(t, 1.0, j3.Progress(), "an aborted job with nothing accepted is done")
}

// TestPruneJobs removes finished jobs past the retention with their counts
// and failures, and keeps open and recent ones.
func TestPruneJobs(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	for _, id := range []pipeline.JobID{"old-done", "old-failed", "old-open", "new-done"} {
		require.NoError(t, b.store.CreateJob(ctx, id, "tenant", pipeline.JobOptions{}))
		require.NoError(t, b.store.AddFailures(ctx, id, []pipeline.Failure{{Index: 0, ID: "x", Stage: pipeline.StageIngress,
			Outcome: pipeline.OutcomeRejected, Class: pipeline.ClassMissingKey, Error: "no key"}}))
	}
	b.db.Exec(t, `INSERT INTO spool_job_counts (job_id, partition, applied) VALUES ('old-done', 0, 1), ('new-done', 0, 1)`)
	b.db.Exec(t, `UPDATE spool_jobs SET state = 'completed', completed_at = now() - interval '40 days' WHERE job_id = 'old-done'`)
	b.db.Exec(t, `UPDATE spool_jobs SET state = 'failed', updated_at = now() - interval '40 days' WHERE job_id = 'old-failed'`)
	b.db.Exec(t, `UPDATE spool_jobs SET state = 'processing', updated_at = now() - interval '40 days' WHERE job_id = 'old-open'`)
	b.db.Exec(t, `UPDATE spool_jobs SET state = 'completed', completed_at = now() WHERE job_id = 'new-done'`)

	n, err := b.store.PruneJobs(ctx, 30*24*time.Hour)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	var jobs, counts, failures int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM spool_jobs), (SELECT count(*) FROM spool_job_counts),
		(SELECT count(*) FROM spool_job_failures)`).Scan(&jobs, &counts, &failures))
	require.Equal(t, []int{2, 1, 2}, []int{jobs, counts, failures})
	_, err = b.store.Job(ctx, "tenant", "old-done")
	require.ErrorIs(t, err, pipeline.ErrJobNotFound)
}

// TestSettleNeverWritesAnOlderState: a settle that read the counts before a
// replay moved them must not overwrite the newer settle's state. A trigger
// holds the first settle in its UPDATE while the move commits and a second
// settle runs; the job must end completed.
func TestSettleNeverWritesAnOlderState(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	b.db.Exec(t, `
		INSERT INTO spool_jobs (job_id, tenant, state, received, accepted) VALUES
			('j0', 'tenant', 'processing', 1, 1), ('j1', 'tenant', 'processing', 2, 2);
		INSERT INTO spool_job_counts (job_id, partition, applied, dead_lettered) VALUES
			('j0', 0, 1, 0), ('j1', 0, 1, 0), ('j1', 1, 0, 1);
		CREATE FUNCTION slow_j0() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN IF NEW.job_id = 'j0' THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END$$;
		CREATE TRIGGER slow_j0 BEFORE UPDATE ON spool_jobs FOR EACH ROW EXECUTE FUNCTION slow_j0();`)
	first := make(chan error, 1)
	go func() { first <- b.store.SettleJobs(ctx, []pipeline.JobID{"j0", "j1"}) }()
	time.Sleep(300 * time.Millisecond) // the first settle is in its UPDATE, held on j0
	b.db.Exec(t, `UPDATE spool_job_counts SET applied = 1, dead_lettered = 0 WHERE job_id = 'j1' AND partition = 1`)
	require.NoError(t, b.store.SettleJobs(ctx, []pipeline.JobID{"j1"}))
	require.NoError(t, <-first)
	j, err := b.store.Job(ctx, "tenant", "j1")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobCompleted, j.State)
}

// TestFailuresHoldNoConnection: the listing is read in chunks, in input
// order, and no connection is held while the caller writes a row out (a
// client that reads slowly must not starve the pool).
func TestFailuresHoldNoConnection(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{}))
	b.db.Exec(t, `INSERT INTO spool_job_failures (job_id, idx, command_id, stage, outcome, error_class, error)
		SELECT 'job-1', i, 'c-' || i, 'ingress', 'rejected', 'missing_key', 'no key' FROM generate_series(0, 2499) i`)
	next := int64(0)
	require.NoError(t, b.store.Failures(ctx, "tenant", "job-1", func(f pipeline.Failure) error {
		require.Equal(t, next, f.Index)
		next++
		require.Zero(t, b.db.Pool.Stat().AcquiredConns(), "a connection is held while a row is handed out")
		return nil
	}))
	require.EqualValues(t, 2500, next)
}

// TestAbandonJobs: a receiving job whose heartbeat stopped for
// UploadLease is marked failed with counts from its last heartbeat; one
// that still beats, and a finished one, are left alone.
func TestAbandonJobs(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	for _, id := range []pipeline.JobID{"dead", "alive", "done"} {
		require.NoError(t, b.store.CreateJob(ctx, id, "tenant", pipeline.JobOptions{}))
	}
	require.NoError(t, b.store.ProgressJob(ctx, "dead", pipeline.UploadResult{Received: 7, Accepted: 6, Rejected: 1}))
	require.NoError(t, b.store.FinishUpload(ctx, "done", pipeline.UploadResult{}))
	b.db.Exec(t, `UPDATE spool_jobs SET updated_at = now() - interval '11 seconds'`)
	require.NoError(t, b.store.ProgressJob(ctx, "alive", pipeline.UploadResult{Received: 1, Accepted: 1}))
	require.NoError(t, b.store.ProgressJob(ctx, "done", pipeline.UploadResult{Received: 9}), "a finished job's progress is ignored")

	n, err := b.store.AbandonJobs(ctx, time.Hour)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	dead, err := b.store.Job(ctx, "tenant", "dead")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobFailed, dead.State)
	require.Contains(t, dead.Error, "abandoned")
	require.EqualValues(t, 6, dead.Accepted)
	require.EqualValues(t, 1, dead.Rejected)
	alive, err := b.store.Job(ctx, "tenant", "alive")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobReceiving, alive.State)
	require.EqualValues(t, 1, alive.Received)
	done, err := b.store.Job(ctx, "tenant", "done")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobCompleted, done.State)
	require.Zero(t, done.Received)

	// A job in parts left open past the timeout counts what its parts got
	// into Kafka, a broken part's included, as an abort and a completion do.
	require.NoError(t, b.store.CreateJob(ctx, "open", "tenant", pipeline.JobOptions{Parts: true}))
	require.NoError(t, b.store.StartPart(ctx, "tenant", "open", 1))
	require.NoError(t, b.store.FinishPart(ctx, "open", pipeline.Part{Number: 1, State: pipeline.PartDone, Received: 2, Accepted: 2}, []byte{1}))
	require.NoError(t, b.store.StartPart(ctx, "tenant", "open", 2))
	require.NoError(t, b.store.FinishPart(ctx, "open", pipeline.Part{Number: 2, State: pipeline.PartBroken, Received: 3, Accepted: 3}, nil))
	b.db.Exec(t, `UPDATE spool_jobs SET updated_at = now() - interval '2 hours' WHERE job_id = 'open'`)
	n, err = b.store.AbandonJobs(ctx, time.Hour)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	open, err := b.store.Job(ctx, "tenant", "open")
	require.NoError(t, err)
	require.Equal(t, pipeline.JobFailed, open.State)
	require.Equal(t, [2]int64{5, 5}, [2]int64{open.Received, open.Accepted})
}

// TestRedeliveredRecordsCountOnce: Kafka may deliver one record twice (a
// producer's resend after a broker failed before acknowledging). The second
// copy, in a later batch or in the same one, changes nothing and counts
// nothing, whatever the first copy's outcome was; a client's repeat of a
// command (another place of an upload) is still a duplicate.
func TestRedeliveredRecordsCountOnce(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-1", pipeline.UploadResult{Received: 6, Accepted: 6}))
	// Places 0-5 of the upload: applied, a repeat (duplicate), applied,
	// stale, a poison (dead-lettered), a conflict.
	lines := []string{cust("c1", "a", 2, "a2"), cust("c1", "a", 2, "a2"), cust("c2", "b", 1, "b1"),
		cust("c3", "a", 1, "old"), cust("c4", "p", 1, "p"), cust("c2", "b", 5, "other")}
	at := func(places ...int64) func(int, *pipeline.Message) {
		return func(i int, m *pipeline.Message) {
			m.Index = places[i]
			if m.Index == 4 {
				m.Err = pipeline.Errorf(pipeline.ClassConstraint, "refused")
			}
		}
	}
	want := pipeline.Counts{Applied: 2, Duplicate: 1, Stale: 1, DeadLettered: 1, Conflict: 1}
	out := b.writeMessages(t, 0, at(0, 1, 2, 3, 4, 5), lines...)
	require.Equal(t, []pipeline.Outcome{applied, duplicate, applied, stale, pipeline.OutcomeDeadLettered, conflict}, out)
	require.Equal(t, want, b.job(t).Counts)
	require.Equal(t, pipeline.JobCompletedWithErrors, b.job(t).State)

	// Every record again, later, in another order and on another partition
	// (the Recent pre-filter is not used here: the ledger, the failures and
	// the repeats tell).
	out = b.writeMessages(t, 1, at(5, 4, 3, 2, 1, 0), lines[5], lines[4], lines[3], lines[2], lines[1], lines[0])
	for _, o := range out {
		require.Equal(t, pipeline.OutcomeRedelivered, o)
	}
	// Twice in one batch: the copy is redelivered; a new place of a known
	// command is a duplicate, counted.
	out = b.writeMessages(t, 2, at(0, 0, 6), lines[0], lines[0], lines[0])
	require.Equal(t, []pipeline.Outcome{pipeline.OutcomeRedelivered, pipeline.OutcomeRedelivered, duplicate}, out)
	want.Duplicate++
	require.Equal(t, want, b.job(t).Counts)
	require.Equal(t, map[string]string{"a": "a2@2", "b": "b1@1"}, b.rows(t))
	var failures int
	require.NoError(t, b.store.Failures(ctx, "tenant", "job-1", func(pipeline.Failure) error { failures++; return nil }))
	require.Equal(t, 2, failures, "the dead letter and the conflict, once each")
}

// TestResults: a job uploaded with results lists each place once with its
// outcome — the processors' (a copy Kafka delivered again changes nothing;
// a replayed dead letter moves to its new outcome) and ingress's
// rejections — in input order, filtered by outcome; a job without results
// has none to list.
func TestResults(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{Results: true}))
	require.NoError(t, b.store.AddFailures(ctx, "job-1", []pipeline.Failure{{Index: 6, ID: "bad", Stage: pipeline.StageIngress,
		Outcome: pipeline.OutcomeRejected, Class: pipeline.ClassMissingKey, Error: "no key"}}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-1", pipeline.UploadResult{Received: 7, Accepted: 6, Rejected: 1}))
	lines := []string{cust("c1", "a", 2, "a2"), cust("c1", "a", 2, "a2"), cust("c2", "b", 1, "b1"),
		cust("c3", "a", 1, "old"), cust("c4", "p", 1, "p"), cust("c2", "b", 5, "other")}
	at := func(places ...int64) func(int, *pipeline.Message) {
		return func(i int, m *pipeline.Message) {
			m.Index = places[i]
			if m.Index == 4 && m.ReplayOf == "" {
				m.Err = pipeline.Errorf(pipeline.ClassConstraint, "refused")
			}
		}
	}
	b.writeMessages(t, 0, at(0, 1, 2, 3, 4, 5), lines...)
	b.writeMessages(t, 1, at(5, 0), lines[5], lines[0]) // copies Kafka delivered again
	b.writeMessages(t, 2, func(i int, m *pipeline.Message) { m.ReplayOf, m.Index = "spool.commands.dlq:0:0", 4 }, lines[4])

	results := func(outcomes ...pipeline.Outcome) []string {
		var got []string
		require.NoError(t, b.store.Results(ctx, "tenant", "job-1", outcomes, func(r pipeline.Result) error {
			got = append(got, fmt.Sprintf("%d %s %s", r.Index, r.ID, r.Outcome))
			return nil
		}))
		return got
	}
	require.Equal(t, []string{"0 c1 applied", "1 c1 duplicate", "2 c2 applied", "3 c3 stale", "4 c4 applied",
		"5 c2 conflict", "6 bad rejected"}, results())
	require.Equal(t, []string{"3 c3 stale", "6 bad rejected"}, results(pipeline.OutcomeStale, pipeline.OutcomeRejected))
	j := b.job(t)
	require.True(t, j.Results)
	require.Equal(t, pipeline.Counts{Applied: 3, Duplicate: 1, Stale: 1, Conflict: 1}, j.Counts, "the results agree with the counts")

	require.NoError(t, b.store.CreateJob(ctx, "job-2", "tenant", pipeline.JobOptions{}))
	require.ErrorIs(t, b.store.Results(ctx, "tenant", "job-2", nil, nil), pipeline.ErrNoResults)
	require.ErrorIs(t, b.store.Results(ctx, "other-tenant", "job-1", nil, nil), pipeline.ErrJobNotFound)
}

// TestLookupDeadLetter: a dead-lettered command's failure row keeps the
// SHA-256 of its value, and the whole value when the dead letter could not
// carry it (KeepValue); a replay checks dead letters against it. Rows that
// are not dead letters, and other places, are not found.
func TestLookupDeadLetter(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-1", pipeline.UploadResult{Received: 3, Accepted: 3}))
	values := map[int64][]byte{}
	poison := func(i int, m *pipeline.Message) {
		m.Index = int64(i)
		values[m.Index] = m.Record.Value
		if i > 0 {
			m.Err = pipeline.Errorf(pipeline.ClassConstraint, "refused")
			m.KeepValue = i == 2
		}
	}
	b.writeMessages(t, 0, poison, cust("c-0", "k0", 1, "a"), cust("c-1", "k1", 1, "b"), cust("c-2", "k2", 1, "c"))
	for i := range int64(3) {
		rec, err := b.store.LookupDeadLetter(ctx, "job-1", i)
		require.NoError(t, err)
		if i == 0 {
			require.Nil(t, rec, "applied, not a dead letter")
			continue
		}
		sum := sha256.Sum256(values[i])
		require.Equal(t, &pipeline.DeadLetterRecord{Tenant: "tenant", ID: pipeline.CommandID(fmt.Sprintf("c-%d", i)),
			ValueHash: sum[:], Command: map[bool][]byte{true: values[i]}[i == 2]}, rec)
	}
	rec, err := b.store.LookupDeadLetter(ctx, "job-2", 1)
	require.NoError(t, err)
	require.Nil(t, rec)
}

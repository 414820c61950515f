package postgres

import (
	"crypto/sha256"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// countColumns are spool_job_counts' tallies, in pipeline.CountedOutcomes'
// order.
const countColumns = `applied, duplicate, stale, conflict, "exists", missing, aborted, dead_lettered`

// addCounts ends an INSERT INTO spool_job_counts AS c: counts add up.
const addCounts = `
		ON CONFLICT (job_id, partition) DO UPDATE SET
			applied = c.applied + EXCLUDED.applied,
			duplicate = c.duplicate + EXCLUDED.duplicate,
			stale = c.stale + EXCLUDED.stale,
			conflict = c.conflict + EXCLUDED.conflict,
			"exists" = c."exists" + EXCLUDED."exists",
			missing = c.missing + EXCLUDED.missing,
			aborted = c.aborted + EXCLUDED.aborted,
			dead_lettered = c.dead_lettered + EXCLUDED.dead_lettered`

func queueCounts(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	counts := pipeline.JobCounts(b.Messages, outcomes)
	var jobs []string
	// One array an outcome, in pipeline.CountedOutcomes' order.
	tallies := make([][]int64, len(pipeline.CountedOutcomes))
	for job, c := range counts {
		if job == "" {
			continue // a record without a job (produced by another tool) has no counters
		}
		jobs = append(jobs, string(job))
		for i, o := range pipeline.CountedOutcomes {
			tallies[i] = append(tallies[i], c.Get(o))
		}
	}
	if len(jobs) == 0 {
		return
	}
	args := []any{jobs, b.Partition}
	for _, t := range tallies {
		args = append(args, t)
	}
	q.Queue(`INSERT INTO spool_job_counts AS c (job_id, partition, `+countColumns+`)
		SELECT j, $2, a, du, s, co, ex, mi, ab, de
		FROM unnest($1::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
			AS u(j, a, du, s, co, ex, mi, ab, de)
		ORDER BY j
		`+addCounts, args...)
}

// queueResults records the outcome of each command of the jobs that keep
// results (results[job]), by its place: the first outcome a place gets
// stays (a copy Kafka delivered again is redelivered and not recorded); a
// replay's place moves with its count (queueMoves).
func queueResults(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome, results map[pipeline.JobID]bool) {
	var jobs, ids, outs []string
	var idx []int64
	for i, m := range b.Messages {
		if !results[m.JobID] || m.ReplayOf != "" || m.Index < 0 || outcomes[i] == pipeline.OutcomeRedelivered {
			continue
		}
		jobs, idx, outs = append(jobs, string(m.JobID)), append(idx, m.Index), append(outs, string(outcomes[i]))
		ids = append(ids, clean(string(commandID(m))))
	}
	if len(jobs) == 0 {
		return
	}
	q.Queue(`INSERT INTO spool_job_results (job_id, idx, command_id, outcome)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) ORDER BY 1, 2
		ON CONFLICT DO NOTHING`, jobs, idx, ids, outs)
}

// commandID is a message's command id, or for one that could not be
// decoded its record's key.
func commandID(m *pipeline.Message) pipeline.CommandID {
	if m.Command.ID == "" {
		return pipeline.CommandID(m.Record.Key)
	}
	return m.Command.ID
}

// conflictError is the failure message of a conflicting command.
const conflictError = "id was seen before with a different payload"

// queueMoves moves replayed commands' counts out of dead_lettered, each only
// if its job still lists it as a dead letter: the move deletes that failure
// row (or turns it into a conflict), so a dead letter replayed twice moves
// once. The moved places are remembered (spool_job_replays), so that a copy
// of the original record Kafka delivers later is told as redelivered.
func queueMoves(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	moves := pipeline.ReplayMoves(b.Messages, outcomes)
	if len(moves) == 0 {
		return
	}
	jobs, idx, to := make([]string, len(moves)), make([]int64, len(moves)), make([]string, len(moves))
	for i, m := range moves {
		jobs[i], idx[i], to[i] = string(m.Job), m.Index, string(m.Outcome)
	}
	q.Queue(`WITH r AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS r(job_id, idx, outcome)),
		cleared AS (
			DELETE FROM spool_job_failures f USING r
			WHERE f.job_id = r.job_id AND f.idx = r.idx AND f.outcome = 'dead_lettered' AND r.outcome <> 'conflict'
			RETURNING r.job_id, r.idx, r.outcome),
		conflicted AS (
			UPDATE spool_job_failures f SET outcome = 'conflict', error_class = 'conflict', error = $5, created_at = now()
			FROM r WHERE f.job_id = r.job_id AND f.idx = r.idx AND f.outcome = 'dead_lettered' AND r.outcome = 'conflict'
			RETURNING r.job_id, r.idx, r.outcome),
		moved AS (SELECT * FROM cleared UNION ALL SELECT * FROM conflicted),
		remembered AS (INSERT INTO spool_job_replays (job_id, idx)
			SELECT job_id, idx FROM moved ORDER BY job_id, idx ON CONFLICT DO NOTHING),
		resulted AS (UPDATE spool_job_results x SET outcome = m.outcome
			FROM moved m WHERE x.job_id = m.job_id AND x.idx = m.idx)
		INSERT INTO spool_job_counts AS c (job_id, partition, `+countColumns+`)
		SELECT job_id, $4,
			count(*) FILTER (WHERE outcome = 'applied'), count(*) FILTER (WHERE outcome = 'duplicate'),
			count(*) FILTER (WHERE outcome = 'stale'), count(*) FILTER (WHERE outcome = 'conflict'),
			count(*) FILTER (WHERE outcome = 'exists'), count(*) FILTER (WHERE outcome = 'missing'),
			count(*) FILTER (WHERE outcome = 'aborted'), -count(*)
		FROM moved GROUP BY job_id ORDER BY job_id
		`+addCounts,
		jobs, idx, to, b.Partition, conflictError)
}

// queueFailures lists the batch's conflicts and dead letters among their
// jobs' failures. Replayed commands were listed already: one dead-lettered
// again refreshes its row's error, if the row is still there (queueMoves
// handles the others).
func queueFailures(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	var fs, again []pipeline.Failure
	var jobs, againJobs []string
	for i, m := range b.Messages {
		if m.JobID == "" || m.Index < 0 {
			continue
		}
		var f pipeline.Failure
		switch outcomes[i] {
		case pipeline.OutcomeConflict:
			f = pipeline.Failure{Index: m.Index, ID: m.Command.ID, Stage: pipeline.StageProcessor,
				Outcome: pipeline.OutcomeConflict, Class: pipeline.ClassConflict, Error: conflictError}
		case pipeline.OutcomeDeadLettered:
			id := commandID(m)
			sum := sha256.Sum256(m.Record.Value)
			f = pipeline.Failure{Index: m.Index, ID: id, Stage: pipeline.StageProcessor,
				Outcome: pipeline.OutcomeDeadLettered, Class: pipeline.ClassOf(m.Err), Error: m.Err.Error(),
				ValueHash: sum[:]}
			if m.KeepValue {
				f.Command = m.Record.Value
			}
		default:
			continue
		}
		switch {
		case m.ReplayOf == "":
			fs, jobs = append(fs, f), append(jobs, string(m.JobID))
		case f.Outcome == pipeline.OutcomeDeadLettered:
			again, againJobs = append(again, f), append(againJobs, string(m.JobID))
		}
	}
	if len(fs) > 0 {
		queueFailureRows(q, jobs, fs)
	}
	if len(again) > 0 {
		idx, classes, msgs := make([]int64, len(again)), make([]string, len(again)), make([]string, len(again))
		commands := make([][]byte, len(again))
		for i, f := range again {
			idx[i], classes[i], msgs[i], commands[i] = f.Index, string(f.Class), clean(f.Error), f.Command
		}
		q.Queue(`UPDATE spool_job_failures f SET error_class = r.class, error = r.error, created_at = now(),
				command = coalesce(f.command, r.command)
			FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[]) AS r(job_id, idx, class, error, command)
			WHERE f.job_id = r.job_id AND f.idx = r.idx AND f.outcome = 'dead_lettered'`, againJobs, idx, classes, msgs, commands)
	}
}

// queueFailureRows records failures; a later failure of the same input
// record replaces the earlier one.
func queueFailureRows(q *pgx.Batch, jobs []string, fs []pipeline.Failure) {
	idx := make([]int64, len(fs))
	ids, stages, outcomes, classes, msgs := make([]string, len(fs)), make([]string, len(fs)), make([]string, len(fs)),
		make([]string, len(fs)), make([]string, len(fs))
	commands, hashes := make([][]byte, len(fs)), make([][]byte, len(fs))
	for i, f := range fs {
		idx[i], ids[i], stages[i], outcomes[i], classes[i], msgs[i] = f.Index, clean(string(f.ID)), f.Stage, string(f.Outcome),
			string(f.Class), clean(f.Error)
		commands[i], hashes[i] = f.Command, f.ValueHash
		jobs[i] = clean(jobs[i])
	}
	q.Queue(`INSERT INTO spool_job_failures AS f (job_id, idx, command_id, stage, outcome, error_class, error, command, value_sha256)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::bytea[])
		ON CONFLICT (job_id, idx) DO UPDATE SET command_id = EXCLUDED.command_id, stage = EXCLUDED.stage,
			outcome = EXCLUDED.outcome, error_class = EXCLUDED.error_class, error = EXCLUDED.error, created_at = now(),
			command = EXCLUDED.command, value_sha256 = EXCLUDED.value_sha256`,
		jobs, idx, ids, stages, outcomes, classes, msgs, commands, hashes)
}

// clean makes text storable and showable: PostgreSQL text refuses NUL and
// invalid UTF-8, and a failure must be recordable whatever the bad input
// held; an operator's terminal must not receive its control characters;
// and a database message quoting a huge value must not make a huge row.
func clean(s string) string { return pipeline.Printable(s, pipeline.MaxErrorBytes) }

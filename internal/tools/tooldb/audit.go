package tooldb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spoolhq/spool/pipeline"
)

// The fault suite's view of the database (cmd/spool-faults): its tables,
// an audit of every write a trigger saw, and spool's job records read
// directly, so that spool's own counters can be checked against the audit
// rather than trusted.

// Audit reads and prepares one schema for a fault run.
type Audit struct{ pool *pgxpool.Pool }

// OpenAudit connects to url (whose search_path names the run's schema).
func OpenAudit(ctx context.Context, url string) (*Audit, error) {
	pool, err := open(ctx, url, 4)
	if err != nil {
		return nil, err
	}
	return &Audit{pool: pool}, nil
}

// Close disconnects.
func (a *Audit) Close() { a.pool.Close() }

// Exec runs statements (the run's table definitions).
func (a *Audit) Exec(ctx context.Context, sql string) error {
	_, err := a.pool.Exec(ctx, sql)
	return err
}

// InstallAudit creates the table audit and a trigger on each of tables
// that records, in the writing transaction, the column cmd of every row
// inserted or updated: a rolled-back write leaves no audit row, a
// committed one exactly one.
func (a *Audit) InstallAudit(ctx context.Context, tables ...string) error {
	sql := `CREATE TABLE audit (seq bigserial PRIMARY KEY, cmd text NOT NULL, tbl text NOT NULL, op text NOT NULL,
			at timestamptz NOT NULL DEFAULT clock_timestamp());
		CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO audit (cmd, tbl, op) VALUES (NEW.cmd, TG_TABLE_NAME, TG_OP);
			RETURN NULL;
		END $$;`
	return a.withTriggers(ctx, sql, "CREATE TRIGGER audit AFTER INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION audit_write();", tables)
}

// withTriggers runs sql and then trigger (a CREATE TRIGGER with %s for
// the table) for each of tables, in one round trip.
func (a *Audit) withTriggers(ctx context.Context, sql, trigger string, tables []string) error {
	for _, t := range tables {
		sql += "\n" + fmt.Sprintf(trigger, pgx.Identifier{t}.Sanitize())
	}
	_, err := a.pool.Exec(ctx, sql)
	return err
}

// InstallSlowdown adds to each of tables a trigger that, before every
// statement writing it, sleeps for the delay SetSlowdown last set (none at
// first): a database slow to write, as under another load or a slow disk.
func (a *Audit) InstallSlowdown(ctx context.Context, tables ...string) error {
	sql := `CREATE TABLE slowdown (delay float8 NOT NULL);
		INSERT INTO slowdown VALUES (0);
		CREATE FUNCTION slowdown() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_sleep(delay) FROM slowdown WHERE delay > 0;
			RETURN NULL;
		END $$;`
	return a.withTriggers(ctx, sql, "CREATE TRIGGER slowdown BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH STATEMENT EXECUTE FUNCTION slowdown();", tables)
}

// SetSlowdown sets the delay of every statement writing the tables
// InstallSlowdown named (0: none).
func (a *Audit) SetSlowdown(ctx context.Context, d time.Duration) error {
	_, err := a.pool.Exec(ctx, `UPDATE slowdown SET delay = $1`, d.Seconds())
	return err
}

// BusiestWindow is the most writes the audit saw in one window (windows
// aligned on the epoch).
func (a *Audit) BusiestWindow(ctx context.Context, window time.Duration) (int64, error) {
	var n int64
	err := a.pool.QueryRow(ctx, `SELECT coalesce(max(n), 0) FROM (
		SELECT count(*) AS n FROM audit GROUP BY floor(extract(epoch FROM at) / $1)) w`, window.Seconds()).Scan(&n)
	return n, err
}

// AuditWrites is each command's number of committed writes.
func (a *Audit) AuditWrites(ctx context.Context) (map[string]int, error) {
	return pairs[int](ctx, a.pool, `SELECT cmd, count(*)::int FROM audit GROUP BY cmd`)
}

// Tombstones is the version of each tombstone spool keeps, by its key as
// spool_tombstones names it (a JSON array of the key's values).
func (a *Audit) Tombstones(ctx context.Context) (map[string]int64, error) {
	return pairs[int64](ctx, a.pool, `SELECT key, version FROM spool_tombstones`)
}

// FirstWriteAfter is the time of the first audited write after t, if any.
func (a *Audit) FirstWriteAfter(ctx context.Context, t time.Time) (at time.Time, ok bool, err error) {
	var first *time.Time
	if err := a.pool.QueryRow(ctx, `SELECT min(at) FROM audit WHERE at > $1`, t).Scan(&first); err != nil || first == nil {
		return time.Time{}, false, err
	}
	return *first, true, nil
}

// Dump reads table as key → the other columns joined by "|", NULL as "".
func (a *Audit) Dump(ctx context.Context, table, key string, columns ...string) (map[string]string, error) {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = fmt.Sprintf("coalesce(%s::text, '')", pgx.Identifier{c}.Sanitize())
	}
	sql := fmt.Sprintf(`SELECT %s, %s FROM %s`, pgx.Identifier{key}.Sanitize(), strings.Join(cols, " || '|' || "),
		pgx.Identifier{table}.Sanitize())
	return pairs[string](ctx, a.pool, sql)
}

// AuditJob is one job as spool recorded it: its upload's counts and the
// sums of its outcome counters.
type AuditJob struct {
	ID, State, Error             string
	Received, Accepted, Rejected int64
	pipeline.Counts
	Failed int64
}

// Outcomes is the number of commands of the job with an outcome.
func (j *AuditJob) Outcomes() int64 { return j.Done() }

// Jobs reads every job with its counters and its number of failure rows.
func (a *Audit) Jobs(ctx context.Context) (map[string]*AuditJob, error) {
	return collect(ctx, a.pool, func(r pgx.Rows, out map[string]*AuditJob) error {
		var j AuditJob
		err := r.Scan(&j.ID, &j.State, &j.Error, &j.Received, &j.Accepted, &j.Rejected,
			&j.Applied, &j.Duplicate, &j.Stale, &j.Conflict, &j.Exists, &j.Missing, &j.Aborted, &j.DeadLettered, &j.Failed)
		out[j.ID] = &j
		return err
	}, `
		SELECT j.job_id, j.state, coalesce(j.error, ''), j.received, j.accepted, j.rejected,
			coalesce(sum(c.applied), 0), coalesce(sum(c.duplicate), 0), coalesce(sum(c.stale), 0),
			coalesce(sum(c.conflict), 0), coalesce(sum(c."exists"), 0), coalesce(sum(c.missing), 0),
			coalesce(sum(c.aborted), 0), coalesce(sum(c.dead_lettered), 0),
			(SELECT count(*) FROM spool_job_failures f WHERE f.job_id = j.job_id)
		FROM spool_jobs j LEFT JOIN spool_job_counts c ON c.job_id = j.job_id
		GROUP BY j.job_id`)
}

// AuditFailure is one row of a job's failures.
type AuditFailure struct{ Job, ID, Stage, Outcome string }

// Failures reads every job's failures.
func (a *Audit) Failures(ctx context.Context) ([]AuditFailure, error) {
	rows, err := a.pool.Query(ctx, `SELECT job_id, command_id, stage, outcome FROM spool_job_failures`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditFailure, error) {
		var f AuditFailure
		err := r.Scan(&f.Job, &f.ID, &f.Stage, &f.Outcome)
		return f, err
	})
}

// Sabotage breaks what the checker checks, so that a run can show its
// checker catches it: command double is written once more, command lose's
// events row and its audit vanish, and job counts one more command applied.
func (a *Audit) Sabotage(ctx context.Context, double, lose, job string) error {
	var q pgx.Batch
	q.Queue(`UPDATE events SET amount = amount WHERE cmd = $1`, double)
	q.Queue(`DELETE FROM events WHERE cmd = $1`, lose)
	q.Queue(`DELETE FROM audit WHERE cmd = $1`, lose)
	q.Queue(`UPDATE spool_job_counts SET applied = applied + 1
		WHERE ctid = (SELECT ctid FROM spool_job_counts WHERE job_id = $1 LIMIT 1)`, job)
	return a.pool.SendBatch(ctx, &q).Close()
}

// TerminateBackends ends every connection whose application_name is app,
// as an administrator or a failover would, and returns how many.
func (a *Audit) TerminateBackends(ctx context.Context, app string) (int, error) {
	var n int
	err := a.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int
		FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()`, app).Scan(&n)
	return n, err
}

// Offsets are the group's stored next offsets on topic, by partition.
func (a *Audit) Offsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
	rows, err := a.pool.Query(ctx, `SELECT partition, next_offset FROM spool_offsets WHERE consumer_group = $1 AND topic = $2`, group, topic)
	if err != nil {
		return nil, err
	}
	out := map[int32]int64{}
	var p int32
	var next int64
	_, err = pgx.ForEachRow(rows, []any{&p, &next}, func() error {
		out[p] = next
		return nil
	})
	return out, err
}

// SumOffsets is how many records the group's processors have committed on
// topic: the sum of the stored next offsets.
func (a *Audit) SumOffsets(ctx context.Context, group, topic string) (int64, error) {
	return sumOffsets(ctx, a.pool, group, topic)
}

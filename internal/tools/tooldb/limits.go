package tooldb

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/pipeline"
)

// The limits spool is measured against (cmd/spool-bench): the same writes
// done the fastest plain way, on tables shaped like the demo customers.

// Limits runs the limits on one database.
type Limits struct{ pool *pgxpool.Pool }

// OpenLimits connects for the limits (and spool's own tables there).
func OpenLimits(ctx context.Context, url string) (*Limits, error) {
	pool, err := open(ctx, url, 8) // the most writers BenchmarkWriteConcurrency runs
	if err != nil {
		return nil, err
	}
	return &Limits{pool: pool}, nil
}

// Close disconnects.
func (l *Limits) Close() { l.pool.Close() }

// LimitRow is one customers command as the limits write it.
type LimitRow struct {
	Tenant, ID, Key, Name, Email, Balance string
	Version                               int64
	Hash                                  []byte
}

var limitColumns = []string{"customer_id", "name", "email", "balance", "version"}

func (r *LimitRow) values() []any { return []any{r.Key, r.Name, r.Email, r.Balance, r.Version} }

// CreateTables creates (anew) a customers-shaped table for each name,
// and a ledger for each, name_ledger, keyed as spool's is: tenant and id
// compared bytewise (COLLATE "C"), not by the database's locale.
func (l *Limits) CreateTables(ctx context.Context, names ...string) error {
	for _, n := range names {
		t := pgx.Identifier{n}.Sanitize()
		ledger := pgx.Identifier{n + "_ledger"}.Sanitize()
		_, err := l.pool.Exec(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS %[1]s, %[2]s;
			CREATE TABLE %[1]s (customer_id text PRIMARY KEY, name text, email text, balance numeric(18,2),
				version bigint NOT NULL, updated_at timestamptz);
			CREATE TABLE %[2]s (tenant text COLLATE "C" NOT NULL, command_id text COLLATE "C" NOT NULL, payload_hash bytea NOT NULL,
				claimed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant, command_id))`, t, ledger))
		if err != nil {
			return fmt.Errorf("creating limit table %s: %w", n, err)
		}
	}
	return nil
}

// Copy COPYs the final rows into table: the floor of any writer.
func (l *Limits) Copy(ctx context.Context, table string, rows []LimitRow) error {
	_, err := l.pool.CopyFrom(ctx, pgx.Identifier{table}, limitColumns, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		return rows[i].values(), nil
	}))
	return err
}

// CopyUpsertLedger writes commands the fastest plain exactly-once way: per
// batch, one transaction that COPYs the batch into a temp table, claims its
// ids in the ledger, and upserts the claimed rows, one per key (the highest
// version), under the version guard. conns connections take the batches
// from the channel as they come, until it is closed; each statement touches
// rows in key order, so that concurrent batches lock them in one order. It
// does not count jobs, fence offsets, tell stale from applied or handle
// deletes. The balance travels as text and is cast by the upsert: pgx
// encodes a Go string into a numeric COPY column through a failed attempt
// and an error value per row, which cost the client more than the cast
// costs PostgreSQL.
func (l *Limits) CopyUpsertLedger(ctx context.Context, table string, batches <-chan []LimitRow, conns int) error {
	upsert := fmt.Sprintf(`WITH claimed AS (
			INSERT INTO %[2]s (tenant, command_id, payload_hash)
			SELECT DISTINCT ON (tenant, command_id) tenant, command_id, payload_hash FROM limit_stage
			ORDER BY tenant, command_id
			ON CONFLICT DO NOTHING RETURNING tenant, command_id)
		INSERT INTO %[1]s AS t (customer_id, name, email, balance, version)
		SELECT DISTINCT ON (s.customer_id) s.customer_id, s.name, s.email, s.balance::numeric(18,2), s.version
		FROM limit_stage s JOIN claimed c USING (tenant, command_id)
		ORDER BY s.customer_id, s.version DESC
		ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
			balance = EXCLUDED.balance, version = EXCLUDED.version
		WHERE t.version < EXCLUDED.version`, pgx.Identifier{table}.Sanitize(), pgx.Identifier{table + "_ledger"}.Sanitize())
	g, ctx := errgroup.WithContext(ctx)
	for range conns {
		g.Go(func() error {
			conn, err := l.pool.Acquire(ctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			if _, err := conn.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS limit_stage (tenant text COLLATE "C", command_id text COLLATE "C", payload_hash bytea,
				customer_id text, name text, email text, balance text, version bigint) ON COMMIT DELETE ROWS`); err != nil {
				return err
			}
			for {
				var part []LimitRow
				select {
				case <-ctx.Done():
					return ctx.Err()
				case b, ok := <-batches:
					if !ok {
						return nil
					}
					part = b
				}
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"limit_stage"},
						[]string{"tenant", "command_id", "payload_hash", "customer_id", "name", "email", "balance", "version"},
						pgx.CopyFromSlice(len(part), func(i int) ([]any, error) {
							r := &part[i]
							return []any{r.Tenant, r.ID, r.Hash, r.Key, r.Name, r.Email, r.Balance, r.Version}, nil
						}))
					if err != nil {
						return err
					}
					_, err = tx.Exec(ctx, upsert)
					return err
				})
				if err != nil {
					return fmt.Errorf("copy+upsert+ledger batch of %d from %s: %w", len(part), part[0].ID, err)
				}
			}
		})
	}
	return g.Wait()
}

// NaiveUpsert is the consumer everyone writes first: one version-guarded
// upsert per record, each its own transaction, no ledger.
func (l *Limits) NaiveUpsert(ctx context.Context, table string, r *LimitRow) error {
	_, err := l.pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{table}.Sanitize()+` AS t (customer_id, name, email, balance, version)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
			balance = EXCLUDED.balance, version = EXCLUDED.version
		WHERE t.version < EXCLUDED.version`, r.values()...)
	return err
}

// TableRows reads a customers-shaped table as key → "name|email|balance|version",
// for checking a run against its oracle.
func (l *Limits) TableRows(ctx context.Context, table string) (map[string]string, error) {
	return pairs[string](ctx, l.pool, `SELECT customer_id, coalesce(name, '') || '|' || coalesce(email, '') || '|' ||
		coalesce(balance::text, '') || '|' || version FROM `+pgx.Identifier{table}.Sanitize())
}

// SumOffsets is how many records the group's processors have committed on
// topic: the sum of the stored next offsets.
func (l *Limits) SumOffsets(ctx context.Context, group, topic string) (int64, error) {
	return sumOffsets(ctx, l.pool, group, topic)
}

// JobsCompleted returns when each of the named jobs completed (jobs not
// completed yet are absent).
func (l *Limits) JobsCompleted(ctx context.Context, ids []string) (map[string]time.Time, error) {
	return pairs[time.Time](ctx, l.pool, `SELECT job_id, completed_at FROM spool_jobs WHERE job_id = ANY ($1) AND completed_at IS NOT NULL`, ids)
}

// JobCounts sums a job's outcome counters over its partitions.
func (l *Limits) JobCounts(ctx context.Context, job string) (pipeline.Counts, error) {
	var c pipeline.Counts
	err := l.pool.QueryRow(ctx, `SELECT coalesce(sum(applied), 0), coalesce(sum(duplicate), 0), coalesce(sum(stale), 0),
		coalesce(sum(conflict), 0), coalesce(sum("exists"), 0), coalesce(sum(missing), 0), coalesce(sum(aborted), 0),
		coalesce(sum(dead_lettered), 0) FROM spool_job_counts WHERE job_id = $1`, job).Scan(
		&c.Applied, &c.Duplicate, &c.Stale, &c.Conflict, &c.Exists, &c.Missing, &c.Aborted, &c.DeadLettered)
	return c, err
}

// KeepResults makes job (created if need be, queued) keep each command's
// outcome, as an upload with results=true does.
func (l *Limits) KeepResults(ctx context.Context, job string) error {
	_, err := l.pool.Exec(ctx, `INSERT INTO spool_jobs (job_id, tenant, state, results) VALUES ($1, 'default', 'queued', true)
		ON CONFLICT (job_id) DO UPDATE SET results = true`, job)
	return err
}

// JobResults counts the results a job kept.
func (l *Limits) JobResults(ctx context.Context, job string) (int64, error) {
	var n int64
	err := l.pool.QueryRow(ctx, `SELECT count(*) FROM spool_job_results WHERE job_id = $1`, job).Scan(&n)
	return n, err
}

// ForgetWrites empties table and what spool's processors remember of
// the commands they applied (ledger, counters, failures, tombstones), so
// that another group of processors can drain the same backlog afresh.
func (l *Limits) ForgetWrites(ctx context.Context, table string) error {
	_, err := l.pool.Exec(ctx, `TRUNCATE `+pgx.Identifier{table}.Sanitize()+`, spool_ledger, spool_job_counts,
		spool_job_failures, spool_job_repeats, spool_job_replays, spool_job_results, spool_tombstones`)
	return err
}

// WALPosition is where the database's write-ahead log is, in bytes since
// its beginning: the difference of two is the WAL written between them, by
// everything the database did meanwhile.
func (l *Limits) WALPosition(ctx context.Context) (int64, error) {
	var pos int64
	err := l.pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&pos)
	return pos, err
}

// Checkpoint writes every dirty buffer out now, so that a measurement
// that starts after it does not pay for an earlier one's (a checkpoint
// landing in a drain of seconds adds its writes to that drain alone).
func (l *Limits) Checkpoint(ctx context.Context) error {
	_, err := l.pool.Exec(ctx, `CHECKPOINT`)
	return err
}

// WaitEvents samples what the database's active backends (but this one)
// are doing: their wait event as "type:event", or "CPU" when they wait on
// nothing, with how many are at it.
func (l *Limits) WaitEvents(ctx context.Context) (map[string]int64, error) {
	return pairs[int64](ctx, l.pool, `SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*)
		FROM pg_stat_activity WHERE state = 'active' AND datname = current_database() AND pid <> pg_backend_pid()
		GROUP BY 1`)
}

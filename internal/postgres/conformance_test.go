package postgres_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
	"github.com/spoolhq/spool/pipeline/storetest"
)

// TestStoreConformance runs pipeline.Store's conformance suite against the
// PostgreSQL store, reading the tables, counters and failures back with
// SQL of its own.
func TestStoreConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) *storetest.Backend {
		db, es, store := newSuiteStore(t)
		return &storetest.Backend{
			Store: store, Entities: es, LoadOffset: store.LoadOffset,
			Customers: func(ctx context.Context) (map[string]string, error) {
				return collect[string](ctx, db, `SELECT customer_id, coalesce(name, '') || '@' || version FROM customers`)
			},
			Lines: func(ctx context.Context) (map[string]int64, error) {
				return collect[int64](ctx, db, `SELECT order_id || '/' || line, qty FROM lines`)
			},
			Counts: func(ctx context.Context, job pipeline.JobID) (pipeline.Counts, error) {
				var c pipeline.Counts
				err := db.Pool.QueryRow(ctx, `SELECT coalesce(sum(applied), 0), coalesce(sum(duplicate), 0), coalesce(sum(stale), 0),
					coalesce(sum(conflict), 0), coalesce(sum("exists"), 0), coalesce(sum(missing), 0), coalesce(sum(aborted), 0),
					coalesce(sum(dead_lettered), 0) FROM spool_job_counts WHERE job_id = $1`, job).
					Scan(&c.Applied, &c.Duplicate, &c.Stale, &c.Conflict, &c.Exists, &c.Missing, &c.Aborted, &c.DeadLettered)
				return c, err
			},
			Abort: func(ctx context.Context, job pipeline.JobID) error {
				if err := store.CreateJob(ctx, job, "tenant", pipeline.JobOptions{}); err != nil {
					return err
				}
				_, err := store.AbortJob(ctx, "tenant", job)
				return err
			},
			Failures: func(ctx context.Context, job pipeline.JobID) ([]pipeline.Failure, error) {
				rows, err := db.Pool.Query(ctx, `SELECT idx, command_id, outcome, error_class, value_sha256
					FROM spool_job_failures WHERE job_id = $1 ORDER BY idx`, job)
				if err != nil {
					return nil, err
				}
				return pgx.CollectRows(rows, func(r pgx.CollectableRow) (pipeline.Failure, error) {
					var f pipeline.Failure
					err := r.Scan(&f.Index, &f.ID, &f.Outcome, &f.Class, &f.ValueHash)
					return f, err
				})
			},
		}
	})
}

// newSuiteStore makes a schema with the suite's tables (customers and
// lines, as storetest.Backend describes them) and a store writing them.
func newSuiteStore(t *testing.T) (*pgtest.DB, pipeline.Entities, *postgres.Store) {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, `CREATE TABLE customers (
		customer_id text PRIMARY KEY, name text, balance numeric(18,2) CHECK (balance >= 0),
		version bigint NOT NULL)`)
	db.Exec(t, `CREATE TABLE lines (order_id text, line int, qty int, note text, PRIMARY KEY (order_id, line))`)
	es, err := postgres.LoadEntities(t.Context(), db.Postgres, []postgres.EntitySpec{
		{Name: "customers", Schema: db.Schema, Table: "customers", Key: []string{"customer_id"}, VersionColumn: "version"},
		{Name: "lines", Schema: db.Schema, Table: "lines", Key: []string{"order_id", "line"}},
	})
	require.NoError(t, err)
	return db, es, postgres.NewStore(db.Postgres, pipeline.NewCatalog(es), "g", slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// collect reads rows of a key and a value into a map.
func collect[V any](ctx context.Context, db *pgtest.DB, sql string) (map[string]V, error) {
	rows, err := db.Pool.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	out := map[string]V{}
	var k string
	var v V
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
		out[k] = v
		return nil
	})
	return out, err
}

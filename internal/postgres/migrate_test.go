package postgres_test

import (
	"context"
	"net/url"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/postgres"
)

// TestMigrateConcurrently: several processes starting at once apply each
// migration exactly once; running again applies nothing.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t) // a schema of our own; migrate a fresh one inside it
	ctx := context.Background()
	fresh := db.Schema + "_m"
	db.Exec(t, "CREATE SCHEMA "+fresh)
	t.Cleanup(func() { _, _ = db.Pool.Exec(context.Background(), "DROP SCHEMA "+fresh+" CASCADE") })
	u, err := url.Parse(db.URL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", fresh)
	u.RawQuery = q.Encode()

	var wg sync.WaitGroup
	applied := make([][]string, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := postgres.Open(ctx, u.String(), 2)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			applied[i], errs[i] = postgres.Migrate(ctx, pool)
		}()
	}
	wg.Wait()
	total := 0
	for i := range 4 {
		require.NoError(t, errs[i])
		total += len(applied[i])
	}
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM "+fresh+".spool_migrations").Scan(&n))
	require.Equal(t, n, total, "each migration applied by exactly one process")
	require.Positive(t, n)
}

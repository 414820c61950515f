package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/tools/tooldb"
)

// DB is one test's schema.
type DB struct {
	// Pool is for the test's own queries.
	Pool *pgxpool.Pool
	// Postgres is the same pool for spool's code under test.
	Postgres *postgres.DB
	Schema   string
	// URL connects with search_path set to Schema, for code under test
	// that opens its own pool.
	URL string
}

// BaseURL is the test database's URL: TEST_DATABASE_URL, or the local
// PostgreSQL.
func BaseURL() string { return tooldb.BaseURL() }

// New creates a fresh schema, applies spool's migrations in it and drops
// it when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "spooltest_" + hex.EncodeToString(b)

	if err := tooldb.ResetSchema(ctx, BaseURL(), schema); err != nil {
		t.Fatalf("creating schema (is PostgreSQL running at %s?): %v", BaseURL(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := tooldb.DropSchema(ctx, BaseURL(), schema); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
	})

	u, err := url.Parse(BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	db := &DB{Schema: schema, URL: u.String()}
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	if db.Pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Pool.Close)
	db.Postgres = postgres.FromPool(db.Pool)
	if _, err := postgres.Migrate(ctx, db.Postgres); err != nil {
		t.Fatal(err)
	}
	return db
}

// Exec runs SQL in the test schema, failing the test on error.
func (db *DB) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := db.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

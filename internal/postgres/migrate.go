package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number and _", e.Name())
		}
		b, err := migrationFS.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// Migrate applies the migrations not yet applied in the connection's
// current schema. It is idempotent and safe when several processes start at
// once: a session advisory lock serializes them. It returns the names of the
// migrations it applied.
func Migrate(ctx context.Context, db *DB) ([]string, error) {
	ms, err := migrations()
	if err != nil {
		return nil, err
	}
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return nil, classify(fmt.Errorf("acquiring connection for migrations: %w", err))
	}
	defer conn.Release()
	const lock = `SELECT pg_advisory_lock(hashtext(current_schema() || '.spool_migrations'))`
	if _, err := conn.Exec(ctx, lock); err != nil {
		return nil, classify(fmt.Errorf("taking migration lock: %w", err))
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext(current_schema() || '.spool_migrations'))`) //nolint:errcheck // the lock dies with the session anyway

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS spool_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, classify(fmt.Errorf("creating spool_migrations: %w", err))
	}
	rows, err := conn.Query(ctx, `SELECT version FROM spool_migrations`)
	if err != nil {
		return nil, classify(err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, classify(fmt.Errorf("reading applied migrations: %w", err))
	}
	applied := make(map[int]bool, len(done))
	for _, v := range done {
		applied[v] = true
	}
	var names []string
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO spool_migrations (version, name) VALUES ($1, $2)`, m.version, m.name)
			return err
		})
		if err != nil {
			return names, fmt.Errorf("applying migration %s: %w", m.name, err)
		}
		names = append(names, m.name)
	}
	return names, nil
}

// EnsureDemoCustomers creates the demo entity's table of spoolctl dev in
// the connection's current schema when it is missing, and returns its
// qualified name.
func EnsureDemoCustomers(ctx context.Context, db *DB) (string, error) {
	_, err := db.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS customers (
		customer_id text PRIMARY KEY,
		name        text,
		email       text,
		balance     numeric(18,2),
		version     bigint NOT NULL,
		updated_at  timestamptz)`)
	if err != nil {
		return "", fmt.Errorf("creating demo table customers: %w", err)
	}
	var schema string
	if err := db.pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return "", fmt.Errorf("reading current schema: %w", err)
	}
	return schema + ".customers", nil
}

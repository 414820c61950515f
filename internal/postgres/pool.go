package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// errUnreadableURL stands for pgx's own parse error, which quotes the
// connection string with its password masked only on a best-effort basis
// (pgconn says so): a malformed string is where a password is easiest to
// miss.
var errUnreadableURL = errors.New("parsing database.url: not a PostgreSQL URL or key=value settings pgx can read, " +
	"or a setting in it is invalid (the string is not shown: it may hold a password)")

// parsePoolConfig is pgxpool.ParseConfig with an error that cannot leak a
// password.
func parsePoolConfig(url string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errUnreadableURL
	}
	return cfg, nil
}

// Open returns a connection pool of at most maxConns connections.
func Open(ctx context.Context, url string, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := parsePoolConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening database pool: %w", err)
	}
	return pool, nil
}

// EnsureDatabase creates the database named in url when it is missing, by
// connecting to the server's "postgres" database. spoolctl dev uses it so
// that a fresh machine needs no manual createdb.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := parsePoolConfig(url)
	if err != nil {
		return err
	}
	name := cfg.ConnConfig.Database
	cfg.ConnConfig.Database = "postgres"
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting to create database %s: %w", name, err)
	}
	defer pool.Close()
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("looking up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := pool.Exec(ctx, `CREATE DATABASE `+quoteIdent(name)); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	return nil
}

// collect runs sql and scans each row into a map.
func collect[V any](ctx context.Context, pool *pgxpool.Pool, scan func(pgx.Rows, map[string]V) error, sql string, args ...any) (map[string]V, error) {
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]V{}
	for rows.Next() {
		if err := scan(rows, out); err != nil {
			return nil, err
		}
	}
	return out, rows.Err()
}

// pairs runs sql, whose rows are a key and a value, into a map.
func pairs[V any](ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (map[string]V, error) {
	return collect(ctx, pool, func(r pgx.Rows, out map[string]V) error {
		var k string
		var v V
		err := r.Scan(&k, &v)
		out[k] = v
		return err
	}, sql, args...)
}

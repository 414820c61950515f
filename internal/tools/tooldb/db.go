package tooldb

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultURL is the database of tests and tools when TEST_DATABASE_URL is
// unset: the local PostgreSQL that `make test` starts.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// BaseURL is TEST_DATABASE_URL, or DefaultURL.
func BaseURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// errUnreadableURL leaves the URL out: it may hold a password.
var errUnreadableURL = errors.New("parsing the database URL: not one pgx can read (not shown: it may hold a password)")

func open(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errUnreadableURL
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening database pool: %w", err)
	}
	return pool, nil
}

// ResetSchema drops schema with everything in it, if it exists, and
// creates it empty.
func ResetSchema(ctx context.Context, url, schema string) error {
	return onAdmin(ctx, url, fmt.Sprintf("DROP SCHEMA IF EXISTS %[1]s CASCADE; CREATE SCHEMA %[1]s", pgx.Identifier{schema}.Sanitize()))
}

// DropSchema drops schema with everything in it.
func DropSchema(ctx context.Context, url, schema string) error {
	return onAdmin(ctx, url, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

func onAdmin(ctx context.Context, url, sql string) error {
	conn, err := connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, errUnreadableURL
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the database: %w", err)
	}
	return conn, nil
}

// LockRun takes a session advisory lock named name on its own connection,
// so that two runs (benchmarks, fault suites) cannot share a schema (one
// would drop the other's tables under it). release frees it.
func LockRun(ctx context.Context, url, name string) (release func(), err error) {
	conn, err := connect(ctx, url)
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, "spool-bench:"+name).Scan(&ok); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if !ok {
		conn.Close(ctx)
		return nil, fmt.Errorf("another run uses schema %s: wait for it, or pass another -schema", name)
	}
	return func() { conn.Close(context.Background()) }, nil
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

// sumOffsets is how many records the group's processors have committed on
// topic: the sum of the stored next offsets.
func sumOffsets(ctx context.Context, pool *pgxpool.Pool, group, topic string) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM spool_offsets WHERE consumer_group = $1 AND topic = $2`,
		group, topic).Scan(&n)
	return n, err
}

// HoldConnections takes every connection PostgreSQL at url will give
// (until it refuses one for want of slots, 53300 too many clients; a
// superuser's connections take the reserved slots too), at most most, and
// ends the backends whose application_name is app, taking the slots they
// free as well, until app holds none: the server out of connections to
// app, as when another client takes them all. It holds them until
// release, and returns how many it holds and how many backends it ended.
func HoldConnections(ctx context.Context, url string, most int, app string) (release func(), held, ended int, err error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, 0, 0, errUnreadableURL
	}
	cfg.RuntimeParams["application_name"] = app + ":held" // not app's: ending app's backends spares these
	var conns []*pgx.Conn
	release = func() {
		for _, c := range conns {
			_ = c.Close(context.WithoutCancel(ctx))
		}
	}
	grab := func() error {
		for len(conns) < most {
			c, err := pgx.ConnectConfig(ctx, cfg)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "53300" {
				return nil
			}
			if err != nil {
				return fmt.Errorf("holding connection %d: %w", len(conns)+1, err)
			}
			conns = append(conns, c)
		}
		return nil
	}
	// app reconnects as soon as its backends end, so end and take in
	// rounds until it holds none.
	for round := 0; ; round++ {
		if err := grab(); err != nil {
			release()
			return nil, 0, 0, err
		}
		if len(conns) == 0 {
			return release, 0, ended, errors.New("holding connections: PostgreSQL gave none")
		}
		var n int
		err := conns[0].QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int
			FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n)
		if err != nil {
			release()
			return nil, 0, 0, fmt.Errorf("ending %s's backends: %w", app, err)
		}
		ended += n
		if n == 0 || round == 20 {
			return release, len(conns), ended, nil
		}
	}
}

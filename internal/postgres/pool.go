package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
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

// DB is a pool of connections to spool's database: what the rest of spool
// holds, so that pgx stays in this package.
type DB struct{ pool *pgxpool.Pool }

// Open returns a pool of at most maxConns connections.
func Open(ctx context.Context, url string, maxConns int) (*DB, error) {
	return OpenTraced(ctx, url, maxConns, nil)
}

// OpenTraced is Open with a span for each statement and batch of
// statements, under the caller's (tracing.enabled); nil spans: none.
func OpenTraced(ctx context.Context, url string, maxConns int, spans Spans) (*DB, error) {
	cfg, err := parsePoolConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(maxConns)
	if spans != nil {
		cfg.ConnConfig.Tracer = spanTracer{spans: spans}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening database pool: %w", err)
	}
	return &DB{pool: pool}, nil
}

// FromPool is a DB on a pool opened elsewhere: by tests, which query the
// same schema with pgx themselves.
func FromPool(pool *pgxpool.Pool) *DB { return &DB{pool: pool} }

// Close closes every connection, waiting for those in use.
func (db *DB) Close() { db.pool.Close() }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.pool.Ping(ctx) }

// PoolStats is the connection pool at a moment, for metrics.
type PoolStats struct {
	// Acquired and Idle are the connections in use and waiting for use;
	// Max is database.max_conns.
	Acquired, Idle, Max int32
	// EmptyAcquires counts acquisitions that had to wait for a connection
	// (none idle); AcquireTime is the time all acquisitions took.
	EmptyAcquires int64
	AcquireTime   time.Duration
}

// Stats reads the pool's statistics.
func (db *DB) Stats() PoolStats {
	s := db.pool.Stat()
	return PoolStats{Acquired: s.AcquiredConns(), Idle: s.IdleConns(), Max: s.MaxConns(),
		EmptyAcquires: s.EmptyAcquireCount(), AcquireTime: s.AcquireDuration()}
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
	if _, err := pool.Exec(ctx, `CREATE DATABASE `+string(ident(name))); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	return nil
}

// texts, int8s and byteas are one-dimensional array parameters of values
// pointed at, nil standing for NULL. pgx encodes an array's elements one by
// one through an interface: a string or an int64 put in one is copied to
// the heap, and a pointer to one is dereferenced by reflection, which copies
// it again; an element that encodes itself through a pointer is neither, an
// allocation or two fewer per element of a batch's largest parameters.
type (
	texts  []*string
	int8s  []*int64
	byteas []*[]byte
)

func (a texts) Dimensions() []pgtype.ArrayDimension  { return dimensions(len(a)) }
func (a texts) Index(i int) any                      { return (*pgText)(a[i]) }
func (a texts) IndexType() any                       { return new(pgText) }
func (a int8s) Dimensions() []pgtype.ArrayDimension  { return dimensions(len(a)) }
func (a int8s) Index(i int) any                      { return (*pgInt8)(a[i]) }
func (a int8s) IndexType() any                       { return new(pgInt8) }
func (a byteas) Dimensions() []pgtype.ArrayDimension { return dimensions(len(a)) }
func (a byteas) Index(i int) any                     { return (*pgBytea)(a[i]) }
func (a byteas) IndexType() any                      { return new(pgBytea) }

func dimensions(n int) []pgtype.ArrayDimension {
	return []pgtype.ArrayDimension{{Length: int32(n), LowerBound: 1}}
}

// The elements of texts, int8s and byteas (a nil one is never asked: pgx
// sends NULL for it).
type (
	pgText  string
	pgInt8  int64
	pgBytea []byte
)

func (t *pgText) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: string(*t), Valid: true}, nil
}
func (n *pgInt8) Int64Value() (pgtype.Int8, error) {
	return pgtype.Int8{Int64: int64(*n), Valid: true}, nil
}
func (b *pgBytea) BytesValue() ([]byte, error) { return *b, nil }

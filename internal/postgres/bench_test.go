package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/tools/harness"
	"github.com/spoolhq/spool/internal/tools/tooldb"
	"github.com/spoolhq/spool/pipeline"
)

// benchBatches makes n batches of size fresh commands over keys drawn from
// 0.6 of the total, with random versions: the shape of a backlog drain.
// deletes of every 100 commands are deletes.
func benchBatches(b *testing.B, es pipeline.Entities, n, size, deletes int) []*pipeline.Batch {
	rng := rand.New(rand.NewPCG(9, 9))
	keys := max(1, n*size*6/10)
	var out []*pipeline.Batch
	offset := int64(0)
	for i := range n {
		batch := &pipeline.Batch{Topic: "spool.commands", Partition: 0, PrevOffset: offset - 1, NextOffset: offset + int64(size)}
		if i == 0 {
			batch.PrevOffset = -1
		} else {
			batch.PrevOffset = offset
		}
		for j := range size {
			line := fmt.Sprintf(`{"id":"b-%d-%d","entity":"customers","version":%d,"data":{"customer_id":"cust-%d","name":"Name %d","email":"user%d@example.com","balance":"%d.%02d"}}`,
				i, j, rng.IntN(1_000_000), rng.IntN(keys), j, j, rng.IntN(10000), rng.IntN(100))
			if rng.IntN(100) < deletes {
				line = fmt.Sprintf(`{"id":"b-%d-%d","entity":"customers","op":"delete","version":%d,"data":{"customer_id":"cust-%d"}}`,
					i, j, rng.IntN(1_000_000), rng.IntN(keys))
			}
			cmd, err := pipeline.DecodeCommand([]byte(line))
			require.NoError(b, err)
			require.NoError(b, es.Validate(&cmd, ""))
			rec, err := pipeline.NewRecord(&cmd, "bench-job", "t", int64(j))
			require.NoError(b, err)
			rec.Offset = offset + int64(j)
			m := pipeline.DecodeRecord(rec, es)
			batch.Messages = append(batch.Messages, &m)
		}
		offset += int64(size)
		out = append(out, batch)
	}
	return out
}

// measure reports, when done is called, rows/s and the CPU a row cost this
// process (the client) and PostgreSQL (every postgres process).
func measure(b *testing.B, rows int) (done func()) {
	client, _ := harness.ProcUsage(os.Getpid())
	database, _ := harness.CommandCPU("postgres")
	start := time.Now()
	return func() {
		elapsed := time.Since(start)
		client2, _ := harness.ProcUsage(os.Getpid())
		database2, _ := harness.CommandCPU("postgres")
		b.ReportMetric(float64(rows)/elapsed.Seconds(), "rows/s")
		b.ReportMetric(float64((client2.CPU-client.CPU).Microseconds())/float64(rows), "client-µs/row")
		b.ReportMetric(float64((database2-database).Microseconds())/float64(rows), "pg-µs/row")
	}
}

func benchSetup(b *testing.B) (*pgtest.DB, pipeline.Entities) {
	db := pgtest.New(b)
	db.Exec(b, `CREATE TABLE customers (customer_id text PRIMARY KEY, name text, email text,
		balance numeric(18,2), version bigint NOT NULL, updated_at timestamptz)`)
	es, err := postgres.LoadEntities(context.Background(), db.Postgres, []postgres.EntitySpec{
		{Name: "customers", Schema: db.Schema, Table: "customers", Key: []string{"customer_id"}, VersionColumn: "version"}})
	require.NoError(b, err)
	return db, es
}

// BenchmarkWriteBatch measures spool's batch transaction (dedupe claim,
// collapse, guarded upsert, tombstone check, counters, offset CAS, and the
// repair after commit) against the limit measured in the same run on the
// same rows: COPY into a temp table, a version-guarded INSERT … ON CONFLICT
// and a ledger insert in one transaction. Each reports the CPU a row cost
// the client and PostgreSQL, one caller at a time. spool-deletes is spool
// with a fifth of the commands versioned deletes (row locks, tombstones,
// the repair after commit), which the limit does not do.
//
//	go test ./internal/postgres -run '^$' -bench WriteBatch -benchtime 100x
func BenchmarkWriteBatch(b *testing.B) {
	spool := func(size, deletes int) func(*testing.B) {
		return func(b *testing.B) {
			db, es := benchSetup(b)
			store := postgres.NewStore(db.Postgres, pipeline.NewCatalog(es), "bench", slog.New(slog.NewTextHandler(io.Discard, nil)))
			batches := benchBatches(b, es, b.N, size, deletes)
			b.ResetTimer()
			done := measure(b, b.N*size)
			for _, batch := range batches {
				if _, err := store.WriteBatch(context.Background(), batch, batch.Dedupe()); err != nil {
					b.Fatal(err)
				}
			}
			done()
		}
	}
	for _, size := range []int{2000, 10000} {
		b.Run(fmt.Sprintf("spool/batch=%d", size), spool(size, 0))
		b.Run(fmt.Sprintf("spool-deletes/batch=%d", size), spool(size, 20))
		b.Run(fmt.Sprintf("copy-limit/batch=%d", size), func(b *testing.B) {
			db, es := benchSetup(b)
			batches := benchBatches(b, es, b.N, size, 0)
			ctx := context.Background()
			conn, err := db.Pool.Acquire(ctx)
			require.NoError(b, err)
			defer conn.Release()
			_, err = conn.Exec(ctx, `CREATE TEMP TABLE stage (customer_id text, name text, email text, balance numeric(18,2), version bigint) ON COMMIT DELETE ROWS`)
			require.NoError(b, err)
			b.ResetTimer()
			done := measure(b, b.N*size)
			for _, batch := range batches {
				rows := make([][]any, 0, len(batch.Messages))
				ledger := make([][]any, 0, len(batch.Messages))
				seen := map[string]int{}
				for _, m := range batch.Messages {
					d := m.Command.Data
					text := func(c string) *string {
						raw, _ := d.Get(c)
						v, null, _ := es["customers"].Columns[c].Value(raw)
						if null {
							return nil
						}
						return &v
					}
					r := []any{*text("customer_id"), text("name"), text("email"), text("balance"), *m.Command.Version}
					// The limit must collapse per key too, or the upsert fails.
					if i, ok := seen[*text("customer_id")]; ok {
						if *m.Command.Version > rows[i][4].(int64) {
							rows[i] = r
						}
					} else {
						seen[*text("customer_id")] = len(rows)
						rows = append(rows, r)
					}
					ledger = append(ledger, []any{m.Tenant, string(m.Command.ID), m.Hash[:]})
				}
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.CopyFrom(ctx, pgx.Identifier{"spool_ledger"}, []string{"tenant", "command_id", "payload_hash"}, pgx.CopyFromRows(ledger)); err != nil {
						return err
					}
					if _, err := tx.CopyFrom(ctx, pgx.Identifier{"stage"}, []string{"customer_id", "name", "email", "balance", "version"}, pgx.CopyFromRows(rows)); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `INSERT INTO customers AS t (customer_id, name, email, balance, version)
						SELECT customer_id, name, email, balance, version FROM stage
						ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
							balance = EXCLUDED.balance, version = EXCLUDED.version
						WHERE t.version < EXCLUDED.version`)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			done()
		})
	}
}

// BenchmarkWriteConcurrency measures what writers running side by side
// cost PostgreSQL a row, each writing its own partition's batches of
// 3,000 (keys drawn from a common range, as partitions' are): spool's
// WriteBatch, and the plain COPY+upsert+ledger reference of spool-bench
// (tooldb.CopyUpsertLedger) over as many connections. Both pay for
// concurrency alike, which is why the processor bounds its writes
// (processor.write_concurrency). spool-deletes is spool with a fifth of
// the commands deletes, whose batches write with two statements and lock
// their rows first, in key order (Store.queueLocks).
//
//	go test ./internal/postgres -run '^$' -bench WriteConcurrency -benchtime 96x
func BenchmarkWriteConcurrency(b *testing.B) {
	const size = 3000
	for _, writers := range []int{1, 2, 4, 8} {
		spool := func(deletes int) func(*testing.B) {
			return func(b *testing.B) {
				db, es := benchSetup(b)
				store := postgres.NewStore(db.Postgres, pipeline.NewCatalog(es), "bench", slog.New(slog.NewTextHandler(io.Discard, nil)))
				batches := spread(benchBatches(b, es, b.N, size, deletes), writers)
				var deadlocks atomic.Int64
				b.ResetTimer()
				done := measure(b, b.N*size)
				side(b, writers, len(batches), func(i int) error {
					for {
						// A deadlock fails the batch; the worker would
						// retry it, and so does this.
						_, err := store.WriteBatch(context.Background(), batches[i], batches[i].Dedupe())
						if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "40P01" {
							deadlocks.Add(1)
							continue
						}
						return err
					}
				})
				done()
				b.ReportMetric(float64(deadlocks.Load())/float64(b.N), "deadlocks/batch")
				b.ReportMetric(float64(store.WriteStats().WaitsCut)/float64(b.N), "waits-cut/batch")
			}
		}
		b.Run(fmt.Sprintf("spool/writers=%d", writers), spool(0))
		// A fifth deletes: each batch writes its entity with two
		// statements, its rows locked first (Store.queueLocks).
		b.Run(fmt.Sprintf("spool-deletes/writers=%d", writers), spool(20))
		b.Run(fmt.Sprintf("copy-limit/writers=%d", writers), func(b *testing.B) {
			db, es := benchSetup(b)
			ctx := context.Background()
			limits, err := tooldb.OpenLimits(ctx, db.URL)
			require.NoError(b, err)
			defer limits.Close()
			require.NoError(b, limits.CreateTables(ctx, "limit_customers"))
			var rows [][]tooldb.LimitRow
			for _, batch := range benchBatches(b, es, b.N, size, 0) {
				part := make([]tooldb.LimitRow, len(batch.Messages))
				for i, m := range batch.Messages {
					text := func(c string) string {
						raw, _ := m.Command.Data.Get(c)
						v, _, _ := es["customers"].Columns[c].Value(raw)
						return v
					}
					part[i] = tooldb.LimitRow{Tenant: m.Tenant, ID: string(m.Command.ID), Hash: m.Hash[:], Key: text("customer_id"),
						Name: text("name"), Email: text("email"), Balance: text("balance"), Version: *m.Command.Version}
				}
				rows = append(rows, part)
			}
			feed := make(chan []tooldb.LimitRow, len(rows))
			for _, part := range rows {
				feed <- part
			}
			close(feed)
			b.ResetTimer()
			done := measure(b, b.N*size)
			require.NoError(b, limits.CopyUpsertLedger(ctx, "limit_customers", feed, writers))
			done()
		})
	}
}

// spread deals batches (made for partition 0) to n partitions in turn,
// each continuing its own offsets.
func spread(batches []*pipeline.Batch, n int) []*pipeline.Batch {
	next := map[int32]int64{}
	for i, batch := range batches {
		p := int32(i % n)
		prev, ok := next[p]
		if !ok {
			prev = -1
		}
		batch.Partition, batch.PrevOffset, batch.NextOffset = p, prev, max(prev, 0)+int64(len(batch.Messages))
		next[p] = batch.NextOffset
	}
	return batches
}

// side runs write(i) for i < n on writers goroutines, writer w taking the
// batches of partition w (i ≡ w mod writers) in order.
func side(b *testing.B, writers, n int, write func(i int) error) {
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error {
			for i := w; i < n; i += writers {
				if err := write(i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	require.NoError(b, g.Wait())
}

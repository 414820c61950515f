package postgres_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

type testBundle struct {
	db    *pgtest.DB
	store *postgres.Store
	next  map[int32]int64
	es    pipeline.Entities
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	db, es, store := newSuiteStore(t)
	return &testBundle{db: db, es: es, next: map[int32]int64{}, store: store}
}

// write applies lines as one batch of partition p, continuing its offsets.
func (b *testBundle) write(t *testing.T, p int32, lines ...string) ([]pipeline.Outcome, error) {
	t.Helper()
	return b.writeEdited(t, p, nil, lines...)
}

// writeEdited is write with a hook that may change each message before the
// batch is written (mark a replay, poison one).
func (b *testBundle) writeEdited(t *testing.T, p int32, edit func(i int, m *pipeline.Message), lines ...string) ([]pipeline.Outcome, error) {
	t.Helper()
	batch := b.batch(t, p, "job-1", edit, lines...)
	out, err := b.store.WriteBatch(context.Background(), batch, batch.Dedupe())
	if err == nil {
		b.next[p] = batch.NextOffset
	}
	return out, err
}

// batch makes lines a batch of job on partition p, continuing its offsets.
func (b *testBundle) batch(t *testing.T, p int32, job pipeline.JobID, edit func(i int, m *pipeline.Message), lines ...string) *pipeline.Batch {
	t.Helper()
	prev, ok := b.next[p]
	if !ok {
		prev = -1
	}
	start := max(prev, 0)
	batch := &pipeline.Batch{Topic: "spool.commands", Partition: p, PrevOffset: prev, NextOffset: start + int64(len(lines))}
	for i, l := range lines {
		cmd, err := pipeline.DecodeCommand([]byte(l))
		require.NoError(t, err)
		require.NoError(t, b.es.Validate(&cmd, ""))
		rec, err := pipeline.NewRecord(&cmd, job, "tenant", start+int64(i))
		require.NoError(t, err)
		rec.Offset = start + int64(i)
		m := pipeline.DecodeRecord(rec, b.es)
		if edit != nil {
			edit(i, &m)
		}
		batch.Messages = append(batch.Messages, &m)
	}
	return batch
}

// writeAside writes batch on a goroutine of its own; its error comes on
// the channel.
func (b *testBundle) writeAside(batch *pipeline.Batch) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := b.store.WriteBatch(context.Background(), batch, batch.Dedupe())
		done <- err
	}()
	return done
}

// waitForBackend waits until a backend running a statement on this test's
// schema (other tests run beside it) is as cond, a condition on
// pg_stat_activity, says.
func (b *testBundle) waitForBackend(t *testing.T, cond string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var found bool
		err := b.db.Pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND position($1 in query) > 0 AND `+cond+`)`, b.db.Schema).Scan(&found)
		return err == nil && found
	}, 5*time.Second, 5*time.Millisecond)
}

// slowDeletes makes each delete of a customers row sleep for seconds.
func (b *testBundle) slowDeletes(t *testing.T, seconds float64) {
	t.Helper()
	b.db.Exec(t, fmt.Sprintf(`CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(%g); RETURN OLD; END $$;
		CREATE TRIGGER slow_delete BEFORE DELETE ON customers FOR EACH ROW EXECUTE FUNCTION slow_delete()`, seconds))
}

// slowInsertOf makes the insert of the customers row of key sleep for
// seconds.
func (b *testBundle) slowInsertOf(t *testing.T, key string, seconds float64) {
	t.Helper()
	b.db.Exec(t, fmt.Sprintf(`CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.customer_id = '%s' THEN PERFORM pg_sleep(%g); END IF; RETURN NEW; END $$;
		CREATE TRIGGER slow_insert BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION slow_insert()`,
		key, seconds))
}

func (b *testBundle) rows(t *testing.T) map[string]string {
	t.Helper()
	rows, err := b.db.Pool.Query(context.Background(), `SELECT customer_id, coalesce(name, '') || '@' || version FROM customers`)
	require.NoError(t, err)
	got := map[string]string{}
	for rows.Next() {
		var k, v string
		require.NoError(t, rows.Scan(&k, &v))
		got[k] = v
	}
	return got
}

func cust(id, key string, version int, name string) string {
	return fmt.Sprintf(`{"id":%q,"entity":"customers","version":%d,"data":{"customer_id":%q,"name":%q}}`, id, version, key, name)
}

func del(id, key string, version int) string {
	return fmt.Sprintf(`{"id":%q,"entity":"customers","op":"delete","version":%d,"data":{"customer_id":%q}}`, id, version, key)
}

const (
	applied   = pipeline.OutcomeApplied
	duplicate = pipeline.OutcomeDuplicate
	stale     = pipeline.OutcomeStale
	conflict  = pipeline.OutcomeConflict
)

func TestLoadEntitiesRefusesBadConfig(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, tt := range []struct {
		spec postgres.EntitySpec
		want string
	}{
		{postgres.EntitySpec{Name: "x", Schema: b.db.Schema, Table: "nope", Key: []string{"id"}}, "table " + b.db.Schema + ".nope does not exist"},
		{postgres.EntitySpec{Name: "x", Schema: b.db.Schema, Table: "customers", Key: []string{"id"}}, `key column "id" does not exist`},
		{postgres.EntitySpec{Name: "x", Schema: b.db.Schema, Table: "customers", Key: []string{"name"}}, "no primary key or unique index on (name)"},
		{postgres.EntitySpec{Name: "x", Schema: b.db.Schema, Table: "customers", Key: []string{"customer_id"}, VersionColumn: "ver"}, `version column "ver" does not exist`},
		{postgres.EntitySpec{Name: "x", Schema: b.db.Schema, Table: "customers", Key: []string{"customer_id"}, VersionColumn: "name"}, `version column "name" is text`},
	} {
		_, err := postgres.LoadEntities(ctx, b.db.Postgres, []postgres.EntitySpec{tt.spec})
		require.ErrorContains(t, err, tt.want)
	}
}

// TestRepairRemovesRowBehindTombstone plays the end of the race a delete
// and an older upsert on two partitions can run: both committed, each
// having missed the other's write. The repair that follows each commit (and
// the periodic sweep) must remove the row.
func TestRepairRemovesRowBehindTombstone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.write(t, 0, del("d", "k", 3))
	require.NoError(t, err)
	b.db.Exec(t, `INSERT INTO customers (customer_id, name, version) VALUES ('k', 'raced', 2), ('k2', 'newer', 9)`)
	b.db.Exec(t, `INSERT INTO spool_tombstones (target, key, version) VALUES ($1, '["k2"]', 5)`, b.db.Schema+".customers")
	_, err = b.store.RepairSince(context.Background(), time.Now().Add(-time.Minute))
	require.NoError(t, err)
	require.Equal(t, map[string]string{"k2": "newer@9"}, b.rows(t), "only rows older than their tombstone go")

	// The repair after a batch's commit does the same for the batch's keys.
	b.db.Exec(t, `INSERT INTO customers (customer_id, name, version) VALUES ('k', 'raced', 1)`)
	_, err = b.write(t, 1, del("d2", "k", 2))
	require.NoError(t, err)
	require.Equal(t, map[string]string{"k2": "newer@9"}, b.rows(t))
}

// TestRepairCatchesADeleteItsUpsertMissed: the race the repair after each
// commit is for. An upsert of a key that does not exist yet and a newer
// delete of it run at once on two partitions: the upsert's snapshot, taken
// before the delete commits, misses the delete's tombstone; the delete
// finds no row to remove (the upsert's is not committed) and commits, and
// its own repair finds nothing either. The upsert's repair after its
// commit sees both and removes the row.
func TestRepairCatchesADeleteItsUpsertMissed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The upsert's row waits a while before it is inserted, its
	// statement's snapshot already taken.
	b.slowInsertOf(t, "race", 0.5)
	done := b.writeAside(b.batch(t, 0, "job-1", nil, cust("u", "race", 1, "older")))
	b.waitForBackend(t, `wait_event = 'PgSleep'`)
	out, err := b.write(t, 1, del("d", "race", 5))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out, "the delete found no row, and wrote its tombstone")
	require.NoError(t, <-done)
	require.Empty(t, b.rows(t), "the upsert's repair removed the row its snapshot let through")
}

// TestRepairCatchesADeleteRunningAtItsSnapshot: the same race, but the
// delete had begun (its tombstone written, not committed) when the
// upsert's batch took its snapshot: its transaction is among the
// snapshot's running ones (xip), not at or past its xmax, and the gated
// repair must find it there.
func TestRepairCatchesADeleteRunningAtItsSnapshot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.slowInsertOf(t, "race", 0.5)
	deleting, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer deleting.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	_, err = deleting.Exec(ctx, `INSERT INTO spool_tombstones (target, key, version) VALUES ($1, '["race"]', 5)`, b.db.Schema+".customers")
	require.NoError(t, err)
	// A later transaction commits, so that the snapshot's xmax is past the
	// delete's id.
	b.db.Exec(t, `CREATE TABLE committed_since (x int)`)

	done := b.writeAside(b.batch(t, 0, "job-1", nil, cust("u", "race", 1, "older")))
	b.waitForBackend(t, `wait_event = 'PgSleep'`)
	require.NoError(t, deleting.Commit(ctx))
	require.NoError(t, <-done)
	require.Empty(t, b.rows(t), "the upsert's repair removed the row its snapshot let through")
}

// TestJobWaitsForItsRepair: a batch whose repair after its commit fails
// leaves a durable mark, and its job does not read completed — by its own
// settle or any later one — until the periodic sweep has repaired every
// tombstone's rows and taken the mark away.
func TestJobWaitsForItsRepair(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	require.NoError(t, b.store.CreateJob(ctx, "job-1", "tenant", pipeline.JobOptions{}))
	require.NoError(t, b.store.FinishUpload(ctx, "job-1", pipeline.UploadResult{Received: 1, Accepted: 1}))
	// Every repair (a DELETE on the table; the batch itself only upserts)
	// fails until the trigger goes.
	b.db.Exec(t, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'no repair now'; END$$`)
	b.db.Exec(t, `CREATE TRIGGER refuse BEFORE DELETE ON customers FOR EACH STATEMENT EXECUTE FUNCTION refuse()`)
	// The race the repair is for: a delete on another partition that
	// missed the row this batch writes.
	b.db.Exec(t, `INSERT INTO spool_tombstones (target, key, version) VALUES ($1, '["a"]', 5)`, b.db.Schema+".customers")
	out, err := b.write(t, 0, cust("c1", "b", 1, "first"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out)
	b.db.Exec(t, `INSERT INTO customers (customer_id, name, version) VALUES ('a', 'raced', 3)`)

	require.NoError(t, b.store.SettleJobs(ctx, []pipeline.JobID{"job-1"}))
	require.NoError(t, b.store.SettleOpenJobs(ctx))
	require.Equal(t, pipeline.JobProcessing, b.job(t).State, "its repair is pending")
	_, err = b.store.RepairSince(ctx, time.Now())
	require.NoError(t, err)
	require.NoError(t, b.store.SettleOpenJobs(ctx))
	require.Equal(t, pipeline.JobProcessing, b.job(t).State, "a young mark is left to its batch's own repair")

	b.db.Exec(t, `DROP TRIGGER refuse ON customers`)
	b.db.Exec(t, `UPDATE spool_repairs_pending SET created_at = now() - interval '1 minute'`)
	_, err = b.store.RepairSince(ctx, time.Now())
	require.NoError(t, err, "an old mark makes the sweep repair every tombstone, however old")
	require.Equal(t, map[string]string{"b": "first@1"}, b.rows(t))
	require.NoError(t, b.store.SettleOpenJobs(ctx))
	require.Equal(t, pipeline.JobCompleted, b.job(t).State)
	var marks int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM spool_repairs_pending`).Scan(&marks))
	require.Zero(t, marks)

	// A batch whose repair runs leaves no mark.
	_, err = b.write(t, 0, cust("c2", "c", 1, "second"))
	require.NoError(t, err)
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM spool_repairs_pending`).Scan(&marks))
	require.Zero(t, marks)
}

// TestLastBatchesRacingCompleteTheirJob: a job's last two batches, on two
// partitions and committing at once, complete it at once. Each settles
// after its repair's mark removal committed, so the later of the two
// settles sees both marks gone. Triggers slow each removal and hold its
// commit back, so that both batches have committed and both removals are
// made before either removal commits: settled inside their removals, each
// saw the other's mark and, the job being processing already, changed
// nothing, which left it processing until the periodic sweep, seconds
// later (it failed so in every run).
func TestLastBatchesRacingCompleteTheirJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.db.Exec(t, `CREATE FUNCTION slowly() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.2); RETURN OLD; END$$`)
	b.db.Exec(t, `CREATE TRIGGER slow_removal BEFORE DELETE ON spool_repairs_pending FOR EACH ROW EXECUTE FUNCTION slowly()`)
	b.db.Exec(t, `CREATE CONSTRAINT TRIGGER slow_commit AFTER DELETE ON spool_repairs_pending
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slowly()`)
	for i := range 3 {
		job := pipeline.JobID(fmt.Sprintf("job-race-%d", i))
		require.NoError(t, b.store.CreateJob(ctx, job, "tenant", pipeline.JobOptions{}))
		require.NoError(t, b.store.FinishUpload(ctx, job, pipeline.UploadResult{Received: 3, Accepted: 3}))
		first := b.batch(t, 0, job, nil, cust(fmt.Sprintf("f%d", i), fmt.Sprintf("f%d", i), 1, "f"))
		_, err := b.store.WriteBatch(ctx, first, first.Dedupe())
		require.NoError(t, err)
		b.next[0] = first.NextOffset // the job is processing: a settle that finds it so changes nothing
		batches := []*pipeline.Batch{
			b.batch(t, 0, job, nil, cust(fmt.Sprintf("a%d", i), fmt.Sprintf("a%d", i), 1, "a")),
			b.batch(t, 1, job, nil, cust(fmt.Sprintf("b%d", i), fmt.Sprintf("b%d", i), 1, "b")),
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, batch := range batches {
			wg.Go(func() {
				<-start
				_, err := b.store.WriteBatch(ctx, batch, batch.Dedupe())
				assert.NoError(t, err)
			})
		}
		close(start)
		wg.Wait()
		for _, batch := range batches {
			b.next[batch.Partition] = batch.NextOffset
		}
		j, err := b.store.Job(ctx, "tenant", job)
		require.NoError(t, err)
		require.Equal(t, pipeline.JobCompleted, j.State, "round %d: both batches are committed and repaired", i)
	}
}

func TestSweepLedgerForgetsOnlyExpiredIDs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.write(t, 0, cust("old", "a", 1, "a"), cust("fresh", "b", 1, "b"), del("old-del", "c", 1))
	require.NoError(t, err)
	b.db.Exec(t, `UPDATE spool_ledger SET claimed_at = now() - interval '8 days' WHERE command_id IN ('old', 'old-del')`)
	b.db.Exec(t, `UPDATE spool_tombstones SET deleted_at = now() - interval '8 days'`)
	// The batch logged its delete; a younger entry stays.
	b.db.Exec(t, `UPDATE spool_delete_log SET logged_at = now() - interval '8 days'`)
	b.db.Exec(t, `INSERT INTO spool_delete_log (target) VALUES ('young')`)
	ids, tombs, err := b.store.SweepLedger(context.Background(), 168*time.Hour)
	require.NoError(t, err)
	require.Equal(t, int64(2), ids)
	require.Equal(t, int64(1), tombs)
	rows, err := b.db.Pool.Query(context.Background(), `SELECT target FROM spool_delete_log`)
	require.NoError(t, err)
	logged, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"young"}, logged, "the deletes' log is swept with the tombstones")

	// Past the window the id is new again; inside it, still a duplicate.
	out, err := b.write(t, 0, cust("old", "a", 2, "a"), cust("fresh", "b", 1, "b"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, duplicate}, out)
}

// TestTombstoneNamesTheValueNotTheSpelling: a uuid key deleted in upper
// case stays deleted when an older upsert spells it in lower case.
func TestTombstoneNamesTheValueNotTheSpelling(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.db.Exec(t, `CREATE TABLE things (id uuid PRIMARY KEY, label text, version bigint NOT NULL)`)
	es, err := postgres.LoadEntities(context.Background(), b.db.Postgres, []postgres.EntitySpec{
		{Name: "things", Schema: b.db.Schema, Table: "things", Key: []string{"id"}, VersionColumn: "version"}})
	require.NoError(t, err)
	b.es = es
	b.store = postgres.NewStore(b.db.Postgres, pipeline.NewCatalog(es), "g", slog.New(slog.NewTextHandler(io.Discard, nil)))
	out, err := b.write(t, 0, `{"id":"d","entity":"things","op":"delete","version":5,"data":{"id":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"}}`)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out)
	out, err = b.write(t, 1, `{"id":"u","entity":"things","version":3,"data":{"id":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","label":"old"}}`)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{stale}, out)

	// The repair finds the row by value too.
	b.db.Exec(t, `INSERT INTO things VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'raced', 4)`)
	_, err = b.store.RepairSince(context.Background(), time.Now().Add(-time.Minute))
	require.NoError(t, err)
	var n int
	require.NoError(t, b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM things`).Scan(&n))
	require.Zero(t, n)
}

// TestUnversionedPartialUpsertsMerge: one batch has the effect of its
// commands applied one by one, column by column.
func TestUnversionedPartialUpsertsMerge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := b.write(t, 0, `{"id":"s","entity":"lines","data":{"order_id":"r","line":1,"qty":1,"note":"seed"}}`)
	require.NoError(t, err)
	out, err := b.write(t, 0,
		`{"id":"a","entity":"lines","data":{"order_id":"o","line":1,"qty":1}}`,
		`{"id":"b","entity":"lines","data":{"order_id":"o","line":1,"note":"x"}}`,
		`{"id":"c","entity":"lines","op":"delete","data":{"order_id":"r","line":1}}`,
		`{"id":"d","entity":"lines","data":{"order_id":"r","line":1,"qty":5}}`)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, applied, applied, applied}, out)
	got := map[string]string{}
	rows, err := b.db.Pool.Query(context.Background(), `SELECT order_id, coalesce(qty::text, '-') || '/' || coalesce(note, '-') FROM lines`)
	require.NoError(t, err)
	for rows.Next() {
		var k, v string
		require.NoError(t, rows.Scan(&k, &v))
		got[k] = v
	}
	require.Equal(t, map[string]string{"o": "1/x", "r": "5/-"}, got, "o keeps both upserts' columns; r is re-created fresh after its delete")
}

// A claim that waits on another transaction's claim of the same id (a
// partition changing hands) cannot see that claim once it commits: its
// insert meets it, the batch fails transiently, and its retry settles
// against it.
func TestClaimRacingAnotherClaimIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	other, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer other.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	_, err = other.Exec(ctx, `INSERT INTO spool_ledger (tenant, command_id, payload_hash) VALUES ('tenant', 'c1', '\x00')`)
	require.NoError(t, err)
	var otherPID int
	require.NoError(t, other.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&otherPID))

	type result struct {
		out []pipeline.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := b.write(t, 0, cust("c1", "a", 1, "a1"), cust("c2", "b", 1, "b1"))
		done <- result{out, err}
	}()
	require.Eventually(t, func() bool { // the batch's claim waits for the other's
		var waiting bool
		require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE $1 = ANY (pg_blocking_pids(pid)))`, otherPID).Scan(&waiting))
		return waiting
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, other.Commit(ctx))
	r := <-done
	require.Error(t, r.err)
	require.Equal(t, pipeline.ClassTransient, pipeline.ClassOf(r.err), r.err.Error())
	require.ErrorContains(t, r.err, "a command id was claimed by another transaction while the batch ran")
	require.ErrorContains(t, r.err, "spool_ledger_pkey", "the error names the constraint it met")
	require.Empty(t, b.rows(t), "nothing of the failed batch may remain")

	out, err := b.write(t, 0, cust("c1", "a", 1, "a1"), cust("c2", "b", 1, "b1"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{conflict, applied}, out, "c1 was claimed with another payload")
}

// The claim's look-up is planned for each batch: a plan cached while the
// ledger was small (here forced, with plan_cache_mode force_generic_plan
// on the store's connection, from an analyzed ledger of 100 ids) would
// scan the whole ledger once for each id once it has grown. Counted by
// PostgreSQL's statistics of the ledger's scans, flushed as the store's
// connection ends.
func TestClaimPlanFollowsTheLedgersSize(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.db.Exec(t, `INSERT INTO spool_ledger (tenant, command_id, payload_hash)
		SELECT 'other', 'old-' || i, '\x00' FROM generate_series(1, 100) i`)
	b.db.Exec(t, `ANALYZE spool_ledger`)
	cfg, err := pgxpool.ParseConfig(b.db.URL + "&plan_cache_mode=force_generic_plan")
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	b.store = postgres.NewStore(postgres.FromPool(pool), pipeline.NewCatalog(b.es), "g", slog.New(slog.NewTextHandler(io.Discard, nil)))

	_, err = b.write(t, 0, cust("first", "k0", 1, "a")) // plans (and caches) the claim on the small ledger
	require.NoError(t, err)
	b.db.Exec(t, `INSERT INTO spool_ledger (tenant, command_id, payload_hash)
		SELECT 'other', 'grown-' || i, '\x00' FROM generate_series(1, 100000) i`)
	lines := make([]string, 300)
	for i := range lines {
		lines[i] = cust(fmt.Sprintf("c%d", i), fmt.Sprintf("n%d", i), 1, "a")
	}
	out, err := b.write(t, 0, lines...)
	require.NoError(t, err)
	require.Equal(t, applied, out[0])
	pool.Close() // its backend's statistics are flushed as it exits

	var seqScans, idxScans int64
	require.Eventually(t, func() bool {
		require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables
			WHERE schemaname = $1 AND relname = 'spool_ledger'`, b.db.Schema).Scan(&seqScans, &idxScans))
		return seqScans+idxScans >= 301
	}, 10*time.Second, 50*time.Millisecond, "the store's scans of the ledger are counted")
	require.Less(t, seqScans, int64(10), "the 300 ids were looked up through the index, not by scanning the ledger (%d index scans)", idxScans)
}

// TestWriteBatchRefusesWhatACastWouldCut: values are cast to the column's
// type without its modifier, so that storing them applies it: a value too
// long for character varying(n) fails the batch (and is then dead-lettered
// on its own) instead of being cut to n characters, which would merge two
// keys into one row. Validation refuses such values before they get here
// (TestColumnValueRefusesOverLongText); the columns are narrowed after the
// entity was loaded, as a migration under a running processor would.
func TestWriteBatchRefusesWhatACastWouldCut(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `CREATE DOMAIN short AS varchar(3); CREATE DOMAIN shorter AS short CHECK (VALUE <> 'no');
		CREATE TABLE codes (code varchar(5) PRIMARY KEY, label char(4), flags bit(3), tag shorter, version bigint NOT NULL)`)
	es, err := postgres.LoadEntities(context.Background(), db.Postgres, []postgres.EntitySpec{
		{Name: "codes", Schema: db.Schema, Table: "codes", Key: []string{"code"}, VersionColumn: "version"}})
	require.NoError(t, err)
	cols := es["codes"].Columns
	require.Equal(t, 5, cols["code"].MaxChars)
	require.Equal(t, "character varying", cols["code"].CastType)
	require.Equal(t, "bpchar", cols["label"].CastType)
	require.Equal(t, `"bit"`, cols["flags"].CastType)
	require.Equal(t, "character varying", cols["tag"].CastType)
	require.Equal(t, 3, cols["tag"].MaxChars)
	require.Equal(t, pipeline.KindText, cols["tag"].Kind)
	db.Exec(t, `ALTER TABLE codes ALTER COLUMN code TYPE varchar(3), ALTER COLUMN label TYPE char(2)`)
	store := postgres.NewStore(db.Postgres, pipeline.NewCatalog(es), "g", slog.New(slog.NewTextHandler(io.Discard, nil)))
	write := func(offset int64, line string) error {
		cmd, err := pipeline.DecodeCommand([]byte(line))
		require.NoError(t, err)
		rec, err := pipeline.NewRecord(&cmd, "job-1", "tenant", offset)
		require.NoError(t, err)
		rec.Offset = offset
		m := pipeline.DecodeRecord(rec, es)
		m.Err = nil // as if validated against a wider column
		b := &pipeline.Batch{Topic: "t", Partition: 0, PrevOffset: offset - 1, NextOffset: offset + 1, Messages: []*pipeline.Message{&m}}
		_, err = store.WriteBatch(context.Background(), b, b.Dedupe())
		return err
	}
	require.NoError(t, write(0, `{"id":"a","entity":"codes","version":1,"data":{"code":"abc","label":"x"}}`))
	for i, tt := range []struct{ line, err string }{
		{`{"id":"b","entity":"codes","version":2,"data":{"code":"abcd","label":"y"}}`, "value too long for type character varying(3)"},
		{`{"id":"c","entity":"codes","version":2,"data":{"code":"abc","label":"xyz"}}`, "value too long for type character(2)"},
		{`{"id":"d","entity":"codes","version":2,"data":{"code":"abc","flags":"1011"}}`, "bit string length 4 does not match type bit(3)"},
	} {
		err := write(int64(i+1), tt.line)
		require.ErrorContains(t, err, tt.err, tt.line)
		require.True(t, pipeline.IsPermanent(err), tt.line)
	}
	// A domain's own length is checked before the database sees the value.
	_, _, err = cols["tag"].Value([]byte(`"abcd"`))
	require.ErrorContains(t, err, `column "tag" is shorter, at most 3 characters; got 4`)
	var label string
	var version int64
	require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT label, version FROM codes WHERE code = 'abc'`).Scan(&label, &version))
	require.Equal(t, "x ", label)
	require.Equal(t, int64(1), version, "a cut value must not overwrite the row")
}

// TestStaleToldWhateverTheKey: an upsert tells the rows it wrote from the
// stale ones by the keys it returns where keys print back as written (text,
// varchar, integers), and by joining on its input where they may not
// (char(n) pads; a nondeterministic collation calls 'Ab' and 'aB' one key).
// Each key is spelled another way in the second batch.
func TestStaleToldWhateverTheKey(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	db.Exec(t, `CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
		CREATE TABLE k_text (k text PRIMARY KEY, v text, version bigint NOT NULL);
		CREATE TABLE k_int (k int PRIMARY KEY, v text, version bigint NOT NULL);
		CREATE TABLE k_comp (region varchar(10), n bigint, v text, version bigint NOT NULL, PRIMARY KEY (region, n));
		CREATE TABLE k_char (k char(4) PRIMARY KEY, v text, version bigint NOT NULL);
		CREATE TABLE k_ci (k text COLLATE ci PRIMARY KEY, v text, version bigint NOT NULL)`)
	for _, tt := range []struct {
		table     string
		key       []string
		roundTrip bool
		a1, a2, b string // key data: a as first spelled, a respelled, another key
	}{
		{"k_text", []string{"k"}, true, `"k":"a"`, `"k":"a"`, `"k":"b"`},
		{"k_int", []string{"k"}, true, `"k":7`, `"k":"007"`, `"k":8`},
		{"k_comp", []string{"region", "n"}, true, `"region":"eu","n":1`, `"region":"eu","n":"+1"`, `"region":"eu","n":2`},
		{"k_char", []string{"k"}, false, `"k":"ab"`, `"k":"ab  "`, `"k":"b"`},
		{"k_ci", []string{"k"}, false, `"k":"Ab"`, `"k":"aB"`, `"k":"b"`},
	} {
		t.Run(tt.table, func(t *testing.T) {
			es, err := postgres.LoadEntities(context.Background(), db.Postgres, []postgres.EntitySpec{
				{Name: tt.table, Schema: db.Schema, Table: tt.table, Key: tt.key, VersionColumn: "version"}})
			require.NoError(t, err)
			require.Equal(t, tt.roundTrip, es[tt.table].KeysRoundTrip)
			b := &testBundle{db: db, es: es, next: map[int32]int64{},
				store: postgres.NewStore(db.Postgres, pipeline.NewCatalog(es), "g-"+tt.table, slog.New(slog.NewTextHandler(io.Discard, nil)))}
			cmd := func(id, key string, version int) string {
				return fmt.Sprintf(`{"id":"%s-%s","entity":%q,"version":%d,"data":{%s,"v":"%s@%d"}}`, tt.table, id, tt.table, version, key, id, version)
			}
			out, err := b.write(t, 0, cmd("c1", tt.a1, 2), cmd("c2", tt.b, 1))
			require.NoError(t, err)
			require.Equal(t, []pipeline.Outcome{applied, applied}, out)
			out, err = b.write(t, 0, cmd("c3", tt.a2, 1), cmd("c4", tt.b, 3), cmd("c5", tt.a2, 2))
			require.NoError(t, err)
			require.Equal(t, []pipeline.Outcome{stale, applied}, []pipeline.Outcome{out[0], out[1]})
			require.Equal(t, stale, out[2], "the same version as the row's is stale")
			var rows int
			require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+tt.table).Scan(&rows))
			require.Equal(t, 2, rows)
		})
	}
}

// writeBehind writes line as a batch of partition 1 while another
// transaction that ran holder (with args) holds the lock the batch waits
// for, and commits that transaction once the batch waits: the batch's
// statements then see what holder committed only through what they lock.
func (b *testBundle) writeBehind(t *testing.T, line, holder string, args ...any) []pipeline.Outcome {
	t.Helper()
	ctx := context.Background()
	tx, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	_, err = tx.Exec(ctx, holder, args...)
	require.NoError(t, err)
	type result struct {
		out []pipeline.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := b.write(t, 1, line)
		done <- result{out, err}
	}()
	require.Eventually(t, func() bool { // the batch waits on the holder's lock
		var waiting int
		_ = b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&waiting)
		return waiting > 0
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, tx.Commit(ctx))
	r := <-done
	require.NoError(t, r.err)
	return r.out
}

// TestUpdateWaitingOnANewerWriteIsStale: an update that waits for another
// transaction's lock on its row sees what that one committed: a newer
// version makes it stale (not missing, as the row was not in its
// snapshot's version), and it does not apply.
func TestUpdateWaitingOnANewerWriteIsStale(t *testing.T) {
	b := setup(t)
	_, err := b.write(t, 0, cust("c1", "a", 1, "first"))
	require.NoError(t, err)

	out := b.writeBehind(t, `{"id":"u1","entity":"customers","op":"update","version":2,"data":{"customer_id":"a","name":"older"}}`,
		`UPDATE customers SET name = 'newer', version = 3 WHERE customer_id = 'a'`)
	require.Equal(t, []pipeline.Outcome{pipeline.OutcomeStale}, out)
	require.Equal(t, map[string]string{"a": "newer@3"}, b.rows(t))
}

// TestDeleteWaitingOnANewerWriteIsStale: a delete that waits for another
// transaction's lock on its row sees what that one committed — a newer
// version of the row, or a newer delete — and is stale, not applied (its
// snapshot held the older row); and one whose row another, older delete
// removed meanwhile still applies, its tombstone the newest.
func TestDeleteWaitingOnANewerWriteIsStale(t *testing.T) {
	for _, tt := range []struct {
		name   string
		holder string // what another transaction does to row a (version 1) while the delete waits
		want   pipeline.Outcome
		rows   map[string]string
		tomb   int64
	}{
		{"a newer upsert", `UPDATE customers SET name = 'newer', version = 3 WHERE customer_id = 'a'`,
			pipeline.OutcomeStale, map[string]string{"a": "newer@3"}, 2},
		{"a newer delete", `WITH d AS (DELETE FROM customers WHERE customer_id = 'a')
			INSERT INTO spool_tombstones (target, key, version) VALUES ($1, '["a"]', 3)`,
			pipeline.OutcomeStale, map[string]string{}, 3},
		{"an older delete", `WITH d AS (DELETE FROM customers WHERE customer_id = 'a')
			INSERT INTO spool_tombstones (target, key, version) VALUES ($1, '["a"]', 1)`,
			pipeline.OutcomeApplied, map[string]string{}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := setup(t)
			ctx := context.Background()
			_, err := b.write(t, 0, cust("c1", "a", 1, "first"))
			require.NoError(t, err)
			target := b.es["customers"].QualifiedName()
			var args []any
			if strings.Contains(tt.holder, "$1") {
				args = append(args, target)
			}
			out := b.writeBehind(t, `{"id":"d1","entity":"customers","op":"delete","version":2,"data":{"customer_id":"a"}}`, tt.holder, args...)
			require.Equal(t, []pipeline.Outcome{tt.want}, out)
			require.Equal(t, tt.rows, b.rows(t))
			var tomb int64
			require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT version FROM spool_tombstones WHERE target = $1 AND key = '["a"]'`, target).Scan(&tomb))
			require.Equal(t, tt.tomb, tomb, "the newest delete's tombstone")
		})
	}
}

// TestBatchesOfDeletesAndUpsertsDoNotDeadlock: two batches, each deleting
// a row the other upserts, run side by side. Each statement takes its rows
// in key order, but a batch's delete holds its row while its upsert waits
// for the other's: without the batch's rows locked first in one order,
// PostgreSQL finds a deadlock and fails one of them.
func TestBatchesOfDeletesAndUpsertsDoNotDeadlock(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	_, err := b.write(t, 0, cust("c1", "a", 1, "first"), cust("c2", "b", 1, "first"))
	require.NoError(t, err)
	// Each delete holds its row a while, so that both batches hold one
	// before either reaches its upsert.
	b.slowDeletes(t, 0.3)
	batches := []*pipeline.Batch{
		b.batch(t, 1, "job-1", nil, del("d1", "b", 5), cust("u1", "a", 5, "one")),
		b.batch(t, 2, "job-1", nil, del("d2", "a", 6), cust("u2", "b", 6, "two")),
	}
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	for i, batch := range batches {
		wg.Go(func() { _, errs[i] = b.store.WriteBatch(ctx, batch, batch.Dedupe()) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	// Whichever committed first, the newer delete and upsert win.
	require.Equal(t, map[string]string{"b": "two@6"}, b.rows(t))
}

// TestALockedBatchGivesWayOverAKeyCommittedSince: a batch that locks its
// rows first (it deletes and upserts) can still close a cycle through a
// key committed after its lock: another transaction locks that key and
// waits for a row the batch locked, while the batch's upsert waits for the
// key. The batch gives way after lockedWaitTimeout, long before
// PostgreSQL's deadlock check would fail the other transaction, and is
// written again once the key is free.
func TestALockedBatchGivesWayOverAKeyCommittedSince(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	_, err := b.write(t, 0, cust("c1", "a", 1, "first"), cust("c2", "m", 1, "first"))
	require.NoError(t, err)
	// The batch's delete holds it between its lock and its upsert.
	b.slowDeletes(t, 0.5)
	batch := b.batch(t, 1, "job-1", nil, del("d1", "a", 5), cust("u1", "c", 5, "batch"), cust("u2", "m", 5, "batch"))
	done := b.writeAside(batch)
	b.waitForBackend(t, `wait_event = 'PgSleep'`)

	// Meanwhile key c is committed, and another transaction locks it, then
	// waits for m, which the batch holds.
	b.db.Exec(t, `INSERT INTO customers (customer_id, name, version) VALUES ('c', 'since', 1)`)
	other, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer other.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	_, err = other.Exec(ctx, `SELECT 1 FROM customers WHERE customer_id = 'c' FOR UPDATE`)
	require.NoError(t, err)
	_, err = other.Exec(ctx, `SELECT 1 FROM customers WHERE customer_id = 'm' FOR UPDATE`)
	require.NoError(t, err, "the batch gave way, rather than PostgreSQL breaking a deadlock")
	require.NoError(t, other.Commit(ctx))

	require.NoError(t, <-done)
	require.Equal(t, map[string]string{"c": "batch@5", "m": "batch@5"}, b.rows(t))
	require.EqualValues(t, 1, b.store.WriteStats().WaitsCut)
}

// TestALockedBatchWaitsOutALongWait: a wait that is no cycle but lasts
// (here another transaction holding the tombstone of a key the batch
// deletes, which its lock does not cover) makes a locked batch give way
// three times, then wait as long as it takes, and commit.
func TestALockedBatchWaitsOutALongWait(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	_, err := b.write(t, 0, cust("c1", "a", 1, "first"))
	require.NoError(t, err)
	b.db.Exec(t, `INSERT INTO spool_tombstones (target, key, version) VALUES ($1, '["gone"]', 1)`, b.db.Schema+".customers")
	holder, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer holder.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	_, err = holder.Exec(ctx, `SELECT 1 FROM spool_tombstones WHERE key = '["gone"]' FOR UPDATE`)
	require.NoError(t, err)

	batch := b.batch(t, 1, "job-1", nil, del("d1", "gone", 5), cust("u1", "a", 5, "batch"))
	done := b.writeAside(batch)
	require.Eventually(t, func() bool { return b.store.WriteStats().WaitsCut == 3 }, 5*time.Second, 10*time.Millisecond)
	b.waitForBackend(t, `wait_event_type = 'Lock'`) // the fourth attempt, waiting
	require.NoError(t, holder.Commit(ctx))
	require.NoError(t, <-done)
	require.Equal(t, map[string]string{"a": "batch@5"}, b.rows(t))
	require.EqualValues(t, 3, b.store.WriteStats().WaitsCut)
}

// TestDeadlockIsTransient: a batch PostgreSQL picks as a deadlock's victim
// fails as transient (retried, never dead-lettered: SPEC §4.5), and the
// same batch written again applies.
func TestDeadlockIsTransient(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	_, err := b.write(t, 0, cust("c1", "a", 1, "first"), cust("c2", "b", 1, "first"))
	require.NoError(t, err)
	other, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer other.Rollback(ctx) //nolint:errcheck // after the deadlock, a no-op
	_, err = other.Exec(ctx, `SELECT 1 FROM customers WHERE customer_id = 'b' FOR UPDATE`)
	require.NoError(t, err)

	// The batch locks a, then waits for b; the other transaction then
	// waits for a. The batch waited first, so its deadlock check runs
	// first and makes it the victim.
	batch := b.batch(t, 1, "job-1", nil, cust("c3", "a", 2, "second"), cust("c4", "b", 2, "second"))
	failed := b.writeAside(batch)
	b.waitForBackend(t, `wait_event_type = 'Lock'`)
	_, err = other.Exec(ctx, `SELECT 1 FROM customers WHERE customer_id = 'a' FOR UPDATE`)
	require.NoError(t, err, "the batch, not this transaction, is the victim")
	err = <-failed
	require.ErrorContains(t, err, "deadlock detected")
	require.Equal(t, pipeline.ClassTransient, pipeline.ClassOf(err))
	require.False(t, pipeline.IsPermanent(err))

	require.NoError(t, other.Rollback(ctx))
	out, err := b.store.WriteBatch(ctx, batch, batch.Dedupe())
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, applied}, out)
	require.Equal(t, map[string]string{"a": "second@2", "b": "second@2"}, b.rows(t))
}

// TestLimitWritesBoundsBatchesInFlight: past LimitWrites' bound a batch
// waits its turn before it reaches the database, and one that waits
// gives up when its context ends; within the bound batches of other
// partitions write side by side.
func TestLimitWritesBoundsBatchesInFlight(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			b := setup(t)
			b.store.LimitWrites(limit)
			ctx := context.Background()
			_, err := b.write(t, 0, cust("c1", "a", 1, "first"))
			require.NoError(t, err)
			blocked, other := b.batch(t, 0, "job-1", nil, cust("c2", "a", 2, "second")), b.batch(t, 1, "job-1", nil, cust("c3", "b", 1, "other"))

			// Another transaction holds row a: the first batch waits on it,
			// holding its turn.
			holder, err := b.db.Pool.Begin(ctx)
			require.NoError(t, err)
			defer holder.Rollback(ctx) //nolint:errcheck // a no-op after Commit
			_, err = holder.Exec(ctx, `SELECT 1 FROM customers WHERE customer_id = 'a' FOR UPDATE`)
			require.NoError(t, err)
			write := func(batch *pipeline.Batch) <-chan error {
				done := make(chan error, 1)
				go func() {
					_, err := b.store.WriteBatch(ctx, batch, batch.Dedupe())
					done <- err
				}()
				return done
			}
			first := write(blocked)
			require.Eventually(t, func() bool {
				var waiting int
				_ = b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&waiting)
				return waiting > 0
			}, 10*time.Second, 10*time.Millisecond)

			second := write(other)
			if limit == 1 {
				select {
				case err := <-second:
					t.Fatalf("the second batch wrote while the first held the only turn (err %v)", err)
				case <-time.After(500 * time.Millisecond):
				}
				gone, cancel := context.WithCancel(ctx)
				cancel()
				_, err := b.store.WriteBatch(gone, other, other.Dedupe())
				require.ErrorIs(t, err, context.Canceled, "a batch waiting for its turn gives up with its context")
				stats := b.store.WriteStats()
				require.Equal(t, 1, stats.InFlight)
				require.Equal(t, 1, stats.Limit)
				require.Equal(t, int64(1), stats.Waited, "the batch given up waited (the second one is counted once it has its turn)")
				require.GreaterOrEqual(t, stats.WaitTime, 0*time.Second)
			} else {
				select {
				case err := <-second:
					require.NoError(t, err)
				case <-time.After(10 * time.Second):
					t.Fatal("the second batch did not write beside the first")
				}
			}
			require.NoError(t, holder.Commit(ctx))
			require.NoError(t, <-first)
			if limit == 1 {
				require.NoError(t, <-second)
			}
			require.Equal(t, map[string]string{"a": "second@2", "b": "other@1"}, b.rows(t))
			stats := b.store.WriteStats()
			require.Zero(t, stats.InFlight, "every turn given back")
			require.Equal(t, int64(2*(2-limit)), stats.Waited, "with one turn the second batch waited too")
		})
	}
}

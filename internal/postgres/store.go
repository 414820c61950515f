package postgres

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spoolhq/spool/pipeline"
)

// Store applies batches and keeps jobs. It is safe for concurrent use by
// every partition's worker.
type Store struct {
	logger   *slog.Logger
	pool     *pgxpool.Pool
	entities pipeline.Entities
	group    string
	// sqlCache holds the statements built at run time, by signature
	// (entity, op, column set). The column set is the client's choice, up to
	// 2^columns of them per entity, so the cache is bounded: a miss only
	// costs building the text again.
	sqlCache *lru.Cache[string, string]
}

// sqlCacheSize bounds the statement cache: room for every shape a few
// busy entities use, far below what a client choosing column sets can ask.
const sqlCacheSize = 1024

// NewStore returns a store writing the given entities; group names the
// consumer group whose offsets it keeps.
func NewStore(db *DB, entities pipeline.Entities, group string, logger *slog.Logger) *Store {
	return newStore(db.pool, entities, group, logger, sqlCacheSize)
}

func newStore(pool *pgxpool.Pool, entities pipeline.Entities, group string, logger *slog.Logger, cacheSize int) *Store {
	cache, err := lru.New[string, string](cacheSize)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	return &Store{pool: pool, entities: entities, group: group, logger: logger, sqlCache: cache}
}

// LoadOffset returns the partition's next offset as stored, or -1.
func (s *Store) LoadOffset(ctx context.Context, topic string, partition int32) (int64, error) {
	var next int64
	err := s.pool.QueryRow(ctx, `SELECT next_offset FROM spool_offsets
		WHERE consumer_group = $1 AND topic = $2 AND partition = $3`, s.group, topic, partition).Scan(&next)
	if errors.Is(err, pgx.ErrNoRows) {
		return -1, nil
	}
	if err != nil {
		return 0, classify(fmt.Errorf("loading offset of %s/%d: %w", topic, partition, err))
	}
	return next, nil
}

// WriteBatch applies b in one transaction: it claims the command ids in the
// ledger (ids already claimed are duplicates, or conflicts when their
// payload differs), collapses the fresh commands per row, writes each group
// with one set-based statement under the version guard, adds the job
// counters, records failures and moves the stored offset from b.PrevOffset
// to b.NextOffset. Nothing of it is visible unless all of it commits.
//
// Statements that do not wait for each other's answers travel together: the
// begin with the claim, the redelivery check with the groups' writes, the
// counters with the offset; the claim answers what the ledger knew of the
// ids it did not insert. So a batch is three round trips and the commit,
// and a row written by the batch stays locked for the last of them and the
// commit only.
func (s *Store) WriteBatch(ctx context.Context, b *pipeline.Batch) ([]pipeline.Outcome, error) {
	outcomes := make([]pipeline.Outcome, len(b.Messages))
	candidates, repeats := b.Dedupe(outcomes)
	index := make(map[*pipeline.Message]int, len(b.Messages))
	for i, m := range b.Messages {
		index[m] = i
	}
	set := func(m *pipeline.Message, o pipeline.Outcome) { outcomes[index[m]] = o }

	var q pgx.Batch
	q.BeginTx(pgx.TxOptions{})
	c := queueClaim(&q, candidates)
	br := s.pool.SendBatch(ctx, &q)
	tx := br.Tx()
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if err := br.Close(); err != nil {
		return nil, classify(fmt.Errorf("claiming %d command ids: %w", len(candidates), err))
	}
	if err := c.settleRepeats(repeats, set); err != nil {
		return nil, err
	}
	fresh := make([]*pipeline.Message, 0, c.inserted)
	for _, m := range candidates {
		if _, known := c.known[m]; !known {
			fresh = append(fresh, m)
		}
	}
	groups, superseded, err := pipeline.Plan(fresh, s.entities)
	if err != nil {
		return nil, err
	}
	for m, o := range superseded {
		set(m, o)
	}

	q = pgx.Batch{}
	// Redeliveries are among duplicates, conflicts and dead letters, all
	// known by now; what the groups' writes find stale is not among them.
	queueRedeliveries(&q, b, outcomes)
	var repairs []keys
	for _, g := range groups {
		for _, m := range g.Messages {
			set(m, pipeline.OutcomeApplied)
		}
		written, err := s.queueGroup(&q, &g, func(m *pipeline.Message) { set(m, pipeline.OutcomeStale) })
		if err != nil {
			return nil, err
		}
		if g.Entity.Versioned() {
			repairs = append(repairs, written)
		}
	}
	if err := tx.SendBatch(ctx, &q).Close(); err != nil {
		return nil, classify(err)
	}

	q = pgx.Batch{}
	queueCounts(&q, b, outcomes)
	queueMoves(&q, b, outcomes)
	queueFailures(&q, b, outcomes)
	q.Queue(`INSERT INTO spool_offsets AS o (consumer_group, topic, partition, next_offset)
		VALUES ($1, $2, $3, $5)
		ON CONFLICT (consumer_group, topic, partition) DO UPDATE
		SET next_offset = EXCLUDED.next_offset, updated_at = now()
		WHERE o.next_offset = $4`,
		s.group, b.Topic, b.Partition, b.PrevOffset, b.NextOffset).Exec(func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() != 1 {
			return pipeline.ErrFenced
		}
		return nil
	})
	if err := tx.SendBatch(ctx, &q).Close(); err != nil {
		if errors.Is(err, pipeline.ErrFenced) {
			return nil, err
		}
		return nil, classify(fmt.Errorf("recording batch of %d: %w", len(b.Messages), err))
	}
	// What follows the commit must not be cut short by a worker being
	// stopped (a revoke cancels its context right after a commit).
	after, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterCommitTimeout)
	defer cancel()
	if err := tx.Commit(ctx); err != nil {
		// The commit may have happened with its answer lost: repair anyway,
		// which is always safe.
		s.afterCommit(after, b.Partition, repairs, nil)
		return nil, classify(fmt.Errorf("committing batch of %d: %w", len(b.Messages), err))
	}
	s.afterCommit(after, b.Partition, repairs, jobsOf(b))
	return outcomes, nil
}

// keys are an entity's keys as the text of each key column, one array a
// column in the order of Entity.Key.
type keys struct {
	entity *pipeline.Entity
	cols   []texts
}

// parseKeys turns keys made by KeyOf (or read from spool_tombstones) into
// keys.
func parseKeys(e *pipeline.Entity, ks []string) (keys, error) {
	cols := make([]texts, len(e.Key))
	for i := range cols {
		cols[i] = make(texts, len(ks))
	}
	for j, k := range ks {
		parts, err := e.ParseKey(k)
		if err != nil {
			return keys{}, err
		}
		for i := range parts {
			cols[i][j] = &parts[i]
		}
	}
	return keys{entity: e, cols: cols}, nil
}

// afterCommit repairs the keys of a committed batch's versioned groups and
// settles its jobs, in one round trip (and a second when a job's state
// changes). After the commit, so that the last of two racing transactions
// sees both: the later of a delete and an older upsert of one key sees the
// tombstone and the row, and the last batch of a job sees all its
// counters. The repairs and the settle's search are one implicit
// transaction, so a job is settled only once its batch's repair succeeded;
// what fails here (briefly retried) the periodic sweep (repair, then
// settle) catches.
func (s *Store) afterCommit(ctx context.Context, partition int32, repairs []keys, jobs []pipeline.JobID) {
	ids := make([]string, len(jobs))
	for i, id := range jobs {
		ids[i] = string(id)
	}
	err := briefly(ctx, func() error {
		var q pgx.Batch
		for _, r := range repairs {
			s.queueRepair(&q, r)
		}
		var changing []string
		if len(ids) > 0 {
			queueSettleCheck(&q, ids, &changing)
		}
		if q.Len() == 0 {
			return nil
		}
		if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
			return classify(fmt.Errorf("repairing rows behind tombstones and settling jobs: %w", err))
		}
		return s.settleChanging(ctx, changing)
	})
	if err != nil {
		s.logger.Warn("repairing and settling after a batch; the periodic sweep will retry", "partition", partition, "error", err)
	}
}

// claim is a batch's ledger claim: the candidates by id, then, once the
// claim's answer is read, how many of them it inserted and what the ledger
// knew of the others.
type claim struct {
	candidates []*pipeline.Message
	byKey      map[pipeline.Key]*pipeline.Message
	inserted   int
	known      map[*pipeline.Message]ledgerEntry
}

// ledgerEntry is what the ledger knows of an id claimed before.
type ledgerEntry struct {
	hash   []byte
	origin *int64
}

// queueClaim queues the insert of the candidates' ids into the ledger. Its
// answer is how many ids it inserted and, for each of the others, the claim
// already there: one row per repeat, not one per command. (The statement's
// snapshot, taken before its insert, would not see the inserted rows
// anyway; NOT IN skips looking for them, through a hash of what the insert
// returned.)
func queueClaim(q *pgx.Batch, candidates []*pipeline.Message) *claim {
	c := &claim{candidates: candidates, byKey: make(map[pipeline.Key]*pipeline.Message, len(candidates)),
		known: map[*pipeline.Message]ledgerEntry{}}
	if len(candidates) == 0 {
		return c
	}
	n := len(candidates)
	tenants, ids, hashes, origins := make(texts, n), make(texts, n), make(byteas, n), make(int8s, n)
	hashSlices, sums := make([][]byte, n), make([]int64, n)
	for i, m := range candidates {
		tenants[i], ids[i] = &m.Tenant, (*string)(&m.Command.ID)
		hashSlices[i], hashes[i] = m.Hash[:], &hashSlices[i]
		if o, ok := m.Origin(); ok {
			sums[i], origins[i] = o.Sum(), &sums[i]
		}
		c.byKey[pipeline.Key{Tenant: m.Tenant, ID: m.Command.ID}] = m
	}
	// Sorted inserts take index locks in one order, so that two batches
	// claiming overlapping ids wait for each other instead of deadlocking.
	q.Queue(`
		WITH u AS (SELECT t COLLATE "C" AS t, id COLLATE "C" AS id, h, o
			FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[]) AS u(t, id, h, o)),
		ins AS (
			INSERT INTO spool_ledger (tenant, command_id, payload_hash, origin)
			SELECT t, id, h, o FROM u ORDER BY t, id
			ON CONFLICT DO NOTHING
			RETURNING tenant, command_id),
		known AS (
			SELECT l.tenant, l.command_id, l.payload_hash, l.origin
			FROM u JOIN spool_ledger l ON l.tenant = u.t AND l.command_id = u.id
			WHERE (u.t, u.id) NOT IN (SELECT tenant, command_id FROM ins))
		SELECT n.inserted, k.tenant, k.command_id, k.payload_hash, k.origin
		FROM (SELECT count(*) AS inserted FROM ins) n LEFT JOIN known k ON true`,
		tenants, ids, hashes, origins).Query(func(rows pgx.Rows) error {
		var tenant, id *string
		var e ledgerEntry
		_, err := pgx.ForEachRow(rows, []any{&c.inserted, &tenant, &id, &e.hash, &e.origin}, func() error {
			if tenant != nil {
				c.known[c.byKey[pipeline.Key{Tenant: *tenant, ID: pipeline.CommandID(*id)}]] = e // pgx scans each row's hash and origin into new memory
			}
			return nil
		})
		return err
	})
	return c
}

// settleRepeats settles the candidates the ledger knew, and their repeats
// in the batch, against the ledger's claim: another payload is a conflict,
// the claiming record itself redelivered, anything else a duplicate.
func (c *claim) settleRepeats(repeats map[*pipeline.Message][]*pipeline.Message, set func(*pipeline.Message, pipeline.Outcome)) error {
	if vanished := len(c.candidates) - c.inserted - len(c.known); vanished > 0 {
		// Neither inserted nor there before the claim began: another
		// transaction claimed the id meanwhile (a partition changing hands),
		// or the sweeper removed the claim. A retry of the batch settles it.
		return pipeline.Errorf(pipeline.ClassTransient, "%d command ids were claimed or swept by another transaction while the batch ran", vanished)
	}
	for m, e := range c.known {
		for _, m := range append([]*pipeline.Message{m}, repeats[m]...) {
			o, identified := m.Origin()
			switch {
			case string(e.hash) != string(m.Hash[:]):
				set(m, pipeline.OutcomeConflict)
			case identified && e.origin != nil && *e.origin == o.Sum():
				set(m, pipeline.OutcomeRedelivered) // the claim is this very record's
			default:
				set(m, pipeline.OutcomeDuplicate)
			}
		}
	}
	return nil
}

// queueRedeliveries queues the turning into redelivered of the duplicates,
// conflicts and dead letters whose origin already has that outcome: records
// Kafka delivered again in an earlier batch. Failures are remembered per
// job and index already; duplicates are remembered here, in
// spool_job_repeats. (Applied and stale records were told apart when
// claiming, by the origin the ledger keeps.)
func queueRedeliveries(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	var jobs []string
	var idx []int64
	var outs []string
	at := map[pipeline.Origin]int{}
	for i, m := range b.Messages {
		o, ok := m.Origin()
		if !ok {
			continue
		}
		switch outcomes[i] {
		case pipeline.OutcomeDuplicate, pipeline.OutcomeConflict, pipeline.OutcomeDeadLettered:
			jobs, idx, outs = append(jobs, string(o.Job)), append(idx, o.Index), append(outs, string(outcomes[i]))
			at[o] = i
		}
	}
	if len(jobs) == 0 {
		return
	}
	q.Queue(`
		WITH b AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS b(job_id, idx, outcome)),
		fresh AS (
			INSERT INTO spool_job_repeats (job_id, idx)
			SELECT job_id, idx FROM b WHERE outcome = 'duplicate' ORDER BY job_id, idx
			ON CONFLICT DO NOTHING
			RETURNING job_id, idx)
		SELECT b.job_id, b.idx FROM b
		WHERE (b.outcome = 'duplicate' AND NOT EXISTS (SELECT 1 FROM fresh WHERE fresh.job_id = b.job_id AND fresh.idx = b.idx))
		   OR (b.outcome <> 'duplicate' AND EXISTS (SELECT 1 FROM spool_job_failures f
				WHERE f.job_id = b.job_id AND f.idx = b.idx AND f.outcome = b.outcome))`, jobs, idx, outs).Query(func(rows pgx.Rows) error {
		var o pipeline.Origin
		_, err := pgx.ForEachRow(rows, []any{&o.Job, &o.Index}, func() error {
			outcomes[at[o]] = pipeline.OutcomeRedelivered
			return nil
		})
		if err != nil {
			return classify(fmt.Errorf("looking for redelivered records: %w", err))
		}
		return nil
	})
}

// queueGroup queues one group's statement; once it has run, stale is
// called with each command the version guard skipped. It returns the
// group's keys.
func (s *Store) queueGroup(q *pgx.Batch, g *pipeline.Group, stale func(*pipeline.Message)) (keys, error) {
	e := g.Entity
	cols := append(append([]string{}, e.Key...), g.Columns...)
	args := make([]any, 0, len(cols)+1)
	written := keys{entity: e}
	// A column's texts are made in one buffer and become one string, which
	// each value is a part of: a few allocations a column, not one a value.
	var buf []byte
	ends, nulls := make([]int, len(g.Rows)), make([]bool, len(g.Rows))
	for _, c := range cols {
		col := e.Columns[c]
		buf = buf[:0]
		for i, row := range g.Rows {
			raw, _ := row.Get(c)
			var err error
			if buf, nulls[i], err = col.AppendValue(buf, raw); err != nil {
				return keys{}, err
			}
			ends[i] = len(buf)
		}
		all, parts, vals := string(buf), make([]string, len(g.Rows)), make(texts, len(g.Rows))
		start := 0
		for i, end := range ends {
			if !nulls[i] {
				parts[i] = all[start:end]
				vals[i] = &parts[i]
			}
			start = end
		}
		args = append(args, vals)
		if len(args) <= len(e.Key) {
			written.cols = append(written.cols, vals)
		}
	}
	if e.Versioned() {
		vers := make(int8s, len(g.Messages))
		for i, m := range g.Messages {
			vers[i] = m.Command.Version
		}
		args = append(args, vers, e.QualifiedName())
	}
	q.Queue(s.groupSQL(g, cols), args...).Query(func(rows pgx.Rows) error {
		// The statement lists the rows it wrote (upsert) or found stale
		// (delete), for versioned entities: by their keys where they round
		// trip, else by their ordinals.
		listed := make([]bool, len(g.Messages))
		var err error
		if e.Versioned() && g.Op == pipeline.OpUpsert && e.KeysRoundTrip {
			err = matchWritten(rows, written.cols, listed)
		} else {
			var ord int64
			_, err = pgx.ForEachRow(rows, []any{&ord}, func() error {
				listed[ord-1] = true
				return nil
			})
		}
		if err != nil {
			return classify(fmt.Errorf("%s %d rows of %s: %w", gerund(g.Op), len(g.Messages), e.Name, err))
		}
		if e.Versioned() {
			for i, m := range g.Messages {
				if listed[i] == (g.Op == pipeline.OpDelete) {
					stale(m)
				}
			}
		}
		return nil
	})
	return written, nil
}

// matchWritten marks in listed the group's rows whose keys the statement
// returned: each key column's text, as cols holds them.
func matchWritten(rows pgx.Rows, cols []texts, listed []bool) error {
	index := make(map[string]int, len(listed))
	var buf []byte
	keyOf := func(i int) string {
		if len(cols) == 1 {
			return *cols[0][i]
		}
		buf = buf[:0]
		for _, c := range cols {
			buf = append(append(buf, *c[i]...), 0)
		}
		return string(buf)
	}
	for i := range listed {
		index[keyOf(i)] = i
	}
	defer rows.Close()
	for rows.Next() {
		raw := rows.RawValues()
		var i int
		var ok bool
		if len(raw) == 1 {
			i, ok = index[string(raw[0])]
		} else {
			buf = buf[:0]
			for _, v := range raw {
				buf = append(append(buf, v...), 0)
			}
			i, ok = index[string(buf)]
		}
		if !ok {
			// The catalog said these keys print back as written; if one
			// does not, the outcomes cannot be told: never guess.
			return pipeline.Errorf(pipeline.ClassInternal, "the upsert returned key %s, which the batch did not send", pipeline.Quote(string(bytes.Join(raw, []byte{0}))))
		}
		listed[i] = true
	}
	return rows.Err()
}

// groupSQL builds (once per shape) the statement for a group. Values travel
// as text arrays and are cast to the column types (without their modifiers,
// which storing them applies), so one statement of any size is one round
// trip. For versioned entities it returns the written rows' keys (upsert,
// where Entity.KeysRoundTrip), else the 1-based ordinals of the written
// rows (upsert) or of the stale ones (delete).
func (s *Store) groupSQL(g *pipeline.Group, cols []string) string {
	// The statement depends on entity, op and columns, not the generation.
	sig := g.Entity.Name + "\x00" + string(g.Op) + "\x00" + strings.Join(g.Columns, "\x00")
	if sql, ok := s.sqlCache.Get(sig); ok {
		return sql
	}
	e := g.Entity
	table := quoteIdent(e.Schema) + "." + quoteIdent(e.Table)
	var aliases, params, casts, keyJoin, keyOrder []string
	for i, c := range cols {
		a := fmt.Sprintf("a%d", i)
		aliases = append(aliases, a)
		params = append(params, fmt.Sprintf("$%d::text[]", i+1))
		casts = append(casts, fmt.Sprintf("u.%s::%s AS %s", a, e.Columns[c].CastType, a))
		if i < len(e.Key) {
			keyJoin = append(keyJoin, fmt.Sprintf("t.%s = v.%s", quoteIdent(c), a))
			keyOrder = append(keyOrder, "v."+a)
		}
	}
	targetCols := quoteAll(cols)
	values := make([]string, len(aliases))
	for i, a := range aliases {
		values[i] = "v." + a
	}
	// Versioned groups also pass the target's name, to consult and keep
	// tombstones, named by the key as PostgreSQL prints the typed values.
	target, tombstoned := "", "false"
	if e.Versioned() {
		aliases = append(aliases, "ver")
		params = append(params, fmt.Sprintf("$%d::bigint[]", len(cols)+1))
		casts = append(casts, "u.ver")
		if g.Op == pipeline.OpDelete {
			casts = append(casts, tombstoneKey(e, "u.")+" AS spool_key")
		}
		targetCols = append(targetCols, quoteIdent(e.VersionColumn))
		values = append(values, "v.ver")
		target = fmt.Sprintf("$%d::text", len(cols)+2)
		// The first EXISTS, not correlated, runs once per statement: while
		// the target has no tombstones at all (no delete yet, or all swept),
		// no row computes its tombstone key or probes for it.
		tombstoned = fmt.Sprintf(`(EXISTS (SELECT 1 FROM spool_tombstones WHERE target = %[1]s)
			AND EXISTS (SELECT 1 FROM spool_tombstones x
				WHERE x.target = %[1]s AND x.key = %[2]s AND x.version >= v.ver))`, target, tombstoneKey(e, "v."))
	}
	input := fmt.Sprintf(`SELECT u.spool_ord, %s FROM unnest(%s) WITH ORDINALITY AS u(%s, spool_ord)`,
		strings.Join(casts, ", "), strings.Join(params, ", "), strings.Join(aliases, ", "))
	keyCols := strings.Join(quoteAll(e.Key), ", ")

	var sql string
	switch {
	case g.Op == pipeline.OpDelete && e.Versioned():
		ver := quoteIdent(e.VersionColumn)
		// Every sub-statement sees the snapshot from before the statement,
		// so the final SELECT finds what was stale going in: a row or a
		// tombstone at least as new.
		sql = fmt.Sprintf(`WITH v AS (%s),
			d AS (DELETE FROM %s t USING v WHERE %s AND t.%s < v.ver),
			ts AS (INSERT INTO spool_tombstones AS x (target, key, version)
				SELECT %s, v.spool_key, v.ver FROM v ORDER BY v.spool_key
				ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()
				WHERE x.version < EXCLUDED.version)
			SELECT v.spool_ord FROM v
			WHERE EXISTS (SELECT 1 FROM %s t WHERE %s AND t.%s >= v.ver) OR %s`,
			input, table, strings.Join(keyJoin, " AND "), ver, target,
			table, strings.Join(keyJoin, " AND "), ver, tombstoned)
	case g.Op == pipeline.OpDelete:
		sql = fmt.Sprintf(`WITH v AS (%s) DELETE FROM %s t USING v WHERE %s`,
			input, table, strings.Join(keyJoin, " AND "))
	default:
		var set []string
		for _, c := range targetCols[len(e.Key):] {
			set = append(set, fmt.Sprintf("%s = EXCLUDED.%s", c, c))
		}
		onConflict := "DO NOTHING"
		if len(set) > 0 {
			onConflict = "DO UPDATE SET " + strings.Join(set, ", ")
			if e.Versioned() {
				onConflict += fmt.Sprintf(" WHERE t.%s < EXCLUDED.%s", quoteIdent(e.VersionColumn), quoteIdent(e.VersionColumn))
			}
		}
		// ORDER BY key takes row locks in one order across workers.
		insert := fmt.Sprintf(`INSERT INTO %s AS t (%s) SELECT %s FROM v WHERE NOT %s ORDER BY %s ON CONFLICT (%s) %s`,
			table, strings.Join(targetCols, ", "), strings.Join(values, ", "), tombstoned,
			strings.Join(keyOrder, ", "), keyCols, onConflict)
		if !e.Versioned() {
			sql = fmt.Sprintf(`WITH v AS (%s) %s`, input, insert)
			break
		}
		if e.KeysRoundTrip {
			// The written rows' keys, matched to the group's in Go
			// (matchWritten): the input is read once, not kept for a join.
			var ret []string
			for _, k := range e.Key {
				ret = append(ret, fmt.Sprintf("t.%s::text", quoteIdent(k)))
			}
			sql = fmt.Sprintf(`WITH v AS (%s) %s RETURNING %s`, input, insert, strings.Join(ret, ", "))
			break
		}
		var retJoin []string
		for i, k := range e.Key {
			retJoin = append(retJoin, fmt.Sprintf("w.%s = v.a%d", quoteIdent(k), i))
		}
		sql = fmt.Sprintf(`WITH v AS (%s), w AS (%s RETURNING %s)
			SELECT v.spool_ord FROM v JOIN w ON %s`,
			input, insert, strings.Join(prefixAll("t.", quoteAll(e.Key)), ", "), strings.Join(retJoin, " AND "))
	}
	s.sqlCache.Add(sig, sql)
	return sql
}

func jobsOf(b *pipeline.Batch) []pipeline.JobID {
	seen := make(map[pipeline.JobID]bool)
	var ids []pipeline.JobID
	for _, m := range b.Messages {
		if m.JobID != "" && !seen[m.JobID] {
			seen[m.JobID] = true
			ids = append(ids, m.JobID)
		}
	}
	return ids
}

// tombstoneKey is the SQL expression naming a row in spool_tombstones: a
// JSON array of the key values cast to their column types and printed by
// PostgreSQL, so that every spelling of one value ('ABC…' and 'abc…' for a
// uuid, 1.0 and 1 for a numeric) names the same row. prefix qualifies the
// unnest aliases a0, a1, ….
func tombstoneKey(e *pipeline.Entity, prefix string) string {
	parts := make([]string, len(e.Key))
	for i, k := range e.Key {
		parts[i] = fmt.Sprintf("(%sa%d::%s)::text", prefix, i, e.Columns[k].Type)
	}
	return "json_build_array(" + strings.Join(parts, ", ") + ")::text"
}

func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = quoteIdent(n)
	}
	return out
}

func prefixAll(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + n
	}
	return out
}

// addCounts ends an INSERT INTO spool_job_counts AS c: counts add up.
const addCounts = `
		ON CONFLICT (job_id, partition) DO UPDATE SET
			applied = c.applied + EXCLUDED.applied,
			duplicate = c.duplicate + EXCLUDED.duplicate,
			stale = c.stale + EXCLUDED.stale,
			conflict = c.conflict + EXCLUDED.conflict,
			dead_lettered = c.dead_lettered + EXCLUDED.dead_lettered`

func queueCounts(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	counts := pipeline.JobCounts(b.Messages, outcomes)
	var jobs []string
	var applied, duplicate, stale, conflict, dead []int64
	for job, c := range counts {
		if job == "" {
			continue // a record without a job (produced by another tool) has no counters
		}
		jobs = append(jobs, string(job))
		applied = append(applied, c.Applied)
		duplicate = append(duplicate, c.Duplicate)
		stale = append(stale, c.Stale)
		conflict = append(conflict, c.Conflict)
		dead = append(dead, c.DeadLettered)
	}
	if len(jobs) == 0 {
		return
	}
	q.Queue(`INSERT INTO spool_job_counts AS c (job_id, partition, applied, duplicate, stale, conflict, dead_lettered)
		SELECT j, $2, a, du, s, co, de FROM unnest($1::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[]) AS u(j, a, du, s, co, de)
		ORDER BY j
		`+addCounts,
		jobs, b.Partition, applied, duplicate, stale, conflict, dead)
}

// conflictError is the failure message of a conflicting command.
const conflictError = "id was seen before with a different payload"

// queueMoves moves replayed commands' counts out of dead_lettered, each only
// if its job still lists it as a dead letter: the move deletes that failure
// row (or turns it into a conflict), so a dead letter replayed twice moves
// once.
func queueMoves(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	moves := pipeline.ReplayMoves(b.Messages, outcomes)
	if len(moves) == 0 {
		return
	}
	jobs, idx, to := make([]string, len(moves)), make([]int64, len(moves)), make([]string, len(moves))
	for i, m := range moves {
		jobs[i], idx[i], to[i] = string(m.Job), m.Index, string(m.Outcome)
	}
	q.Queue(`WITH r AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS r(job_id, idx, outcome)),
		cleared AS (
			DELETE FROM spool_job_failures f USING r
			WHERE f.job_id = r.job_id AND f.idx = r.idx AND f.outcome = 'dead_lettered' AND r.outcome <> 'conflict'
			RETURNING r.job_id, r.outcome),
		conflicted AS (
			UPDATE spool_job_failures f SET outcome = 'conflict', error_class = 'conflict', error = $5, created_at = now()
			FROM r WHERE f.job_id = r.job_id AND f.idx = r.idx AND f.outcome = 'dead_lettered' AND r.outcome = 'conflict'
			RETURNING r.job_id, r.outcome),
		moved AS (SELECT * FROM cleared UNION ALL SELECT * FROM conflicted)
		INSERT INTO spool_job_counts AS c (job_id, partition, applied, duplicate, stale, conflict, dead_lettered)
		SELECT job_id, $4,
			count(*) FILTER (WHERE outcome = 'applied'), count(*) FILTER (WHERE outcome = 'duplicate'),
			count(*) FILTER (WHERE outcome = 'stale'), count(*) FILTER (WHERE outcome = 'conflict'), -count(*)
		FROM moved GROUP BY job_id ORDER BY job_id
		`+addCounts,
		jobs, idx, to, b.Partition, conflictError)
}

// queueFailures lists the batch's conflicts and dead letters among their
// jobs' failures. Replayed commands were listed already: one dead-lettered
// again refreshes its row's error, if the row is still there (queueMoves
// handles the others).
func queueFailures(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	var fs, again []pipeline.Failure
	var jobs, againJobs []string
	for i, m := range b.Messages {
		if m.JobID == "" || m.Index < 0 {
			continue
		}
		var f pipeline.Failure
		switch outcomes[i] {
		case pipeline.OutcomeConflict:
			f = pipeline.Failure{Index: m.Index, ID: m.Command.ID, Stage: pipeline.StageProcessor,
				Outcome: pipeline.OutcomeConflict, Class: pipeline.ClassConflict, Error: conflictError}
		case pipeline.OutcomeDeadLettered:
			id := m.Command.ID
			if id == "" {
				id = pipeline.CommandID(m.Record.Key)
			}
			sum := sha256.Sum256(m.Record.Value)
			f = pipeline.Failure{Index: m.Index, ID: id, Stage: pipeline.StageProcessor,
				Outcome: pipeline.OutcomeDeadLettered, Class: pipeline.ClassOf(m.Err), Error: m.Err.Error(),
				ValueHash: sum[:]}
			if m.KeepValue {
				f.Command = m.Record.Value
			}
		default:
			continue
		}
		switch {
		case m.ReplayOf == "":
			fs, jobs = append(fs, f), append(jobs, string(m.JobID))
		case f.Outcome == pipeline.OutcomeDeadLettered:
			again, againJobs = append(again, f), append(againJobs, string(m.JobID))
		}
	}
	if len(fs) > 0 {
		queueFailureRows(q, jobs, fs)
	}
	if len(again) > 0 {
		idx, classes, msgs := make([]int64, len(again)), make([]string, len(again)), make([]string, len(again))
		commands := make([][]byte, len(again))
		for i, f := range again {
			idx[i], classes[i], msgs[i], commands[i] = f.Index, string(f.Class), clean(f.Error), f.Command
		}
		q.Queue(`UPDATE spool_job_failures f SET error_class = r.class, error = r.error, created_at = now(),
				command = coalesce(f.command, r.command)
			FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[]) AS r(job_id, idx, class, error, command)
			WHERE f.job_id = r.job_id AND f.idx = r.idx AND f.outcome = 'dead_lettered'`, againJobs, idx, classes, msgs, commands)
	}
}

// queueFailureRows records failures; a later failure of the same input
// record replaces the earlier one.
func queueFailureRows(q *pgx.Batch, jobs []string, fs []pipeline.Failure) {
	idx := make([]int64, len(fs))
	ids, stages, outcomes, classes, msgs := make([]string, len(fs)), make([]string, len(fs)), make([]string, len(fs)),
		make([]string, len(fs)), make([]string, len(fs))
	commands, hashes := make([][]byte, len(fs)), make([][]byte, len(fs))
	for i, f := range fs {
		idx[i], ids[i], stages[i], outcomes[i], classes[i], msgs[i] = f.Index, clean(string(f.ID)), f.Stage, string(f.Outcome),
			string(f.Class), clean(f.Error)
		commands[i], hashes[i] = f.Command, f.ValueHash
		jobs[i] = clean(jobs[i])
	}
	q.Queue(`INSERT INTO spool_job_failures AS f (job_id, idx, command_id, stage, outcome, error_class, error, command, value_sha256)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::bytea[])
		ON CONFLICT (job_id, idx) DO UPDATE SET command_id = EXCLUDED.command_id, stage = EXCLUDED.stage,
			outcome = EXCLUDED.outcome, error_class = EXCLUDED.error_class, error = EXCLUDED.error, created_at = now(),
			command = EXCLUDED.command, value_sha256 = EXCLUDED.value_sha256`,
		jobs, idx, ids, stages, outcomes, classes, msgs, commands, hashes)
}

// clean makes text storable and showable: PostgreSQL text refuses NUL and
// invalid UTF-8, and a failure must be recordable whatever the bad input
// held; an operator's terminal must not receive its control characters;
// and a database message quoting a huge value must not make a huge row.
func clean(s string) string { return pipeline.Printable(s, pipeline.MaxErrorBytes) }

func gerund(op pipeline.Op) string {
	if op == pipeline.OpDelete {
		return "deleting"
	}
	return "upserting"
}

// afterCommitTimeout bounds the repair and settling that follow a commit.
const afterCommitTimeout = 10 * time.Second

// briefAttempts bounds the work after a commit (repair, settling); each
// attempt takes a fresh connection from the pool, so a killed connection
// costs one attempt.
const briefAttempts = 5

// briefly runs fn until it succeeds, fails permanently, ctx ends or
// briefAttempts are spent, backing off from 50 ms.
func briefly(ctx context.Context, fn func() error) error {
	var err error
	for attempt := range briefAttempts {
		if err = fn(); err == nil || ctx.Err() != nil || pipeline.IsPermanent(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
		}
	}
	return err
}

// repair deletes rows of the given keys (as made by KeyOf or read from
// spool_tombstones) that are older than their key's tombstone. Under READ
// COMMITTED a delete and an older upsert of one key, committing
// concurrently, can each miss the other's write; run after each commit, the
// later of the two repairs what both missed.
func (s *Store) repair(ctx context.Context, e *pipeline.Entity, ks []string) error {
	k, err := parseKeys(e, ks)
	if err != nil {
		return err
	}
	var q pgx.Batch
	if s.queueRepair(&q, k); q.Len() == 0 {
		return nil
	}
	if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
		return classify(fmt.Errorf("repairing %d keys of %s: %w", len(ks), e.Name, err))
	}
	return nil
}

// queueRepair queues repair's statement, for versioned entities only.
func (s *Store) queueRepair(q *pgx.Batch, k keys) {
	e := k.entity
	if !e.Versioned() || len(k.cols) == 0 || len(k.cols[0]) == 0 {
		return
	}
	args := make([]any, 0, len(k.cols)+1)
	for _, c := range k.cols {
		args = append(args, c)
	}
	args = append(args, e.QualifiedName())
	q.Queue(s.repairSQL(e), args...)
}

func (s *Store) repairSQL(e *pipeline.Entity) string {
	sig := e.Name + "\x00repair"
	if sql, ok := s.sqlCache.Get(sig); ok {
		return sql
	}
	var aliases, params, casts, join []string
	for i, k := range e.Key {
		a := fmt.Sprintf("a%d", i)
		aliases = append(aliases, a)
		params = append(params, fmt.Sprintf("$%d::text[]", i+1))
		casts = append(casts, fmt.Sprintf("u.%s::%s AS %s", a, e.Columns[k].CastType, a))
		join = append(join, fmt.Sprintf("t.%s = v.%s", quoteIdent(k), a))
	}
	n := len(e.Key)
	// The uncorrelated EXISTS runs once: a target without tombstones (no
	// delete yet, or all swept) costs no key computed or probed.
	sql := fmt.Sprintf(`WITH v AS (SELECT %s, %s AS spool_key FROM unnest(%s) AS u(%s)
			WHERE EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $%[5]d))
		DELETE FROM %s.%s t USING v, spool_tombstones x
		WHERE x.target = $%[5]d AND x.key = v.spool_key AND %[8]s AND t.%[9]s < x.version`,
		strings.Join(casts, ", "), tombstoneKey(e, "u."), strings.Join(params, ", "), strings.Join(aliases, ", "),
		n+1, quoteIdent(e.Schema), quoteIdent(e.Table), strings.Join(join, " AND "), quoteIdent(e.VersionColumn))
	s.sqlCache.Add(sig, sql)
	return sql
}

// RepairSince repairs the keys of tombstones written since the given
// database time, catching a processor that died (or a database that was
// away) between a commit and its repair. It returns the database time it
// started at: the next call passes that, less a margin, so that no
// tombstone falls between two calls however long one of them was delayed.
func (s *Store) RepairSince(ctx context.Context, since time.Time) (time.Time, error) {
	byTarget := make(map[string]*pipeline.Entity, len(s.entities))
	for _, e := range s.entities {
		if e.Versioned() {
			byTarget[e.QualifiedName()] = e
		}
	}
	var started time.Time
	if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&started); err != nil {
		return since, classify(fmt.Errorf("reading the database clock: %w", err))
	}
	rows, err := s.pool.Query(ctx, `SELECT target, key FROM spool_tombstones WHERE deleted_at >= $1`, since)
	if err != nil {
		return since, classify(fmt.Errorf("reading recent tombstones: %w", err))
	}
	keys := make(map[*pipeline.Entity][]string)
	var target, key string
	_, err = pgx.ForEachRow(rows, []any{&target, &key}, func() error {
		if e := byTarget[target]; e != nil {
			keys[e] = append(keys[e], key)
		}
		return nil
	})
	if err != nil {
		return since, classify(fmt.Errorf("reading recent tombstones: %w", err))
	}
	for e, ks := range keys {
		if err := s.repair(ctx, e, ks); err != nil {
			return since, err
		}
	}
	return started, nil
}

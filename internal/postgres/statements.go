package postgres

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// keys are an entity's keys as the text of each key column, one array a
// column in the order of Entity.Key.
type keys struct {
	entity *pipeline.Entity
	cols   []texts
	// snapshot, when set, is the snapshot (pg_snapshot as text) taken
	// before the statements that wrote the keys, and xid their
	// transaction's id: their repair runs only if a delete of the entity's
	// target by another transaction, which that snapshot could not see,
	// has logged itself in spool_delete_log (repairSQL).
	snapshot, xid string
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

// queueGroup queues one group's statement; once it has run, skipped is
// called with each command that did not apply and its outcome: stale where
// the version guard skipped it, exists or missing where an insert found its
// row or an update did not. bounded says it runs under lockedWaitTimeout
// (queueLockTimeout), whose expiry is errGaveWay. It returns the group's
// keys.
func (s *Store) queueGroup(q *pgx.Batch, g *pipeline.Group, skipped func(*pipeline.Message, pipeline.Outcome), bounded bool) (keys, error) {
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
	failed := func(err error) error {
		if bounded && isLockTimeout(err) {
			return errGaveWay
		}
		return classify(fmt.Errorf("%s %d rows of %s: %w", gerund(g.Op), len(g.Messages), e.Name, err))
	}
	q.Queue(s.groupSQL(g, cols), args...).Query(func(rows pgx.Rows) error {
		if g.Op.Conditional() {
			// The statement lists the rows that did not apply, by their
			// ordinals, with their outcomes.
			var ord int64
			var o pipeline.Outcome
			_, err := pgx.ForEachRow(rows, []any{&ord, &o}, func() error {
				skipped(g.Messages[ord-1], o)
				return nil
			})
			if err != nil {
				return failed(err)
			}
			return nil
		}
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
			return failed(err)
		}
		if e.Versioned() {
			for i, m := range g.Messages {
				if listed[i] == (g.Op == pipeline.OpDelete) {
					skipped(m, pipeline.OutcomeStale)
				}
			}
		}
		return nil
	})
	return written, nil
}

// lockedEntities are the entities a batch writes with more than one
// statement (a delete and an upsert, upserts of different columns,
// generations), whose rows it locks before any of them runs (queueLocks).
// Each statement takes its own rows in key order, but two batches'
// statements, one after the other, would not: one batch's delete holding a
// row another's upsert waits for, while that one's delete holds a row the
// first one's upsert waits for, is a deadlock PostgreSQL breaks only after
// deadlock_timeout, failing a batch. Locked first, in one order, the
// second batch waits for the first. Inserts alone lock nothing (ON
// CONFLICT DO NOTHING), and a role that may only insert may not lock: an
// entity only inserted is left to them.
func lockedEntities(groups []pipeline.Group) map[*pipeline.Entity]bool {
	count := map[*pipeline.Entity]int{}
	locking := map[*pipeline.Entity]bool{}
	for _, g := range groups {
		count[g.Entity]++
		locking[g.Entity] = locking[g.Entity] || g.Op != pipeline.OpInsert
	}
	locked := map[*pipeline.Entity]bool{}
	for e, n := range count {
		if n > 1 && locking[e] {
			locked[e] = true
		}
	}
	return locked
}

// queueLocks queues, for each of the locked entities, one statement that
// locks its existing rows of all the batch's groups in key order. Rows
// that do not exist yet are not locked (inserting them takes the unique
// index's order), nor are rows another transaction commits after the
// lock: with more than two batches at once a cycle through one of those
// remains possible, which the batch breaks by giving way (lockedWaitTimeout,
// queueLockTimeout). written holds each group's keys.
func (s *Store) queueLocks(q *pgx.Batch, groups []pipeline.Group, written []keys, locked map[*pipeline.Entity]bool) {
	byEntity := map[*pipeline.Entity][]int{}
	var entities []*pipeline.Entity
	for i, g := range groups {
		if !locked[g.Entity] {
			continue
		}
		if _, ok := byEntity[g.Entity]; !ok {
			entities = append(entities, g.Entity)
		}
		byEntity[g.Entity] = append(byEntity[g.Entity], i)
	}
	// In the entities' order, as their groups run.
	slices.SortFunc(entities, func(a, b *pipeline.Entity) int { return strings.Compare(a.Name, b.Name) })
	for _, e := range entities {
		idx := byEntity[e]
		args := make([]any, len(e.Key))
		var n int // rows to lock
		for c := range e.Key {
			var col texts
			for _, i := range idx {
				col = append(col, written[i].cols[c]...)
			}
			args[c], n = col, len(col)
		}
		q.Queue(s.lockSQL(e), args...).QueryRow(func(row pgx.Row) error {
			var count int64
			if err := row.Scan(&count); err != nil {
				return classify(fmt.Errorf("locking %d rows of %s: %w", n, e.Name, err))
			}
			return nil
		})
	}
}

// queueLockTimeout bounds the lock waits of the statements queued after it
// to lockedWaitTimeout (on), or gives them the session's bound back (off),
// for the rest of the transaction. The groups of a locked entity run
// bounded: their rows locked, what they can still wait for is mostly a key
// another batch committed or inserted since, the one way left for them
// into a cycle PostgreSQL would break only after deadlock_timeout; a wait
// past the bound makes the batch give way (errGaveWay).
func queueLockTimeout(q *pgx.Batch, on bool) {
	if on {
		q.Queue(`SELECT set_config('lock_timeout', $1, true)`, lockedWaitTimeout)
		return
	}
	q.Queue(`SET LOCAL lock_timeout TO DEFAULT`)
}

func (s *Store) lockSQL(e *pipeline.Entity) string {
	return s.entitySQL(e, "lock", func() string {
		in := keyInput(e)
		return fmt.Sprintf(`SELECT count(*) FROM (SELECT 1 FROM %s t JOIN (SELECT %s FROM unnest(%s) AS u(%s)) v ON %s
			ORDER BY %s FOR UPDATE OF t) l`,
			table(e), strings.Join(in.casts, ", "), strings.Join(in.params, ", "), strings.Join(in.aliases, ", "),
			strings.Join(in.join, " AND "), strings.Join(in.order, ", "))
	})
}

// entitySQL returns the statement of the given kind for the entity's
// current definition, built once.
func (s *Store) entitySQL(e *pipeline.Entity, kind string, build func() string) string {
	sig := e.Name + "\x00" + strconv.FormatUint(e.Generation, 10) + "\x00" + kind
	if sql, ok := s.sqlCache.Get(sig); ok {
		return sql
	}
	sql := build()
	s.sqlCache.Add(sig, sql)
	return sql
}

// keyInputSQL is the SQL of a statement whose input is an entity's keys,
// one text array a key column ($1, $2, … in the order of Entity.Key),
// unnested as u(a0, a1, …) and cast to the columns' types as v.a0, v.a1, …:
// the parameters, aliases and casts, the join of the target t to v, and
// the key order.
type keyInputSQL struct {
	params, aliases, casts, join, order []string
}

func keyInput(e *pipeline.Entity) keyInputSQL {
	var in keyInputSQL
	for i, k := range e.Key {
		a := fmt.Sprintf("a%d", i)
		in.aliases = append(in.aliases, a)
		in.params = append(in.params, fmt.Sprintf("$%d::text[]", i+1))
		in.casts = append(in.casts, fmt.Sprintf("u.%s::%s AS %s", a, castType(e.Columns[k]), a))
		in.join = append(in.join, fmt.Sprintf("t.%s = v.%s", ident(k), a))
		in.order = append(in.order, "v."+a)
	}
	return in
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
// rows (upsert) or of the stale ones (delete); inserts and updates return
// the ordinals of the rows that did not apply, with their outcome.
func (s *Store) groupSQL(g *pipeline.Group, cols []string) string {
	// The statement depends on the entity (as the catalog last read it),
	// op and columns, not the group's generation.
	sig := g.Entity.Name + "\x00" + strconv.FormatUint(g.Entity.Generation, 10) + "\x00" + string(g.Op) + "\x00" + strings.Join(g.Columns, "\x00")
	if sql, ok := s.sqlCache.Get(sig); ok {
		return sql
	}
	e := g.Entity
	tbl := table(e)
	var aliases, params, casts, keyJoin, keyOrder, lockedJoin, writtenJoin []string
	for i, c := range cols {
		a := fmt.Sprintf("a%d", i)
		aliases = append(aliases, a)
		params = append(params, fmt.Sprintf("$%d::text[]", i+1))
		casts = append(casts, fmt.Sprintf("u.%s::%s AS %s", a, castType(e.Columns[c]), a))
		if i < len(e.Key) {
			keyJoin = append(keyJoin, fmt.Sprintf("t.%s = v.%s", ident(c), a))
			keyOrder = append(keyOrder, "v."+a)
			lockedJoin = append(lockedJoin, fmt.Sprintf("t.%s = l.%s", ident(c), a))
			writtenJoin = append(writtenJoin, fmt.Sprintf("w.%s = v.%s", ident(c), a))
		}
	}
	targetCols := idents(cols)
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
		targetCols = append(targetCols, ident(e.VersionColumn))
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
	keyCols := join(idents(e.Key), ", ")

	var sql string
	switch {
	case g.Op == pipeline.OpDelete && e.Versioned():
		// The statement's snapshot is from before it, and a row or a
		// tombstone another batch commits while this one waits for its
		// lock is not in it; so staleness is told from what the statement
		// locked, which is current. A delete locks its rows in key order
		// (as an upsert takes them, so that batches wait for each other
		// instead of deadlocking) and deletes those the guard lets
		// through: one it locked and did not delete holds a version at
		// least as new. Its tombstone is written unless one at least as
		// new is there (INSERT … ON CONFLICT waits for, and sees, the
		// newest): one not written means a newer delete. Either is stale
		// (TestDeleteWaitingOnANewerWriteIsStale).
		sql = fmt.Sprintf(`WITH v AS (%s),
			l AS (SELECT v.* FROM %s t JOIN v ON %s ORDER BY %s FOR UPDATE OF t),
			d AS (DELETE FROM %s t USING l WHERE %s AND t.%s < l.ver RETURNING l.spool_ord),
			ts AS (INSERT INTO spool_tombstones AS x (target, key, version)
				SELECT %s, v.spool_key, v.ver FROM v ORDER BY v.spool_key
				ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, deleted_at = now()
				WHERE x.version < EXCLUDED.version
				RETURNING x.key)
			SELECT v.spool_ord FROM v
			WHERE (v.spool_ord IN (SELECT spool_ord FROM l) AND v.spool_ord NOT IN (SELECT spool_ord FROM d))
				OR NOT EXISTS (SELECT 1 FROM ts WHERE ts.key = v.spool_key)`,
			input, tbl, strings.Join(keyJoin, " AND "), strings.Join(keyOrder, ", "),
			tbl, strings.Join(lockedJoin, " AND "), ident(e.VersionColumn), target)
	case g.Op == pipeline.OpDelete:
		sql = fmt.Sprintf(`WITH v AS (%s) DELETE FROM %s t USING v WHERE %s`,
			input, tbl, strings.Join(keyJoin, " AND "))
	case g.Op.Conditional():
		// Both list the rows that did not apply with their outcome: stale
		// where a row or a tombstone at least as new was there, else
		// exists (insert) or missing (update). The final SELECT reads the
		// snapshot from before the statement: a row another batch inserts
		// meanwhile (one it waited for) is not in it, so an insert that
		// conflicts with it is told exists even where its version is not
		// newer; an update reads what it locked instead, which is current.
		if g.Op == pipeline.OpInsert {
			newer := "false"
			if e.Versioned() {
				newer = fmt.Sprintf("EXISTS (SELECT 1 FROM %s t WHERE %s AND t.%s >= v.ver) OR %s",
					tbl, strings.Join(keyJoin, " AND "), ident(e.VersionColumn), tombstoned)
			}
			returning := idents(e.Key)
			for i, k := range returning {
				returning[i] = "t." + k
			}
			sql = fmt.Sprintf(`WITH v AS (%s),
			w AS (INSERT INTO %s AS t (%s) SELECT %s FROM v WHERE NOT %s ORDER BY %s ON CONFLICT (%s) DO NOTHING RETURNING %s)
			SELECT v.spool_ord, CASE WHEN %s THEN 'stale' ELSE 'exists' END FROM v
			WHERE NOT EXISTS (SELECT 1 FROM w WHERE %s)`,
				input, tbl, join(targetCols, ", "), strings.Join(values, ", "), tombstoned,
				strings.Join(keyOrder, ", "), keyCols, join(returning, ", "),
				newer, strings.Join(writtenJoin, " AND "))
			break
		}
		// An update locks its rows in key order first, as an upsert takes
		// them, so that concurrent batches wait for each other instead of
		// deadlocking; a row it locked and the guard let through is
		// updated, one it locked and the guard stopped is stale. With
		// nothing to set (the key alone, unversioned), the lock is the
		// whole update.
		var set []string
		for i, c := range targetCols[len(e.Key):] {
			set = append(set, fmt.Sprintf("%s = l.%s", c, aliases[len(e.Key)+i]))
		}
		written := "SELECT l.spool_ord FROM l"
		if len(set) > 0 {
			guard := ""
			if e.Versioned() {
				guard = fmt.Sprintf(" AND t.%s < l.ver", ident(e.VersionColumn))
			}
			written = fmt.Sprintf("UPDATE %s t SET %s FROM l WHERE %s%s RETURNING l.spool_ord",
				tbl, strings.Join(set, ", "), strings.Join(lockedJoin, " AND "), guard)
		}
		stale := "false"
		if e.Versioned() {
			stale = "v.spool_ord IN (SELECT spool_ord FROM l) OR " + tombstoned
		}
		sql = fmt.Sprintf(`WITH v AS (%s),
			l AS (SELECT v.* FROM %s t JOIN v ON %s ORDER BY %s FOR UPDATE OF t),
			w AS (%s)
			SELECT v.spool_ord, CASE WHEN %s THEN 'stale' ELSE 'missing' END FROM v
			WHERE v.spool_ord NOT IN (SELECT spool_ord FROM w)`,
			input, tbl, strings.Join(keyJoin, " AND "), strings.Join(keyOrder, ", "), written, stale)
	default:
		var set []string
		for _, c := range targetCols[len(e.Key):] {
			set = append(set, fmt.Sprintf("%s = EXCLUDED.%s", c, c))
		}
		onConflict := "DO NOTHING"
		if len(set) > 0 {
			onConflict = "DO UPDATE SET " + strings.Join(set, ", ")
			if e.Versioned() {
				onConflict += fmt.Sprintf(" WHERE t.%s < EXCLUDED.%s", ident(e.VersionColumn), ident(e.VersionColumn))
			}
		}
		// ORDER BY key takes row locks in one order across workers.
		insert := fmt.Sprintf(`INSERT INTO %s AS t (%s) SELECT %s FROM v WHERE NOT %s ORDER BY %s ON CONFLICT (%s) %s`,
			tbl, join(targetCols, ", "), strings.Join(values, ", "), tombstoned,
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
				ret = append(ret, fmt.Sprintf("t.%s::text", ident(k)))
			}
			sql = fmt.Sprintf(`WITH v AS (%s) %s RETURNING %s`, input, insert, strings.Join(ret, ", "))
			break
		}
		var retJoin []string
		for i, k := range e.Key {
			retJoin = append(retJoin, fmt.Sprintf("w.%s = v.a%d", ident(k), i))
		}
		returning := idents(e.Key)
		for i, k := range returning {
			returning[i] = "t." + k
		}
		sql = fmt.Sprintf(`WITH v AS (%s), w AS (%s RETURNING %s)
			SELECT v.spool_ord FROM v JOIN w ON %s`,
			input, insert, join(returning, ", "), strings.Join(retJoin, " AND "))
	}
	s.sqlCache.Add(sig, sql)
	return sql
}

// tombstoneKey is the SQL expression naming a row in spool_tombstones: a
// JSON array of the key values cast to their column types and printed by
// PostgreSQL, so that every spelling of one value ('ABC…' and 'abc…' for a
// uuid, 1.0 and 1 for a numeric) names the same row. prefix qualifies the
// unnest aliases a0, a1, ….
func tombstoneKey(e *pipeline.Entity, prefix string) string {
	parts := make([]string, len(e.Key))
	for i, k := range e.Key {
		parts[i] = fmt.Sprintf("(%sa%d::%s)::text", prefix, i, columnType(e.Columns[k]))
	}
	return "json_build_array(" + strings.Join(parts, ", ") + ")::text"
}

func gerund(op pipeline.Op) string {
	switch op {
	case pipeline.OpDelete:
		return "deleting"
	case pipeline.OpInsert:
		return "inserting"
	case pipeline.OpUpdate:
		return "updating"
	}
	return "upserting"
}

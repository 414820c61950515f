package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// repair deletes rows of the given keys (as made by KeyOf or read from
// spool_tombstones) that are older than their key's tombstone. Under READ
// COMMITTED a delete and an older upsert of one key, committing
// concurrently, can each miss the other's write; run after each commit, the
// later of the two repairs what both missed.
//
// It works repairChunk keys at a time, so that a sweep over every
// tombstone is many bounded statements, and leaves out (with a warning) a
// key that no longer parses as the entity's key (its type changed since
// the tombstone), so that one old tombstone cannot stop every repair.
func (s *Store) repair(ctx context.Context, e *pipeline.Entity, ks []string) error {
	for len(ks) > 0 {
		chunk := ks[:min(len(ks), repairChunk)]
		ks = ks[len(chunk):]
		k, err := parseKeys(e, chunk)
		if err != nil {
			var good []string
			for _, key := range chunk {
				if _, err := parseKeys(e, []string{key}); err == nil {
					good = append(good, key)
				}
			}
			s.logger.Warn("left out of a repair: tombstone keys that are not keys of the entity now", "entity", e.Name,
				"keys", len(chunk)-len(good), "error", err)
			if k, err = parseKeys(e, good); err != nil {
				return err
			}
		}
		var q pgx.Batch
		if s.queueRepair(&q, k); q.Len() == 0 {
			continue
		}
		if err := s.pool.SendBatch(ctx, &q).Close(); err != nil {
			return classify(fmt.Errorf("repairing %d keys of %s: %w", len(chunk), e.Name, err))
		}
	}
	return nil
}

// repairChunk bounds the keys of one repair statement.
const repairChunk = 10000

// repairable tells whether k has a repair to run: keys of a versioned
// entity (only those have tombstones).
func (k keys) repairable() bool {
	return k.entity.Versioned() && len(k.cols) > 0 && len(k.cols[0]) > 0
}

// repairsPending tells whether any of a batch's repairs has a statement
// (queueRepair): the batch then marks its jobs as waiting for it.
func repairsPending(repairs []keys) bool {
	return slices.ContainsFunc(repairs, keys.repairable)
}

// queueRepair queues repair's statement, for versioned entities only.
func (s *Store) queueRepair(q *pgx.Batch, k keys) {
	if !k.repairable() {
		return
	}
	e := k.entity
	args := make([]any, 0, len(k.cols)+2)
	for _, c := range k.cols {
		args = append(args, c)
	}
	args = append(args, e.QualifiedName())
	if k.snapshot != "" {
		args = append(args, k.snapshot, k.xid)
	}
	q.Queue(s.repairSQL(e, k.snapshot != ""), args...)
}

// repairSQL is the repair of an entity's keys. The uncorrelated EXISTS
// runs once: a target without tombstones (no delete yet, or all swept)
// costs no key computed or probed. After a batch's commit, the keys its
// upserts, inserts and updates wrote are repaired only if a delete of
// another transaction, which the snapshot taken before those statements
// could not see, has committed since (gated: the snapshot and the batch's
// transaction id are the last parameters; its own deletes are ordered with
// its other statements, not racing them): a delete they could
// see was in the tombstone check of their statements already, and one
// that commits after this repair finds the rows in its own repair (the
// later of the two repairs, as above). What the snapshot could not see
// started at or after its xmax or was running then (its xip list), so
// the look-up reads spool_delete_log from the xmax on and at each of
// those ids: a few recent rows, however old the snapshot's xmin (a long
// writing transaction anywhere holds it back; reading from it, the
// look-up read every delete logged since). A delete's own keys are
// repaired without the gate: what it may have missed is an upsert, which
// logs nothing.
func (s *Store) repairSQL(e *pipeline.Entity, gated bool) string {
	kind, gate := "repair", ""
	n := len(e.Key)
	if gated {
		kind = "repair-gated"
		gate = fmt.Sprintf(`
				AND (EXISTS (SELECT 1 FROM spool_delete_log l WHERE l.target = $%[1]d
						AND l.xid >= pg_snapshot_xmax($%[2]d::pg_snapshot) AND l.xid <> $%[3]d::xid8)
					OR EXISTS (SELECT 1 FROM spool_delete_log l WHERE l.target = $%[1]d
						AND l.xid = ANY (ARRAY(SELECT pg_snapshot_xip($%[2]d::pg_snapshot))) AND l.xid <> $%[3]d::xid8))`,
			n+1, n+2, n+3)
	}
	return s.entitySQL(e, kind, func() string {
		in := keyInput(e)
		return fmt.Sprintf(`WITH v AS (SELECT %s, %s AS spool_key FROM unnest(%s) AS u(%s)
				WHERE EXISTS (SELECT 1 FROM spool_tombstones WHERE target = $%[5]d)%[9]s)
			DELETE FROM %[6]s t USING v, spool_tombstones x
			WHERE x.target = $%[5]d AND x.key = v.spool_key AND %[7]s AND t.%[8]s < x.version`,
			strings.Join(in.casts, ", "), tombstoneKey(e, "u."), strings.Join(in.params, ", "), strings.Join(in.aliases, ", "),
			n+1, table(e), strings.Join(in.join, " AND "), ident(e.VersionColumn), gate)
	})
}

// RepairSince repairs the keys of tombstones written since the given
// database time, catching a processor that died (or a database that was
// away) between a commit and its repair. It returns the database time it
// started at: the next call passes that, less a margin, so that no
// tombstone falls between two calls however long one of them was delayed.
//
// A batch whose own repair did not run left its mark in
// spool_repairs_pending, which keeps its jobs from completing. Marks older
// than pendingGrace (younger ones are most likely being repaired by their
// batch) make this call repair the keys of every tombstone, whenever
// written, and then remove them: each was committed before the tombstones
// were read, so its rows are among those repaired.
func (s *Store) RepairSince(ctx context.Context, since time.Time) (time.Time, error) {
	var groups, topics []string
	var partitions []int32
	var offsets []int64
	rows, err := s.pool.Query(ctx, `SELECT consumer_group, topic, partition, next_offset FROM spool_repairs_pending
		WHERE created_at < now() - $1::interval`, pendingGrace)
	if err != nil {
		return since, classify(fmt.Errorf("reading pending repairs: %w", err))
	}
	var group, topic string
	var partition int32
	var offset int64
	_, err = pgx.ForEachRow(rows, []any{&group, &topic, &partition, &offset}, func() error {
		groups, topics, partitions, offsets = append(groups, group), append(topics, topic), append(partitions, partition), append(offsets, offset)
		return nil
	})
	if err != nil {
		return since, classify(fmt.Errorf("reading pending repairs: %w", err))
	}
	if len(offsets) > 0 {
		s.logger.Warn("batches' repairs did not run after their commits; repairing the rows behind every tombstone", "batches", len(offsets))
		since = time.Time{}
	}
	started, err := s.repairSince(ctx, since)
	if err != nil || len(offsets) == 0 {
		return started, err
	}
	_, err = s.pool.Exec(ctx, `DELETE FROM spool_repairs_pending
		WHERE (consumer_group, topic, partition, next_offset) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[]))`,
		groups, topics, partitions, offsets)
	if err != nil {
		return since, classify(fmt.Errorf("clearing pending repairs: %w", err))
	}
	return started, nil
}

// pendingGrace is how long a batch's mark in spool_repairs_pending is left
// to the repair that follows its commit (afterCommitTimeout, and the
// commit's own wait) before RepairSince takes it over.
const pendingGrace = 30 * time.Second

func (s *Store) repairSince(ctx context.Context, since time.Time) (time.Time, error) {
	es := s.catalog.Entities()
	byTarget := make(map[string]*pipeline.Entity, len(es))
	for _, e := range es {
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

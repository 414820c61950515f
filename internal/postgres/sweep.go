package postgres

import (
	"context"
	"fmt"
	"time"
)

// sweepBatch bounds one sweep statement, so that no sweep holds many row
// locks or a long transaction.
const sweepBatch = 5000

// SweepLedger forgets command ids claimed longer ago than window, and
// tombstones (and the deletes' log) older than it, in small autocommitted batches. Several
// processors may sweep at once: SKIP LOCKED keeps them out of each other's
// way. It returns how many ledger rows and tombstones it removed.
func (s *Store) SweepLedger(ctx context.Context, window time.Duration) (ids, tombstones int64, err error) {
	ids, err = s.sweep(ctx, `DELETE FROM spool_ledger WHERE ctid = ANY (ARRAY(
		SELECT ctid FROM spool_ledger WHERE claimed_at < now() - $1::interval LIMIT $2 FOR UPDATE SKIP LOCKED))`, window)
	if err != nil {
		return ids, 0, fmt.Errorf("sweeping the ledger: %w", err)
	}
	tombstones, err = s.sweep(ctx, `DELETE FROM spool_tombstones WHERE ctid = ANY (ARRAY(
		SELECT ctid FROM spool_tombstones WHERE deleted_at < now() - $1::interval LIMIT $2 FOR UPDATE SKIP LOCKED))`, window)
	if err != nil {
		return ids, tombstones, fmt.Errorf("sweeping tombstones: %w", err)
	}
	// The deletes' log goes with their tombstones.
	if _, err = s.sweep(ctx, `DELETE FROM spool_delete_log WHERE ctid = ANY (ARRAY(
		SELECT ctid FROM spool_delete_log WHERE logged_at < now() - $1::interval LIMIT $2 FOR UPDATE SKIP LOCKED))`, window); err != nil {
		return ids, tombstones, fmt.Errorf("sweeping the deletes' log: %w", err)
	}
	return ids, tombstones, nil
}

func (s *Store) sweep(ctx context.Context, sql string, window time.Duration) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, sql, window, sweepBatch)
		if err != nil {
			return total, classify(err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < sweepBatch {
			return total, nil
		}
	}
}

// LedgerRows is PostgreSQL's estimate of the ledger's rows, as of its last
// ANALYZE: cheap at any size, unlike count(*).
func (s *Store) LedgerRows(ctx context.Context) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'spool_ledger'::regclass`).Scan(&n)
	if err != nil {
		return 0, classify(fmt.Errorf("estimating the ledger's size: %w", err))
	}
	return n, nil
}

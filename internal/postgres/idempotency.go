package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// UploadLease is how long an upload in flight (its idempotency key, its
// job) may go without a heartbeat from its ingress before it counts as
// abandoned: its ingress died. Another request may then take the key over,
// and the job is marked failed.
//
// Ten seconds is five missed heartbeats (httpapi's, every 2 s): a client
// resending after its ingress died waits that long for the key, not half
// a minute, while a live upload keeps its key through a database away for
// several seconds.
const UploadLease = 10 * time.Second

// ClaimIdempotencyKey claims a tenant's key for a new request. It returns
// owned when this request should run (the key was new, expired past window,
// or abandoned by a dead owner); otherwise the stored record: in flight, or
// done with the first request's fingerprint and answer.
func (s *Store) ClaimIdempotencyKey(ctx context.Context, tenant, key string, window time.Duration) (owned bool, rec *pipeline.IdempotentRecord, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM spool_idempotency_keys
			WHERE tenant = $1 AND key = $2 AND state = 'done' AND created_at < now() - $3::interval`, tenant, key, window); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO spool_idempotency_keys (tenant, key, state) VALUES ($1, $2, 'in_flight')
			ON CONFLICT DO NOTHING`, tenant, key)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			owned = true
			return nil
		}
		tag, err = tx.Exec(ctx, `UPDATE spool_idempotency_keys SET updated_at = now(), created_at = now()
			WHERE tenant = $1 AND key = $2 AND state = 'in_flight' AND updated_at < now() - $3::interval`,
			tenant, key, UploadLease)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			owned = true
			return nil
		}
		var r pipeline.IdempotentRecord
		var state string
		var status *int32
		var location *string
		var leaseLeftMs float64
		err = tx.QueryRow(ctx, `SELECT state, fingerprint, status, location, body,
				greatest(extract(epoch FROM updated_at + $3::interval - now()) * 1000, 0)
			FROM spool_idempotency_keys
			WHERE tenant = $1 AND key = $2`, tenant, key, UploadLease).Scan(&state, &r.Fingerprint, &status, &location, &r.Body, &leaseLeftMs)
		if errors.Is(err, pgx.ErrNoRows) {
			return pipeline.Errorf(pipeline.ClassTransient, "idempotency key %q vanished while claiming it", key)
		}
		if err != nil {
			return err
		}
		r.InFlight = state == "in_flight"
		r.LeaseLeft = time.Duration(leaseLeftMs) * time.Millisecond
		if status != nil {
			r.Status = int(*status)
		}
		if location != nil {
			r.Location = *location
		}
		rec = &r
		return nil
	})
	if err != nil {
		return false, nil, classify(fmt.Errorf("claiming idempotency key: %w", err))
	}
	return owned, rec, nil
}

// HeartbeatIdempotencyKey keeps an owned in-flight key from being taken
// over while its request still streams.
func (s *Store) HeartbeatIdempotencyKey(ctx context.Context, tenant, key string) error {
	_, err := s.pool.Exec(ctx, `UPDATE spool_idempotency_keys SET updated_at = now()
		WHERE tenant = $1 AND key = $2 AND state = 'in_flight'`, tenant, key)
	return classify(err)
}

// FinishIdempotencyKey stores the owner's fingerprint and answer, or, given
// nil, releases the key (a 5xx answer is not stored, so a retry runs anew).
func (s *Store) FinishIdempotencyKey(ctx context.Context, tenant, key string, rec *pipeline.IdempotentRecord) error {
	var err error
	if rec == nil {
		_, err = s.pool.Exec(ctx, `DELETE FROM spool_idempotency_keys WHERE tenant = $1 AND key = $2 AND state = 'in_flight'`, tenant, key)
	} else {
		_, err = s.pool.Exec(ctx, `UPDATE spool_idempotency_keys
			SET state = 'done', fingerprint = $3, status = $4, location = $5, body = $6, updated_at = now()
			WHERE tenant = $1 AND key = $2`, tenant, key, rec.Fingerprint, rec.Status, rec.Location, rec.Body)
	}
	if err != nil {
		return classify(fmt.Errorf("finishing idempotency key: %w", err))
	}
	return nil
}

// SweepIdempotencyKeys forgets keys older than window, in small batches.
func (s *Store) SweepIdempotencyKeys(ctx context.Context, window time.Duration) (int64, error) {
	n, err := s.sweep(ctx, `DELETE FROM spool_idempotency_keys WHERE ctid = ANY (ARRAY(
		SELECT ctid FROM spool_idempotency_keys WHERE created_at < now() - $1::interval AND state = 'done'
		LIMIT $2 FOR UPDATE SKIP LOCKED))`, window)
	if err != nil {
		return n, fmt.Errorf("sweeping idempotency keys: %w", err)
	}
	return n, nil
}

package postgres

import (
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/spoolhq/spool/pipeline"
)

// claim is a batch's ledger claim: once the claim's answer is read, what
// the ledger knew of the candidates it did not insert (it inserted every
// other).
type claim struct {
	known map[*pipeline.Message]ledgerEntry
}

// ledgerEntry is what the ledger knows of an id claimed before.
type ledgerEntry struct {
	hash   []byte
	origin *int64
}

// queueClaim queues the claim of the candidates' ids in the ledger: each id
// is looked up in the ledger's primary key, and those it does not hold are
// inserted by a plain INSERT; the answer is one row per id the ledger held,
// with its claim, not one per command.
//
// A plain INSERT, not INSERT … ON CONFLICT DO NOTHING: that one checks the
// index for a conflict before each insert, and takes a speculative
// insertion's lock and writes a WAL record confirming it for each row it
// inserts; the look-up and a plain INSERT cost less (docs/benchmarks.md,
// "The ledger claim without ON CONFLICT"). An id another transaction
// claims after the look-up's snapshot, which the look-up cannot see (a
// partition changing hands, or the id re-sent with another key and so
// placed in another partition), fails the insert with a unique violation: a
// transient error, whose retry finds the claim (errClaimedMeanwhile).
// Under ON CONFLICT it would have failed the batch as well, neither
// inserted nor found.
//
// The look-up is a scalar subquery, which PostgreSQL runs once per id.
// The path it takes is the planner's choice, made from the ledger's
// statistics, which lag a growing ledger until it is analyzed again; a
// plan cached from a smaller ledger would scan all of it for each id
// (seconds a batch). So
// the claim is planned for each batch (plan_cache_mode force_custom_plan,
// for it alone), which sizes the table as it is, and its LIMIT 1 makes the
// look-up a plain index scan, whose start costs least, where a ledger
// grown since its statistics made it a bitmap scan per id, twice the
// look-up's cost. Inserts in the index's order take its locks in one
// order, so that two batches claiming overlapping ids wait for each other
// instead of deadlocking.
func queueClaim(q *pgx.Batch, candidates []*pipeline.Message) *claim {
	c := &claim{known: map[*pipeline.Message]ledgerEntry{}}
	if len(candidates) == 0 {
		return c
	}
	n := len(candidates)
	tenants, ids, hashes, origins := make(texts, n), make(texts, n), make(byteas, n), make(int8s, n)
	hashSlices, sums := make([][]byte, n), make([]int64, n)
	byKey := make(map[pipeline.Key]*pipeline.Message, n)
	for i, m := range candidates {
		tenants[i], ids[i] = &m.Tenant, (*string)(&m.Command.ID)
		hashSlices[i], hashes[i] = m.Hash[:], &hashSlices[i]
		if o, ok := m.Origin(); ok {
			sums[i], origins[i] = o.Sum(), &sums[i]
		}
		byKey[pipeline.Key{Tenant: m.Tenant, ID: m.Command.ID}] = m
	}
	q.Queue(`SELECT set_config('plan_cache_mode', 'force_custom_plan', true)`)
	q.Queue(`
		WITH u AS (
			SELECT u.t, u.id, u.h, u.o, (SELECT l FROM spool_ledger l WHERE l.command_id = u.id AND l.tenant = u.t LIMIT 1) AS known
			FROM (SELECT t COLLATE "C" AS t, id COLLATE "C" AS id, h, o
				FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[]) AS u(t, id, h, o)) u),
		ins AS (
			INSERT INTO spool_ledger (tenant, command_id, payload_hash, origin)
			SELECT t, id, h, o FROM u WHERE (known).claimed_at IS NULL ORDER BY t, id)
		SELECT t, id, (known).payload_hash, (known).origin FROM u WHERE (known).claimed_at IS NOT NULL`,
		tenants, ids, hashes, origins).Query(func(rows pgx.Rows) error {
		var tenant, id string
		var e ledgerEntry
		_, err := pgx.ForEachRow(rows, []any{&tenant, &id, &e.hash, &e.origin}, func() error {
			c.known[byKey[pipeline.Key{Tenant: tenant, ID: pipeline.CommandID(id)}]] = e // pgx scans each row's hash and origin into new memory
			return nil
		})
		if isUniqueViolation(err) {
			return fmt.Errorf("%w: %w", errClaimedMeanwhile, err)
		}
		return err
	})
	q.Queue(`SET LOCAL plan_cache_mode TO DEFAULT`)
	return c
}

// errClaimedMeanwhile is a claim that met, at its insert, a claim of one of
// its ids that another transaction committed after the claim's look-up,
// or while the claim waited for it: the batch is retried, and its retry
// settles against that claim.
var errClaimedMeanwhile = pipeline.Errorf(pipeline.ClassTransient, "a command id was claimed by another transaction while the batch ran")

// settleRepeats settles the candidates the ledger knew, and their repeats
// in the batch, against the ledger's claim: another payload is a conflict,
// the claiming record itself redelivered, anything else a duplicate.
func (c *claim) settleRepeats(repeats map[*pipeline.Message][]*pipeline.Message, set func(*pipeline.Message, pipeline.Outcome)) {
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
}

// queueRedeliveries queues the turning into redelivered of the duplicates,
// conflicts and dead letters whose origin already has that outcome, or had
// a dead letter a replay moved: records Kafka delivered again after an
// earlier batch counted them. Failures are remembered per
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
				WHERE f.job_id = b.job_id AND f.idx = b.idx AND f.outcome = b.outcome))
		   OR EXISTS (SELECT 1 FROM spool_job_replays p WHERE p.job_id = b.job_id AND p.idx = b.idx)`, jobs, idx, outs).Query(markRedelivered(outcomes, at, "looking for redelivered records"))
}

// queueAbortedRedeliveries queues the turning into redelivered of the
// aborted commands that are records Kafka delivered again: their place
// was counted when they first came (applied or stale by the ledger's
// origin, conflict or dead-lettered by a failure row, moved by a replay,
// duplicate or aborted by spool_job_repeats, where each aborted command's
// place is remembered).
func queueAbortedRedeliveries(q *pgx.Batch, b *pipeline.Batch, outcomes []pipeline.Outcome) {
	var jobs, tenants, ids []string
	var idx, origins []int64
	at := map[pipeline.Origin]int{}
	for i, m := range b.Messages {
		o, ok := m.Origin()
		if !ok || outcomes[i] != pipeline.OutcomeAborted {
			continue
		}
		jobs, idx, origins = append(jobs, string(o.Job)), append(idx, o.Index), append(origins, o.Sum())
		tenants, ids = append(tenants, m.Tenant), append(ids, string(m.Command.ID))
		at[o] = i
	}
	if len(jobs) == 0 {
		return
	}
	q.Queue(`
		WITH a AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
			AS a(job_id, idx, tenant, command_id, origin)),
		counted AS (
			SELECT a.job_id, a.idx FROM a
			WHERE EXISTS (SELECT 1 FROM spool_job_failures f WHERE f.job_id = a.job_id AND f.idx = a.idx)
			   OR EXISTS (SELECT 1 FROM spool_job_replays p WHERE p.job_id = a.job_id AND p.idx = a.idx)
			   OR EXISTS (SELECT 1 FROM spool_ledger l
					WHERE l.tenant = a.tenant COLLATE "C" AND l.command_id = a.command_id COLLATE "C" AND l.origin = a.origin)),
		fresh AS (
			INSERT INTO spool_job_repeats (job_id, idx)
			SELECT job_id, idx FROM a WHERE (job_id, idx) NOT IN (SELECT job_id, idx FROM counted) ORDER BY job_id, idx
			ON CONFLICT DO NOTHING
			RETURNING job_id, idx)
		SELECT a.job_id, a.idx FROM a WHERE (a.job_id, a.idx) NOT IN (SELECT job_id, idx FROM fresh)`,
		jobs, idx, tenants, ids, origins).Query(markRedelivered(outcomes, at, "looking for redelivered aborted records"))
}

// markRedelivered reads the places (job, index) a redelivery check
// returns and turns the outcome of the record at each (at) into
// redelivered.
func markRedelivered(outcomes []pipeline.Outcome, at map[pipeline.Origin]int, what string) func(pgx.Rows) error {
	return func(rows pgx.Rows) error {
		var o pipeline.Origin
		_, err := pgx.ForEachRow(rows, []any{&o.Job, &o.Index}, func() error {
			outcomes[at[o]] = pipeline.OutcomeRedelivered
			return nil
		})
		if err != nil {
			return classify(fmt.Errorf("%s: %w", what, err))
		}
		return nil
	}
}

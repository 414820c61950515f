package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/spoolhq/spool/internal/metrics"
)

// Housekeeping is what the processor's maintenance asks of its store: the
// follow-ups each batch runs after its commit (repair, settle), caught up
// for batches whose processor died first, and the sweeps of expired rows.
type Housekeeping interface {
	// RepairSince repairs the keys of tombstones written since the given
	// database time and returns the database time it started at.
	RepairSince(ctx context.Context, since time.Time) (time.Time, error)
	SettleOpenJobs(ctx context.Context) error
	// AbandonJobs fails uploads whose ingress stopped mid-upload.
	AbandonJobs(ctx context.Context, openTimeout time.Duration) (int64, error)
	SweepLedger(ctx context.Context, window time.Duration) (ids, tombstones int64, err error)
	SweepIdempotencyKeys(ctx context.Context, window time.Duration) (int64, error)
	PruneJobs(ctx context.Context, retention time.Duration) (int64, error)
	LedgerRows(ctx context.Context) (int64, error)
}

// Maintenance is the processor's periodic housekeeping. Every Interval it
// repairs rows behind recent tombstones and then settles open jobs (a job
// settles as completed only once no row of it can still be behind a
// tombstone), and fails abandoned uploads; every SweepEvery intervals it
// sweeps the dedupe ledger and its tombstones, idempotency keys and
// finished jobs past their windows. A failed step is logged and tried
// again at its next turn: nothing here is worth stopping the processor.
type Maintenance struct {
	Store   Housekeeping
	Metrics *metrics.Metrics
	Logger  *slog.Logger

	Interval   time.Duration
	SweepEvery int

	DedupeWindow      time.Duration
	IdempotencyWindow time.Duration
	JobRetention      time.Duration
	// OpenTimeout fails a job in parts left open this long.
	OpenTimeout time.Duration
}

// Run does the housekeeping until ctx is done; it returns nil then.
func (mt *Maintenance) Run(ctx context.Context) error {
	t := time.NewTicker(mt.Interval)
	defer t.Stop()
	// The first repair looks an hour back, to cover a restart; later ones
	// start where the last successful one did, less a margin, so that no
	// tombstone falls between two however long one of them took.
	repairFrom := time.Now().Add(-time.Hour)
	for tick := 0; ; tick++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		repairFrom = mt.settle(ctx, repairFrom)
		if tick%mt.SweepEvery == 0 {
			mt.sweep(ctx)
		}
	}
}

func (mt *Maintenance) settle(ctx context.Context, repairFrom time.Time) time.Time {
	started, err := mt.Store.RepairSince(ctx, repairFrom)
	mt.warn(ctx, "repairing rows behind recent tombstones", err)
	if err == nil {
		repairFrom = started.Add(-time.Minute)
	}
	// Settled whatever the repair did: a job whose batch's repair has not
	// run is marked (spool_repairs_pending) and stays processing, so a
	// failing repair holds back only the jobs that wait for it.
	mt.warn(ctx, "settling open jobs", mt.Store.SettleOpenJobs(ctx))
	abandoned, err := mt.Store.AbandonJobs(ctx, mt.OpenTimeout)
	mt.warn(ctx, "marking abandoned uploads failed", err)
	if abandoned > 0 {
		mt.Logger.Warn("marked failed uploads whose ingress stopped mid-upload, and jobs in parts left open", "jobs", abandoned)
	}
	return repairFrom
}

func (mt *Maintenance) sweep(ctx context.Context) {
	ids, tombstones, err := mt.Store.SweepLedger(ctx, mt.DedupeWindow)
	mt.warn(ctx, "sweeping the dedupe ledger", err)
	if err == nil {
		mt.Metrics.Swept(metrics.SweepLedger, ids)
		mt.Metrics.Swept(metrics.SweepTombstones, tombstones)
	}
	keys, err := mt.Store.SweepIdempotencyKeys(ctx, mt.IdempotencyWindow)
	mt.warn(ctx, "sweeping idempotency keys", err)
	if err == nil {
		mt.Metrics.Swept(metrics.SweepIdempotencyKeys, keys)
	}
	jobs, err := mt.Store.PruneJobs(ctx, mt.JobRetention)
	mt.warn(ctx, "pruning finished jobs", err)
	if err == nil {
		mt.Metrics.Swept(metrics.SweepJobs, jobs)
	}
	if rows, err := mt.Store.LedgerRows(ctx); err == nil {
		mt.Metrics.SetLedgerRows(rows)
	}
}

// warn logs a failed step, unless the failure is the stop itself.
func (mt *Maintenance) warn(ctx context.Context, what string, err error) {
	if err != nil && ctx.Err() == nil {
		mt.Logger.Warn(what, "error", err)
	}
}

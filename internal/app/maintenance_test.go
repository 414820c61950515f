package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/metrics"
)

// TestMaintenanceSchedule: on each interval the repair comes before the
// settle; a failed repair is retried from the same time, and the settle
// runs anyway (a job waiting for a repair is marked, and stays processing); sweeps come every SweepEvery intervals, from the first; the stop
// ends Run at once, with nil.
func TestMaintenanceSchedule(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := &housekeepingLog{failRepair: map[int]bool{1: true}}
		mt := &Maintenance{Store: store, Metrics: metrics.New(metrics.NewRegistry()),
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
			Interval: 5 * time.Second, SweepEvery: 2}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		start := time.Now()
		go func() { done <- mt.Run(ctx) }()
		time.Sleep(4*5*time.Second + time.Second) // four intervals
		synctest.Wait()
		cancel()
		require.NoError(t, <-done)

		require.Equal(t, []string{
			"repair", "settle", "abandon", "sweep ledger", "sweep keys", "prune", "ledger rows",
			"repair (failed)", "settle", "abandon",
			"repair", "settle", "abandon", "sweep ledger", "sweep keys", "prune", "ledger rows",
			"repair", "settle", "abandon",
		}, store.calls)
		hour := start.Add(-time.Hour)
		second := start.Add(5*time.Second - time.Minute) // the first repair's start, less the margin
		require.Equal(t, []time.Time{hour, second, second, start.Add(15*time.Second - time.Minute)}, store.since,
			"a failed repair is retried from where the last good one started")
	})
}

// housekeepingLog records what maintenance asks, in order. RepairSince
// answers the time it was called at, and fails on the calls failRepair
// names (counted from 0).
type housekeepingLog struct {
	mu         sync.Mutex
	calls      []string
	since      []time.Time
	failRepair map[int]bool
}

func (h *housekeepingLog) log(call string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, call)
}

func (h *housekeepingLog) RepairSince(_ context.Context, since time.Time) (time.Time, error) {
	h.mu.Lock()
	n := len(h.since)
	h.since = append(h.since, since)
	h.mu.Unlock()
	if h.failRepair[n] {
		h.log("repair (failed)")
		return since, errors.New("connection refused")
	}
	h.log("repair")
	return time.Now(), nil
}

func (h *housekeepingLog) SettleOpenJobs(context.Context) error { h.log("settle"); return nil }
func (h *housekeepingLog) AbandonJobs(context.Context, time.Duration) (int64, error) {
	h.log("abandon")
	return 0, nil
}

func (h *housekeepingLog) SweepLedger(context.Context, time.Duration) (int64, int64, error) {
	h.log("sweep ledger")
	return 0, 0, nil
}

func (h *housekeepingLog) SweepIdempotencyKeys(context.Context, time.Duration) (int64, error) {
	h.log("sweep keys")
	return 0, nil
}

func (h *housekeepingLog) PruneJobs(context.Context, time.Duration) (int64, error) {
	h.log("prune")
	return 0, nil
}

func (h *housekeepingLog) LedgerRows(context.Context) (int64, error) {
	h.log("ledger rows")
	return 0, nil
}

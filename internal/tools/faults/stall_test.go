package faults

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPartWatch: a partition stalls from the first sample with records
// waiting and its stored offset unmoved, until the offset moves or
// nothing waits.
func TestPartWatch(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	pw := &partWatch{last: -1}
	for _, step := range []struct {
		s         int
		done, end int64
		stalled   time.Duration
	}{
		{0, 10, 20, -1}, // first look: the offset is new
		{1, 10, 20, 0},  // waiting, unmoved: a stall begins
		{5, 10, 25, 4 * time.Second},
		{6, 15, 25, -1}, // moved
		{7, 25, 25, -1}, // caught up
		{9, 25, 25, -1}, // nothing waits: no stall
		{10, 25, 30, 0},
		{12, 25, 30, 2 * time.Second},
	} {
		d, _, ok := pw.observe(at(step.s), step.done, step.end)
		if step.stalled < 0 {
			require.False(t, ok, "at %ds", step.s)
			continue
		}
		require.True(t, ok, "at %ds", step.s)
		require.Equal(t, step.stalled, d, "at %ds", step.s)
	}
}

package faults

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWorkload: the same seed gives the same commands; every command is in
// exactly one upload; repeats copy an earlier good command whole; a tenth
// of the customers commands are deletes; the oracle keeps each key's
// highest good version, and no row where that is a delete.
func TestWorkload(t *testing.T) {
	w := newWorkload(20_000, 700, 5)
	require.Equal(t, w.cmds, newWorkload(20_000, 700, 5).cmds)
	seen := map[int]bool{}
	for _, u := range w.uploads {
		require.LessOrEqual(t, len(u), 700)
		for _, i := range u {
			require.False(t, seen[i])
			seen[i] = true
		}
	}
	require.Len(t, seen, 20_000)
	var poison, reject, repeat int
	for i, c := range w.cmds {
		switch {
		case c.Repeat >= 0:
			repeat++
			orig := w.cmds[c.Repeat]
			require.Less(t, c.Repeat, i)
			require.Equal(t, orig.Line, c.Line)
			require.False(t, orig.Poison || orig.Reject)
		case c.Poison:
			poison++
		case c.Reject:
			reject++
		}
	}
	require.InDelta(t, 20_000*repeatShare, repeat, 100)
	require.InDelta(t, 20_000*poisonShare, poison, 40)
	require.InDelta(t, 20_000*rejectShare, reject, 30)

	custs, _ := w.oracle()
	best := map[string]command{}
	var deletes int
	for _, c := range w.cmds {
		if c.Entity == customers && !c.Poison && !c.Reject {
			if c.Delete && c.Repeat < 0 {
				deletes++
			}
			if c.Version > best[c.Key].Version {
				best[c.Key] = c
			}
		}
	}
	require.InDelta(t, 20_000*0.5*deleteShare, deletes, 150)
	var live int
	for k, c := range best {
		if c.Delete {
			require.NotContains(t, custs, k, "a key whose newest command is a delete has no row")
		} else {
			live++
			require.Equal(t, c.Row, custs[k])
		}
	}
	require.Len(t, custs, live)
	require.Less(t, live, len(best))
}

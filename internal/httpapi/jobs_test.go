package httpapi

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

// TestCountsViewShowsEveryOutcome: the API's counts object names every
// outcome the processor counts, under the outcome's own name, and reads
// back into the same counts.
func TestCountsViewShowsEveryOutcome(t *testing.T) {
	j := &pipeline.Job{Received: 100, Accepted: 90, Rejected: 10}
	for i, o := range pipeline.CountedOutcomes {
		for range i + 1 {
			j.Counts.Add(o)
		}
	}
	v := viewOf(j)
	raw, err := json.Marshal(v.Counts)
	require.NoError(t, err)
	var m map[string]int64
	require.NoError(t, json.Unmarshal(raw, &m))
	for i, o := range pipeline.CountedOutcomes {
		require.EqualValues(t, i+1, m[string(o)], "counts.%s", o)
	}
	require.EqualValues(t, 100, m["received"])
	require.EqualValues(t, 90, m["accepted"])
	require.EqualValues(t, 10, m["rejected"])
	require.Len(t, m, len(pipeline.CountedOutcomes)+3, "counts holds only the outcomes and ingress's three")
	require.Equal(t, j.Counts, v.Counts.Outcomes())
}

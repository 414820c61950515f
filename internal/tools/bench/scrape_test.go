package bench

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/metrics"
)

func TestScrapeBatchesReadsWhatTheProcessorReports(t *testing.T) {
	t.Parallel()
	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	m.BatchWritten(100, 100*time.Millisecond, nil)
	m.BatchWritten(300, 300*time.Millisecond, nil)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	b, err := scrapeBatches(t.Context(), srv.URL)
	require.NoError(t, err)
	require.Equal(t, uint64(2), b.Count)
	require.InDelta(t, 200, b.MeanSize(), 1e-9)
	require.InDelta(t, float64(200*time.Millisecond), float64(b.MeanDuration()), float64(time.Microsecond))
	m.BatchWritten(50, time.Second, nil)
	later, err := scrapeBatches(t.Context(), srv.URL)
	require.NoError(t, err)
	require.Equal(t, Batches{Count: 1, Records: 50, Time: time.Second}, later.Sub(b))
}

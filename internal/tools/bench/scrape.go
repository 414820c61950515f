package bench

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Batches sums up the batches a processor committed, as its metrics
// endpoint reports them: for a benchmark that watches a processor from
// outside.
type Batches struct {
	Count   uint64
	Records float64       // the batches' sizes, summed
	Time    time.Duration // the batches' durations, summed
}

// Sub is what was committed since before.
func (b Batches) Sub(before Batches) Batches {
	return Batches{Count: b.Count - before.Count, Records: b.Records - before.Records, Time: b.Time - before.Time}
}

// Add is b and other's batches together (two processors', say).
func (b Batches) Add(other Batches) Batches {
	return Batches{Count: b.Count + other.Count, Records: b.Records + other.Records, Time: b.Time + other.Time}
}

// MeanSize is the records per batch.
func (b Batches) MeanSize() float64 { return b.Records / float64(max(b.Count, 1)) }

// MeanDuration is a batch's mean time from being taken up to its commit.
func (b Batches) MeanDuration() time.Duration { return b.Time / time.Duration(max(b.Count, 1)) }

// scrapeBatches reads a processor's metrics at url (its /metrics).
func scrapeBatches(ctx context.Context, url string) (Batches, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Batches{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Batches{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Batches{}, fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return Batches{}, fmt.Errorf("scraping %s: %w", url, err)
	}
	var b Batches
	if f := families["spool_processor_batch_size"]; f != nil && len(f.Metric) == 1 {
		h := f.Metric[0].GetHistogram()
		b.Count, b.Records = h.GetSampleCount(), h.GetSampleSum()
	}
	if f := families["spool_processor_batch_duration_seconds"]; f != nil && len(f.Metric) == 1 {
		b.Time = time.Duration(f.Metric[0].GetHistogram().GetSampleSum() * float64(time.Second))
	}
	return b, nil
}

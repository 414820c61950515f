package app_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/pipeline"
)

// scrape reads one metric's value from a /metrics page; -1 when absent.
func scrape(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// TestMetricsFollowTheWork: after an upload with one poison command, the
// ingress and processor /metrics agree with the job's counts.
func TestMetricsFollowTheWork(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"kafka.partitions": 2})
	p, err := app.NewProcessor(s.config(t, nil), testLogger(t))
	require.NoError(t, err)
	s.run(t, p)
	up := s.upload(t, poisonedUpload("m", 100, 40))
	j := s.wait(t, up.id)
	require.Equal(t, pipeline.Counts{Applied: 99, DeadLettered: 1}, j.c)

	ingress, processor := s.server+"/metrics", "http://"+p.Addr().String()+"/metrics"
	require.Equal(t, 100.0, scrape(t, ingress, `spool_ingress_records_total{outcome="accepted"}`))
	require.Equal(t, 1.0, scrape(t, ingress, `spool_ingress_uploads_total{code="202"}`))
	require.Equal(t, 1.0, scrape(t, ingress, `spool_http_requests_total{code="202",route="POST /v1/jobs"}`))
	require.Positive(t, scrape(t, ingress, `spool_ingress_produce_latency_seconds_count`))
	require.Equal(t, 1.0, scrape(t, ingress, `spool_http_request_duration_seconds_count{route="POST /v1/jobs"}`))
	require.Positive(t, scrape(t, ingress, `spool_db_max_connections`))
	require.Positive(t, scrape(t, ingress, `spool_kafka_produce_bytes_total{client="producer",node_id="0",topic="spool.commands"}`))

	require.Equal(t, 99.0, scrape(t, processor, `spool_processor_records_total{outcome="applied"}`))
	require.Equal(t, 1.0, scrape(t, processor, `spool_processor_records_total{outcome="dead_lettered"}`))
	require.Equal(t, 1.0, scrape(t, processor, `spool_processor_dead_letters_total{error_class="constraint_violation"}`))
	require.Positive(t, scrape(t, processor, `spool_processor_batch_size_count`))
	require.Positive(t, scrape(t, processor, `spool_db_connections{state="idle"}`)+scrape(t, processor, `spool_db_connections{state="acquired"}`))
	require.Equal(t, 0.0, scrape(t, processor, `spool_processor_batches_in_flight`))
	require.Equal(t, 2.0, scrape(t, processor, `spool_processor_write_concurrency`))
	require.Equal(t, 0.0, scrape(t, processor, `spool_processor_writes_in_flight`))
	deadline := time.Now().Add(30 * time.Second)
	for scrape(t, processor, `spool_processor_consumer_lag{partition="0"}`) != 0 ||
		scrape(t, processor, `spool_processor_consumer_lag{partition="1"}`) != 0 {
		require.True(t, time.Now().Before(deadline), "the lag never read 0 on both partitions")
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPprofOnlyOnMetricsListeners: with metrics.pprof on, the profiling
// endpoints (a heap profile holds request bodies) are served on ingress's
// and the processor's metrics listeners and never on the API port; with it
// off, nowhere. /metrics and the health endpoints answer on both listeners.
func TestPprofOnlyOnMetricsListeners(t *testing.T) {
	t.Parallel()
	status := func(url string) int {
		t.Helper()
		resp, err := http.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	s := newStack(t, map[string]any{"metrics.pprof": true})
	p, err := app.NewProcessor(s.config(t, nil), testLogger(t))
	require.NoError(t, err)
	s.run(t, p)
	processor := "http://" + p.Addr().String()
	waitReady(t, processor)

	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine"} {
		require.Equal(t, http.StatusNotFound, status(s.server+path), "the API port serves no %s", path)
		require.Equal(t, http.StatusOK, status(s.ops+path), "ingress's metrics port serves %s", path)
		require.Equal(t, http.StatusOK, status(processor+path), "the processor's metrics port serves %s", path)
	}
	// The command line may carry --database-url with its password.
	require.Equal(t, http.StatusNotFound, status(s.ops+"/debug/pprof/cmdline"))
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		require.Equal(t, http.StatusOK, status(s.ops+path), path)
	}
	require.Equal(t, http.StatusOK, status(s.server+"/openapi.yaml"))
	require.Equal(t, 1.0, scrape(t, s.ops+"/metrics", `spool_http_requests_total{code="200",route="GET /openapi.yaml"}`),
		"ingress's metrics on its metrics port")

	off := newStack(t, nil)
	require.Equal(t, http.StatusNotFound, status(off.server+"/debug/pprof/"))
	require.Equal(t, http.StatusNotFound, status(off.ops+"/debug/pprof/"))
}

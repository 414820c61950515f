package metrics_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/metrics"
	"github.com/spoolhq/spool/pipeline"
)

func TestMetricsCount(t *testing.T) {
	t.Parallel()
	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	m.Upload(202, 9, 1, 1234)
	m.Upload(503, 2, 0, 10)
	m.BatchWritten(3, time.Second, []pipeline.Outcome{pipeline.OutcomeApplied, pipeline.OutcomeApplied, pipeline.OutcomeDuplicate})
	m.SetLag(map[int32]int64{0: 5, 3: 7})
	m.Swept(metrics.SweepJobs, 4)
	m.Swept(metrics.SweepJobs, 0)
	m.RateWaited(1500 * time.Millisecond)
	expected := `
# HELP spool_ingress_records_total Upload records, by outcome: accepted (acknowledged by Kafka) or rejected.
# TYPE spool_ingress_records_total counter
spool_ingress_records_total{outcome="accepted"} 11
spool_ingress_records_total{outcome="rejected"} 1
# HELP spool_ingress_uploads_total Uploads (POST /v1/jobs) answered, by status code.
# TYPE spool_ingress_uploads_total counter
spool_ingress_uploads_total{code="202"} 1
spool_ingress_uploads_total{code="503"} 1
# HELP spool_ingress_upload_bytes_total Upload body bytes read, as sent (compressed when gzip).
# TYPE spool_ingress_upload_bytes_total counter
spool_ingress_upload_bytes_total 1244
# HELP spool_processor_records_total Committed commands, by outcome.
# TYPE spool_processor_records_total counter
spool_processor_records_total{outcome="applied"} 2
spool_processor_records_total{outcome="duplicate"} 1
# HELP spool_processor_consumer_lag Commands not yet processed, per partition of the commands topic (end offset less the group's committed offset).
# TYPE spool_processor_consumer_lag gauge
spool_processor_consumer_lag{partition="0"} 5
spool_processor_consumer_lag{partition="3"} 7
# HELP spool_processor_rate_limit_wait_seconds_total Time batches spent waiting for the rate limiter.
# TYPE spool_processor_rate_limit_wait_seconds_total counter
spool_processor_rate_limit_wait_seconds_total 1.5
# HELP spool_sweeps_total Sweeps of expired rows run, by kind: ledger, tombstones, idempotency_keys, jobs.
# TYPE spool_sweeps_total counter
spool_sweeps_total{kind="idempotency_keys"} 0
spool_sweeps_total{kind="jobs"} 2
spool_sweeps_total{kind="ledger"} 0
spool_sweeps_total{kind="tombstones"} 0
# HELP spool_swept_rows_total Rows removed by sweeps, by kind.
# TYPE spool_swept_rows_total counter
spool_swept_rows_total{kind="idempotency_keys"} 0
spool_swept_rows_total{kind="jobs"} 4
spool_swept_rows_total{kind="ledger"} 0
spool_swept_rows_total{kind="tombstones"} 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(expected), "spool_ingress_records_total",
		"spool_ingress_uploads_total", "spool_ingress_upload_bytes_total", "spool_processor_records_total",
		"spool_processor_consumer_lag", "spool_processor_rate_limit_wait_seconds_total", "spool_sweeps_total", "spool_swept_rows_total"))

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `spool_processor_records_total{outcome="applied"} 2`)
	require.Contains(t, rec.Body.String(), "go_goroutines", "runtime metrics too")
}

// TestNamesFollowConventions lints every metric (names, units, _total on
// counters, help) and checks that docs/metrics.md lists each one.
func TestNamesFollowConventions(t *testing.T) {
	t.Parallel()
	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	// Vectors are gathered once they have a series.
	m.Request("POST /v1/jobs", 202, 40*time.Millisecond)
	m.Upload(202, 1, 0, 1)
	m.BatchWritten(1, time.Millisecond, []pipeline.Outcome{pipeline.OutcomeApplied})
	m.Retried(pipeline.ClassTransient)
	m.DeadLettered(pipeline.ClassConstraint)
	m.SetLag(map[int32]int64{0: 1})
	m.Swept(metrics.SweepLedger, 1)
	m.ObservePool(func() metrics.PoolStats { return metrics.PoolStats{Acquired: 2, Idle: 1, Max: 8} })
	m.ObserveWrites(func() metrics.WriteStats {
		return metrics.WriteStats{InFlight: 2, Limit: 2, Waited: 3, WaitTime: time.Second, WaitsCut: 1}
	})
	m.Produced(time.Millisecond, pipeline.Errorf(pipeline.ClassTransient, "broker away"))
	m.FetchFailed(pipeline.Errorf(pipeline.ClassInternal, "not authorized"))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)

	docs, err := os.ReadFile("../../docs/metrics.md")
	require.NoError(t, err)
	families, err := reg.Gather()
	require.NoError(t, err)
	n := 0
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "spool_") {
			n++
			require.Contains(t, string(docs), "`"+f.GetName()+"`", "docs/metrics.md must list %s", f.GetName())
		}
	}
	require.Equal(t, 30, n, "every spool metric was gathered")
}

// TestHelpNamesWhatIsEmitted: a help text that lists a label's values
// ("by kind: a, b.") lists exactly the values emitted, and docs/metrics.md
// names each of them in the metric's row.
func TestHelpNamesWhatIsEmitted(t *testing.T) {
	t.Parallel()
	reg := metrics.NewRegistry()
	metrics.New(reg)
	families, err := reg.Gather()
	require.NoError(t, err)
	docs, err := os.ReadFile("../../docs/metrics.md")
	require.NoError(t, err)
	listed := regexp.MustCompile(`by (\w+): ([\w, ]+)\.$`)
	checked := 0
	for _, f := range families {
		m := listed.FindStringSubmatch(f.GetHelp())
		if m == nil {
			continue
		}
		checked++
		var emitted []string
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == m[1] {
					emitted = append(emitted, l.GetValue())
				}
			}
		}
		named := strings.Split(m[2], ", ")
		require.ElementsMatch(t, named, emitted, "%s's help names its %s values", f.GetName(), m[1])
		row := regexp.MustCompile("(?m)^\\| `" + f.GetName() + "` \\|.*$").FindString(string(docs))
		for _, v := range named {
			require.Contains(t, row, "`"+v+"`", "docs/metrics.md's row of %s", f.GetName())
		}
	}
	require.Positive(t, checked)
}

// TestDashboardNamesRealMetrics: every metric the Grafana dashboard queries
// is one spool serves (a typo would draw an empty panel).
func TestDashboardNamesRealMetrics(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../deploy/grafana/dashboards/spool.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash))
	docs, err := os.ReadFile("../../docs/metrics.md")
	require.NoError(t, err)
	name := regexp.MustCompile(`\b(spool_[a-z_]+|process_[a-z_]+)`)
	queried := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, n := range name.FindAllString(target.Expr, -1) {
				queried++
				if strings.HasPrefix(n, "process_") {
					continue
				}
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(n, suffix); ok && strings.Contains(string(docs), "`"+base+"`") {
						n = base
					}
				}
				require.Contains(t, string(docs), "`"+n+"`", "panel %q queries %s", p.Title, n)
			}
		}
	}
	require.Greater(t, queried, 20)
}

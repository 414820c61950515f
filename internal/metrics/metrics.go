package metrics

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/spoolhq/spool/internal/buildinfo"
	"github.com/spoolhq/spool/pipeline"
)

// Metrics holds every spool metric of one process. Labels are bounded:
// outcomes, error classes, status codes, routes, partitions, sweep kinds,
// never a job or command id.
type Metrics struct {
	reg prometheus.Registerer
	gat prometheus.Gatherer

	httpRequests   *prometheus.CounterVec
	uploads        *prometheus.CounterVec
	uploadRecords  *prometheus.CounterVec
	uploadBytes    prometheus.Counter
	produceLatency prometheus.Histogram
	produceErrors  *prometheus.CounterVec
	fetchErrors    *prometheus.CounterVec
	uploading      prometheus.Gauge

	batchSize     prometheus.Histogram
	batchDuration prometheus.Histogram
	records       *prometheus.CounterVec
	retries       *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	rateWait      prometheus.Counter
	inFlight      prometheus.Gauge
	lag           *prometheus.GaugeVec
	ledgerRows    prometheus.Gauge
	httpDuration  *prometheus.HistogramVec
	sweeps        *prometheus.CounterVec
	swept         *prometheus.CounterVec
}

// New defines the metrics on reg, with Go runtime and process collectors.
func New(reg *prometheus.Registry) *Metrics {
	m := &Metrics{reg: reg, gat: reg}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	build := buildinfo.Read()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spool_build_info",
		Help: "What this binary was built from: 1, labelled by version, commit and Go version."}, []string{"version", "commit", "go_version"})
	info.WithLabelValues(build.Version, build.Commit, build.GoVersion).Set(1)
	reg.MustRegister(info)
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
		reg.MustRegister(h)
		return h
	}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		reg.MustRegister(g)
		return g
	}
	single := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}

	m.httpRequests = counter("spool_http_requests_total", "HTTP requests answered by ingress, by route and status code.", "route", "code")
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "spool_http_request_duration_seconds",
		Help:    "Time from a request's arrival to its answer, by route (an upload's includes streaming its body).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}, []string{"route"})
	reg.MustRegister(m.httpDuration)
	m.uploads = counter("spool_ingress_uploads_total", "Uploads (POST /v1/jobs) answered, by status code.", "code")
	m.uploadRecords = counter("spool_ingress_records_total", "Upload records, by outcome: accepted (acknowledged by Kafka) or rejected.", "outcome")
	m.uploadBytes = single("spool_ingress_upload_bytes_total", "Upload body bytes read, as sent (compressed when gzip).")
	m.uploading = gauge("spool_ingress_uploads_in_progress", "Uploads being read now, all tenants together (bounded by ingress.max_concurrent_uploads).")
	m.produceLatency = histogram("spool_ingress_produce_latency_seconds", "From handing a record to the producer to the broker's acknowledgement.",
		prometheus.ExponentialBuckets(0.001, 2, 14))
	m.produceErrors = counter("spool_ingress_produce_errors_total",
		"Records the producer could not get acknowledged, by error class: too_large (refused alone), transient (broker away, timeout), internal.", "class")

	m.fetchErrors = counter("spool_processor_fetch_errors_total",
		"Fetches of the commands topic that failed, by error class: transient (broker away, leader moved, timeout), internal (refused: ACLs, a topic gone).", "class")
	m.batchSize = histogram("spool_processor_batch_size", "Records per committed batch.", prometheus.ExponentialBuckets(1, 4, 9))
	m.batchDuration = histogram("spool_processor_batch_duration_seconds",
		"From taking a batch up to its commit, rate-limit wait and retries included.", prometheus.ExponentialBuckets(0.005, 2, 14))
	m.records = counter("spool_processor_records_total", "Committed commands, by outcome.", "outcome")
	m.retries = counter("spool_processor_retries_total", "Batches retried after a transient error, by error class.", "error_class")
	m.deadLetters = counter("spool_processor_dead_letters_total", "Commands parked in the dead-letter topic, by error class.", "error_class")
	m.rateWait = single("spool_processor_rate_limit_wait_seconds_total", "Time batches spent waiting for the rate limiter.")
	m.inFlight = gauge("spool_processor_batches_in_flight", "Batches being written now.")
	m.lag = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "spool_processor_consumer_lag",
		Help: "Commands not yet processed, per partition of the commands topic (end offset less the group's committed offset)."},
		[]string{"partition"})
	reg.MustRegister(m.lag)
	m.ledgerRows = gauge("spool_ledger_rows", "Command ids in the dedupe ledger (PostgreSQL's estimate).")
	m.sweeps = counter("spool_sweeps_total", "Sweeps of expired rows run, by kind: "+strings.Join(SweepKinds, ", ")+".", "kind")
	m.swept = counter("spool_swept_rows_total", "Rows removed by sweeps, by kind.", "kind")
	for _, kind := range SweepKinds {
		m.sweeps.WithLabelValues(kind)
		m.swept.WithLabelValues(kind)
	}
	return m
}

// The kinds of rows the processor's maintenance sweeps, the kind label of
// spool_sweeps_total and spool_swept_rows_total.
const (
	SweepLedger          = "ledger"
	SweepTombstones      = "tombstones"
	SweepIdempotencyKeys = "idempotency_keys"
	SweepJobs            = "jobs"
)

// SweepKinds lists every sweep kind: the series exist from the start, at 0.
var SweepKinds = []string{SweepLedger, SweepTombstones, SweepIdempotencyKeys, SweepJobs}

// NewRegistry returns an empty registry for New.
func NewRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.gat, promhttp.HandlerOpts{Registry: m.reg})
}

// KafkaHooks returns franz-go's client metrics (spool_kafka_…) for one
// client, labelled client=name; pass it to the client's hooks. Each client
// needs its own.
func (m *Metrics) KafkaHooks(name string) any {
	return kprom.NewMetrics("spool", kprom.Subsystem("kafka"), kprom.Registerer(m.reg), kprom.Gatherer(m.gat),
		kprom.WithStaticLabel(prometheus.Labels{"client": name}))
}

// Request implements httpapi.Observer.
func (m *Metrics) Request(route string, code int, d time.Duration) {
	m.httpRequests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.httpDuration.WithLabelValues(route).Observe(d.Seconds())
}

// Upload implements httpapi.Observer.
func (m *Metrics) Upload(code int, accepted, rejected, bytes int64) {
	m.uploads.WithLabelValues(strconv.Itoa(code)).Inc()
	m.uploadRecords.WithLabelValues("accepted").Add(float64(accepted))
	m.uploadRecords.WithLabelValues("rejected").Add(float64(rejected))
	m.uploadBytes.Add(float64(bytes))
}

// Uploading implements httpapi.Observer.
func (m *Metrics) Uploading(delta int) { m.uploading.Add(float64(delta)) }

// Produced implements httpapi.Observer.
func (m *Metrics) Produced(d time.Duration, err error) {
	if err != nil {
		m.produceErrors.WithLabelValues(string(pipeline.ClassOf(err))).Inc()
		return
	}
	m.produceLatency.Observe(d.Seconds())
}

// FetchFailed counts a fetch error of the processor's consumer
// (kafka.ConsumerConfig.FetchFailed).
func (m *Metrics) FetchFailed(err error) {
	m.fetchErrors.WithLabelValues(string(pipeline.ClassOf(err))).Inc()
}

// BatchWritten implements pipeline.Observer.
func (m *Metrics) BatchWritten(size int, d time.Duration, outcomes []pipeline.Outcome) {
	m.batchSize.Observe(float64(size))
	m.batchDuration.Observe(d.Seconds())
	var c pipeline.Counts
	for _, o := range outcomes {
		c.Add(o)
	}
	var redelivered int64
	for _, o := range outcomes {
		if o == pipeline.OutcomeRedelivered {
			redelivered++
		}
	}
	for _, o := range pipeline.CountedOutcomes {
		if n := c.Get(o); n > 0 {
			m.records.WithLabelValues(string(o)).Add(float64(n))
		}
	}
	if redelivered > 0 {
		m.records.WithLabelValues(string(pipeline.OutcomeRedelivered)).Add(float64(redelivered))
	}
}

// Retried implements pipeline.Observer.
func (m *Metrics) Retried(class pipeline.ErrorClass) { m.retries.WithLabelValues(string(class)).Inc() }

// DeadLettered implements pipeline.Observer.
func (m *Metrics) DeadLettered(class pipeline.ErrorClass) {
	m.deadLetters.WithLabelValues(string(class)).Inc()
}

// RateWaited implements pipeline.Observer.
func (m *Metrics) RateWaited(d time.Duration) { m.rateWait.Add(d.Seconds()) }

// InFlight implements pipeline.Observer.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// SetLag records the backlog of each partition.
func (m *Metrics) SetLag(byPartition map[int32]int64) {
	for p, n := range byPartition {
		m.lag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(n))
	}
}

// SetLedgerRows records the ledger's size.
func (m *Metrics) SetLedgerRows(n int64) { m.ledgerRows.Set(float64(n)) }

// Swept counts one sweep of kind and the rows it removed.
func (m *Metrics) Swept(kind string, rows int64) {
	m.sweeps.WithLabelValues(kind).Inc()
	m.swept.WithLabelValues(kind).Add(float64(rows))
}

// PoolStats is a database connection pool at a moment (postgres.DB.Stats).
type PoolStats struct {
	Acquired, Idle, Max int32
	EmptyAcquires       int64
	AcquireTime         time.Duration
}

// ObservePool reports a connection pool, read at each scrape: its
// connections by state, its bound, and how often and how long getting one
// waited.
func (m *Metrics) ObservePool(stats func() PoolStats) {
	m.reg.MustRegister(poolCollector{stats: stats})
}

var (
	poolConns = prometheus.NewDesc("spool_db_connections",
		"PostgreSQL connections of the pool, by state: acquired (in use) or idle.", []string{"state"}, nil)
	poolMax = prometheus.NewDesc("spool_db_max_connections",
		"The pool's bound, database.max_conns.", nil, nil)
	poolEmptyAcquires = prometheus.NewDesc("spool_db_acquires_waited_total",
		"Acquisitions that waited because no connection was idle: a pool too small for the load.", nil, nil)
	poolAcquireTime = prometheus.NewDesc("spool_db_acquire_seconds_total",
		"Time spent acquiring connections from the pool.", nil, nil)
)

type poolCollector struct{ stats func() PoolStats }

// WriteStats is the processor's bound on batch transactions at a moment
// (postgres.Store.WriteStats).
type WriteStats struct {
	InFlight, Limit int
	Waited          int64
	WaitTime        time.Duration
	WaitsCut        int64
}

// ObserveWrites reports the processor's batch transactions, read at each
// scrape: how many run, their bound, how often and how long a batch
// waited for its turn, and how many gave way over a lock.
func (m *Metrics) ObserveWrites(stats func() WriteStats) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spool_processor_writes_in_flight",
			Help: "Batch transactions the processor runs now."},
			func() float64 { return float64(stats().InFlight) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "spool_processor_write_concurrency",
			Help: "The processor's bound on batch transactions at once, processor.write_concurrency."},
			func() float64 { return float64(stats().Limit) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "spool_processor_write_waits_total",
			Help: "Batches that waited for a turn to write because the bound was reached."},
			func() float64 { return float64(stats().Waited) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "spool_processor_write_wait_seconds_total",
			Help: "Time batches spent waiting for a turn to write."},
			func() float64 { return stats().WaitTime.Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "spool_processor_lock_waits_cut_total",
			Help: "Times a batch whose rows were locked first (it deletes and upserts a table) waited for a lock in its writes past the bound on such waits, gave way and was written again."},
			func() float64 { return float64(stats().WaitsCut) }),
	)
}

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolConns
	ch <- poolMax
	ch <- poolEmptyAcquires
	ch <- poolAcquireTime
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.Acquired), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.Max))
	ch <- prometheus.MustNewConstMetric(poolEmptyAcquires, prometheus.CounterValue, float64(s.EmptyAcquires))
	ch <- prometheus.MustNewConstMetric(poolAcquireTime, prometheus.CounterValue, s.AcquireTime.Seconds())
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/tools/harness"
	"github.com/spoolhq/spool/internal/tools/tooldb"
	"github.com/spoolhq/spool/pipeline"
)

// Config is one benchmark run.
type Config struct {
	// BinDir holds the built binaries (make build).
	BinDir string
	// DatabaseURL is the PostgreSQL to use; the run works in its own schema.
	DatabaseURL string
	// Schema is that schema, dropped and created anew.
	Schema string
	// N is the number of commands of the workload.
	N int
	// UploadBytes is the least the ingress stage uploads in one body: the
	// workload is grown past N to reach it, so that ingress memory is
	// measured on a large upload.
	UploadBytes int64
	// NaiveN bounds the records the naive consumer writes: it is slow.
	NaiveN int
	// LatencyRate and LatencyFor set the steady upload of the latency
	// stage: commands per second, for how long.
	LatencyRate float64
	LatencyFor  time.Duration
	Seed        uint64
	Partitions  int
	// Stages picks what runs: StagesAll, StagesWrite (the write path's
	// stages: backlog, references, naive consumer, processor) or
	// StagesProcessor (the backlog and the processor's drain, for quick
	// measurements while changing the processor), StagesLatency (the
	// latency stage alone, on empty tables) or StagesIngress (the upload,
	// produced straight and through ingress).
	Stages string
	// Processors is how many processors StagesProcessor's drain runs.
	Processors int
	// Profile, when set, is a directory where the drain's processor CPU
	// profile is written, and asks for PostgreSQL's wait events sampled
	// during the drain.
	Profile string
	// MaxCPURatio fails the run (with ErrOverCPUBound) when the
	// processor's steady drain costs more CPU per command, its own and
	// PostgreSQL's, than this many times the best reference's (0: no
	// bound). Other load on the machine does not count against it.
	MaxCPURatio float64
	// Results makes the backlog's job keep each command's outcome
	// (?results=true), to measure what that costs the processor.
	Results bool
	Out     io.Writer
}

// The stage sets Config.Stages names.
const (
	StagesAll       = "all"
	StagesWrite     = "write"
	StagesProcessor = "processor"
	StagesLatency   = "latency"
	StagesIngress   = "ingress"
)

// Result is one system's run.
type Result struct {
	System  string
	Records int64
	Elapsed time.Duration
	// CPU is the process's user and system time during the run.
	CPU time.Duration
	// Machine is every process's CPU time during the run (PostgreSQL, the
	// broker, the client): on a machine the run keeps busy, the truest cost.
	Machine time.Duration
	// Database is PostgreSQL's CPU time during the run (every postgres
	// process): with CPU, the system's own cost, whatever else the machine
	// runs meanwhile.
	Database time.Duration
	// WAL is the write-ahead log PostgreSQL wrote during the run, in bytes:
	// what the writes cost the disk, and a large part of what they cost
	// PostgreSQL's CPU.
	WAL int64
	// PeakRSS is the process's peak resident memory, 0 where the process
	// is the benchmark itself and the figure would mean nothing.
	PeakRSS int64
	// Limit names the result this one is a ratio to.
	Limit string
	// Steady, for the processor, is its drain from the first commit seen:
	// the records committed after it, the time and the machine's CPU.
	Steady *Result
}

// PerSecond is the result's throughput.
func (r Result) PerSecond() float64 { return float64(r.Records) / r.Elapsed.Seconds() }

// MicrosPerRecord is d spread over the result's records, in µs.
func (r Result) MicrosPerRecord(d time.Duration) float64 {
	return float64(d.Microseconds()) / float64(max(r.Records, 1))
}

// env is what the stages share: the database, the broker and the logs.
type env struct {
	cfg     Config
	dbURL   string
	brokers []string
	db      *tooldb.Limits
	unlock  func()
	procs   []*harness.Proc
	// entities are the workload's, as processors and ingress read them.
	entities pipeline.Entities
	dir      string
	logger   *slog.Logger
}

// ErrOverCPUBound marks a run whose every check passed but whose
// processor cost more CPU per command than Config.MaxCPURatio allows.
var ErrOverCPUBound = errors.New("over the CPU bound")

// Run runs every stage and prints the table. It fails when any stage's
// result is wrong.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	e, err := setup(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if cfg.Stages == StagesLatency {
		lat, err := e.latencyStage(ctx, cfg.LatencyRate, cfg.LatencyFor)
		if err != nil {
			return nil, fmt.Errorf("latency: %w", err)
		}
		e.reportLatency(lat)
		return nil, nil
	}
	if cfg.Stages == StagesIngress {
		results, err := e.ingressStages(ctx)
		if err == nil {
			Report(cfg.Out, results)
		}
		return results, err
	}
	var results []Result
	backlog := Workload{N: cfg.N, Seed: cfg.Seed}
	fmt.Fprintf(cfg.Out, "write path: %d commands, %d keys, seed %d, %d partitions\n", backlog.N, len(backlog.Final()), cfg.Seed, cfg.Partitions)
	write, err := e.processorStages(ctx, backlog)
	if err != nil {
		return nil, err
	}
	results = append(results, write...)
	guard := e.guard(results) // reported last, after the table
	if cfg.Stages != StagesAll {
		Report(cfg.Out, results)
		return results, guard
	}
	rate, err := e.rateStage(ctx, cfg.N)
	if err != nil {
		return nil, fmt.Errorf("rate limit: %w", err)
	}

	upload, err := e.ingressStages(ctx)
	if err != nil {
		return nil, err
	}
	results = append(results, upload...)
	lat, err := e.latencyStage(ctx, cfg.LatencyRate, cfg.LatencyFor)
	if err != nil {
		return nil, fmt.Errorf("latency: %w", err)
	}
	Report(cfg.Out, results)
	fmt.Fprintf(cfg.Out, "rate limit: asked %.0f/s, held %.0f/s (%+.1f%%) over %.1f s\n",
		rate.Asked, rate.Held, (rate.Held/rate.Asked-1)*100, rate.Window.Seconds())
	e.reportLatency(lat)
	return results, guard
}

// ingressStages time an upload of Config.UploadMiB produced straight to
// the broker as ingress would (raw produce), then uploaded through ingress.
func (e *env) ingressStages(ctx context.Context) ([]Result, error) {
	up := e.uploadWorkload()
	fmt.Fprintf(e.cfg.Out, "upload: %d commands, %.1f MiB as NDJSON\n", up.N, float64(up.N*up.AverageBytes())/(1<<20))
	raw, err := e.produce(ctx, rawTopic, sysRawProduce, up)
	if err != nil {
		return nil, fmt.Errorf("raw produce: %w", err)
	}
	ing, err := e.ingress(ctx, up)
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	ing.Limit = raw.System
	return []Result{raw, ing}, nil
}

func (e *env) reportLatency(lat LatencyResult) {
	fmt.Fprintf(e.cfg.Out, "202 to applied at %.0f commands/s for %s (%d jobs of %d): p50 %s, p99 %s, max %s; "+
		"CPU busy %.2f of %d cores (broker, ingress, processor, client), PostgreSQL's %.2f, the machine's %.2f; "+
		"%d batches of %.0f commands on average, %s each from being taken up to commit\n",
		lat.Rate, e.cfg.LatencyFor, lat.Jobs, lat.PerJob, lat.P50.Round(time.Millisecond), lat.P99.Round(time.Millisecond),
		lat.Max.Round(time.Millisecond), lat.Cores, runtime.NumCPU(), lat.Database, lat.Machine,
		lat.Batches.Count, lat.Batches.MeanSize(), lat.Batches.MeanDuration().Round(time.Millisecond))
}

// Report prints results as a table with each result's ratio to its limit.
func Report(w io.Writer, results []Result) {
	by := map[string]Result{}
	for _, r := range results {
		by[r.System] = r
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\trecords\tseconds\trecords/s\tratio\tto\tCPU s\tCPU µs/rec\tmachine µs/rec\tWAL B/rec\tpeak RSS MiB\t")
	for _, r := range results {
		ratio, rss, machine, wal := "", "-", "-", "-"
		if l, ok := by[r.Limit]; ok {
			ratio = fmt.Sprintf("%.2f×", r.PerSecond()/l.PerSecond())
		}
		if r.WAL > 0 {
			wal = fmt.Sprintf("%.0f", float64(r.WAL)/float64(max(r.Records, 1)))
		}
		if r.PeakRSS > 0 {
			rss = fmt.Sprintf("%.0f", float64(r.PeakRSS)/(1<<20))
		}
		if r.Machine > 0 {
			machine = fmt.Sprintf("%.1f", r.MicrosPerRecord(r.Machine))
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.0f\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%s\t\n", r.System, r.Records, r.Elapsed.Seconds(),
			r.PerSecond(), ratio, r.Limit, r.CPU.Seconds(), r.MicrosPerRecord(r.CPU), machine, wal, rss)
	}
	_ = tw.Flush()
}

func setup(ctx context.Context, cfg Config) (e *env, err error) {
	e = &env{cfg: cfg, logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "spool-bench-"); err != nil {
		return e, err
	}
	u, err := url.Parse(cfg.DatabaseURL)
	if err != nil {
		return e, errors.New("parsing database url: not a URL (not shown: it may hold a password)")
	}
	q := u.Query()
	q.Set("search_path", cfg.Schema)
	u.RawQuery = q.Encode()
	e.dbURL = u.String()
	if e.unlock, err = tooldb.LockRun(ctx, cfg.DatabaseURL, cfg.Schema); err != nil {
		return e, err
	}
	if err := tooldb.ResetSchema(ctx, cfg.DatabaseURL, cfg.Schema); err != nil {
		return e, fmt.Errorf("creating schema %s: %w", cfg.Schema, err)
	}
	db, err := postgres.Open(ctx, e.dbURL, 2)
	if err != nil {
		return e, err
	}
	defer db.Close()
	if _, err := postgres.Migrate(ctx, db); err != nil {
		return e, err
	}
	if _, err := postgres.EnsureDemoCustomers(ctx, db); err != nil {
		return e, err
	}
	// The backlog's records are routed as ingress routes them.
	if e.entities, err = postgres.LoadEntities(ctx, db, []postgres.EntitySpec{{
		Name: Entity, Schema: cfg.Schema, Table: "customers", Key: []string{"customer_id"}, VersionColumn: "version",
	}}); err != nil {
		return e, err
	}
	if e.db, err = tooldb.OpenLimits(ctx, e.dbURL); err != nil {
		return e, err
	}

	addr, err := harness.FreeAddr()
	if err != nil {
		return e, err
	}
	broker, err := e.start("spoolctl", nil, "broker", "--addr", addr, "--data-dir", "", "--partitions", fmt.Sprint(cfg.Partitions))
	if err != nil {
		return e, err
	}
	e.brokers = []string{addr}
	return e, broker.WaitFor(ctx, "listening", harness.Dialable(addr))
}

func (e *env) start(name string, env []string, args ...string) (*harness.Proc, error) {
	p, err := harness.Start(e.cfg.BinDir, name, env, args...)
	if err != nil {
		return nil, err
	}
	e.procs = append(e.procs, p)
	return p, nil
}

// configFile writes a spool config for a binary a stage starts: topic is
// its commands topic, group its processors' group, extra more YAML. The
// latency stage's uploads are an open-loop load of one tenant, which the
// concurrent-upload caps would turn away: they are lifted.
func (e *env) configFile(name, topic, group, extra string) (string, error) {
	path := filepath.Join(e.dir, name+".yaml")
	text := fmt.Sprintf(`database: {url: %q}
kafka: {brokers: [%q], partitions: %d, topic: %q, dlq_topic: %q, group: %q}
auth: {disabled: true}
log: {level: warn}
ingress: {max_records: %d, metrics_addr: "127.0.0.1:0", max_concurrent_uploads: 1024, max_concurrent_uploads_per_tenant: 1024}
entities:
  %s: {table: %s.customers, key: [customer_id], version_column: version}
%s`, e.dbURL, e.brokers[0], e.cfg.Partitions, topic, topic+".dlq", group, 1<<40, Entity, e.cfg.Schema, extra)
	return path, os.WriteFile(path, []byte(text), 0o600)
}

func (e *env) close() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].Stop()
	}
	if e.db != nil {
		e.db.Close()
	}
	if e.unlock != nil {
		e.unlock()
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

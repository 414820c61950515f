package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/tools/harness"
	"github.com/spoolhq/spool/internal/tools/tooldb"
	"github.com/spoolhq/spool/pipeline"
)

// The processor stages' topic and group.
const (
	backlogTopic = "bench.commands"
	benchGroup   = "spool-bench"
	// backlogJob is the job the backlog's records say they belong to.
	backlogJob = "bench-job"
)

// Names of the systems, as the table prints them.
const (
	sysProduce    = "produce backlog"
	sysConsume    = "consume + decode"
	sysCopy       = "COPY"
	sysCopyUpsert = "COPY+upsert+ledger" // at 1, 2 and 4 connections: "COPY+upsert+ledger ×2"
	sysNaive      = "naive consumer"
	sysProcessor  = "processor"
	sysProcessors = "processor ×3"
	sysAgain      = "processor again" // the guard's second measurement
	sysRawProduce = "raw produce"
	sysIngress    = "ingress"
)

// referenceBatch is the COPY+upsert+ledger reference's transaction size,
// its best draining the broker on this machine (docs/benchmarks.md, one
// quiet hour, N = 1,000,000, best of 1, 2 and 4 connections: 5,000 ran
// 79.6k/s at 19.8 machine µs a command, 10,000 85.1k/s at 19.4, 20,000
// 92.7k/s at 18.5, 40,000 92.8k/s at 18.1).
const referenceBatch = 40_000

// limitRow turns a workload command into the limits' row (without the
// ledger's hash, which only the reference's drain needs: recordRow).
func limitRow(c *pipeline.Command) tooldb.LimitRow {
	str := func(k string) string {
		var s string
		_ = json.Unmarshal(c.Data[k], &s)
		return s
	}
	return tooldb.LimitRow{Tenant: "default", ID: string(c.ID), Key: str("customer_id"), Name: str("name"),
		Email: str("email"), Balance: str("balance"), Version: *c.Version}
}

// oracle is each key's final row, as TableRows prints it.
func oracle(final map[string]pipeline.Command) map[string]string {
	out := make(map[string]string, len(final))
	for _, c := range final {
		r := limitRow(&c)
		out[r.Key] = fmt.Sprintf("%s|%s|%s|%d", r.Name, r.Email, r.Balance, r.Version)
	}
	return out
}

// check compares a table with the oracle: a fast wrong answer fails the run.
func (e *env) check(ctx context.Context, system, table string, want map[string]string) error {
	got, err := e.db.TableRows(ctx, table)
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return fmt.Errorf("%s: %s holds %d rows, the oracle %d", system, table, len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			return fmt.Errorf("%s: %s row %s is %q, the oracle says %q", system, table, k, got[k], v)
		}
	}
	return nil
}

// selfUsage is this process's CPU so far.
func selfUsage() harness.Usage {
	u, _ := harness.ProcUsage(os.Getpid())
	return u
}

// timed runs fn and reports it as system's result over n records, with this
// process's CPU, the machine's and the WAL written.
func (e *env) timed(ctx context.Context, system string, n int, fn func() error) (Result, error) {
	e.checkpoint(ctx)
	before, machine, database, wal := selfUsage(), machineBusy(), databaseCPU(), e.walPosition(ctx)
	start := time.Now()
	if err := fn(); err != nil {
		return Result{}, fmt.Errorf("%s: %w", system, err)
	}
	return Result{System: system, Records: int64(n), Elapsed: time.Since(start), CPU: selfUsage().Sub(before).CPU,
		Machine: machineBusy() - machine, Database: databaseCPU() - database, WAL: e.walPosition(ctx) - wal}, nil
}

// checkpoint starts a measurement on a clean database: what earlier
// stages left dirty is written out before it, not during it. (Without the
// right to CHECKPOINT, the measurement goes on as it is.)
func (e *env) checkpoint(ctx context.Context) {
	if err := e.db.Checkpoint(ctx); err != nil {
		e.logger.Warn("CHECKPOINT before a measurement", "error", err)
	}
}

// walPosition is the database's WAL position (0 where it cannot be read,
// which leaves the column empty).
func (e *env) walPosition(ctx context.Context) int64 {
	pos, _ := e.db.WALPosition(ctx)
	return pos
}

// databaseCPU is PostgreSQL's CPU time so far, when it runs on this
// machine (0 otherwise, which leaves the guard to the processes measured).
func databaseCPU() time.Duration {
	d, _ := harness.CommandCPU("postgres")
	return d
}

// machineBusy is the machine's CPU time so far (0 where /proc/stat cannot
// be read, which leaves the column empty).
func machineBusy() time.Duration {
	d, _ := harness.MachineBusy()
	return d
}

// processorStages measure the write path: the backlog is produced, then
// read back (the consume limit), written by the two SQL limits, by a naive
// consumer, and drained by spool's processor.
func (e *env) processorStages(ctx context.Context, w Workload) ([]Result, error) {
	var results []Result
	want := oracle(w.Final())

	produce, err := e.produce(ctx, backlogTopic, sysProduce, w)
	if err != nil {
		return nil, err
	}
	results = append(results, produce)
	if e.cfg.Results {
		if err := e.db.KeepResults(ctx, backlogJob); err != nil {
			return nil, err
		}
	}
	if e.cfg.Stages == StagesProcessor {
		system := sysProcessor
		if e.cfg.Processors > 1 {
			system = fmt.Sprintf("%s ×%d", sysProcessor, e.cfg.Processors)
		}
		proc, err := e.drain(ctx, system, benchGroup, w.N, max(1, e.cfg.Processors))
		if err != nil {
			return nil, err
		}
		return append(results, proc), e.checkDrain(ctx, system, w, want)
	}

	var decoded int
	consume, err := e.timed(ctx, sysConsume, w.N, func() error {
		return kafka.Reader{Cluster: kafka.Plaintext(e.brokers...)}.Read(ctx, backlogTopic, -1, func(r pipeline.Record) error {
			if _, err := pipeline.DecodeCommand(r.Value); err != nil {
				return err
			}
			decoded++
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if decoded != w.N {
		return nil, fmt.Errorf("%s: read %d records of %d", sysConsume, decoded, w.N)
	}
	results = append(results, consume)

	if err := e.db.CreateTables(ctx, "limit_copy", "limit_naive"); err != nil {
		return nil, err
	}
	finals := make([]tooldb.LimitRow, 0, len(want))
	for _, c := range w.Final() {
		finals = append(finals, limitRow(&c))
	}
	copyRes, err := e.timed(ctx, sysCopy, len(finals), func() error { return e.db.Copy(ctx, "limit_copy", finals) })
	if err != nil {
		return nil, err
	}
	if err := e.check(ctx, sysCopy, "limit_copy", want); err != nil {
		return nil, err
	}
	results = append(results, copyRes)

	// The reference at 1, 2 and 4 connections; spool's ratio is to the best.
	var best Result
	for _, conns := range []int{1, 2, 4} {
		system, table := fmt.Sprintf("%s ×%d", sysCopyUpsert, conns), fmt.Sprintf("limit_upsert%d", conns)
		if err := e.db.CreateTables(ctx, table); err != nil {
			return nil, err
		}
		upsert, err := e.timed(ctx, system, w.N, func() error { return e.reference(ctx, table, conns) })
		if err != nil {
			return nil, err
		}
		if err := e.check(ctx, system, table, want); err != nil {
			return nil, err
		}
		upsert.Limit = sysCopy
		results = append(results, upsert)
		if upsert.PerSecond() > best.PerSecond() || best.Records == 0 {
			best = upsert
		}
	}

	naive, err := e.naive(ctx, min(w.N, e.cfg.NaiveN))
	if err != nil {
		return nil, err
	}
	naive.Limit = best.System
	results = append(results, naive)

	proc, err := e.drain(ctx, sysProcessor, benchGroup, w.N, 1)
	if err != nil {
		return nil, err
	}
	if err := e.checkDrain(ctx, sysProcessor, w, want); err != nil {
		return nil, err
	}
	proc.Limit = best.System
	results = append(results, proc)

	// Three processors of another group drain the backlog afresh, sharing
	// its partitions: on two cores they cannot be faster than one, and
	// should not be slower.
	if err := e.db.ForgetWrites(ctx, "customers"); err != nil {
		return nil, err
	}
	three, err := e.drain(ctx, sysProcessors, benchGroup+"-3", w.N, 3)
	if err != nil {
		return nil, err
	}
	three.Limit = sysProcessor
	results = append(results, three)
	if err := e.checkDrain(ctx, sysProcessors, w, want); err != nil || e.cfg.MaxCPURatio == 0 {
		return results, err
	}
	// The guard's processor drains the backlog a second time, and the
	// cheaper of its two drains is held to the bound: on a shared machine
	// a drain of seconds can land on another tenant's busy moment, which
	// makes one measurement dearer but not both.
	if err := e.db.ForgetWrites(ctx, "customers"); err != nil {
		return nil, err
	}
	again, err := e.drain(ctx, sysAgain, benchGroup+"-again", w.N, 1)
	if err != nil {
		return nil, err
	}
	again.Limit = best.System
	return append(results, again), e.checkDrain(ctx, sysAgain, w, want)
}

// checkDrain checks a processors' drain: the customers table against the
// oracle, and the job's counters against the workload: every command
// counted once, the repeats as duplicates.
func (e *env) checkDrain(ctx context.Context, system string, w Workload, want map[string]string) error {
	if err := e.check(ctx, system, "customers", want); err != nil {
		return err
	}
	c, err := e.db.JobCounts(ctx, backlogJob)
	if err != nil {
		return err
	}
	repeats := w.Repeats()
	if got := c.Done(); got != int64(w.N) || c.Duplicate != repeats {
		return fmt.Errorf("%s: the job counts %d commands (%+v), the workload has %d, %d of them repeats", system, got, c, w.N, repeats)
	}
	if !e.cfg.Results {
		return nil
	}
	n, err := e.db.JobResults(ctx, backlogJob)
	if err != nil {
		return err
	}
	if n != int64(w.N) {
		return fmt.Errorf("%s: the job kept %d results, the workload has %d commands", system, n, w.N)
	}
	return nil
}

// reference drains the backlog into table the fastest plain exactly-once
// way, on conns connections: one goroutine reads and decodes the records
// into batches of referenceBatch while the connections write the batches
// before them (Limits.CopyUpsertLedger).
func (e *env) reference(ctx context.Context, table string, conns int) error {
	g, ctx := errgroup.WithContext(ctx)
	batches := make(chan []tooldb.LimitRow, conns)
	g.Go(func() error { return e.db.CopyUpsertLedger(ctx, table, batches, conns) })
	g.Go(func() error {
		defer close(batches)
		batch := make([]tooldb.LimitRow, 0, referenceBatch)
		send := func() error {
			select {
			case batches <- batch:
				batch = make([]tooldb.LimitRow, 0, referenceBatch)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		err := kafka.Reader{Cluster: kafka.Plaintext(e.brokers...)}.Read(ctx, backlogTopic, -1, func(r pipeline.Record) error {
			row, err := recordRow(r.Value)
			if err != nil {
				return err
			}
			if batch = append(batch, row); len(batch) == referenceBatch {
				return send()
			}
			return nil
		})
		if err != nil || len(batch) == 0 {
			return err
		}
		return send()
	})
	return g.Wait()
}

// recordRow decodes a backlog record into the reference's row, as a plain
// consumer would: the command's JSON, its data's strings, and a hash of the
// record's value for the ledger.
func recordRow(value []byte) (tooldb.LimitRow, error) {
	c, err := pipeline.DecodeCommand(value)
	if err != nil {
		return tooldb.LimitRow{}, err
	}
	if c.Version == nil {
		return tooldb.LimitRow{}, fmt.Errorf("command %s has no version", c.ID)
	}
	str := func(k string) string {
		raw := c.Data[k]
		if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && bytes.IndexByte(raw, '\\') < 0 {
			return string(raw[1 : len(raw)-1])
		}
		var s string
		_ = json.Unmarshal(raw, &s)
		return s
	}
	h := sha256.Sum256(value)
	return tooldb.LimitRow{Tenant: "default", ID: string(c.ID), Key: str("customer_id"), Name: str("name"),
		Email: str("email"), Balance: str("balance"), Version: *c.Version, Hash: h[:16]}, nil
}

// cpuPerRecord is a steady drain's CPU per record, its own and
// PostgreSQL's (the largest for none).
func cpuPerRecord(s *Result) float64 {
	if s == nil || s.Records == 0 {
		return math.MaxFloat64
	}
	return s.MicrosPerRecord(s.CPU + s.Database)
}

// guard reports the steady drain's machine CPU per command against the
// reference's (the result the processor's is a ratio to), and fails the
// run past Config.MaxCPURatio.
func (e *env) guard(results []Result) error {
	by := map[string]Result{}
	for _, r := range results {
		by[r.System] = r
	}
	proc := by[sysProcessor]
	if again, ok := by[sysAgain]; ok && cpuPerRecord(again.Steady) < cpuPerRecord(proc.Steady) {
		proc = again
	}
	reference, s := by[proc.Limit], proc.Steady
	if s == nil || s.Records == 0 || reference.CPU+reference.Database == 0 {
		return nil
	}
	ours, theirs := cpuPerRecord(s), cpuPerRecord(&reference)
	ratio := ours / theirs
	fmt.Fprintf(e.cfg.Out, "%s's steady drain (from its first commit, %d commands): %.0f/s, %.1f machine µs a command; "+
		"its own and PostgreSQL's CPU %.1f µs a command, %.2f× the %s's %.1f\n",
		proc.System, s.Records, s.PerSecond(), s.MicrosPerRecord(s.Machine), ours, ratio, reference.System, theirs)
	if bound := e.cfg.MaxCPURatio; bound > 0 && ratio > bound {
		return fmt.Errorf("%w: the processor's CPU per command (its own and PostgreSQL's) is %.2f× the %s's, over the bound of %.2f×",
			ErrOverCPUBound, ratio, reference.System, bound)
	}
	return nil
}

// produce sends the workload's records to topic, as ingress would make
// them, with ingress's producer settings; every one acknowledged.
func (e *env) produce(ctx context.Context, topic, system string, w Workload) (Result, error) {
	if err := kafka.EnsureTopics(ctx, kafka.Plaintext(e.brokers...), int32(e.cfg.Partitions), -1, topic); err != nil {
		return Result{}, err
	}
	p, err := kafka.NewProducer(kafka.ProducerConfig{
		Cluster: kafka.Plaintext(e.brokers...), MaxBufferedBytes: kafka.UploadBufferBytes, Linger: kafka.UploadLinger, Logger: e.logger,
	})
	if err != nil {
		return Result{}, err
	}
	defer p.Close()
	res, err := e.timed(ctx, system, w.N, func() error {
		var wg sync.WaitGroup
		var once sync.Once
		var failed error
		for i := range w.N {
			c := w.Command(i)
			rec, err := pipeline.NewRecord(&c, backlogJob, "default", int64(i))
			if err != nil {
				once.Do(func() { failed = err })
				break
			}
			rec.Route = e.entities.Route(&c)
			wg.Add(1)
			p.Produce(ctx, topic, &rec, func(err error) {
				if err != nil {
					once.Do(func() { failed = err })
				}
				wg.Done()
			})
		}
		wg.Wait()
		return failed
	})
	if err != nil {
		return Result{}, err
	}
	return res, e.expectRecords(ctx, topic, int64(w.N))
}

// naive consumes the first n records of the backlog, partition by
// partition, and upserts each on its own; checked against the oracle of
// exactly those records.
func (e *env) naive(ctx context.Context, n int) (Result, error) {
	final := map[string]pipeline.Command{}
	done := 0
	res, err := e.timed(ctx, sysNaive, n, func() error {
		err := kafka.Reader{Cluster: kafka.Plaintext(e.brokers...)}.Read(ctx, backlogTopic, -1, func(r pipeline.Record) error {
			if done == n {
				return errStop
			}
			c, err := pipeline.DecodeCommand(r.Value)
			if err != nil {
				return err
			}
			row := limitRow(&c)
			if err := e.db.NaiveUpsert(ctx, "limit_naive", &row); err != nil {
				return err
			}
			if prev, ok := final[row.Key]; !ok || *prev.Version < *c.Version {
				final[row.Key] = c
			}
			done++
			return nil
		})
		if errors.Is(err, errStop) {
			return nil
		}
		return err
	})
	if err != nil {
		return Result{}, err
	}
	return res, e.check(ctx, sysNaive, "limit_naive", oracle(final))
}

var errStop = fmt.Errorf("enough records")

// startProcessor starts a processor of group on topic, extra more YAML,
// and returns it with the address of its metrics.
func (e *env) startProcessor(name, topic, group, extra string) (*harness.Proc, string, error) {
	metricsAddr, err := harness.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	conf, err := e.configFile(name, topic, group, fmt.Sprintf("metrics: {addr: %q, pprof: %t}\n%s", metricsAddr, e.cfg.Profile != "", extra))
	if err != nil {
		return nil, "", err
	}
	p, err := e.start("processor", []string{"SPOOL_CONFIG=" + conf})
	return p, "http://" + metricsAddr + "/metrics", err
}

// waitCommitted waits until group's processors ps committed n records of
// topic, calling each (if set) with the count at every look. It fails when
// one of them exits.
func (e *env) waitCommitted(ctx context.Context, ps []*harness.Proc, group, topic string, n int64, each func(int64)) error {
	for {
		done, err := e.db.SumOffsets(ctx, group, topic)
		if err != nil {
			return err
		}
		if each != nil {
			each(done)
		}
		if done >= n {
			return nil
		}
		for _, p := range ps {
			select {
			case <-p.Exited():
				return fmt.Errorf("processor exited after %d of %d records:\n%s", done, n, p.Log())
			default:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// drain starts procs processors of group on the backlog and times them
// until every record is committed (the stored offsets sum to n): CPU is
// theirs summed, PeakRSS the largest. With Config.Profile it also profiles
// the first processor and samples PostgreSQL's wait events meanwhile.
func (e *env) drain(ctx context.Context, system, group string, n, procs int) (Result, error) {
	e.checkpoint(ctx)
	start, machine, wal := time.Now(), machineBusy(), e.walPosition(ctx)
	ps, urls := make([]*harness.Proc, procs), make([]string, procs)
	for i := range ps {
		p, url, err := e.startProcessor(fmt.Sprintf("%s-%d", group, i), backlogTopic, group, "")
		if err != nil {
			return Result{}, err
		}
		defer p.Stop()
		ps[i], urls[i] = p, url
	}
	usage := func() (sum harness.Usage, err error) {
		for _, p := range ps {
			u, uerr := p.Usage()
			sum.CPU, sum.PeakRSS, err = sum.CPU+u.CPU, max(sum.PeakRSS, u.PeakRSS), errors.Join(err, uerr)
		}
		return sum, err
	}
	var profiled sync.WaitGroup
	waits := map[string]int64{}
	pctx, stopProfiling := context.WithCancel(ctx)
	profiling := e.cfg.Profile != ""
	if profiling {
		profiled.Add(2)
		go func() { defer profiled.Done(); e.profile(pctx, strings.TrimSuffix(urls[0], "/metrics")) }()
		go func() { defer profiled.Done(); e.sampleWaits(pctx, waits) }()
	}
	// The steady drain runs from when every processor has committed a
	// batch: their start-up (connecting, joining the group, the group
	// handing partitions from the first to join to the others) is out of
	// it.
	var steady, at Result // at: the counters when the steady drain began
	var steadyStart time.Time
	working := make([]bool, procs)
	allWorking := func() bool {
		for i, url := range urls {
			if !working[i] {
				b, err := scrapeBatches(ctx, url)
				working[i] = err == nil && b.Count > 0
			}
			if !working[i] {
				return false
			}
		}
		return true
	}
	err := e.waitCommitted(ctx, ps, group, backlogTopic, int64(n), func(done int64) {
		if done > 0 && steadyStart.IsZero() && (procs == 1 || allWorking()) {
			u, _ := usage()
			steadyStart, steady.Records = time.Now(), int64(n)-done
			at = Result{CPU: u.CPU, Machine: machineBusy(), Database: databaseCPU(), WAL: e.walPosition(ctx)}
		}
	})
	elapsed, busy, wal := time.Since(start), machineBusy()-machine, e.walPosition(ctx)-wal
	var batches Batches
	for _, url := range urls {
		if b, err := scrapeBatches(ctx, url); err == nil {
			batches = batches.Add(b)
		}
	}
	if batches.Count > 0 {
		fmt.Fprintf(e.cfg.Out, "%s's drain: %d batches of %.0f commands on average, %s each from being taken up to commit\n",
			system, batches.Count, batches.MeanSize(), batches.MeanDuration().Round(time.Millisecond))
	}
	if !steadyStart.IsZero() {
		u, _ := usage()
		steady.Elapsed, steady.CPU = time.Since(steadyStart), u.CPU-at.CPU
		steady.Machine, steady.Database, steady.WAL = machineBusy()-at.Machine, databaseCPU()-at.Database, e.walPosition(ctx)-at.WAL
	}
	if s := steady; s.Records > 0 {
		fmt.Fprintf(e.cfg.Out, "%s's steady drain: %.0f/s; µs a command: the machine's %.1f, the processor's %.1f, PostgreSQL's %.1f; WAL %.0f bytes a command\n",
			system, s.PerSecond(), s.MicrosPerRecord(s.Machine), s.MicrosPerRecord(s.CPU), s.MicrosPerRecord(s.Database), float64(s.WAL)/float64(s.Records))
	}
	if profiling && err == nil {
		e.saveProfile(ctx, strings.TrimSuffix(urls[0], "/metrics")+"/debug/pprof/allocs", "processor.allocs.pprof")
	}
	stopProfiling()
	profiled.Wait()
	if err != nil {
		return Result{}, err
	}
	if len(waits) > 0 {
		e.printWaits(waits)
	}
	u, err := usage()
	if err != nil {
		return Result{}, err
	}
	return Result{System: system, Records: int64(n), Elapsed: elapsed, CPU: u.CPU, Machine: busy, WAL: wal, PeakRSS: u.PeakRSS,
		Steady: &steady}, nil
}

// profile writes a CPU profile of the processor's drain, from a second in
// (past its start-up) for profileFor or until ctx ends, to Config.Profile.
func (e *env) profile(ctx context.Context, base string) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Second):
	}
	e.saveProfile(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, int(profileFor.Seconds())), "processor.cpu.pprof")
}

// saveProfile writes what url answers to name in Config.Profile.
func (e *env) saveProfile(ctx context.Context, url, name string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.cfg.Out, "profiling the processor: %v\n", err)
		return
	}
	defer resp.Body.Close()
	path := filepath.Join(e.cfg.Profile, name)
	f, err := os.Create(path)
	if err == nil {
		_, err = io.Copy(f, resp.Body)
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		fmt.Fprintf(e.cfg.Out, "writing %s: %v\n", path, err)
		return
	}
	fmt.Fprintf(e.cfg.Out, "processor profile of the drain: %s (go tool pprof -top %s)\n", path, path)
}

// profileFor is how long the drain's profile lasts at most; a drain that
// ends sooner cuts it short (and an empty profile is not written).
const profileFor = 8 * time.Second

// sampleWaits adds PostgreSQL's wait events to waits every 20 ms until ctx
// ends.
func (e *env) sampleWaits(ctx context.Context, waits map[string]int64) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
		now, err := e.db.WaitEvents(ctx)
		if err != nil {
			continue
		}
		for k, v := range now {
			waits[k] += v
		}
	}
}

func (e *env) printWaits(waits map[string]int64) {
	var total int64
	keys := make([]string, 0, len(waits))
	for k, v := range waits {
		total += v
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return waits[keys[i]] > waits[keys[j]] })
	fmt.Fprintf(e.cfg.Out, "PostgreSQL's active backends during the drain (%d samples):", total)
	for _, k := range keys {
		fmt.Fprintf(e.cfg.Out, " %s %.0f%%", k, 100*float64(waits[k])/float64(total))
	}
	fmt.Fprintln(e.cfg.Out)
}

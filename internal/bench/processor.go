package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/internal/harness"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/metrics"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// The processor stages' topic and group.
const (
	backlogTopic = "bench.commands"
	benchGroup   = "spool-bench"
)

// Names of the systems, as the table prints them.
const (
	sysProduce    = "produce backlog"
	sysConsume    = "consume + decode"
	sysCopy       = "COPY"
	sysCopyUpsert = "COPY+upsert+ledger" // at 1, 2 and 4 connections: "COPY+upsert+ledger ×2"
	sysNaive      = "naive consumer"
	sysProcessor  = "processor"
	sysRawProduce = "raw produce"
	sysIngress    = "ingress"
)

// referenceBatch is the COPY+upsert+ledger reference's transaction size,
// its best on this machine when it wrote rows prepared in memory
// (docs/benchmarks.md: 5,000 ran 92k/s, 10,000 and 20,000 96k/s at two
// connections); draining the broker, 5,000 and 20,000 are still to be
// tried on a quiet machine.
const referenceBatch = 10_000

// limitRow turns a workload command into the limits' row (without the
// ledger's hash, which only the reference's drain needs: recordRow).
func limitRow(c *pipeline.Command) postgres.LimitRow {
	str := func(k string) string {
		var s string
		_ = json.Unmarshal(c.Data[k], &s)
		return s
	}
	return postgres.LimitRow{Tenant: "default", ID: string(c.ID), Key: str("customer_id"), Name: str("name"),
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
// process's CPU and the machine's.
func timed(system string, n int, fn func() error) (Result, error) {
	before, machine, database := selfUsage(), machineBusy(), databaseCPU()
	start := time.Now()
	if err := fn(); err != nil {
		return Result{}, fmt.Errorf("%s: %w", system, err)
	}
	return Result{System: system, Records: int64(n), Elapsed: time.Since(start), CPU: selfUsage().Sub(before).CPU,
		Machine: machineBusy() - machine, Database: databaseCPU() - database}, nil
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
	if e.cfg.Stages == StagesProcessor {
		proc, err := e.drain(ctx, w.N)
		if err != nil {
			return nil, err
		}
		return append(results, proc), e.check(ctx, sysProcessor, "customers", want)
	}

	var decoded int
	consume, err := timed(sysConsume, w.N, func() error {
		return kafka.Reader{Brokers: e.brokers}.Read(ctx, backlogTopic, -1, func(r pipeline.Record) error {
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
	finals := make([]postgres.LimitRow, 0, len(want))
	for _, c := range w.Final() {
		finals = append(finals, limitRow(&c))
	}
	copyRes, err := timed(sysCopy, len(finals), func() error { return e.db.Copy(ctx, "limit_copy", finals) })
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
		upsert, err := timed(system, w.N, func() error { return e.reference(ctx, table, conns) })
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

	proc, err := e.drain(ctx, w.N)
	if err != nil {
		return nil, err
	}
	if err := e.check(ctx, sysProcessor, "customers", want); err != nil {
		return nil, err
	}
	proc.Limit = best.System
	return append(results, proc), nil
}

// reference drains the backlog into table the fastest plain exactly-once
// way, on conns connections: one goroutine reads and decodes the records
// into batches of referenceBatch while the connections write the batches
// before them (Limits.CopyUpsertLedger).
func (e *env) reference(ctx context.Context, table string, conns int) error {
	g, ctx := errgroup.WithContext(ctx)
	batches := make(chan []postgres.LimitRow, conns)
	g.Go(func() error { return e.db.CopyUpsertLedger(ctx, table, batches, conns) })
	g.Go(func() error {
		defer close(batches)
		batch := make([]postgres.LimitRow, 0, referenceBatch)
		send := func() error {
			select {
			case batches <- batch:
				batch = make([]postgres.LimitRow, 0, referenceBatch)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		err := kafka.Reader{Brokers: e.brokers}.Read(ctx, backlogTopic, -1, func(r pipeline.Record) error {
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
func recordRow(value []byte) (postgres.LimitRow, error) {
	c, err := pipeline.DecodeCommand(value)
	if err != nil {
		return postgres.LimitRow{}, err
	}
	if c.Version == nil {
		return postgres.LimitRow{}, fmt.Errorf("command %s has no version", c.ID)
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
	return postgres.LimitRow{Tenant: "default", ID: string(c.ID), Key: str("customer_id"), Name: str("name"),
		Email: str("email"), Balance: str("balance"), Version: *c.Version, Hash: h[:16]}, nil
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
	reference, s := by[proc.Limit], proc.Steady
	if s == nil || s.Records == 0 || reference.CPU+reference.Database == 0 {
		return nil
	}
	ours, theirs := s.MicrosPerRecord(s.CPU+s.Database), reference.MicrosPerRecord(reference.CPU+reference.Database)
	ratio := ours / theirs
	fmt.Fprintf(e.cfg.Out, "processor's steady drain (from its first commit, %d commands): %.0f/s, %.1f machine µs a command; "+
		"its own and PostgreSQL's CPU %.1f µs a command, %.2f× the %s's %.1f\n",
		s.Records, s.PerSecond(), s.MicrosPerRecord(s.Machine), ours, ratio, reference.System, theirs)
	if max := e.cfg.MaxCPURatio; max > 0 && ratio > max {
		return fmt.Errorf("the processor's CPU per command (its own and PostgreSQL's) is %.2f× the %s's, over the bound of %.2f×", ratio, reference.System, max)
	}
	return nil
}

// produce sends the workload's records to topic, as ingress would make
// them, with ingress's producer settings; every one acknowledged.
func (e *env) produce(ctx context.Context, topic, system string, w Workload) (Result, error) {
	if err := kafka.EnsureTopics(ctx, e.brokers, int32(e.cfg.Partitions), -1, topic); err != nil {
		return Result{}, err
	}
	p, err := kafka.NewProducer(kafka.ProducerConfig{
		Brokers: e.brokers, MaxBufferedBytes: kafka.UploadBufferBytes, Linger: kafka.UploadLinger, Logger: e.logger,
	})
	if err != nil {
		return Result{}, err
	}
	defer p.Close()
	res, err := timed(system, w.N, func() error {
		var wg sync.WaitGroup
		var once sync.Once
		var failed error
		for i := range w.N {
			c := w.Command(i)
			rec, err := pipeline.NewRecord(&c, "bench-job", "default", int64(i))
			if err != nil {
				once.Do(func() { failed = err })
				break
			}
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
	res, err := timed(sysNaive, n, func() error {
		err := kafka.Reader{Brokers: e.brokers}.Read(ctx, backlogTopic, -1, func(r pipeline.Record) error {
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
		if err == errStop {
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

// waitCommitted waits until group's processors committed n records of
// topic, calling each (if set) with the count at every look.
func (e *env) waitCommitted(ctx context.Context, p *harness.Proc, group, topic string, n int64, each func(int64)) error {
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
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Exited():
			return fmt.Errorf("processor exited after %d of %d records:\n%s", done, n, p.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// drain starts a processor on the backlog and times it until every record
// is committed (the stored offsets sum to n). With Config.Profile it also
// profiles the processor and samples PostgreSQL's wait events meanwhile.
func (e *env) drain(ctx context.Context, n int) (Result, error) {
	start, machine := time.Now(), machineBusy()
	p, metricsURL, err := e.startProcessor("processor", backlogTopic, benchGroup, "")
	if err != nil {
		return Result{}, err
	}
	defer p.Stop()
	var profiled sync.WaitGroup
	waits := map[string]int64{}
	pctx, stopProfiling := context.WithCancel(ctx)
	if e.cfg.Profile != "" {
		profiled.Add(2)
		go func() { defer profiled.Done(); e.profile(pctx, strings.TrimSuffix(metricsURL, "/metrics")) }()
		go func() { defer profiled.Done(); e.sampleWaits(pctx, waits) }()
	}
	// The steady drain runs from the first commit seen: the processor's
	// start-up (connecting, joining the group) is out of it.
	var steady, at Result // at: the counters when the steady drain began
	var steadyStart time.Time
	err = e.waitCommitted(ctx, p, benchGroup, backlogTopic, int64(n), func(done int64) {
		if done > 0 && steadyStart.IsZero() {
			u, _ := p.Usage()
			steadyStart, steady.Records = time.Now(), int64(n)-done
			at = Result{CPU: u.CPU, Machine: machineBusy(), Database: databaseCPU()}
		}
	})
	elapsed, busy := time.Since(start), machineBusy()-machine
	if batches, err := metrics.ScrapeBatches(ctx, metricsURL); err == nil && batches.Count > 0 {
		fmt.Fprintf(e.cfg.Out, "processor's drain: %d batches of %.0f commands on average, %s each from being taken up to commit\n",
			batches.Count, batches.MeanSize(), batches.MeanDuration().Round(time.Millisecond))
	}
	if !steadyStart.IsZero() {
		u, _ := p.Usage()
		steady.Elapsed, steady.CPU = time.Since(steadyStart), u.CPU-at.CPU
		steady.Machine, steady.Database = machineBusy()-at.Machine, databaseCPU()-at.Database
	}
	if s := steady; s.Records > 0 {
		fmt.Fprintf(e.cfg.Out, "processor's steady drain: %.0f/s; µs a command: the machine's %.1f, the processor's %.1f, PostgreSQL's %.1f\n",
			s.PerSecond(), s.MicrosPerRecord(s.Machine), s.MicrosPerRecord(s.CPU), s.MicrosPerRecord(s.Database))
	}
	if e.cfg.Profile != "" && err == nil {
		e.saveProfile(ctx, strings.TrimSuffix(metricsURL, "/metrics")+"/debug/pprof/allocs", "processor.allocs.pprof")
	}
	stopProfiling()
	profiled.Wait()
	if err != nil {
		return Result{}, err
	}
	if len(waits) > 0 {
		e.printWaits(waits)
	}
	u, err := p.Usage()
	if err != nil {
		return Result{}, err
	}
	return Result{System: sysProcessor, Records: int64(n), Elapsed: elapsed, CPU: u.CPU, Machine: busy, PeakRSS: u.PeakRSS,
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
const profileFor = 15 * time.Second

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

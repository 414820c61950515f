package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/tools/tooldb"
)

// Config is one fault run.
type Config struct {
	// BinDir holds the built binaries (make build).
	BinDir string
	// DatabaseURL is the PostgreSQL to use; the run works in its own schema.
	DatabaseURL string
	// Schema is that schema, dropped and created anew.
	Schema string
	// N commands are sent in uploads of UploadSize commands, Clients at a
	// time, at Rate commands/s in all.
	N, UploadSize, Clients int
	Rate                   float64
	Seed                   uint64
	Partitions             int
	// Processors run from the start; rebalances add and remove more.
	Processors int
	// How many faults of each kind to inject.
	ProcessorKills, Rebalances, IngressKills, PostgresFaults, BrokerKills int
	// Slowdowns slow every write statement for seconds; Freezes freeze a
	// processor past its session timeout; Exhaustions take every
	// PostgreSQL connection for seconds; Cuts cut a processor off from the
	// broker past its session timeout.
	Slowdowns, Freezes, Exhaustions, Cuts int
	// Alone is the share of faults injected alone, each once every earlier
	// one was followed by a write and before the next: their recovery is
	// one fault's, not a storm's.
	Alone float64
	// PostgresRestart is a shell command restarting PostgreSQL; half the
	// PostgreSQL faults use it, the rest terminate spool's backends. Empty:
	// only terminations.
	PostgresRestart string
	Out             io.Writer
	// Log, when set, hears of each fault and each resend as it happens,
	// and the processes log at level info instead of warn.
	Log io.Writer
	// Keep leaves the run's directory (the broker's data, every process's
	// log) in place, for a look after a failed run.
	Keep bool
	// MaxStall fails a run whose processors committed nothing for longer
	// while records waited (0: no bound).
	MaxStall time.Duration
	// MaxRSS fails a run in which a processor's peak RSS passed it (0: no
	// bound): memory must hold under slow writes and backlogs.
	MaxRSS int64
	// RateLimit is each processor's processor.rate_limit (0: none). The
	// run fails when the writes of any rateWindow pass what the processors
	// running at most at once could write under it.
	RateLimit float64
}

// rateWindow is the stretch over which the rate limit is checked.
const rateWindow = 5 * time.Second

// Report is a run's outcome.
type Report struct {
	Faults []kindSummary
	*verdict
	Uploads, Resent int
	// Elapsed is the whole run; Drain, from the last answer and the last
	// fault until every record was processed and every job finished.
	Elapsed, Drain time.Duration
	// Stall is the longest stretch in which records waited and the
	// processors committed none; StallAt, when it began.
	Stall, StallAt time.Duration
	// PartitionStall is the longest such stretch of one partition
	// (StallPartition), the others' commits notwithstanding; from
	// PartitionStallAt. Reported, not bounded.
	PartitionStall, PartitionStallAt time.Duration
	StallPartition                   int32
	// PeakRSS is the largest peak RSS of any processor.
	PeakRSS int64
	// BusiestWindow is the most writes the audit saw in a rateWindow;
	// RateBound what the rate limit allowed in one (0: no limit).
	BusiestWindow, RateBound int64
}

// Run runs the stack, the clients and the faults, then checks. It fails
// when any invariant is broken, and says which.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	start := time.Now()
	kinds := plan(cfg, rand.New(rand.NewPCG(cfg.Seed, 1)))
	fmt.Fprintf(cfg.Out, "seed %d: %d commands in uploads of %d, %d clients at %.0f commands/s, %d processors, %d partitions; %d faults\n",
		cfg.Seed, cfg.N, cfg.UploadSize, cfg.Clients, cfg.Rate, cfg.Processors, cfg.Partitions, len(kinds))
	dir, err := os.MkdirTemp("", "spool-faults-")
	if err != nil {
		return nil, err
	}
	if cfg.Keep {
		fmt.Fprintf(cfg.Out, "keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	audit, procURL, unlock, err := prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer audit.Close()
	s, err := newStack(cfg, dir, procURL)
	if err != nil {
		return nil, err
	}
	defer func() {
		s.stop()
		if cfg.Keep {
			s.saveLogs()
		}
	}()
	if err := s.start(ctx); err != nil {
		return nil, err
	}

	w := newWorkload(cfg.N, cfg.UploadSize, cfg.Seed)
	g := newGate(len(w.uploads), cfg.Clients)
	if len(kinds) == 0 {
		g.open()
	}
	evlog := newEvents(cfg.Log, start)
	cl := newClients(w, "http://"+s.ingressAddr, cfg.Clients, cfg.Rate, g, evlog)
	planned := time.Duration(float64(cfg.N) / cfg.Rate * float64(time.Second))
	measuring, stopMeasuring := context.WithCancel(ctx)
	defer stopMeasuring()
	in := &injector{s: s, audit: audit, cl: cl, r: rand.New(rand.NewPCG(cfg.Seed, 2)), start: start, gate: g, events: evlog,
		measuring: measuring, gap: max(300*time.Millisecond, planned/time.Duration(len(kinds)+1)), alone: cfg.Alone}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stalls := &stallWatch{audit: audit, brokers: []string{s.brokerAddr}, start: start}
	go stalls.run(measuring)
	injected := make(chan error, 1)
	go func() { injected <- in.run(runCtx, kinds) }()
	answers, upErr := cl.run(runCtx)
	if upErr != nil {
		cancel()
		if err := <-injected; err != nil && !errors.Is(err, context.Canceled) {
			upErr = errors.Join(upErr, fmt.Errorf("injecting faults: %w", err))
		}
		return nil, fmt.Errorf("%w\n%s", upErr, s.logs())
	}
	if err := <-injected; err != nil {
		return nil, fmt.Errorf("injecting faults: %w\n%s", err, s.logs())
	}
	quiet := time.Now()
	if err := drain(ctx, audit, []string{s.brokerAddr}, s); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, s.logs())
	}
	stopMeasuring()
	in.wg.Wait()
	for i, f := range in.faults {
		next := time.Now()
		if i+1 < len(in.faults) {
			next = in.faults[i+1].began
		}
		f.Committed, _ = stalls.recovery(f.began, next)
	}
	rep := &Report{Faults: in.summary(), Uploads: len(answers), Elapsed: time.Since(start), Drain: time.Since(quiet)}
	rep.Stall, rep.StallAt = stalls.result()
	rep.PartitionStall, rep.StallPartition, rep.PartitionStallAt = stalls.partitionResult()
	rep.PeakRSS = s.processorsPeakRSS()
	if rep.BusiestWindow, err = audit.BusiestWindow(ctx, rateWindow); err != nil {
		return nil, err
	}
	if cfg.RateLimit > 0 {
		rep.RateBound = int64(s.mostProcessors) * (int64(cfg.RateLimit*rateWindow.Seconds()) + rateBurst)
	}
	for _, a := range answers {
		rep.Resent += a.Attempts - 1
	}
	if rep.verdict, err = check(ctx, audit, []string{s.brokerAddr}, w, answers); err != nil {
		return nil, err
	}
	rep.print(cfg.Out)
	if !rep.ok() {
		return rep, errors.New("invariants broken (see above)")
	}
	if cfg.MaxStall > 0 && rep.Stall > cfg.MaxStall {
		return rep, fmt.Errorf("the processors committed nothing for %s while records waited (from %s into the run), over -max-stall %s",
			rep.Stall.Round(100*time.Millisecond), rep.StallAt.Round(100*time.Millisecond), cfg.MaxStall)
	}
	if rep.RateBound > 0 && rep.BusiestWindow > rep.RateBound {
		return rep, fmt.Errorf("%d writes in %s, over the %d the processors' rate limit allows", rep.BusiestWindow, rateWindow, rep.RateBound)
	}
	if cfg.MaxRSS > 0 && rep.PeakRSS > cfg.MaxRSS {
		return rep, fmt.Errorf("a processor's peak RSS was %d MiB, over -max-rss %d MiB", rep.PeakRSS>>20, cfg.MaxRSS>>20)
	}
	if err := selfCheck(ctx, audit, []string{s.brokerAddr}, w, answers); err != nil {
		return rep, err
	}
	fmt.Fprintln(cfg.Out, "self-check: after a write doubled, a command lost, a job miscounted and a deleted row put back on purpose, the checker finds all four")
	return rep, nil
}

// selfCheck breaks the database on purpose after a clean check and checks
// again: a checker that cannot fail would prove nothing.
func selfCheck(ctx context.Context, audit *tooldb.Audit, brokers []string, w *workload, answers []answer) error {
	var evs []string
	for _, c := range w.cmds {
		if c.Entity == events && !c.Poison && !c.Reject && c.Repeat < 0 && len(evs) < 2 {
			evs = append(evs, c.ID)
		}
	}
	if len(evs) < 2 || len(answers) == 0 || answers[0].View == nil {
		return nil // too small a run to break
	}
	if err := audit.Sabotage(ctx, evs[0], evs[1], string(answers[0].View.JobID)); err != nil {
		return fmt.Errorf("self-check: %w", err)
	}
	// And a row back that a delete removed, at a version newer than any
	// tombstone: the processors still run, and their sweep would repair an
	// older one away before the check reads it.
	custs, _ := w.oracle()
	var deleted string
	for _, c := range w.cmds {
		if _, live := custs[c.Key]; c.Delete && !live && !c.Reject {
			deleted = c.Key
			break
		}
	}
	if deleted != "" {
		if err := audit.Exec(ctx, fmt.Sprintf(`INSERT INTO customers (customer_id, name, balance, version, cmd)
			VALUES ('%s', 'back', 0, 9223372036854775807, 'self-check')`, deleted)); err != nil {
			return fmt.Errorf("self-check: %w", err)
		}
	}
	v, err := check(ctx, audit, brokers, w, answers)
	if err != nil {
		return fmt.Errorf("self-check: %w", err)
	}
	back := deleted == "" || slices.ContainsFunc(v.Problems, func(p string) bool {
		return strings.HasPrefix(p, "customers "+deleted+" is") && strings.HasSuffix(p, "should not exist")
	})
	if v.Doubled == 0 || v.Lost == 0 || v.Rows == 0 || v.Jobs == 0 || !back {
		return fmt.Errorf("self-check: the checker missed what was broken on purpose: doubled %d, lost %d, rows %d, jobs %d, deleted row back found %t",
			v.Doubled, v.Lost, v.Rows, v.Jobs, back)
	}
	return nil
}

// prepare makes the run's schema: spool's tables, the workload's, the
// audit. It returns the checker's connection and the URL spool's processes
// use (the schema, and an application_name whose backends the PostgreSQL
// faults terminate).
func prepare(ctx context.Context, cfg Config) (audit *tooldb.Audit, procURL string, unlock func(), err error) {
	unlock, err = tooldb.LockRun(ctx, cfg.DatabaseURL, cfg.Schema)
	if err != nil {
		return nil, "", nil, err
	}
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	if err := tooldb.ResetSchema(ctx, cfg.DatabaseURL, cfg.Schema); err != nil {
		return nil, "", nil, fmt.Errorf("creating schema %s: %w", cfg.Schema, err)
	}
	checkURL, err := withParams(cfg.DatabaseURL, "search_path", cfg.Schema, "application_name", cfg.appName()+":checker")
	if err != nil {
		return nil, "", nil, err
	}
	if procURL, err = withParams(cfg.DatabaseURL, "search_path", cfg.Schema, "application_name", cfg.appName()); err != nil {
		return nil, "", nil, err
	}
	db, err := postgres.Open(ctx, checkURL, 1)
	if err != nil {
		return nil, "", nil, err
	}
	defer db.Close()
	if _, err := postgres.Migrate(ctx, db); err != nil {
		return nil, "", nil, err
	}
	if audit, err = tooldb.OpenAudit(ctx, checkURL); err != nil {
		return nil, "", nil, err
	}
	if err = audit.Exec(ctx, tables); err == nil {
		err = audit.InstallAudit(ctx, customers, events)
	}
	if err == nil {
		err = audit.InstallSlowdown(ctx, customers, events)
	}
	if err != nil {
		audit.Close()
		return nil, "", nil, fmt.Errorf("creating the workload's tables: %w", err)
	}
	return audit, procURL, unlock, nil
}

// drainFor bounds the wait for the end: it outlasts the lease after which
// an abandoned upload's job is failed (postgres.UploadLease) and the
// sweep that does it.
const drainFor = 3 * time.Minute

// drain waits until the processors have committed every record of the
// topic and no job is open; it fails when a process died unasked.
func drain(ctx context.Context, a *tooldb.Audit, brokers []string, s *stack) error {
	deadline := time.Now().Add(drainFor)
	var last string
	for time.Now().Before(deadline) {
		if d := s.dead(); len(d) > 0 {
			return fmt.Errorf("a process died on its own: %v", d)
		}
		done, err1 := a.SumOffsets(ctx, group, topic)
		end, err2 := kafka.Reader{Cluster: kafka.Plaintext(brokers...)}.EndOffsets(ctx, topic)
		jobs, err3 := a.Jobs(ctx)
		if err := errors.Join(err1, err2, err3); err != nil {
			last = err.Error()
		} else {
			open := 0
			for _, j := range jobs {
				if j.State == "receiving" || j.State == "queued" || j.State == "processing" {
					open++
				}
			}
			if done == end && open == 0 {
				return nil
			}
			last = fmt.Sprintf("%d of %d records processed, %d jobs open", done, end, open)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("not drained after %s: %s", drainFor, last)
}

// eventLog logs what happens during a run, with the time since it began.
type eventLog struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func newEvents(out io.Writer, start time.Time) *eventLog { return &eventLog{out: out, start: start} }

func (e *eventLog) log(format string, args ...any) {
	if e.out == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	fmt.Fprintf(e.out, "%8.1fs  %s\n", time.Since(e.start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *Report) print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tinjected\tfollowed by a write\tnext write after (median)\t(max)\twith records waiting\ttheir next commit after (median)\t(max)\talone\tnext write after its end (median)\t(max)")
	for _, k := range r.Faults {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", k.Kind, k.Count, k.Measured, k.Median.Round(time.Millisecond), k.Max.Round(time.Millisecond),
			k.CommitMeasured, k.CommitMedian.Round(time.Millisecond), k.CommitMax.Round(time.Millisecond),
			k.Alone, k.AloneMedian.Round(time.Millisecond), k.AloneMax.Round(time.Millisecond))
	}
	_ = tw.Flush()
	fmt.Fprintf(out, "%d commands (%d rejected by ingress, %d poison, %d deletes) in %d uploads, %d resent; %d writes audited; %d jobs abandoned by a killed ingress or a 5xx, all failed; %d finished with their answer lost to a killed ingress\n",
		r.Commands, r.Rejects, r.Poison, r.Deletes, r.Uploads, r.Resent, r.Writes, r.Abandoned, r.Unanswered)
	fmt.Fprintf(out, "lost %d, doubled %d, misplaced %d, rows off the oracle %d, jobs wrong %d; run %s, drained %s after the last answer and fault\n",
		r.Lost, r.Doubled, r.Misplaced, r.Rows, r.Jobs, r.Elapsed.Round(time.Second), r.Drain.Round(100*time.Millisecond))
	fmt.Fprintf(out, "longest stall (records waiting, none committed): %s, from %s into the run\n",
		r.Stall.Round(100*time.Millisecond), r.StallAt.Round(100*time.Millisecond))
	fmt.Fprintf(out, "longest stall of one partition (its records waiting, none of them committed): %s, partition %d, from %s into the run\n",
		r.PartitionStall.Round(100*time.Millisecond), r.StallPartition, r.PartitionStallAt.Round(100*time.Millisecond))
	fmt.Fprintf(out, "processors' peak RSS: %d MiB; busiest %s: %d writes", r.PeakRSS>>20, rateWindow, r.BusiestWindow)
	if r.RateBound > 0 {
		fmt.Fprintf(out, " (the rate limit allows %d)", r.RateBound)
	}
	fmt.Fprintln(out)
	for _, p := range r.Problems {
		fmt.Fprintln(out, "  -", p)
	}
}

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/spoolhq/spool/internal/tools/tooldb"
)

// The kinds of fault.
const (
	killProcessor    = "processor SIGKILL (restarted)"
	addProcessor     = "processor added"
	removeProcessor  = "processor removed"
	killIngress      = "ingress SIGKILL mid-upload"
	restartPostgres  = "PostgreSQL restart"
	terminateBackend = "PostgreSQL backends terminated"
	killBroker       = "broker SIGKILL (restarted)"
	slowDatabase     = "PostgreSQL slow (every write statement delayed)"
	freezeProcessor  = "processor frozen past its session timeout"
	exhaustDatabase  = "PostgreSQL out of connections"
	cutProcessor     = "processor cut off from the broker"
)

// frozenFor is how long a frozen processor stays frozen, and a cut one cut
// off: past processor.session_timeout (10 s), so that its partitions move
// on, and it comes back to find them gone, with batches in hand.
const frozenFor = 12 * time.Second

// fault is one injected fault.
type fault struct {
	Kind string
	At   time.Duration // since the run began
	// Recovered is how long after the fault the audit saw the next write:
	// the system made progress again. Zero when no write followed.
	Recovered time.Duration
	// Ended is when the fault was over: what crashed restarted, PostgreSQL
	// back up, a stretch (slow, frozen, cut off, out of connections) past.
	// RecoveredEnded is how long after that the audit saw the next write.
	Ended          time.Time
	RecoveredEnded time.Duration
	// Committed is how long records that waited after the fault (before
	// the next one) waited for the processors' next commit
	// (stallWatch.recovery): their recovery, apart from the uploads'.
	// Zero when no records waited.
	Committed time.Duration
	began     time.Time
	Detail    string
}

// plan is the shuffled order of the faults to inject.
func plan(cfg Config, r *rand.Rand) []string {
	var kinds []string
	add := func(kind string, n int) {
		for range n {
			kinds = append(kinds, kind)
		}
	}
	add(killProcessor, cfg.ProcessorKills)
	add(addProcessor, cfg.Rebalances)
	add(removeProcessor, cfg.Rebalances)
	add(killIngress, cfg.IngressKills)
	restarts := 0
	if cfg.PostgresRestart != "" {
		restarts = (cfg.PostgresFaults + 1) / 2
	}
	add(restartPostgres, restarts)
	add(terminateBackend, cfg.PostgresFaults-restarts)
	add(killBroker, cfg.BrokerKills)
	add(slowDatabase, cfg.Slowdowns)
	add(freezeProcessor, cfg.Freezes)
	add(exhaustDatabase, cfg.Exhaustions)
	add(cutProcessor, cfg.Cuts)
	r.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	return kinds
}

// injector injects the plan's faults one after another, a random gap
// apart, and measures each one's recovery.
type injector struct {
	s      *stack
	audit  *tooldb.Audit
	cl     *clients
	r      *rand.Rand
	start  time.Time
	gap    time.Duration
	mu     sync.Mutex
	faults []*fault
	// measuring is cancelled once the run has drained: a fault no write
	// followed is then left unmeasured.
	measuring context.Context
	wg        sync.WaitGroup
	// gate holds the clients back so that the uploads spread over the
	// faults: after fault f of F, uploads up to f/F of the workload (and a
	// few more) may start.
	gate   *gate
	events *eventLog
	// alone is the share of faults injected alone: once every earlier
	// fault was followed by a write, and the next one only once this one
	// was.
	alone float64
}

func (in *injector) run(ctx context.Context, kinds []string) error {
	defer in.gate.open()
	for i, kind := range kinds {
		in.gate.allow(float64(i) / float64(len(kinds)))
		alone := in.r.Float64() < in.alone
		if alone {
			in.awaitRecovery(ctx)
			waitAfter(ctx, in.r, 200*time.Millisecond, time.Second)
		} else {
			waitAfter(ctx, in.r, in.gap/2, in.gap*3/2)
		}
		if kind == killIngress {
			// Mid-upload: let uploads start until a body is on the wire.
			for in.cl.inFlight.Load() == 0 && !in.gate.exhausted() && ctx.Err() == nil {
				in.letUploadStart()
				time.Sleep(50 * time.Millisecond)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		began := time.Now()
		f := &fault{Kind: kind, At: began.Sub(in.start), began: began}
		if err := in.inject(ctx, f); err != nil {
			return fmt.Errorf("%s at %s: %w", kind, f.At.Round(time.Millisecond), err)
		}
		f.Ended = time.Now()
		in.events.log("%s %s", kind, f.Detail)
		in.mu.Lock()
		in.faults = append(in.faults, f)
		in.mu.Unlock()
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			in.measure(f)
		}()
		if alone {
			in.awaitRecovery(ctx)
		}
	}
	return nil
}

// awaitRecovery waits, for up to a minute, until every fault so far was
// followed by a write after its end, letting uploads start meanwhile so
// that there is something to write. It gives up at once when no upload is
// left to send and none is on the wire: nothing would be written.
func (in *injector) awaitRecovery(ctx context.Context) {
	deadline := time.Now().Add(time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		in.mu.Lock()
		recovered := true
		for _, f := range in.faults {
			recovered = recovered && f.RecoveredEnded > 0
		}
		in.mu.Unlock()
		if recovered || (in.gate.exhausted() && in.cl.inFlight.Load() == 0) {
			return
		}
		in.letUploadStart()
		time.Sleep(50 * time.Millisecond)
	}
}

// letUploadStart lets one more upload start when none is on the wire.
func (in *injector) letUploadStart() {
	if in.cl.inFlight.Load() == 0 && !in.gate.exhausted() {
		in.gate.more()
	}
}

// inject causes one fault and, where the fault is a crash, restarts what
// crashed after a moment, as a supervisor would.
func (in *injector) inject(ctx context.Context, f *fault) error {
	s := in.s
	switch f.Kind {
	case killProcessor:
		name := s.pickProcessor(in.r)
		s.removeProcessor(name, true)
		waitAfter(ctx, in.r, 100*time.Millisecond, 2*time.Second)
		f.Detail = name
		return s.startProcessor(name)
	case addProcessor:
		name, err := s.addProcessor(ctx)
		f.Detail = name
		return err
	case removeProcessor:
		if s.processorCount() <= 1 {
			name, err := s.addProcessor(ctx) // keep one: add before removing
			if err != nil {
				return err
			}
			f.Detail = "added " + name + ", "
		}
		name := s.pickProcessor(in.r)
		began := time.Now()
		s.removeProcessor(name, false)
		f.Detail += fmt.Sprintf("%s, stopped in %s", name, time.Since(began).Round(10*time.Millisecond))
		return nil
	case killIngress:
		f.Detail = fmt.Sprintf("%d uploads in flight", in.cl.inFlight.Load())
		s.killIngress()
		waitAfter(ctx, in.r, 100*time.Millisecond, 2*time.Second)
		return s.startIngress(ctx)
	case restartPostgres:
		return s.restartPostgres(ctx)
	case terminateBackend:
		n, err := in.audit.TerminateBackends(ctx, in.s.cfg.appName())
		f.Detail = fmt.Sprintf("%d backends", n)
		return err
	case killBroker:
		s.killBroker()
		waitAfter(ctx, in.r, 100*time.Millisecond, 2*time.Second)
		return s.startBroker(ctx)
	case slowDatabase:
		// Every statement writing the tables sleeps first, inside its
		// batch's transaction: batches take seconds, holding their locks.
		delay := 200*time.Millisecond + time.Duration(in.r.Int64N(int64(400*time.Millisecond)))
		if err := in.audit.SetSlowdown(ctx, delay); err != nil {
			return err
		}
		began := time.Now()
		waitAfter(ctx, in.r, 4*time.Second, 8*time.Second)
		f.Detail = fmt.Sprintf("%s a statement for %s", delay.Round(time.Millisecond), time.Since(began).Round(100*time.Millisecond))
		return in.audit.SetSlowdown(context.WithoutCancel(ctx), 0)
	case freezeProcessor:
		// A long pause (a stalled VM, a stopped container): the processor
		// stops answering everyone, its partitions move on, and it wakes
		// with batches in hand that it then tries to commit.
		name, thaw, err := s.freezeProcessor(in.r)
		if err != nil {
			return err
		}
		waitAfter(ctx, in.r, frozenFor, frozenFor+2*time.Second)
		f.Detail = name
		return thaw()
	case cutProcessor:
		// A network partition between one processor and the broker: its
		// connections go silent, it still reaches PostgreSQL, and writes
		// what it holds while its partitions move on to the others; once
		// let back, it rejoins. Its writes behind the new owners must be
		// fenced (nothing doubled, nothing lost).
		name := s.pickProcessor(in.r)
		n := s.proxy.Cut(name)
		began := time.Now()
		waitAfter(ctx, in.r, frozenFor, frozenFor+2*time.Second)
		s.proxy.Restore(name)
		f.Detail = fmt.Sprintf("%s (%d connections) for %s", name, n, time.Since(began).Round(100*time.Millisecond))
		return nil
	case exhaustDatabase:
		// Another client takes every connection; the run's own are ended,
		// so that spool must connect again, and is refused until it ends.
		release, held, ended, err := tooldb.HoldConnections(ctx, s.dbURL, 1000, in.s.cfg.appName())
		if err != nil {
			return err
		}
		defer release()
		began := time.Now()
		waitAfter(ctx, in.r, 2*time.Second, 5*time.Second)
		f.Detail = fmt.Sprintf("%d connections held, %d backends ended, for %s", held, ended, time.Since(began).Round(100*time.Millisecond))
		return nil
	}
	return fmt.Errorf("unknown fault %q", f.Kind)
}

// measure waits until the audit has seen a write after the fault began,
// and one after it ended, or measuring ends.
func (in *injector) measure(f *fault) {
	for _, m := range []struct {
		from time.Time
		into *time.Duration
		what string
	}{{f.began, &f.Recovered, "at"}, {f.Ended, &f.RecoveredEnded, "ended"}} {
		for {
			if in.measuring.Err() != nil {
				return
			}
			if at, ok, err := in.audit.FirstWriteAfter(in.measuring, m.from); err == nil && ok {
				in.mu.Lock()
				*m.into = at.Sub(m.from)
				in.mu.Unlock()
				in.events.log("the first write after %s %s %.1fs came %s later", f.Kind, m.what, m.from.Sub(in.start).Seconds(), m.into.Round(time.Millisecond))
				break
			}
			select {
			case <-in.measuring.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// summary is the faults by kind: how many, and the median and worst
// recovery, of all and of those alone.
func (in *injector) summary() []kindSummary {
	in.mu.Lock()
	defer in.mu.Unlock()
	var order []string
	by := map[string]*kindSummary{}
	var recovered, committed, alone = map[string][]time.Duration{}, map[string][]time.Duration{}, map[string][]time.Duration{}
	for i, f := range in.faults {
		k := by[f.Kind]
		if k == nil {
			k = &kindSummary{Kind: f.Kind}
			by[f.Kind] = k
			order = append(order, f.Kind)
		}
		k.Count++
		if f.Recovered > 0 {
			recovered[f.Kind] = append(recovered[f.Kind], f.Recovered)
		}
		if f.Committed > 0 {
			committed[f.Kind] = append(committed[f.Kind], f.Committed)
		}
		if in.isAlone(i) {
			alone[f.Kind] = append(alone[f.Kind], f.RecoveredEnded)
		}
	}
	sort.Strings(order)
	out := make([]kindSummary, 0, len(order))
	for _, kind := range order {
		k := by[kind]
		k.Measured, k.CommitMeasured, k.Alone = len(recovered[kind]), len(committed[kind]), len(alone[kind])
		k.Median, k.Max = medianMax(recovered[kind])
		k.CommitMedian, k.CommitMax = medianMax(committed[kind])
		k.AloneMedian, k.AloneMax = medianMax(alone[kind])
		out = append(out, *k)
	}
	return out
}

// isAlone tells whether fault i met no other: every earlier fault was
// followed by a write after its end before it began, and the next began
// only after a write followed its own end. (in.mu is held.)
func (in *injector) isAlone(i int) bool {
	f := in.faults[i]
	if f.RecoveredEnded == 0 {
		return false
	}
	for _, e := range in.faults[:i] {
		if e.RecoveredEnded == 0 || e.Ended.Add(e.RecoveredEnded).After(f.began) {
			return false
		}
	}
	return i+1 == len(in.faults) || !in.faults[i+1].began.Before(f.Ended.Add(f.RecoveredEnded))
}

// medianMax is the median and the largest of ds (zero for none).
func medianMax(ds []time.Duration) (median, largest time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)-1]
}

type kindSummary struct {
	Kind string
	// Count faults were injected; Measured of them were followed by a
	// write, the median and worst Recovered of which are given;
	// CommitMeasured had records waiting after them, the median and worst
	// Committed of which are given.
	Count, Measured, CommitMeasured int
	Median, Max                     time.Duration
	CommitMedian, CommitMax         time.Duration
	// Alone of them met no other fault (injector.isAlone): the median and
	// worst time from their end to the next write are given.
	Alone                 int
	AloneMedian, AloneMax time.Duration
}

// gate lets uploads start up to an allowance.
type gate struct {
	mu      sync.Mutex
	cond    *sync.Cond
	started int
	allowed int
	uploads int
	slack   int
}

func newGate(uploads, slack int) *gate {
	g := &gate{uploads: uploads, slack: slack, allowed: slack}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// wait blocks until one more upload may start.
func (g *gate) wait() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.started >= g.allowed {
		g.cond.Wait()
	}
	g.started++
}

// allow lets share of the uploads start, plus the slack, but never the
// last slack uploads: those wait for open, so that every fault meets
// uploads still to come.
func (g *gate) allow(share float64) {
	g.set(func() { g.allowed = max(g.allowed, int(share*float64(g.uploads-g.slack))+g.slack) })
}

// exhausted reports whether every upload has started.
func (g *gate) exhausted() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.started >= g.uploads
}

// more lets one more upload start, open lets them all.
func (g *gate) more() { g.set(func() { g.allowed = max(g.allowed, g.started+1) }) }
func (g *gate) open() { g.set(func() { g.allowed = g.uploads }) }

func (g *gate) set(f func()) {
	g.mu.Lock()
	f()
	g.mu.Unlock()
	g.cond.Broadcast()
}

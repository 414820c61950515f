package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/tools/harness"
)

// RateResult is how well a processor held processor.rate_limit.
type RateResult struct {
	Asked, Held float64 // records per second
	Window      time.Duration
}

// rateStage runs a processor of a new group over the backlog (whose
// commands are all applied by now: the limiter paces duplicates alike)
// with processor.rate_limit set, and measures its steady rate between 10%
// and 90% of the records it is given.
func (e *env) rateStage(ctx context.Context, n int) (RateResult, error) {
	asked := float64(min(5000, max(n/10, 100)))
	target := int64(min(n, int(asked*10)))
	const group = benchGroup + "-rate"
	p, _, err := e.startProcessor("processor-rate", backlogTopic, group,
		fmt.Sprintf("processor: {rate_limit: %g, batch_size: 250, batch_max_wait: 50ms}\n", asked))
	if err != nil {
		return RateResult{}, err
	}
	defer p.Stop()
	var from, to int64
	var t0, t1 time.Time
	err = e.waitCommitted(ctx, []*harness.Proc{p}, group, backlogTopic, target, func(done int64) {
		now := time.Now()
		if t0.IsZero() && done >= target/10 {
			from, t0 = done, now
		}
		if done >= target*9/10 && t1.IsZero() {
			to, t1 = done, now
		}
	})
	if err != nil {
		return RateResult{}, err
	}
	return RateResult{Asked: asked, Held: float64(to-from) / t1.Sub(t0).Seconds(), Window: t1.Sub(t0)}, nil
}

// LatencyResult is the time from an upload's 202 to its job's completion
// (its last command applied), at a steady rate.
type LatencyResult struct {
	Rate          float64 // commands per second sent
	Jobs, PerJob  int
	P50, P99, Max time.Duration
	// Batches are the processor's batches meanwhile: their size and time
	// tell how much of a job's wait is the write's.
	Batches Batches
	// Cores is the CPU the broker, ingress, processor and this client used
	// meanwhile, in cores (CPU seconds per second), and Machine what every
	// process used, and Database PostgreSQL's share of it, to tell a
	// saturated machine from a slow path.
	Cores, Machine, Database float64
}

// latencyStage starts an ingress and a processor on their own topic and
// sends jobs of perJob commands at rate commands/s for d, one upload every
// perJob/rate; each job's latency is its completed_at less its 202.
func (e *env) latencyStage(ctx context.Context, rate float64, d time.Duration) (LatencyResult, error) {
	const topic, group, perJob = "bench.latency", benchGroup + "-latency", 200
	jobs := int(rate * d.Seconds() / perJob)
	addr, err := harness.FreeAddr()
	if err != nil {
		return LatencyResult{}, err
	}
	conf, err := e.configFile("ingress-latency", topic, group, fmt.Sprintf("http: {addr: %q}\n", addr))
	if err != nil {
		return LatencyResult{}, err
	}
	in, err := e.start("ingress", []string{"SPOOL_CONFIG=" + conf})
	if err != nil {
		return LatencyResult{}, err
	}
	defer in.Stop()
	server := "http://" + addr
	if err := in.WaitFor(ctx, "ready", harness.HTTPOK(server+"/readyz")); err != nil {
		return LatencyResult{}, err
	}
	p, metricsURL, err := e.startProcessor("processor-latency", topic, group, "")
	if err != nil {
		return LatencyResult{}, err
	}
	defer p.Stop()
	client := &apiclient.Client{Server: server}
	// Warm up: one job through, so that the processor has joined its group
	// and owns every partition before the clock starts.
	var warm strings.Builder
	warmup := Workload{N: 1000, Seed: e.cfg.Seed + 2, Prefix: "warmup"}
	if err := warmup.WriteNDJSON(&warm); err != nil {
		return LatencyResult{}, err
	}
	if _, err := client.Upload(ctx, strings.NewReader(warm.String()), apiclient.UploadOptions{ContentType: "application/x-ndjson"}); err != nil {
		return LatencyResult{}, err
	}
	if err := e.waitCommitted(ctx, []*harness.Proc{p}, group, topic, int64(warmup.N), nil); err != nil {
		return LatencyResult{}, err
	}

	w := Workload{N: jobs * perJob, Seed: e.cfg.Seed + 1, Prefix: "latency"}
	bodies := make([]string, jobs)
	for j := range jobs {
		var b strings.Builder
		for i := j * perJob; i < (j+1)*perJob; i++ {
			if err := w.writeLine(&b, i); err != nil {
				return LatencyResult{}, err
			}
		}
		bodies[j] = b.String()
	}
	cpu := func() time.Duration {
		total := selfUsage().CPU
		for _, q := range []*harness.Proc{e.procs[0], in, p} { // e.procs[0] is the broker
			if u, err := q.Usage(); err == nil {
				total += u.CPU
			}
		}
		return total
	}
	batches0, err := scrapeBatches(ctx, metricsURL)
	if err != nil {
		return LatencyResult{}, err
	}
	cpu0, database0, t0 := cpu(), databaseCPU(), time.Now()
	machine0, err := harness.MachineBusy()
	if err != nil {
		return LatencyResult{}, err
	}
	accepted := make([]time.Time, jobs)
	ids := make([]string, jobs)
	every := time.Duration(float64(time.Second) * perJob / rate)
	var wg sync.WaitGroup
	var once sync.Once
	var failed error
	tick := time.NewTicker(every)
	defer tick.Stop()
	for j := range jobs {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := client.Upload(ctx, strings.NewReader(bodies[j]), apiclient.UploadOptions{ContentType: "application/x-ndjson"})
			if err != nil {
				once.Do(func() { failed = err })
				return
			}
			accepted[j], ids[j] = time.Now(), string(res.JobID)
		}()
	}
	wg.Wait()
	if failed != nil {
		return LatencyResult{}, failed
	}
	if err := e.waitCommitted(ctx, []*harness.Proc{p}, group, topic, int64(warmup.N+jobs*perJob), nil); err != nil {
		return LatencyResult{}, err
	}
	machine1, err := harness.MachineBusy()
	if err != nil {
		return LatencyResult{}, err
	}
	elapsed := time.Since(t0).Seconds()
	cores, machine, database := (cpu()-cpu0).Seconds()/elapsed, (machine1-machine0).Seconds()/elapsed, (databaseCPU()-database0).Seconds()/elapsed
	batches, err := scrapeBatches(ctx, metricsURL)
	if err != nil {
		return LatencyResult{}, err
	}
	batches = batches.Sub(batches0)
	var done map[string]time.Time
	for range 100 { // the last jobs settle just after their commit
		if done, err = e.db.JobsCompleted(ctx, ids); err != nil || len(done) == jobs {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return LatencyResult{}, err
	}
	if len(done) != jobs {
		return LatencyResult{}, fmt.Errorf("latency: %d of %d jobs completed", len(done), jobs)
	}
	lat := make([]time.Duration, 0, jobs)
	for j, id := range ids {
		lat = append(lat, max(0, done[id].Sub(accepted[j])))
	}
	slices.Sort(lat)
	return LatencyResult{Rate: rate, Jobs: jobs, PerJob: perJob, Cores: cores, Machine: machine, Database: database, Batches: batches,
		P50: lat[len(lat)/2], P99: lat[len(lat)*99/100], Max: lat[len(lat)-1]}, nil
}

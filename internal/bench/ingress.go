package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/pipeline"
)

// rawTopic receives the raw produce limit's records.
const rawTopic = "bench.raw"

// uploadWorkload is the workload grown past N to reach UploadBytes.
func (e *env) uploadWorkload() Workload {
	w := Workload{N: e.cfg.N, Seed: e.cfg.Seed}
	if need := int(e.cfg.UploadBytes / int64(w.AverageBytes())); need > w.N {
		w.N = need + 1
	}
	return w
}

// rawProduce is the limit for ingress: the same records as ingress makes of
// the upload, produced straight from memory by franz-go with ingress's
// producer settings, every one acknowledged.
func (e *env) rawProduce(ctx context.Context, w Workload) (Result, error) {
	if err := kafka.EnsureTopics(ctx, e.brokers, int32(e.cfg.Partitions), -1, rawTopic); err != nil {
		return Result{}, err
	}
	p, err := kafka.NewProducer(kafka.ProducerConfig{
		Brokers: e.brokers, MaxBufferedBytes: kafka.UploadBufferBytes, Linger: kafka.UploadLinger, Logger: e.logger,
	})
	if err != nil {
		return Result{}, err
	}
	defer p.Close()
	before, err := procUsage(os.Getpid())
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	var once sync.Once
	var failed error
	for i := range w.N {
		c := w.Command(i)
		rec, err := pipeline.NewRecord(&c, "bench-raw", "default", int64(i))
		if err != nil {
			once.Do(func() { failed = err })
			break
		}
		wg.Add(1)
		p.Produce(ctx, rawTopic, &rec, func(err error) {
			if err != nil {
				once.Do(func() { failed = err })
			}
			wg.Done()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if failed != nil {
		return Result{}, failed
	}
	after, err := procUsage(os.Getpid())
	if err != nil {
		return Result{}, err
	}
	if err := e.expectRecords(ctx, rawTopic, int64(w.N)); err != nil {
		return Result{}, err
	}
	return Result{System: "raw produce", Records: int64(w.N), Elapsed: elapsed, CPU: after.sub(before).CPU}, nil
}

// ingress uploads the workload as one NDJSON body, generated as it is sent,
// to an ingress process, and times it to the 202 (every record acknowledged
// by the broker).
func (e *env) ingress(ctx context.Context, w Workload) (Result, error) {
	addr, err := freeAddr()
	if err != nil {
		return Result{}, err
	}
	conf, err := e.configFile("ingress", addr)
	if err != nil {
		return Result{}, err
	}
	p, err := e.start("ingress", []string{"SPOOL_CONFIG=" + conf})
	if err != nil {
		return Result{}, err
	}
	server := "http://" + addr
	if err := p.waitFor(ctx, "ready", httpOK(server+"/readyz")); err != nil {
		return Result{}, err
	}
	before, err := p.usage()
	if err != nil {
		return Result{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(w.WriteNDJSON(pw)) }()
	client := &apiclient.Client{Server: server}
	start := time.Now()
	res, err := client.Upload(ctx, pr, apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	elapsed := time.Since(start)
	_ = pr.Close()
	if err != nil {
		return Result{}, err
	}
	after, err := p.usage()
	if err != nil {
		return Result{}, err
	}
	if res.Accepted != int64(w.N) || res.Rejected != 0 {
		return Result{}, fmt.Errorf("ingress accepted %d and rejected %d of %d records", res.Accepted, res.Rejected, w.N)
	}
	if err := e.expectRecords(ctx, "spool.commands", int64(w.N)); err != nil {
		return Result{}, err
	}
	u := after.sub(before)
	return Result{System: "ingress", Records: int64(w.N), Elapsed: elapsed, CPU: u.CPU, PeakRSS: u.PeakRSS}, nil
}

// expectRecords checks that topic holds exactly n records.
func (e *env) expectRecords(ctx context.Context, topic string, n int64) error {
	m, err := kafka.NewLagMonitor(e.brokers, topic, "spool-bench-count", time.Second, e.logger)
	if err != nil {
		return err
	}
	defer m.Close()
	got, err := m.Measure(ctx)
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("topic %s holds %d records, want %d", topic, got, n)
	}
	return nil
}

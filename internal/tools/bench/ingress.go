package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/tools/harness"
)

// Topics: the raw produce limit's records, and ingress's.
const (
	rawTopic     = "bench.raw"
	ingressTopic = "bench.ingress"
)

// uploadWorkload is the workload grown past N to reach UploadBytes.
func (e *env) uploadWorkload() Workload {
	w := Workload{N: e.cfg.N, Seed: e.cfg.Seed}
	if need := int(e.cfg.UploadBytes / int64(w.AverageBytes())); need > w.N {
		w.N = need + 1
	}
	return w
}

// ingress uploads the workload as one NDJSON body, generated as it is sent,
// to an ingress process, and times it to the 202 (every record acknowledged
// by the broker).
func (e *env) ingress(ctx context.Context, w Workload) (Result, error) {
	addr, err := harness.FreeAddr()
	if err != nil {
		return Result{}, err
	}
	conf, err := e.configFile("ingress", ingressTopic, benchGroup, fmt.Sprintf("http: {addr: %q}\n", addr))
	if err != nil {
		return Result{}, err
	}
	p, err := e.start("ingress", []string{"SPOOL_CONFIG=" + conf})
	if err != nil {
		return Result{}, err
	}
	server := "http://" + addr
	if err := p.WaitFor(ctx, "ready", harness.HTTPOK(server+"/readyz")); err != nil {
		return Result{}, err
	}
	before, err := p.Usage()
	if err != nil {
		return Result{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(w.WriteNDJSON(pw)) }()
	client := &apiclient.Client{Server: server}
	start, machine := time.Now(), machineBusy()
	res, err := client.Upload(ctx, pr, apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	elapsed, busy := time.Since(start), machineBusy()-machine
	_ = pr.Close()
	if err != nil {
		return Result{}, err
	}
	after, err := p.Usage()
	if err != nil {
		return Result{}, err
	}
	if res.Accepted != int64(w.N) || res.Rejected != 0 {
		return Result{}, fmt.Errorf("ingress accepted %d and rejected %d of %d records", res.Accepted, res.Rejected, w.N)
	}
	if err := e.expectRecords(ctx, ingressTopic, int64(w.N)); err != nil {
		return Result{}, err
	}
	u := after.Sub(before)
	return Result{System: sysIngress, Records: int64(w.N), Elapsed: elapsed, CPU: u.CPU, Machine: busy, PeakRSS: u.PeakRSS}, nil
}

// expectRecords checks that topic holds exactly n records.
func (e *env) expectRecords(ctx context.Context, topic string, n int64) error {
	m, err := kafka.NewLagMonitor(kafka.Plaintext(e.brokers...), topic, "spool-bench-count", time.Second, e.logger)
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

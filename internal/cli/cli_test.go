package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/cli"
	"github.com/spoolhq/spool/internal/pgtest"
)

// TestDevUploadWait is the README's first run: spoolctl dev, then spoolctl
// upload examples/customers.ndjson --wait, in-process, on free ports, with
// the real PostgreSQL and the embedded broker over TCP.
func TestDevUploadWait(t *testing.T) {
	db := pgtest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dev := startDev(ctx, t, db)

	var out, progress bytes.Buffer
	up := cli.New()
	up.SetArgs([]string{"upload", "../../examples/customers.ndjson", "--wait", "--server", dev.server})
	up.SetOut(&out)
	up.SetErr(&progress)
	uctx, ucancel := context.WithTimeout(ctx, 60*time.Second)
	defer ucancel()
	if err := up.ExecuteContext(uctx); err != nil {
		t.Fatalf("upload: %v (dev: %v)\n%s", err, dev.stop(), out.String())
	}
	require.Regexp(t, `state\s+completed`, out.String())
	require.Regexp(t, `accepted\s+25`, out.String())
	require.Regexp(t, `sent customers.ndjson: \d+ bytes, 25 records`, progress.String(), "the progress counts records")

	var n, maxVersion int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*), max(version) FROM customers`).Scan(&n, &maxVersion))
	require.Equal(t, 11, n, "12 customers, one deleted")
	require.Equal(t, 2, maxVersion)

	id := regexp.MustCompile(`^job (\S+) `).FindStringSubmatch(out.String())
	require.NotNil(t, id, out.String())
	var jobOut bytes.Buffer
	get := cli.New()
	get.SetArgs([]string{"jobs", "get", id[1], "-o", "json", "--server", dev.server})
	get.SetOut(&jobOut)
	require.NoError(t, get.ExecuteContext(uctx))
	require.Contains(t, jobOut.String(), `"state": "completed"`)
	require.Contains(t, jobOut.String(), `"applied": `)

	// The same upload twice under one key is one job: the second is replayed.
	var jobs []string
	for range 2 {
		var o bytes.Buffer
		again := cli.New()
		again.SetArgs([]string{"upload", "../../examples/customers.ndjson", "--idempotency-key", "retry-1", "--server", dev.server})
		again.SetOut(&o)
		again.SetErr(io.Discard)
		require.NoError(t, again.ExecuteContext(uctx), o.String())
		id := regexp.MustCompile(`^job (\S+) `).FindStringSubmatch(o.String())
		require.NotNil(t, id, o.String())
		jobs = append(jobs, id[1])
	}
	require.Equal(t, jobs[0], jobs[1])

	// --gzip compresses on the fly; the server decodes the same 25 records.
	var gz bytes.Buffer
	zipped := cli.New()
	zipped.SetArgs([]string{"upload", "../../examples/customers.ndjson", "--gzip", "--server", dev.server})
	zipped.SetOut(&gz)
	zipped.SetErr(io.Discard)
	require.NoError(t, zipped.ExecuteContext(uctx), gz.String())
	require.Contains(t, gz.String(), "received 25, accepted 25")

	// Standard input, with -o json and --wait: one JSON document, the
	// upload's answer and the job at its end.
	body, err := os.ReadFile("../../examples/customers.ndjson")
	require.NoError(t, err)
	var piped bytes.Buffer
	stdin := cli.New()
	stdin.SetArgs([]string{"upload", "-", "--format", "ndjson", "--wait", "-o", "json", "--timeout", "1m", "--server", dev.server})
	stdin.SetIn(bytes.NewReader(body))
	stdin.SetOut(&piped)
	stdin.SetErr(io.Discard)
	require.NoError(t, stdin.ExecuteContext(uctx), piped.String())
	var doc struct {
		Upload struct{ Accepted int } `json:"upload"`
		Job    struct{ State string } `json:"job"`
	}
	dec := json.NewDecoder(&piped)
	require.NoError(t, dec.Decode(&doc))
	require.False(t, dec.More(), "one document")
	require.Equal(t, 25, doc.Upload.Accepted)
	require.Equal(t, "completed", doc.Job.State)

	// --results keeps each command's outcome; jobs results lists them.
	var kept bytes.Buffer
	withResults := cli.New()
	withResults.SetArgs([]string{"upload", "../../examples/customers.ndjson", "--results", "--wait", "-o", "json", "--server", dev.server})
	withResults.SetOut(&kept)
	withResults.SetErr(io.Discard)
	require.NoError(t, withResults.ExecuteContext(uctx), kept.String())
	var keptDoc struct {
		Job struct {
			ID      string `json:"job_id"`
			Results bool   `json:"results"`
		} `json:"job"`
	}
	require.NoError(t, json.Unmarshal(kept.Bytes(), &keptDoc))
	require.True(t, keptDoc.Job.Results)
	var listed bytes.Buffer
	results := cli.New()
	results.SetArgs([]string{"jobs", "results", keptDoc.Job.ID, "--outcome", "duplicate", "--server", dev.server})
	results.SetOut(&listed)
	require.NoError(t, results.ExecuteContext(uctx))
	require.Contains(t, listed.String(), "25 commands", "every command of the example again, each a duplicate")

	// Exit codes a script can tell apart.
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"jobs", "get", "x", "--no-such-flag"}, cli.ExitUsage},
		{[]string{"bogus"}, cli.ExitUsage},
		{[]string{"jobs", "get"}, cli.ExitUsage},
		{[]string{"jobs", "get", "x", "-o", "yaml", "--server", dev.server}, cli.ExitUsage},
		{[]string{"upload", "data.txt", "--server", dev.server}, cli.ExitUsage},
		{[]string{"jobs", "get", "x", "--server", "http://127.0.0.1:1"}, cli.ExitUnreachable},
		{[]string{"jobs", "get", id[1], "--server", dev.server}, cli.ExitOK},
		{[]string{"jobs", "abort", id[1], "--server", dev.server}, cli.ExitFailed},   // completed already: 409
		{[]string{"jobs", "results", id[1], "--server", dev.server}, cli.ExitFailed}, // uploaded without --results: 409
		{[]string{"jobs", "results", id[1], "--outcome", "done", "--server", dev.server}, cli.ExitUsage},
	} {
		c := cli.New()
		c.SetArgs(tt.args)
		c.SetOut(io.Discard)
		c.SetErr(io.Discard)
		err := c.ExecuteContext(uctx)
		require.Equal(t, tt.code, cli.ExitCode(err), "spoolctl %v: %v", tt.args, err)
	}

	require.NoError(t, dev.stop(), "dev must stop cleanly on cancel")
}

// devStack is spoolctl dev running in-process on free ports.
type devStack struct {
	server, broker string
	stop           func() error
}

// startDev runs spoolctl dev against db with 3 partitions until ctx ends.
func startDev(ctx context.Context, t *testing.T, db *pgtest.DB) *devStack {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	dev := cli.New()
	dev.SetArgs([]string{"dev", "--http-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ingress-metrics-addr", "127.0.0.1:0",
		"--kafka-addr", "127.0.0.1:0", "--data-dir", t.TempDir(), "--partitions", "3", "--database-url", db.URL})
	dev.SetOut(pw)
	dev.SetErr(testWriter{t})
	var devErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		devErr = dev.ExecuteContext(ctx)
		pw.Close()
	}()
	s := &devStack{stop: func() error { cancel(); <-done; return devErr }}
	t.Cleanup(func() { _ = s.stop() })
	lines := bufio.NewScanner(pr)
	require.True(t, lines.Scan(), "dev printed nothing")
	m := regexp.MustCompile(`ingress (http://\S+)\s+broker (\S+)`).FindStringSubmatch(lines.Text())
	require.NotNil(t, m, lines.Text())
	go io.Copy(io.Discard, pr) //nolint:errcheck // drain
	s.server, s.broker = m[1], m[2]
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/tooltest"
	"github.com/spoolhq/spool/pipeline"
)

// failingUpload makes n commands with ids prefix-i over keys prefix-k-i:
// the one at index dead has a negative balance (the table's CHECK refuses
// it) and the one at index rejected has no key (ingress refuses it).
func failingUpload(prefix string, n, dead, rejected int) string {
	var b strings.Builder
	for i := range n {
		switch i {
		case rejected:
			fmt.Fprintf(&b, `{"id":"%s-%d","entity":"customers","version":1,"data":{"name":"no key"}}`+"\n", prefix, i)
		case dead:
			fmt.Fprintf(&b, `{"id":"%s-%d","entity":"customers","version":1,"data":{"customer_id":"%s-k-%d","balance":"-5.00"}}`+"\n", prefix, i, prefix, i)
		default:
			fmt.Fprintf(&b, `{"id":"%s-%d","entity":"customers","version":1,"data":{"customer_id":"%s-k-%d","balance":"5.00"}}`+"\n", prefix, i, prefix, i)
		}
	}
	return b.String()
}

func uploadNDJSON(t *testing.T, c *apiclient.Client, body string) pipeline.JobID {
	t.Helper()
	res, err := c.Upload(context.Background(), strings.NewReader(body), apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	require.NoError(t, err)
	return res.JobID
}

// TestJobListingAndFailures: GET /v1/jobs pages a tenant's jobs newest
// first and filters by state; GET /v1/jobs/{id}/failures lists every
// rejected and dead-lettered command by input index, as NDJSON and CSV.
func TestJobListingAndFailures(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx := context.Background()
	var ids []pipeline.JobID
	for i := range 5 {
		ids = append(ids, uploadNDJSON(t, s.client, failingUpload(fmt.Sprintf("j%d", i), 20, 7, -1)))
	}
	clean := uploadNDJSON(t, s.client, failingUpload("clean", 10, -1, -1))
	mixed := uploadNDJSON(t, s.client, failingUpload("mixed", 50, 30, 12))
	for _, id := range append(ids, clean, mixed) {
		s.wait(t, id)
	}
	j := s.wait(t, mixed)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state)
	require.Equal(t, int64(50), j.received)
	require.Equal(t, j.received, j.accepted+j.rejected, "received = accepted + rejected")
	require.Equal(t, j.accepted, j.c.Done(), "accepted = applied + duplicate + stale + conflict + dead_lettered")

	// Newest first, three to a page, following the cursor to the end.
	var listed []pipeline.JobID
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 5)
		page, err := s.client.Jobs(ctx, apiclient.JobsOptions{Limit: 3, Cursor: cursor})
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Jobs), 3)
		for _, j := range page.Jobs {
			listed = append(listed, j.JobID)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	want := append(append([]pipeline.JobID{}, ids...), clean, mixed)
	for i, k := 0, len(want)-1; i < k; i, k = i+1, k-1 {
		want[i], want[k] = want[k], want[i]
	}
	require.Equal(t, want, listed)

	done, err := s.client.Jobs(ctx, apiclient.JobsOptions{State: pipeline.JobCompleted})
	require.NoError(t, err)
	require.Len(t, done.Jobs, 1)
	require.Equal(t, clean, done.Jobs[0].JobID)
	require.Equal(t, 1.0, done.Jobs[0].Progress)
	_, err = s.client.Jobs(ctx, apiclient.JobsOptions{State: "finished"})
	require.ErrorContains(t, err, `state "finished" is not one of`)
	_, err = s.client.Jobs(ctx, apiclient.JobsOptions{Cursor: "garbage!"})
	require.ErrorContains(t, err, "cursor")

	var nd strings.Builder
	require.NoError(t, s.client.Failures(ctx, mixed, "ndjson", &nd))
	var fs []httpapi.FailureView
	for _, l := range strings.Split(strings.TrimSpace(nd.String()), "\n") {
		var f httpapi.FailureView
		require.NoError(t, json.Unmarshal([]byte(l), &f))
		fs = append(fs, f)
	}
	require.Len(t, fs, 2)
	require.Equal(t, int64(12), fs[0].Index)
	require.Equal(t, pipeline.CommandID("mixed-12"), fs[0].ID)
	require.Equal(t, pipeline.StageIngress, fs[0].Stage)
	require.Equal(t, pipeline.OutcomeRejected, fs[0].Outcome)
	require.Equal(t, pipeline.ClassMissingKey, fs[0].Class)
	require.Equal(t, int64(30), fs[1].Index)
	require.Equal(t, pipeline.CommandID("mixed-30"), fs[1].ID)
	require.Equal(t, pipeline.StageProcessor, fs[1].Stage)
	require.Equal(t, pipeline.OutcomeDeadLettered, fs[1].Outcome)
	require.Equal(t, pipeline.ClassConstraint, fs[1].Class)
	require.Contains(t, fs[1].Error, "check constraint")

	var cs strings.Builder
	require.NoError(t, s.client.Failures(ctx, mixed, "csv", &cs))
	rows, err := csv.NewReader(strings.NewReader(cs.String())).ReadAll()
	require.NoError(t, err)
	require.Equal(t, []string{"index", "id", "stage", "outcome", "error_class", "error"}, rows[0])
	require.Len(t, rows, 3)
	require.Equal(t, []string{"30", "mixed-30", "processor", "dead_lettered", "constraint_violation"}, rows[2][:5])

	var none strings.Builder
	require.NoError(t, s.client.Failures(ctx, clean, "csv", &none))
	require.Equal(t, "index,id,stage,outcome,error_class,error\n", none.String(), "no failures: the header alone")
	err = s.client.Failures(ctx, "no-such-job", "ndjson", &none)
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 404, apiErr.Status)
}

// TestFailuresStreamInBoundedMemory lists 200,000 failures: the answer
// arrives complete, in input order, while the server holds at most a
// buffer of it (the store streams rows; the handler flushes every 1,000).
func TestFailuresStreamInBoundedMemory(t *testing.T) {
	t.Parallel()
	s := newStack(t, nil)
	ctx := context.Background()
	id := uploadNDJSON(t, s.client, failingUpload("big", 1, -1, -1))
	const n = 200_000
	s.db.Exec(t, fmt.Sprintf(`INSERT INTO spool_job_failures (job_id, idx, command_id, stage, outcome, error_class, error)
		SELECT '%s', i, 'c-' || i, 'ingress', 'rejected', 'missing_key', repeat('x', 200) FROM generate_series(1, %d) i`, id, n))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	counter := &lineCounter{}
	require.NoError(t, s.client.Failures(ctx, id, "ndjson", counter))
	runtime.ReadMemStats(&after)
	require.Equal(t, n, counter.lines)
	// About 60 MB went over the wire; the heap of this process (client and
	// server alike) grew by far less.
	require.Less(t, int64(after.HeapInuse)-int64(before.HeapInuse), int64(30<<20))
}

type lineCounter struct{ lines int }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.lines += strings.Count(string(p), "\n")
	return len(p), nil
}

// TestUIInBrowser drives the /ui/ page in Debian's headless Chromium
// (playwright-core; scripts/ensure-browser installs both) with auth on: the
// page asks for the API key, lists a completed job, counts dead letters by
// error class and shows a job's failed records. SPOOL_UI_SCREENSHOTS keeps
// the screenshots in a directory of your choice.
func TestUIInBrowser(t *testing.T) {
	t.Parallel()
	script, err := filepath.Abs("../../test/ui/ui.mjs")
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(filepath.Dir(script), "node_modules", "playwright-core"))
	tooltest.Need(t, "playwright-core", "run scripts/ensure-browser (make test does)", err == nil && tooltest.OnPath("node"))
	sum := sha256.Sum256([]byte("ui-secret"))
	s := newStack(t, map[string]any{
		"auth.disabled": false,
		"auth.keys":     []map[string]any{{"tenant": "acme", "key_sha256": hex.EncodeToString(sum[:])}},
	})
	s.startProcessor(t, nil)
	s.client.APIKey = "ui-secret"
	completed := uploadNDJSON(t, s.client, failingUpload("ok", 10, -1, -1))
	failed := uploadNDJSON(t, s.client, failingUpload("bad", 10, 4, 2))
	require.Equal(t, pipeline.JobCompleted, s.wait(t, completed).state)
	require.Equal(t, pipeline.JobCompletedWithErrors, s.wait(t, failed).state)

	shots := os.Getenv("SPOOL_UI_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script, s.server, "ui-secret", string(completed), string(failed), "bad-4", shots)
	out, err := cmd.Output()
	var stderr string
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		stderr = string(ee.Stderr)
	}
	require.NoError(t, err, "node %s: %s", script, stderr)
	var seen struct {
		AskedForKey       bool       `json:"asked_for_key"`
		CompletedState    string     `json:"completed_state"`
		JobsListed        int        `json:"jobs_listed"`
		DeadLetterClasses []string   `json:"dead_letter_classes"`
		FailedState       string     `json:"failed_state"`
		Failures          [][]string `json:"failures"`
		HasFailedID       bool       `json:"has_failed_id"`
		JobDeadClasses    []string   `json:"job_dead_classes"`
		ConsoleErrors     []string   `json:"console_errors"`
	}
	require.NoError(t, json.Unmarshal(out, &seen), string(out))
	require.True(t, seen.AskedForKey)
	require.Equal(t, "completed", seen.CompletedState)
	require.Equal(t, 2, seen.JobsListed)
	require.Equal(t, []string{"constraint_violation"}, seen.DeadLetterClasses)
	require.Equal(t, "completed with errors", seen.FailedState)
	require.True(t, seen.HasFailedID, "the failed record is listed: %v", seen.Failures)
	require.Len(t, seen.Failures, 2)
	require.Equal(t, []string{"2", "bad-2", "ingress", "rejected", "missing_key"}, seen.Failures[0][:5])
	require.Equal(t, []string{"4", "bad-4", "processor", "dead lettered", "constraint_violation"}, seen.Failures[1][:5])
	require.Equal(t, []string{"constraint_violation"}, seen.JobDeadClasses)
	for _, e := range seen.ConsoleErrors {
		// The first call, before the key was given, is answered 401.
		require.Contains(t, e, "401 (Unauthorized)", "the page logged an error")
	}
	t.Logf("screenshots in %s", shots)
}

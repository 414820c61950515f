package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/pipeline"
)

type stack struct {
	brokers []string
	broker  *broker.Broker
	db      *pgtest.DB
	client  *apiclient.Client
	server  string
	// ops is ingress's metrics listener: /metrics, health, pprof.
	ops  string
	base map[string]any
}

// newStack runs ingress in-process against a real PostgreSQL schema and a
// kfake broker reached over TCP; processors are started separately.
func newStack(t *testing.T, overrides map[string]any) *stack {
	t.Helper()
	return newStackWith(t, overrides, nil)
}

// newStackWith is newStack with a hook that runs on the broker before
// ingress starts (to create topics by hand, say).
func newStackWith(t *testing.T, overrides map[string]any, before func(brokers []string)) *stack {
	t.Helper()
	return newStackOn(t, kafkatest.NewCluster(t), overrides, before)
}

// newStackOn is newStackWith on a broker of the test's choice.
func newStackOn(t *testing.T, b *broker.Broker, overrides map[string]any, before func(brokers []string)) *stack {
	t.Helper()
	db := pgtest.New(t)
	db.Exec(t, `CREATE TABLE customers (
		customer_id text PRIMARY KEY, name text, email text, balance numeric(18,2) CHECK (balance >= 0),
		version bigint NOT NULL, updated_at timestamptz)`)
	s := &stack{brokers: []string{b.Addr()}, broker: b, db: db, base: map[string]any{
		"database.url":             db.URL,
		"kafka.brokers":            []string{b.Addr()},
		"kafka.partitions":         4,
		"http.addr":                "127.0.0.1:0",
		"metrics.addr":             "127.0.0.1:0",
		"ingress.metrics_addr":     "127.0.0.1:0",
		"auth.disabled":            true,
		"processor.batch_max_wait": "50ms",
		"processor.batch_size":     1000,
		"entities": map[string]any{"customers": map[string]any{
			"table": db.Schema + ".customers", "key": []string{"customer_id"}, "version_column": "version",
		}},
	}}
	for k, v := range overrides {
		s.base[k] = v
	}
	if before != nil {
		before(s.brokers)
	}
	ingress, err := app.NewIngress(s.config(t, nil), testLogger(t))
	require.NoError(t, err)
	s.run(t, ingress)
	s.server = "http://" + ingress.Addr().String()
	s.ops = "http://" + ingress.MetricsAddr().String()
	s.client = &apiclient.Client{Server: s.server}
	waitReady(t, s.server)
	return s
}

// startStack is newStack with one processor.
func startStack(t *testing.T) *stack {
	t.Helper()
	s := newStack(t, nil)
	s.startProcessor(t, nil)
	return s
}

func (s *stack) config(t *testing.T, extra map[string]any) *config.Config {
	t.Helper()
	o := map[string]any{}
	for k, v := range s.base {
		o[k] = v
	}
	for k, v := range extra {
		o[k] = v
	}
	c, err := config.Load(config.Options{Overrides: o})
	require.NoError(t, err)
	return c
}

// startProcessor starts a processor; stop cancels it and waits until it has
// flushed and left the group.
func (s *stack) startProcessor(t *testing.T, extra map[string]any) (stop func()) {
	t.Helper()
	p, err := app.NewProcessor(s.config(t, extra), testLogger(t))
	require.NoError(t, err)
	return s.run(t, p)
}

func (s *stack) run(t *testing.T, r app.Runner) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("%T stopped: %v", r, err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitReady(t *testing.T, server string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(server + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("ingress never became ready")
}

func (s *stack) upload(t *testing.T, lines []string) *pipelineUpload {
	t.Helper()
	body := strings.Join(lines, "\n") + "\n"
	res, err := s.client.Upload(context.Background(), strings.NewReader(body), apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	require.NoError(t, err)
	return &pipelineUpload{id: res.JobID, accepted: res.Accepted, rejected: res.Rejected, rejections: len(res.Rejections)}
}

type pipelineUpload struct {
	id                 pipeline.JobID
	accepted, rejected int64
	rejections         int
}

func (s *stack) wait(t *testing.T, id pipeline.JobID) *jobCounts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	j, err := s.client.WaitJob(ctx, id, 100*time.Millisecond, nil)
	require.NoError(t, err, "job %s did not finish", id)
	return &jobCounts{state: j.State, c: j.Counts.Outcomes(), accepted: j.Counts.Accepted, rejected: j.Counts.Rejected, received: j.Counts.Received}
}

type jobCounts struct {
	state                        pipeline.JobState
	c                            pipeline.Counts
	accepted, rejected, received int64
}

type row struct {
	name, email, balance string
	version              int64
}

// workload is a deterministic set of uploads with its oracle: the final
// table computed independently of spool.
type workload struct {
	uploads  [][]string
	want     map[string]row // each key's highest version; deleted keys absent
	commands int            // distinct command ids
	repeats  int            // exact re-sends of earlier commands
}

// newWorkload makes commands over keys (so most keys get several versions,
// handed out shuffled), 3% deletes, and repeats re-sent in the same or a
// later upload, split over n uploads.
func newWorkload(seed uint64, commands, keys, repeats, n int) *workload {
	rng := rand.New(rand.NewPCG(seed, 2))
	versions := rng.Perm(commands)
	type command struct {
		line    string
		key     string
		version int64
		deleted bool
		data    row
	}
	cmds := make([]command, commands)
	for i := range cmds {
		key := fmt.Sprintf("cust-%d", rng.IntN(keys))
		v := int64(versions[i] + 1)
		c := command{key: key, version: v}
		if rng.IntN(100) < 3 {
			c.deleted = true
			c.line = fmt.Sprintf(`{"id":"c-%d","entity":"customers","op":"delete","version":%d,"data":{"customer_id":%q}}`, i, v, key)
		} else {
			c.data = row{name: fmt.Sprintf("n%d", i), email: fmt.Sprintf("e%d@example.com", i), balance: fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100)), version: v}
			c.line = fmt.Sprintf(`{"id":"c-%d","entity":"customers","version":%d,"data":{"customer_id":%q,"name":%q,"email":%q,"balance":%q}}`,
				i, v, key, c.data.name, c.data.email, c.data.balance)
		}
		cmds[i] = c
	}
	latest := map[string]command{}
	for _, c := range cmds {
		if o, ok := latest[c.key]; !ok || c.version > o.version {
			latest[c.key] = c
		}
	}
	w := &workload{uploads: make([][]string, n), want: map[string]row{}, commands: commands, repeats: repeats}
	for k, c := range latest {
		if !c.deleted {
			w.want[k] = c.data
		}
	}
	for i, c := range cmds {
		w.uploads[i*n/commands] = append(w.uploads[i*n/commands], c.line)
	}
	for range repeats {
		u := rng.IntN(n)
		src := rng.IntN((u + 1) * commands / n)
		w.uploads[u] = append(w.uploads[u], cmds[src].line)
	}
	for _, u := range w.uploads {
		rng.Shuffle(len(u), func(i, j int) { u[i], u[j] = u[j], u[i] })
	}
	return w
}

// run uploads every part and returns the job ids.
func (w *workload) run(t *testing.T, s *stack) []pipeline.JobID {
	t.Helper()
	return s.uploadAll(t, w.uploads)
}

// uploadAll uploads each of us, every command accepted, and returns the
// job ids.
func (s *stack) uploadAll(t *testing.T, us [][]string) []pipeline.JobID {
	t.Helper()
	var jobs []pipeline.JobID
	for _, u := range us {
		up := s.upload(t, u)
		require.Equal(t, int64(len(u)), up.accepted)
		jobs = append(jobs, up.id)
	}
	return jobs
}

// check waits for the jobs and checks them and the table against the
// oracle: every job completed with counts that add up, exactly the repeats
// counted as duplicates (nothing applied twice), every command accounted
// for (nothing lost), and the table equal to the oracle.
func (w *workload) check(t *testing.T, s *stack, jobs []pipeline.JobID) {
	t.Helper()
	var total pipeline.Counts
	for _, id := range jobs {
		j := s.wait(t, id)
		require.Equal(t, pipeline.JobCompleted, j.state)
		require.Equal(t, j.accepted, j.c.Applied+j.c.Duplicate+j.c.Stale, "job %s counts must add up: %+v", id, j.c)
		require.Zero(t, j.c.Conflict+j.c.DeadLettered)
		total.Applied += j.c.Applied
		total.Duplicate += j.c.Duplicate
		total.Stale += j.c.Stale
	}
	require.Equal(t, int64(w.repeats), total.Duplicate)
	require.Equal(t, int64(w.commands), total.Applied+total.Stale)
	requireTable(t, w.want, s.table(t))
}

// requireTable compares a table with its oracle, naming only the keys that
// differ.
func requireTable(t *testing.T, want, got map[string]row) {
	t.Helper()
	var diffs []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing, want %+v", k, w))
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%s: got %+v, want %+v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unexpected %+v", k, g))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Fatalf("the table must hold each key's highest version; %d keys differ:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
	}
}

func (s *stack) table(t *testing.T) map[string]row {
	t.Helper()
	got := map[string]row{}
	rows, err := s.db.Pool.Query(context.Background(), `SELECT customer_id, coalesce(name, ''), coalesce(email, ''), coalesce(balance::text, ''), version FROM customers`)
	require.NoError(t, err)
	for rows.Next() {
		var k string
		var r row
		require.NoError(t, rows.Scan(&k, &r.name, &r.email, &r.balance, &r.version))
		got[k] = r
	}
	require.NoError(t, rows.Err())
	return got
}

// TestEndToEnd drives 10,500 commands in four uploads — 5% of them repeated
// ids, several out-of-order versions per key, some deletes — and checks
// every job's counts and the final table against an oracle.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	w := newWorkload(1, 10_000, 3_000, 500, 4)
	w.check(t, s, w.run(t, s))
}

// TestUploadRejectsBadRecordsAlone: bad records are listed by index and the
// rest is applied; the job ends completed_with_errors.
func TestUploadRejectsBadRecordsAlone(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	lines := []string{
		`{"id":"a","entity":"customers","version":1,"data":{"customer_id":"k1","name":"ok"}}`,
		`{"id":"b","entity":"customers","version":1,"data":{"name":"no key"}}`,
		`not json`,
		`{"id":"c","entity":"customers","version":1,"data":{"customer_id":"k2","balance":"lots"}}`,
		`{"id":"d","entity":"customers","version":1,"data":{"customer_id":"k3"}}`,
	}
	resp, err := http.Post(s.server+"/v1/jobs", "application/x-ndjson", bytes.NewBufferString(strings.Join(lines, "\n")))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	var body struct {
		JobID      string `json:"job_id"`
		Received   int64  `json:"received"`
		Accepted   int64  `json:"accepted"`
		Rejected   int64  `json:"rejected"`
		StatusURL  string `json:"status_url"`
		Rejections []struct {
			Index int64  `json:"index"`
			ID    string `json:"id"`
			Error string `json:"error"`
		} `json:"rejections"`
	}
	raw, _ := io.ReadAll(resp.Body)
	require.NoError(t, json.Unmarshal(raw, &body), string(raw))
	require.Equal(t, "/v1/jobs/"+body.JobID, resp.Header.Get("Location"))
	require.Equal(t, resp.Header.Get("Location"), body.StatusURL)
	require.Equal(t, int64(5), body.Received)
	require.Equal(t, int64(2), body.Accepted)
	require.Equal(t, int64(3), body.Rejected)
	require.Len(t, body.Rejections, 3)
	require.Equal(t, int64(1), body.Rejections[0].Index)
	require.Contains(t, body.Rejections[0].Error, `key column "customer_id"`)
	require.Equal(t, int64(2), body.Rejections[1].Index)
	require.Equal(t, int64(3), body.Rejections[2].Index)
	require.Equal(t, "c", body.Rejections[2].ID)
	require.Contains(t, body.Rejections[2].Error, `column "balance" has type numeric(18,2)`)

	j := s.wait(t, pipeline.JobID(body.JobID))
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state)
	require.Equal(t, int64(2), j.c.Applied)
	require.Equal(t, int64(5), j.received)

	// A tenant-less lookup of an unknown job is a problem+json 404.
	resp2, err := http.Get(s.server + "/v1/jobs/nope")
	require.NoError(t, err)
	resp2.Body.Close()
	require.Equal(t, http.StatusNotFound, resp2.StatusCode)
	require.Equal(t, "application/problem+json", resp2.Header.Get("Content-Type"))
}

// TestPoisonIsDeadLetteredAlone: a command the database refuses (a CHECK
// constraint ingress cannot know) in the middle of one 5,000-command batch
// goes to the DLQ with its headers; the other 4,999 are applied.
func TestPoisonIsDeadLetteredAlone(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"kafka.partitions": 1, "processor.batch_size": 5000, "processor.batch_max_wait": "2s"})
	lines := poisonedUpload("p", 5000, 2500)
	up := s.upload(t, lines)
	s.startProcessor(t, nil) // after the upload, so that all 5,000 form one batch
	j := s.wait(t, up.id)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state)
	require.Equal(t, int64(4999), j.c.Applied)
	require.Equal(t, int64(1), j.c.DeadLettered)

	var n int
	require.NoError(t, s.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM customers`).Scan(&n))
	require.Equal(t, 4999, n)
	var failed string
	require.NoError(t, s.db.Pool.QueryRow(context.Background(), `SELECT idx || ' ' || command_id || ' ' || error_class || ' ' || stage
		FROM spool_job_failures WHERE job_id = $1`, up.id).Scan(&failed))
	require.Equal(t, "2500 p-2500 constraint_violation processor", failed)

	recs := s.dlqRecords(t, 1)
	require.Len(t, recs, 1)
	r := recs[0]
	require.Equal(t, "p-2500", string(r.Key))
	require.Equal(t, decodeJSON(t, []byte(lines[2500])), decodeJSON(t, r.Value), "the original value is kept")
	require.Equal(t, "constraint_violation", header(r, dlq.HeaderErrorClass))
	require.Contains(t, header(r, dlq.HeaderError), "check constraint")
	require.Equal(t, "spool.commands", header(r, dlq.HeaderSourceTopic))
	require.Equal(t, "0", header(r, dlq.HeaderSourcePartition))
	require.Equal(t, "2500", header(r, dlq.HeaderSourceOffset))
	require.Equal(t, "1", header(r, dlq.HeaderAttempt))
	require.Equal(t, string(up.id), header(r, pipeline.HeaderJobID), "the original headers are kept")
	require.Equal(t, "2500", header(r, pipeline.HeaderIndex))
	require.Equal(t, "p-2500", header(r, dlq.HeaderCommandID))
	require.NotEmpty(t, header(r, dlq.HeaderInstance))
}

// poisonedUpload makes n commands with ids prefix-0…; the one at index
// poison has a negative balance, which the table's CHECK refuses.
func poisonedUpload(prefix string, n, poison int) []string {
	lines := make([]string, n)
	for i := range n {
		balance := "1.00"
		if i == poison {
			balance = "-1.00"
		}
		lines[i] = fmt.Sprintf(`{"id":"%s-%d","entity":"customers","version":1,"data":{"customer_id":"k%d","balance":%q}}`, prefix, i, i, balance)
	}
	return lines
}

// decodeJSON decodes a command for comparison, without the op ingress
// fills in.
func decodeJSON(t *testing.T, v []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(v, &m))
	delete(m, "op")
	return m
}

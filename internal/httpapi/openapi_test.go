package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/spoolhq/spool/pipeline"
)

// The fakes below are pure stand-ins so that every route and status can be
// reached on purpose; the real behaviour is proven by internal/app's tests
// against PostgreSQL and Kafka.

type fakeJobs struct {
	mu       sync.Mutex
	jobs     map[pipeline.JobID]*pipeline.Job
	readFail bool
	pingFail bool
}

func (f *fakeJobs) CreateJob(_ context.Context, id pipeline.JobID, tenant string, o pipeline.JobOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := pipeline.JobReceiving
	if o.Parts {
		state = pipeline.JobOpen
	}
	f.jobs[id] = &pipeline.Job{ID: id, Tenant: tenant, State: state, Results: o.Results, InParts: o.Parts}
	return nil
}
func (f *fakeJobs) AddFailures(context.Context, pipeline.JobID, []pipeline.Failure) error { return nil }
func (f *fakeJobs) ProgressJob(context.Context, pipeline.JobID, pipeline.UploadResult) error {
	return nil
}

func (f *fakeJobs) FinishUpload(context.Context, pipeline.JobID, pipeline.UploadResult) error {
	return nil
}
func (f *fakeJobs) Job(_ context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readFail {
		return nil, errors.New("database away")
	}
	if j, ok := f.jobs[id]; ok && j.Tenant == tenant {
		return j, nil
	}
	return nil, pipeline.ErrJobNotFound
}
func (f *fakeJobs) AbortJob(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	j, err := f.Job(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if j.State.Finished() {
		return nil, &pipeline.JobFinishedError{ID: id, State: j.State}
	}
	j.State = pipeline.JobAborted
	return j, nil
}
func (f *fakeJobs) StartPart(ctx context.Context, tenant string, id pipeline.JobID, n int) error {
	j, err := f.Job(ctx, tenant, id)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if j.State != pipeline.JobOpen {
		return &pipeline.JobFinishedError{ID: id, State: j.State}
	}
	for _, p := range j.Parts {
		if p.Number == n {
			return pipeline.ErrPartReceived
		}
	}
	return nil
}
func (f *fakeJobs) HeartbeatPart(context.Context, pipeline.JobID, int, pipeline.UploadResult) error {
	return nil
}
func (f *fakeJobs) FinishPart(_ context.Context, id pipeline.JobID, p pipeline.Part, _ []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p.State != "" {
		f.jobs[id].Parts = append(f.jobs[id].Parts, p)
	}
	return nil
}
func (f *fakeJobs) CompleteJob(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error) {
	j, err := f.Job(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if j.State != pipeline.JobOpen {
		return nil, &pipeline.JobFinishedError{ID: id, State: j.State}
	}
	j.State = pipeline.JobQueued
	return j, nil
}
func (f *fakeJobs) Jobs(_ context.Context, tenant string, q pipeline.JobQuery) ([]*pipeline.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readFail {
		return nil, errors.New("database away")
	}
	var out []*pipeline.Job
	for _, j := range f.jobs {
		if j.Tenant == tenant && len(out) < q.Limit {
			out = append(out, j)
		}
	}
	return out, nil
}
func (f *fakeJobs) Failures(ctx context.Context, tenant string, id pipeline.JobID, fn func(pipeline.Failure) error) error {
	if _, err := f.Job(ctx, tenant, id); err != nil {
		return err
	}
	return fn(pipeline.Failure{Index: 3, ID: "c-3", Stage: pipeline.StageIngress, Outcome: pipeline.OutcomeRejected, Class: pipeline.ClassMissingKey, Error: "no id"})
}
func (f *fakeJobs) Results(ctx context.Context, tenant string, id pipeline.JobID, _ []pipeline.Outcome, fn func(pipeline.Result) error) error {
	j, err := f.Job(ctx, tenant, id)
	if err != nil {
		return err
	}
	if !j.Results {
		return pipeline.ErrNoResults
	}
	return fn(pipeline.Result{Index: 0, ID: "c-0", Outcome: pipeline.OutcomeApplied})
}
func (f *fakeJobs) DeadLetters(context.Context, string) (map[pipeline.ErrorClass]int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.readFail {
		return nil, errors.New("database away")
	}
	return map[pipeline.ErrorClass]int64{pipeline.ClassConstraint: 2}, nil
}
func (f *fakeJobs) Ping(context.Context) error {
	if f.pingFail {
		return errors.New("database away")
	}
	return nil
}

type fakeProducer struct{ fail error }

func (p *fakeProducer) Produce(_ context.Context, _ string, _ *pipeline.Record, done func(error)) {
	done(p.fail)
}
func (p *fakeProducer) Ping(context.Context) error { return p.fail }

type fakeIdempotency struct {
	mu   sync.Mutex
	keys map[string]*pipeline.IdempotentRecord
}

func (f *fakeIdempotency) ClaimIdempotencyKey(_ context.Context, tenant, key string, _ time.Duration) (bool, *pipeline.IdempotentRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.keys[tenant+"/"+key]; ok {
		return false, r, nil
	}
	f.keys[tenant+"/"+key] = &pipeline.IdempotentRecord{InFlight: true}
	return true, nil, nil
}
func (f *fakeIdempotency) HeartbeatIdempotencyKey(context.Context, string, string) error { return nil }
func (f *fakeIdempotency) FinishIdempotencyKey(_ context.Context, tenant, key string, r *pipeline.IdempotentRecord) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r == nil {
		delete(f.keys, tenant+"/"+key)
	} else {
		f.keys[tenant+"/"+key] = r
	}
	return nil
}

type served struct {
	pattern string
	status  int
}

// routeRecorder is an Observer that records the routes and codes served.
type routeRecorder struct {
	nopObserver
	mu   sync.Mutex
	seen map[served]bool
}

func (r *routeRecorder) Request(route string, code int, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[served{route, code}] = true
}

// TestOpenAPIDescribesEveryRouteAndStatus drives every route to every
// status it can answer and checks /openapi.yaml describes each pair.
func TestOpenAPIDescribesEveryRouteAndStatus(t *testing.T) {
	t.Parallel()
	jobs := &fakeJobs{jobs: map[pipeline.JobID]*pipeline.Job{}}
	producer := &fakeProducer{}
	idem := &fakeIdempotency{keys: map[string]*pipeline.IdempotentRecord{
		"acme/running": {InFlight: true},
		"acme/done":    {Fingerprint: []byte("another body"), Status: 202, Body: []byte("{}")},
	}}
	var backlog int64
	sum := sha256.Sum256([]byte("secret"))
	limited := sha256.Sum256([]byte("limited"))
	var n atomic.Int64
	// The server tells the observer each request's route pattern and code.
	seen := &routeRecorder{seen: map[served]bool{}}
	s := New(Config{
		Jobs: jobs, Producer: producer, Idempotency: idem, IdempotencyWindow: time.Hour,
		Catalog: FixedCatalog{"customers": {Name: "customers", Schema: "public", Table: "customers",
			Key: []string{"id"}, Columns: map[string]pipeline.Column{"id": {Name: "id", Type: "text"}}}},
		Topic: "t", Keys: Keys{hex.EncodeToString(sum[:]): {Tenant: "acme"},
			hex.EncodeToString(limited[:]): {Tenant: "acme", Entities: map[string]bool{"orders": true}}},
		Limits: Limits{MaxBodyBytes: 1 << 10, MaxRecordBytes: 256, MaxRecords: 100, MaxRejections: 10, MaxLag: 1000,
			ReadIdleTimeout: time.Second, MinBytesPerSecond: 1 << 20},
		Backlog:  func() int64 { return backlog },
		NewJobID: func() pipeline.JobID { return pipeline.JobID("job-" + strconv.Itoa(int(n.Add(1)))) },
		Observer: seen,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	srv := httptest.NewServer(s)
	defer srv.Close()

	do := func(method, path, ct, key, body string, want int) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		if !strings.Contains(path, "z") && path != "/openapi.yaml" && method != "" {
			req.Header.Set("Authorization", "Bearer secret")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, "%s %s", method, path)
	}
	good := `{"id":"a","entity":"customers","data":{"id":"x"}}`
	do("POST", "/v1/jobs", "application/x-ndjson", "", good, 202)
	do("POST", "/v1/jobs", "application/json", "", `{}`, 400)
	do("POST", "/v1/jobs", "application/x-ndjson", "running", good, 409)
	do("POST", "/v1/jobs", "application/x-ndjson", "", strings.Repeat(" ", 2<<10), 413)
	do("POST", "/v1/jobs", "text/plain", "", good, 415)
	// A key limited to other entities: 403 for ?entity=.
	req, err := http.NewRequest("POST", srv.URL+"/v1/jobs?entity=customers", strings.NewReader(good))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Authorization", "Bearer limited")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	// A body that trickles under the minimum rate: 408.
	pr, pw := io.Pipe()
	go func() {
		defer pw.Close()
		for range 50 {
			if _, err := pw.Write([]byte(" ")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	req, err = http.NewRequest("POST", srv.URL+"/v1/jobs", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Authorization", "Bearer secret")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode, string(b))
	do("POST", "/v1/jobs", "application/x-ndjson", "done", good, 422)
	backlog = 5000
	do("POST", "/v1/jobs", "application/x-ndjson", "", good, 429)
	backlog = 0
	producer.fail = errors.New("broker away")
	do("POST", "/v1/jobs", "application/x-ndjson", "", good, 503)
	producer.fail = nil
	do("GET", "/v1/jobs/job-1", "", "", "", 200)
	do("GET", "/v1/jobs/nope", "", "", "", 404)
	do("GET", "/v1/jobs?state=completed&limit=10", "", "", "", 200)
	do("GET", "/v1/jobs?state=done", "", "", "", 400)
	do("GET", "/v1/jobs/job-1/failures?format=csv", "", "", "", 200)
	do("GET", "/v1/jobs/job-1/failures?format=xml", "", "", "", 400)
	do("GET", "/v1/jobs/nope/failures", "", "", "", 404)
	do("GET", "/v1/dead-letters", "", "", "", 200)
	jobs.jobs["kept"] = &pipeline.Job{ID: "kept", Tenant: "acme", State: pipeline.JobCompleted, Results: true}
	do("GET", "/v1/jobs/kept/results?outcome=applied,rejected&format=csv", "", "", "", 200)
	do("GET", "/v1/jobs/kept/results?outcome=done", "", "", "", 400)
	do("GET", "/v1/jobs/job-1/results", "", "", "", 409)
	do("GET", "/v1/jobs/nope/results", "", "", "", 404)
	do("POST", "/v1/jobs?results=maybe", "application/x-ndjson", "", good, 400)
	// Jobs in parts: open (the next job id), a part, its replay and a
	// part with other bytes, completion.
	do("POST", "/v1/jobs?parts=true", "", "", "", 201)
	open := "/v1/jobs/job-" + strconv.Itoa(int(n.Load()))
	do("POST", "/v1/jobs?parts=maybe", "", "", "", 400)
	do("PUT", open+"/parts/1", "application/x-ndjson", "", good, 202)
	do("PUT", open+"/parts/1", "application/x-ndjson", "", good, 202)
	do("PUT", open+"/parts/1", "application/x-ndjson", "", good+"\n"+good, 409)
	do("PUT", open+"/parts/0", "application/x-ndjson", "", good, 400)
	do("PUT", "/v1/jobs/nope/parts/1", "application/x-ndjson", "", good, 404)
	do("POST", open+"/complete", "", "", "", 200)
	do("POST", open+"/complete", "", "", "", 409)
	do("PUT", open+"/parts/2", "application/x-ndjson", "", good, 409)
	do("POST", "/v1/jobs/nope/complete", "", "", "", 404)
	do("POST", "/v1/jobs/job-1/abort", "", "", "", 200)
	do("POST", "/v1/jobs/job-1/abort", "", "", "", 409)
	do("POST", "/v1/jobs/nope/abort", "", "", "", 404)
	jobs.readFail = true
	do("POST", "/v1/jobs/job-1/abort", "", "", "", 503)
	do("GET", "/v1/jobs/kept/results", "", "", "", 503)
	do("POST", open+"/complete", "", "", "", 503)
	do("GET", "/v1/jobs/job-1", "", "", "", 503)
	do("GET", "/v1/jobs", "", "", "", 503)
	do("GET", "/v1/jobs/job-1/failures", "", "", "", 503)
	do("GET", "/v1/dead-letters", "", "", "", 503)
	do("GET", "/healthz", "", "", "", 200)
	do("GET", "/readyz", "", "", "", 200)
	jobs.pingFail = true
	do("GET", "/readyz", "", "", "", 503)
	do("GET", "/openapi.yaml", "", "", "", 200)
	// Without a key: 401 on both API routes.
	for _, r := range []struct{ method, path string }{{"POST", "/v1/jobs"}, {"GET", "/v1/jobs/job-1"}, {"GET", "/v1/jobs"},
		{"GET", "/v1/jobs/job-1/failures"}, {"GET", "/v1/dead-letters"}, {"POST", "/v1/jobs/job-1/abort"},
		{"GET", "/v1/jobs/job-1/results"}, {"PUT", "/v1/jobs/job-1/parts/1"}, {"POST", "/v1/jobs/job-1/complete"}} {
		req, err := http.NewRequest(r.method, srv.URL+r.path, strings.NewReader(good))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}

	var doc struct {
		Paths map[string]map[string]struct {
			Responses map[string]any `yaml:"responses"`
		} `yaml:"paths"`
	}
	require.NoError(t, yaml.Unmarshal(openAPI, &doc))
	routes := map[string]bool{}
	srv.Close() // every handler has returned
	seen.mu.Lock()
	defer seen.mu.Unlock()
	for sv := range seen.seen {
		method, path, ok := strings.Cut(sv.pattern, " ")
		require.True(t, ok, "route %q has no method", sv.pattern)
		routes[sv.pattern] = true
		op, ok := doc.Paths[path][strings.ToLower(method)]
		require.True(t, ok, "openapi.yaml does not describe %s", sv.pattern)
		require.Contains(t, op.Responses, strconv.Itoa(sv.status), "openapi.yaml does not describe %d for %s", sv.status, sv.pattern)
	}
	described := 0
	for _, ops := range doc.Paths {
		described += len(ops)
	}
	require.Equal(t, described, len(routes), "every described route is served, and every served one was exercised: %v", routes)
}

// TestUIIsServed: the page and its files come from the binary, with headers
// that keep it to its own origin; / and /ui lead to it.
func TestUIIsServed(t *testing.T) {
	t.Parallel()
	s := New(Config{Jobs: &fakeJobs{}, Producer: &fakeProducer{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for path, want := range map[string]string{"/ui/": "<title>spool", "/ui/app.js": "loadFailures", "/ui/style.css": ".progress"} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		require.Equal(t, http.StatusOK, rec.Code, path)
		require.Contains(t, rec.Body.String(), want, path)
		require.Contains(t, rec.Header().Get("Content-Security-Policy"), "default-src 'self'")
	}
	for _, path := range []string{"/", "/ui"} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		require.Equal(t, "/ui/", rec.Header().Get("Location"), path)
	}
}

// TestRequestIDs: every answer carries a request id — the client's when it
// is sane — and the request's log lines carry it too.
func TestRequestIDs(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	s := New(Config{Jobs: &fakeJobs{readFail: true}, Producer: &fakeProducer{}, Logger: logger})
	for id, want := range map[string]string{"trace-42": "trace-42", "has space": "", strings.Repeat("x", 65): ""} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/v1/jobs/j", nil)
		req.Header.Set("X-Request-ID", id)
		s.ServeHTTP(rec, req)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
		got := rec.Header().Get("X-Request-ID")
		if want == "" {
			require.Regexp(t, `^[0-9a-f]{16}$`, got, "a fresh id replaces %q", id)
		} else {
			require.Equal(t, want, got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	require.Contains(t, logs.String(), "request_id=trace-42")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
)

type answer struct {
	status   int
	replayed string
	location string
	retry    string // Retry-After
	body     map[string]any
}

func (s *stack) postKeyed(t *testing.T, key, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.server+"/v1/jobs?entity=customers", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, replayed: resp.Header.Get("Idempotent-Replayed"), location: resp.Header.Get("Location"),
		retry: resp.Header.Get("Retry-After")}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func (s *stack) jobCount(t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, s.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM spool_jobs`).Scan(&n))
	return n
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	body := `{"id":"i1","version":1,"data":{"customer_id":"k1"}}` + "\n" + `{"id":"i2","version":1,"data":{}}`

	first := s.postKeyed(t, "key-1", body)
	require.Equal(t, http.StatusAccepted, first.status)
	require.Empty(t, first.replayed)

	again := s.postKeyed(t, `"key-1"`, body) // the structured-field form names the same key
	require.Equal(t, http.StatusAccepted, again.status)
	require.Equal(t, "true", again.replayed)
	require.Equal(t, first.location, again.location)
	require.Equal(t, first.body, again.body, "the first answer, rejections included, is replayed")
	require.Equal(t, 1, s.jobCount(t))

	other := s.postKeyed(t, "key-1", body+"\n"+`{"id":"i3","version":1,"data":{"customer_id":"k3"}}`)
	require.Equal(t, http.StatusUnprocessableEntity, other.status)
	require.Contains(t, other.body["detail"], "different request")

	bad := s.postKeyed(t, strings.Repeat("x", 256), body)
	require.Equal(t, http.StatusBadRequest, bad.status)
	require.Equal(t, 1, s.jobCount(t))
}

// TestIdempotencyKeyConcurrent: eight uploads with one key at once give
// exactly one job; the others are told it is in progress or get its answer.
func TestIdempotencyKeyConcurrent(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	var lines []string
	for i := range 3000 {
		lines = append(lines, fmt.Sprintf(`{"id":"c-%d","version":1,"data":{"customer_id":"k%d"}}`, i, i))
	}
	body := strings.Join(lines, "\n")
	var wg sync.WaitGroup
	answers := make([]answer, 8)
	for i := range answers {
		wg.Add(1)
		go func() { defer wg.Done(); answers[i] = s.postKeyed(t, "same", body) }()
	}
	wg.Wait()
	jobs := map[any]bool{}
	for _, a := range answers {
		switch a.status {
		case http.StatusAccepted:
			jobs[a.body["job_id"]] = true
		case http.StatusConflict:
			// Retry when the owner's lease would run out (postgres.UploadLease, 10 s).
			secs, err := strconv.Atoi(a.retry)
			require.NoError(t, err, "a 409 says when to retry")
			require.True(t, secs >= 1 && secs <= 11, a.retry)
		default:
			t.Fatalf("unexpected answer %d %v", a.status, a.body)
		}
	}
	require.Len(t, jobs, 1, "one job, whoever answered")
	require.Equal(t, 1, s.jobCount(t))
	// Once the first is done, every retry gets its answer.
	a := s.postKeyed(t, "same", body)
	require.Equal(t, http.StatusAccepted, a.status)
	require.Equal(t, "true", a.replayed)
	require.True(t, jobs[a.body["job_id"]])
}

// TestIdempotencyKey5xxNotStored: a 503 is not remembered, so the retry
// with the same key runs anew and succeeds.
func TestIdempotencyKey5xxNotStored(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	var failing atomic.Bool
	failing.Store(true)
	s.refuseProduces(kerr.InvalidRecord.Code, failing.Load) // not retriable: fails the produce at once
	body := `{"id":"f1","version":1,"data":{"customer_id":"f1"}}`
	first := s.postKeyed(t, "retry-me", body)
	require.Equal(t, http.StatusServiceUnavailable, first.status, "%v", first.body)
	failing.Store(false)
	second := s.postKeyed(t, "retry-me", body)
	require.Equal(t, http.StatusAccepted, second.status, "%v", second.body)
	require.Empty(t, second.replayed)
}

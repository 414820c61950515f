package apiclient_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/pipeline"
)

// TestResend: an upload answered 409 with a Retry-After (its key still in
// flight) is sent again with the same key and body until it goes through;
// a 422, and a 409 without Retry-After (other bytes for a part, a job no
// longer open), are final.
func TestResend(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		require.Equal(t, "k-1", r.Header.Get("Idempotency-Key"))
		require.Equal(t, "{}\n", string(body))
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusConflict)
		case 2:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"job_id":"j-1","accepted":1}`)
		case 3:
			w.WriteHeader(http.StatusUnprocessableEntity)
		default:
			w.WriteHeader(http.StatusConflict)
		}
	}))
	defer srv.Close()
	c := &apiclient.Client{Server: srv.URL}
	send := func(ctx context.Context) (*httpapi.UploadView, error) {
		return c.Upload(ctx, strings.NewReader("{}\n"), apiclient.UploadOptions{ContentType: "application/x-ndjson", IdempotencyKey: "k-1"})
	}
	var notified []int
	res, err := apiclient.Resend(context.Background(), send, func(attempt int, err error, wait time.Duration) {
		notified = append(notified, attempt)
		require.InDelta(t, time.Second, wait, float64(300*time.Millisecond), "1 s ± 30%")
	})
	require.NoError(t, err)
	require.EqualValues(t, "j-1", res.JobID)
	require.Equal(t, []int{1}, notified)

	_, err = apiclient.Resend(context.Background(), send, nil)
	var apiErr *apiclient.Error
	require.True(t, errors.As(err, &apiErr))
	require.Equal(t, http.StatusUnprocessableEntity, apiErr.Status)
	require.EqualValues(t, 3, calls.Load(), "a 422 is not sent again")
	_, err = apiclient.Resend(context.Background(), send, nil)
	require.True(t, errors.As(err, &apiErr))
	require.Equal(t, http.StatusConflict, apiErr.Status)
	require.EqualValues(t, 4, calls.Load(), "a 409 without Retry-After is not sent again")
	require.True(t, apiclient.Resendable(errors.New("connection reset by peer")))
	require.True(t, apiclient.Resendable(&apiclient.Error{Status: http.StatusRequestTimeout, RetryAfter: time.Second}), "a part cut off")
	require.False(t, apiclient.Resendable(&apiclient.Error{Status: http.StatusRequestTimeout}), "an upload's kept 408")
	_, openErr := os.Open(filepath.Join(t.TempDir(), "missing.ndjson"))
	require.False(t, apiclient.Resendable(fmt.Errorf("uploading: %w", openErr)), "a missing file is not sent again")
}

// TestResendFollowsAConflictsRetryAfter: a 409 says when the key's lease
// runs out, and the resend comes then, sooner than its own backoff would.
func TestResendFollowsAConflictsRetryAfter(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		case 2:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusConflict)
		default:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"job_id":"j-1","accepted":1}`)
		}
	}))
	defer srv.Close()
	c := &apiclient.Client{Server: srv.URL}
	var waits []time.Duration
	_, err := apiclient.Resend(context.Background(), func(ctx context.Context) (*httpapi.UploadView, error) {
		return c.Upload(ctx, strings.NewReader("{}\n"), apiclient.UploadOptions{ContentType: "application/x-ndjson", IdempotencyKey: "k-1"})
	}, func(_ int, _ error, wait time.Duration) { waits = append(waits, wait) })
	require.NoError(t, err)
	require.Len(t, waits, 2)
	require.GreaterOrEqual(t, waits[0], time.Second, "a 503's Retry-After is a floor")
	require.Equal(t, time.Second, waits[1], "the second wait is the 409's, not the backoff's 2 s")
}

// TestWaitJobOutlastsARestart: polls that get no answer (an ingress
// restarting) are made again, and the wait ends with the job's answer.
func TestWaitJobOutlastsARestart(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			conn, _, err := w.(http.Hijacker).Hijack()
			require.NoError(t, err)
			conn.Close() // no answer at all
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"job_id":"j-1","state":"completed","progress":1}`)
	}))
	defer srv.Close()
	c := &apiclient.Client{Server: srv.URL}
	j, err := c.WaitJob(context.Background(), "j-1", 10*time.Millisecond, nil)
	require.NoError(t, err)
	require.Equal(t, pipeline.JobCompleted, j.State)
	require.EqualValues(t, 3, calls.Load())
}

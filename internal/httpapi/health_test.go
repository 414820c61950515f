package httpapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/tools/harness"
)

// TestReadyzAnswersGenericReason: /readyz names the dependency that is down
// and nothing of its error (hosts, users, database names); the error goes
// to the log, once per outage rather than once per probe.
func TestReadyzAnswersGenericReason(t *testing.T) {
	t.Parallel()
	var logs harness.LockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	var mu sync.Mutex
	var pingErr error
	pg := Dependency{Name: "PostgreSQL", Ping: func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		return pingErr
	}}
	setErr := func(err error) { mu.Lock(); pingErr = err; mu.Unlock() }
	srv := httptest.NewServer(HealthHandler(logger, pg))
	defer srv.Close()
	probe := func() (int, string) {
		resp, err := http.Get(srv.URL + "/readyz")
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}

	code, _ := probe()
	require.Equal(t, http.StatusOK, code)
	setErr(errors.New("failed to connect to `user=spool database=orders`: db.internal:5432: dial error"))
	for range 5 {
		code, body := probe()
		require.Equal(t, http.StatusServiceUnavailable, code)
		require.Contains(t, body, "PostgreSQL is unreachable")
		for _, secret := range []string{"db.internal", "spool", "orders", "dial"} {
			require.NotContains(t, body, secret)
		}
	}
	require.Equal(t, 1, strings.Count(logs.String(), "dependency unreachable"), logs.String())
	require.Contains(t, logs.String(), "level=WARN")
	require.Contains(t, logs.String(), "dependency=PostgreSQL")
	require.Contains(t, logs.String(), "db.internal:5432")

	setErr(nil)
	code, _ = probe()
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, 1, strings.Count(logs.String(), "reachable again"), logs.String())
	setErr(errors.New("down again"))
	probe()
	require.Equal(t, 2, strings.Count(logs.String(), "dependency unreachable"), logs.String())
}

// TestDependencyStatesRelogOnChange: a dependency that stays down with a
// changing error is logged again at most once a minute.
func TestDependencyStatesRelogOnChange(t *testing.T) {
	t.Parallel()
	var logs harness.LockedBuffer
	s := newDependencyStates(slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	count := func() int { return strings.Count(logs.String(), "dependency unreachable") }

	s.observe("Kafka", errors.New("dial 10.0.0.1:9092"))
	s.observe("Kafka", errors.New("dial 10.0.0.2:9092"))
	require.Equal(t, 1, count(), "a changed error within the minute is not logged")
	now = now.Add(relogEvery)
	s.observe("Kafka", errors.New("dial 10.0.0.2:9092"))
	require.Equal(t, 2, count(), "a changed error after the minute is")
	now = now.Add(relogEvery)
	s.observe("Kafka", errors.New("dial 10.0.0.2:9092"))
	require.Equal(t, 2, count(), "the same error is not")
}

package main_test

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/tools/harness"
)

// TestSIGTERMExitsZero runs the real binary: it becomes ready, and on
// SIGTERM stops fetching, flushes, leaves the group and exits 0.
func TestSIGTERMExitsZero(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "processor")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	db := pgtest.New(t)
	db.Exec(t, `CREATE TABLE customers (customer_id text PRIMARY KEY, version bigint NOT NULL)`)
	b := kafkatest.NewCluster(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "spool.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte(`
auth: {disabled: true}
entities:
  customers: {table: `+db.Schema+`.customers, key: [customer_id], version_column: version}
`), 0o600))

	var logs harness.LockedBuffer
	cmd := exec.Command(bin, "--config", cfg, "--metrics-addr", addr)
	cmd.Env = append(os.Environ(), "SPOOL_DATABASE_URL="+db.URL, "SPOOL_KAFKA_BROKERS="+b.Addr(), "SPOOL_KAFKA_PARTITIONS=2")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "processor never became ready")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("processor did not stop on SIGTERM\n%s", logs.String())
	}
	require.Contains(t, logs.String(), "stopped cleanly")
}

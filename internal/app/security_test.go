package app_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/cli"
	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/pipeline"
)

// TestTLSAndSASL runs ingress, a processor and spoolctl dlq replay against
// a broker that speaks only TLS (a CA made for the test) and requires
// SCRAM-SHA-512: commands are applied, poison is dead-lettered and
// replayed once its cause is gone. A wrong password, an untrusted CA and
// plaintext to the TLS listener each stop a processor at start-up with a
// line that names the setting to look at, instead of waiting (2 minutes)
// for a broker that will never let it in.
func TestTLSAndSASL(t *testing.T) {
	t.Parallel()
	b, ca := kafkatest.NewSecureCluster(t, broker.User{Mechanism: "SCRAM-SHA-512", Name: "spool", Password: "s3cret-pw"})
	passwordFile := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(passwordFile, []byte("s3cret-pw\n"), 0o600)) // as a mounted secret ends
	secure := map[string]any{
		"kafka.tls.ca_file":        ca,
		"kafka.sasl.mechanism":     "SCRAM-SHA-512",
		"kafka.sasl.username":      "spool",
		"kafka.sasl.password_file": passwordFile,
	}
	s := newStackOn(t, b, secure, nil)
	s.startProcessor(t, nil)

	var lines []string
	for i := range 20 {
		balance := "10.00"
		if i%10 == 3 {
			balance = "-5.00" // refused by the CHECK: dead-lettered
		}
		lines = append(lines, fmt.Sprintf(`{"id":"s-%d","entity":"customers","version":1,"data":{"customer_id":"k%d","balance":%q}}`, i, i, balance))
	}
	up := s.upload(t, lines)
	j := s.wait(t, up.id)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state)
	require.Equal(t, pipeline.Counts{Applied: 18, DeadLettered: 2}, j.c)

	// spoolctl reads the dead letters and replays them over TLS and SASL,
	// from the same configuration file an operator would use.
	s.db.Exec(t, `ALTER TABLE customers DROP CONSTRAINT customers_balance_check`)
	conf := filepath.Join(t.TempDir(), "spool.yaml")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil, `database: {url: %q}
kafka:
  brokers: [%q]
  tls: {ca_file: %q}
  sasl: {mechanism: SCRAM-SHA-512, username: spool, password_file: %q}
`, s.db.URL, b.Addr(), ca, passwordFile), 0o600))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := cli.New()
	cmd.SetArgs([]string{"dlq", "replay", "--config", conf, "--job", string(up.id)})
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	require.NoError(t, cmd.ExecuteContext(ctx), out.String())
	require.Contains(t, out.String(), "replayed 2 of 2")
	require.Eventually(t, func() bool {
		return s.wait(t, up.id).c == pipeline.Counts{Applied: 20}
	}, time.Minute, 100*time.Millisecond)

	for _, tt := range []struct {
		name string
		set  map[string]any
		want string
	}{
		{"wrong password", map[string]any{"kafka.sasl.password_file": "", "kafka.sasl.password": "wrong"},
			"refused the SASL credentials"},
		{"untrusted CA", map[string]any{"kafka.tls.ca_file": "", "kafka.tls.enabled": true},
			"certificate is not trusted"},
		{"plaintext to TLS", map[string]any{"kafka.tls.ca_file": "", "kafka.sasl.mechanism": ""},
			"the brokers speak TLS and spool does not"},
		{"a mechanism the broker does not take for the user", map[string]any{"kafka.sasl.mechanism": "SCRAM-SHA-256"},
			"refused the SASL credentials or mechanism"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := app.NewProcessor(s.config(t, tt.set), testLogger(t))
			require.NoError(t, err)
			// Waiting for a broker that is away lasts 2 minutes and ends
			// with another error: stopped sooner, with this one, the
			// refusal was told apart (in seconds, on this machine).
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Second)
			defer cancel()
			require.ErrorContains(t, p.Run(ctx), tt.want)
		})
	}
}

package config

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

func TestLoadPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "spool.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
auth: {disabled: true}
processor: {batch_size: 100, batch_max_wait: 1s}
http: {addr: ":7000"}
entities:
  customers: {table: public.customers, key: [customer_id], version_column: version}
`), 0o600))
	t.Setenv("SPOOL_PROCESSOR_BATCH_SIZE", "200")
	t.Setenv("SPOOL_KAFKA_BROKERS", "a:9092,b:9092")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	AddFlags(fs, nil, "http.addr", "processor.rate_limit")
	require.NoError(t, fs.Parse([]string{"--http-addr", "127.0.0.1:9000"}))

	c, err := Load(Options{Flags: fs, File: file})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9000", c.HTTP.Addr, "a set flag beats the file")
	require.Equal(t, 200, c.Processor.BatchSize, "env beats the file")
	require.Equal(t, time.Second, c.Processor.BatchMaxWait, "the file beats the default")
	require.Equal(t, 0.0, c.Processor.RateLimit, "an unset flag does not override")
	require.Equal(t, []string{"a:9092", "b:9092"}, c.Kafka.Brokers)
	require.Equal(t, "spool.commands", c.Kafka.Topic)
	require.Equal(t, 168*time.Hour, c.Dedupe.Window)
	require.Equal(t, []string{"customer_id"}, c.Entities["customers"].Key)
}

func TestLoadNamesTheBadKey(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ yaml, want string }{
		{"auth: {disabled: true}\nprocessor: {batch_size: 0}", "config processor.batch_size: must be at least 1, got 0"},
		{"auth: {disabled: true}\nprocessor: {bach_size: 10}", "bach_size"},
		{"processor: {batch_size: 10}", "config auth.keys: no API keys configured"},
		{"auth: {keys: [{tenant: a, key_sha256: xyz}]}", "config auth.keys[0].key_sha256"},
		{"auth: {disabled: true}\nkafka: {brokers: [nohost]}", `config kafka.brokers: "nohost" is not host:port`},
		{"auth: {disabled: true}\ndedupe: {window: 1s}", "config dedupe.window: must be at least 1m"},
		{"auth: {disabled: true}\nentities: {c: {table: \"x; drop\", key: [id]}}", "config entities.c.table"},
		{"auth: {disabled: true}\nentities: {c: {table: t}}", "config entities.c.key: must list the key columns"},
		{"auth: {disabled: true}\nentities: {c: {table: t, key: ['a\"b']}}", `column "a\"b" is not a plain identifier`},
		{"auth: {disabled: true}\nentities: {c: {table: 'public.\"t\"', key: [id]}}", "config entities.c.table"},
		{"auth: {disabled: true}\nentities: {c: {table: t, key: [id], version_column: 'v); DROP TABLE t; --'}}", "is not a plain identifier"},
		{"auth: {disabled: true}\nprocessor: {session_timeout: 1s}", "config processor.session_timeout: must be between 6s and 30m"},
		{"auth: {disabled: true}\nlog: {level: loud}", "config log.level"},
	} {
		file := filepath.Join(dir, "spool.yaml")
		require.NoError(t, os.WriteFile(file, []byte(tt.yaml), 0o600))
		_, err := Load(Options{File: file})
		require.ErrorContains(t, err, tt.want, tt.yaml)
	}
}

// TestRedactURL: every form of connection string pgx reads keeps its
// password out, and one that cannot be read is not shown at all.
func TestRedactURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"postgres://spool:secret@db:5432/spool", "postgres://spool:xxxxx@db:5432/spool"},
		{"postgresql://spool:secret@db/spool?sslmode=require", "postgresql://spool:xxxxx@db/spool?sslmode=require"},
		{"postgres://spool@db/spool?password=secret&sslmode=disable", "postgres://spool@db/spool?password=xxxxx&sslmode=disable"},
		{"postgres://spool:secret@db/spool?sslpassword=secret", "postgres://spool:xxxxx@db/spool?sslpassword=xxxxx"},
		{"postgres://db1,db2:5433/spool?PASSWORD=secret", "postgres://db1,db2:5433/spool?PASSWORD=xxxxx"},
		{"postgres://spool:p%40ss%2Fsecret@db/spool", "postgres://spool:xxxxx@db/spool"},
		{"postgres://spool@db/spool", "postgres://spool@db/spool"},
		{"host=db user=spool password=secret dbname=spool", "host=db user=spool password=xxxxx dbname=spool"},
		{"host=db password='a secret' dbname=spool", "host=db password=xxxxx dbname=spool"},
		{`host=db password='it\'s secret' sslmode=disable`, "host=db password=xxxxx sslmode=disable"},
		{`host=db password=sec\ ret port=5432`, "host=db password=xxxxx port=5432"},
		{"  host = db   password =  secret  ", "host=db password=xxxxx"},
		{"host=db\tsslpassword=secret\nuser=u", "host=db sslpassword=xxxxx user=u"},
		{"host=db password=", "host=db password=xxxxx"},
		// Malformed: nothing of it shows.
		{"host=db password='secret", redactedConn},
		{"host=db password secret", redactedConn},
		{"secret", redactedConn},
		{"host=db pass word=secret", redactedConn},
		{"host=db password=sec\x00ret", redactedConn},
		{"postgres://spool:secret@db:x/spool", redactedConn},
		{"postgres://spool:123/secret@db/spool", redactedConn},
		{"postgres://spool:12#secret@db/spool", redactedConn},
		{"postgres://spool:12?secret@db/spool", redactedConn},
		{"postgres://db/spool?password=%zzsecret", redactedConn},
		{"postgres://spool:sec ret@db/spool", redactedConn},
	} {
		got := RedactURL(tc.in)
		require.Equal(t, tc.want, got, "RedactURL(%q)", tc.in)
		require.NotContains(t, got, "secret", "RedactURL(%q)", tc.in)
		require.NotContains(t, got, "ret", "RedactURL(%q)", tc.in)
	}
}

// TestDatabaseLogValue: the logged database group carries the redacted
// connection string, in either form.
func TestDatabaseLogValue(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"postgres://u@h/db?password=secret", "host=h user=u password=secret"} {
		var b strings.Builder
		slog.New(slog.NewTextHandler(&b, nil)).Info("start", "database", Database{URL: u, MaxConns: 4})
		require.NotContains(t, b.String(), "secret")
		require.Contains(t, b.String(), "password=xxxxx")
	}
}

func TestValidateReadsBothForms(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"postgres://u@h/db", "host=h user=u password='a b'"} {
		_, err := Load(Options{Overrides: map[string]any{"database.url": u, "auth.disabled": true}})
		require.NoError(t, err, u)
	}
	_, err := Load(Options{Overrides: map[string]any{"database.url": "host=h password='secret", "auth.disabled": true}})
	require.ErrorContains(t, err, "database.url")
	require.NotContains(t, err.Error(), "secret")
}

func TestDocsListEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	for _, k := range Keys {
		require.Contains(t, string(doc), "| `"+k.Name+"` |", "docs/configuration.md must list %s", k.Name)
	}
}

// TestAuthKeysFile: keys from a file (a mounted secret) join those of the
// config, and a bad file is named.
func TestAuthKeysFile(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/keys.yaml"
	hash := strings.Repeat("ab", 32)
	require.NoError(t, os.WriteFile(good, []byte("keys:\n  - tenant: acme\n    key_sha256: "+hash+"\n"), 0o600))
	c, err := Load(Options{Overrides: map[string]any{"auth.keys_file": good}})
	require.NoError(t, err)
	require.Equal(t, []AuthKey{{Tenant: "acme", KeySHA256: hash}}, c.Auth.Keys)

	bad := dir + "/bad.yaml"
	require.NoError(t, os.WriteFile(bad, []byte("keys:\n  - tenant: acme\n    key: plain\n"), 0o600))
	_, err = Load(Options{Overrides: map[string]any{"auth.keys_file": bad}})
	require.ErrorContains(t, err, "auth.keys_file")
	_, err = Load(Options{Overrides: map[string]any{"auth.keys_file": dir + "/missing.yaml"}})
	require.ErrorContains(t, err, "auth.keys_file")
}

func TestOneKeyOneTenant(t *testing.T) {
	hash := strings.Repeat("cd", 32)
	_, err := Load(Options{Overrides: map[string]any{"auth.keys": []map[string]any{
		{"tenant": "acme", "key_sha256": hash}, {"tenant": "globex", "key_sha256": hash}}}})
	require.ErrorContains(t, err, `auth.keys[1].key_sha256: is also the key of tenant "acme"`)
}

func TestMemoryLimitNotNegative(t *testing.T) {
	_, err := Load(Options{Overrides: map[string]any{"auth.disabled": true, "processor.memory_limit": -1}})
	require.ErrorContains(t, err, "processor.memory_limit")
}

// TestKafkaSecurity: TLS and SASL settings are checked as a whole, a
// secret may come from a file (a mounted secret, its newline trimmed) but
// not from both, and the secrets stay out of logs.
func TestKafkaSecurity(t *testing.T) {
	dir := t.TempDir()
	pwFile := dir + "/password"
	require.NoError(t, os.WriteFile(pwFile, []byte("from-file\n"), 0o600))
	c, err := Load(Options{Overrides: map[string]any{"auth.disabled": true, "kafka.sasl.mechanism": "scram-sha-512",
		"kafka.sasl.username": "spool", "kafka.sasl.password_file": pwFile, "kafka.tls.ca_file": "/ca.pem"}})
	require.NoError(t, err)
	require.Equal(t, "SCRAM-SHA-512", c.Kafka.SASL.Mechanism)
	require.Equal(t, "from-file", c.Kafka.SASL.Password)
	require.True(t, c.Kafka.TLS.On(), "a CA file asks for TLS")
	require.NotContains(t, fmt.Sprint(c.Kafka.SASL.LogValue()), "from-file")

	for _, tt := range []struct {
		set  map[string]any
		want string
	}{
		{map[string]any{"kafka.sasl.mechanism": "GSSAPI"}, "kafka.sasl.mechanism: must be PLAIN, SCRAM-SHA-256"},
		{map[string]any{"kafka.sasl.mechanism": "PLAIN", "kafka.sasl.username": "u"}, "PLAIN needs kafka.sasl.username and kafka.sasl.password"},
		{map[string]any{"kafka.sasl.mechanism": "OAUTHBEARER"}, "OAUTHBEARER needs kafka.sasl.token"},
		{map[string]any{"kafka.sasl.password": "p", "kafka.sasl.password_file": pwFile}, "kafka.sasl.password and kafka.sasl.password_file are both set"},
		{map[string]any{"kafka.sasl.token_file": dir + "/missing"}, "kafka.sasl.token_file"},
		{map[string]any{"kafka.tls.cert_file": "/c.pem"}, "kafka.tls.cert_file: a client certificate needs its key"},
	} {
		_, err := Load(Options{Overrides: tt.set})
		require.ErrorContains(t, err, tt.want, "%v", tt.set)
	}
}

// TestClientFromConfigFile: spoolctl's upload and jobs find ingress in the
// config file's client section, below the environment and the flags, and
// the servers read past that section.
func TestClientFromConfigFile(t *testing.T) {
	dir := t.TempDir()
	keyFile := dir + "/key"
	require.NoError(t, os.WriteFile(keyFile, []byte("k-123\n"), 0o600))
	file := dir + "/spool.yaml"
	require.NoError(t, os.WriteFile(file, []byte("auth: {disabled: true}\nclient:\n  server: https://spool.example.com\n  api_key_file: "+keyFile+"\n"), 0o600))
	flags := func(args ...string) *pflag.FlagSet {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		fs.String("config", "", "")
		fs.String("server", "http://127.0.0.1:8080", "")
		fs.String("api-key", "", "")
		require.NoError(t, fs.Parse(args))
		return fs
	}
	c, err := LoadClient(flags("--config", file))
	require.NoError(t, err)
	require.Equal(t, Client{Server: "https://spool.example.com", APIKey: "k-123"}, c)
	c, err = LoadClient(flags("--config", file, "--server", "http://other:8080"))
	require.NoError(t, err)
	require.Equal(t, "http://other:8080", c.Server, "a flag ranks above the file")
	_, err = Load(Options{File: file})
	require.NoError(t, err, "the servers read past the client section")
}

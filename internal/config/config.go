package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Config is the whole configuration of spool.
type Config struct {
	// source is how Load read it, for Reload.
	source Options

	Database  Database                `mapstructure:"database"`
	Kafka     Kafka                   `mapstructure:"kafka"`
	HTTP      HTTP                    `mapstructure:"http"`
	Metrics   Metrics                 `mapstructure:"metrics"`
	Processor Processor               `mapstructure:"processor"`
	Dedupe    Dedupe                  `mapstructure:"dedupe"`
	Jobs      Jobs                    `mapstructure:"jobs"`
	Ingress   Ingress                 `mapstructure:"ingress"`
	Auth      Auth                    `mapstructure:"auth"`
	Log       Log                     `mapstructure:"log"`
	Entities  map[string]EntityConfig `mapstructure:"entities"`
	// Client is spoolctl's: the servers read past it.
	Client  ClientFile `mapstructure:"client"`
	Tracing Tracing    `mapstructure:"tracing"`
}

// Tracing configures OpenTelemetry tracing.
type Tracing struct {
	Enabled     bool    `mapstructure:"enabled"`
	Endpoint    string  `mapstructure:"endpoint"`
	SampleRatio float64 `mapstructure:"sample_ratio"`
}

// ClientFile is the client section of a config file: where spoolctl's
// upload and jobs find ingress, below --server/SPOOL_SERVER and
// --api-key/SPOOL_API_KEY.
type ClientFile struct {
	Server     string `mapstructure:"server"`
	APIKeyFile string `mapstructure:"api_key_file"`
}

// Database configures the PostgreSQL connection.
type Database struct {
	URL      string `mapstructure:"url"`
	MaxConns int    `mapstructure:"max_conns"`
}

// LogValue keeps the password out of logs.
func (d Database) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", RedactURL(d.URL)), slog.Int("max_conns", d.MaxConns))
}

// Kafka configures brokers and topics.
type Kafka struct {
	Brokers           []string  `mapstructure:"brokers"`
	Topic             string    `mapstructure:"topic"`
	DLQTopic          string    `mapstructure:"dlq_topic"`
	Partitions        int       `mapstructure:"partitions"`
	ReplicationFactor int       `mapstructure:"replication_factor"`
	MaxMessageBytes   int       `mapstructure:"max_message_bytes"`
	Group             string    `mapstructure:"group"`
	GroupProtocol     string    `mapstructure:"group_protocol"`
	ClientID          string    `mapstructure:"client_id"`
	TLS               KafkaTLS  `mapstructure:"tls"`
	SASL              KafkaSASL `mapstructure:"sasl"`
}

// KafkaTLS configures TLS to the brokers.
type KafkaTLS struct {
	Enabled            bool   `mapstructure:"enabled"`
	CAFile             string `mapstructure:"ca_file"`
	CertFile           string `mapstructure:"cert_file"`
	KeyFile            string `mapstructure:"key_file"`
	ServerName         string `mapstructure:"server_name"`
	InsecureSkipVerify bool   `mapstructure:"insecure_skip_verify"`
}

// On reports whether TLS is asked for: enabled, or any setting of it given.
func (t KafkaTLS) On() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// KafkaSASL configures SASL authentication to the brokers. Each secret may
// be given in a file instead (a mounted secret), whose content, trailing
// newline trimmed, replaces the setting when the config is loaded.
type KafkaSASL struct {
	Mechanism    string `mapstructure:"mechanism"`
	Username     string `mapstructure:"username"`
	UsernameFile string `mapstructure:"username_file"`
	Password     string `mapstructure:"password"`
	PasswordFile string `mapstructure:"password_file"`
	Token        string `mapstructure:"token"`
	TokenFile    string `mapstructure:"token_file"`
}

// LogValue keeps the secrets out of logs.
func (s KafkaSASL) LogValue() slog.Value {
	return slog.GroupValue(slog.String("mechanism", s.Mechanism), slog.String("username", s.Username))
}

// TopicMaxMessageBytes is the max.message.bytes spool gives the topics it
// creates: kafka.max_message_bytes, or room for a record of
// ingress.max_record_bytes with spool's key and headers, and for a dead
// letter of it (64 KiB more).
func (k Kafka) TopicMaxMessageBytes(maxRecordBytes int) int {
	if k.MaxMessageBytes > 0 {
		return k.MaxMessageBytes
	}
	return maxRecordBytes + 64<<10
}

// HTTP configures ingress.
type HTTP struct {
	Addr string `mapstructure:"addr"`
}

// Metrics configures the processor's metrics and health listener.
type Metrics struct {
	Addr  string `mapstructure:"addr"`
	Pprof bool   `mapstructure:"pprof"`
}

// Processor configures batching and pacing.
type Processor struct {
	RateLimit    float64       `mapstructure:"rate_limit"`
	BatchSize    int           `mapstructure:"batch_size"`
	BatchMaxWait time.Duration `mapstructure:"batch_max_wait"`
	FlushTimeout time.Duration `mapstructure:"flush_timeout"`
	// WriteConcurrency bounds the batch transactions in flight at once.
	WriteConcurrency int `mapstructure:"write_concurrency"`
	// SessionTimeout is how long the group waits for a processor that
	// stopped heartbeating before its partitions move on.
	SessionTimeout time.Duration `mapstructure:"session_timeout"`
	Queue          int           `mapstructure:"queue"`
	FetchMaxBytes  int32         `mapstructure:"fetch_max_bytes"`
	// FetchMaxPartitionBytes with Queue and BatchSize bounds what one
	// partition holds: about Queue × FetchMaxPartitionBytes plus a batch.
	FetchMaxPartitionBytes int32 `mapstructure:"fetch_max_partition_bytes"`
	// MemoryLimit is a soft limit for Go's garbage collector (bytes, 0: none).
	MemoryLimit int64 `mapstructure:"memory_limit"`
}

// Jobs configures the job records.
type Jobs struct {
	Retention   time.Duration `mapstructure:"retention"`
	OpenTimeout time.Duration `mapstructure:"open_timeout"`
}

// Dedupe configures the command-id ledger.
type Dedupe struct {
	Window    time.Duration `mapstructure:"window"`
	CacheSize int           `mapstructure:"cache_size"`
}

// Ingress configures upload limits.
type Ingress struct {
	// MetricsAddr serves /metrics, /healthz, /readyz and, with
	// metrics.pprof, /debug/pprof/: an operator's port, not the API's.
	MetricsAddr       string        `mapstructure:"metrics_addr"`
	IdempotencyWindow time.Duration `mapstructure:"idempotency_window"`
	ReadIdleTimeout   time.Duration `mapstructure:"read_idle_timeout"`
	MaxLag            int64         `mapstructure:"max_lag"`
	MaxBodyBytes      int64         `mapstructure:"max_body_bytes"`
	MaxRecordBytes    int           `mapstructure:"max_record_bytes"`
	MaxRecords        int64         `mapstructure:"max_records"`
	MaxRejections     int           `mapstructure:"max_rejections"`
	// MaxDecompressedBytes bounds the body after gunzip; MaxDecompressionRatio
	// bounds decompressed over sent bytes (0: none), so that a small body
	// cannot inflate into a large cost.
	MaxDecompressedBytes  int64 `mapstructure:"max_decompressed_bytes"`
	MaxDecompressionRatio int   `mapstructure:"max_decompression_ratio"`
	// MaxConcurrentUploads and MaxConcurrentUploadsPerTenant bound the
	// uploads read at once; MinUploadBytesPerSecond cuts off a trickle.
	MaxConcurrentUploads          int `mapstructure:"max_concurrent_uploads"`
	MaxConcurrentUploadsPerTenant int `mapstructure:"max_concurrent_uploads_per_tenant"`
	MinUploadBytesPerSecond       int `mapstructure:"min_upload_bytes_per_second"`
}

// Auth maps API keys to tenants.
type Auth struct {
	Disabled bool      `mapstructure:"disabled"`
	Keys     []AuthKey `mapstructure:"keys"`
	// KeysFile names a YAML file with more keys ({keys: [{tenant,
	// key_sha256, entities}]}), so that they can come from a mounted secret.
	KeysFile string `mapstructure:"keys_file"`
}

// AuthKey is one tenant's key, stored as the hex SHA-256 of the key.
// Entities, when set, are the only entities the key may write; empty means
// every configured entity.
type AuthKey struct {
	Tenant    string   `mapstructure:"tenant"`
	KeySHA256 string   `mapstructure:"key_sha256"`
	Entities  []string `mapstructure:"entities"`
}

// Log configures log/slog.
type Log struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

// EntityConfig names an entity's table and keys; columns and types come from
// the database catalog at start-up.
type EntityConfig struct {
	Table         string   `mapstructure:"table"`
	Key           []string `mapstructure:"key"`
	VersionColumn string   `mapstructure:"version_column"`
}

// Options tell Load where to look.
type Options struct {
	// Flags, when set, override file and environment for each flag that was
	// set on the command line. A flag binds to the key whose name equals
	// the flag's name with "-" turned into "." after the first dash group
	// (see FlagName).
	Flags *pflag.FlagSet
	// File is an explicit config file (the --config flag); empty means
	// SPOOL_CONFIG, else ./spool.yaml when present.
	File string
	// Defaults replace keys' defaults (spoolctl dev binds to loopback, say).
	Defaults map[string]any
	// Overrides win over everything (spoolctl dev points kafka.brokers at
	// its embedded broker whatever the environment says).
	Overrides map[string]any
}

// FlagName is the command-line flag of a key: "processor.batch_size" →
// "processor-batch-size".
func FlagName(key string) string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(key)
}

// AddFlags registers a flag for each named key, with its usage and its
// default, or the default given in defaults (pass the same map as
// Options.Defaults). A flag set on the command line ranks above the config
// file and the environment.
func AddFlags(fs *pflag.FlagSet, defaults map[string]any, keys ...string) {
	for _, name := range keys {
		k, ok := lookup(name)
		if !ok {
			panic("config: no key " + name)
		}
		def := k.Default
		if d, ok := defaults[name]; ok {
			def = d
		}
		switch d := def.(type) {
		case string:
			fs.String(FlagName(name), d, k.Usage)
		case int:
			fs.Int(FlagName(name), d, k.Usage)
		case float64:
			fs.Float64(FlagName(name), d, k.Usage)
		case bool:
			fs.Bool(FlagName(name), d, k.Usage)
		case time.Duration:
			fs.Duration(FlagName(name), d, k.Usage)
		case []string:
			fs.StringSlice(FlagName(name), d, k.Usage)
		default:
			panic(fmt.Sprintf("config: no flag type for key %s", name))
		}
	}
}

func lookup(name string) (Key, bool) {
	for _, k := range Keys {
		if k.Name == name {
			return k, true
		}
	}
	return Key{}, false
}

// Reload reads the configuration again from where Load read it (the file,
// the environment, the flags).
func (c *Config) Reload() (*Config, error) { return Load(c.source) }

// Load reads, merges and validates the configuration.
func Load(opts Options) (*Config, error) {
	v := viper.New()
	for _, k := range Keys {
		v.SetDefault(k.Name, k.Default)
	}
	v.SetDefault("auth.keys", []AuthKey{})
	v.SetDefault("entities", map[string]EntityConfig{})
	for k, d := range opts.Defaults {
		v.SetDefault(k, d)
	}
	v.SetEnvPrefix("SPOOL")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	if file := configFile(opts.File); file != "" {
		v.SetConfigFile(file)
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("reading config file %s: %w", file, err)
		}
	}
	if opts.Flags != nil {
		var bindErr error
		// Only flags set on the command line bind: viper ranks a bound flag's
		// default below the keys' defaults, so flag defaults are documentation
		// and Options.Defaults carries a command's own defaults.
		opts.Flags.Visit(func(f *pflag.Flag) {
			for _, k := range Keys {
				if FlagName(k.Name) == f.Name {
					bindErr = errors.Join(bindErr, v.BindPFlag(k.Name, f))
				}
			}
		})
		if bindErr != nil {
			return nil, bindErr
		}
	}

	for k, o := range opts.Overrides {
		v.Set(k, o)
	}

	var c Config
	err := v.UnmarshalExact(&c, func(dc *mapstructure.DecoderConfig) {
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		)
	})
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if c.Auth.KeysFile != "" {
		keys, err := loadKeysFile(c.Auth.KeysFile)
		if err != nil {
			return nil, fmt.Errorf("invalid config: auth.keys_file: %w", err)
		}
		c.Auth.Keys = append(c.Auth.Keys, keys...)
	}
	if err := c.Kafka.SASL.readFiles(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c.source = opts
	return &c, nil
}

// readFiles fills each secret given as a file from that file; a secret
// given both ways is refused.
func (s *KafkaSASL) readFiles() error {
	for _, f := range []struct {
		key   string
		value *string
		file  string
	}{
		{"kafka.sasl.username", &s.Username, s.UsernameFile},
		{"kafka.sasl.password", &s.Password, s.PasswordFile},
		{"kafka.sasl.token", &s.Token, s.TokenFile},
	} {
		if f.file == "" {
			continue
		}
		if *f.value != "" {
			return fmt.Errorf("invalid config: %s and %s_file are both set: give one", f.key, f.key)
		}
		b, err := os.ReadFile(f.file)
		if err != nil {
			return fmt.Errorf("invalid config: %s_file: %w", f.key, err)
		}
		*f.value = strings.TrimRight(string(b), "\r\n")
	}
	return nil
}

// loadKeysFile reads {keys: [{tenant, key_sha256, entities}]} from a YAML
// file.
func loadKeysFile(path string) ([]AuthKey, error) {
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		return nil, err
	}
	var f struct {
		Keys []AuthKey `mapstructure:"keys"`
	}
	if err := v.UnmarshalExact(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f.Keys, nil
}

var (
	identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
	hexRe   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks every key once; the error names each offending key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config %s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Database.URL == "" || RedactURL(c.Database.URL) == redactedConn {
		bad("database.url", "must be a PostgreSQL URL (postgres://…) or key=value settings (host=… dbname=…)")
	}
	if c.Database.MaxConns < 2 {
		bad("database.max_conns", "must be at least 2, got %d", c.Database.MaxConns)
	}
	if len(c.Kafka.Brokers) == 0 {
		bad("kafka.brokers", "must name at least one broker")
	}
	for _, b := range c.Kafka.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			bad("kafka.brokers", "%q is not host:port", b)
		}
	}
	if c.Kafka.Topic == "" || c.Kafka.DLQTopic == "" || c.Kafka.Topic == c.Kafka.DLQTopic {
		bad("kafka.topic", "topic and dlq_topic must be set and differ")
	}
	if c.Kafka.Partitions < 1 {
		bad("kafka.partitions", "must be at least 1, got %d", c.Kafka.Partitions)
	}
	if c.Kafka.Group == "" {
		bad("kafka.group", "must be set")
	}
	if c.Kafka.GroupProtocol != "consumer" && c.Kafka.GroupProtocol != "classic" {
		bad("kafka.group_protocol", "must be consumer or classic, got %q", c.Kafka.GroupProtocol)
	}
	if c.Tracing.SampleRatio < 0 || c.Tracing.SampleRatio > 1 {
		bad("tracing.sample_ratio", "must be between 0 and 1, got %v", c.Tracing.SampleRatio)
	}
	if (c.Kafka.TLS.CertFile == "") != (c.Kafka.TLS.KeyFile == "") {
		bad("kafka.tls.cert_file", "a client certificate needs its key: set kafka.tls.cert_file and kafka.tls.key_file together")
	}
	c.Kafka.SASL.Mechanism = strings.ToUpper(c.Kafka.SASL.Mechanism)
	switch s := c.Kafka.SASL; s.Mechanism {
	case "":
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM":
		if s.Username == "" || s.Password == "" {
			bad("kafka.sasl.mechanism", "%s needs kafka.sasl.username and kafka.sasl.password (or their _file variants)", s.Mechanism)
		}
	case "OAUTHBEARER":
		if s.Token == "" {
			bad("kafka.sasl.mechanism", "OAUTHBEARER needs kafka.sasl.token (or kafka.sasl.token_file)")
		}
	default:
		bad("kafka.sasl.mechanism", "must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM, got %q", s.Mechanism)
	}
	if c.Kafka.MaxMessageBytes != 0 && (c.Kafka.MaxMessageBytes < 16<<10 || c.Kafka.MaxMessageBytes > 32<<20) {
		bad("kafka.max_message_bytes", "must be 0 (derived) or between 16 KiB and 32 MiB, got %d", c.Kafka.MaxMessageBytes)
	}
	for key, addr := range map[string]string{"http.addr": c.HTTP.Addr, "metrics.addr": c.Metrics.Addr, "ingress.metrics_addr": c.Ingress.MetricsAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port", addr)
		}
	}
	if c.Processor.RateLimit < 0 {
		bad("processor.rate_limit", "must be 0 (unlimited) or positive, got %v", c.Processor.RateLimit)
	}
	if c.Processor.BatchSize < 1 {
		bad("processor.batch_size", "must be at least 1, got %d", c.Processor.BatchSize)
	}
	if c.Processor.BatchMaxWait <= 0 {
		bad("processor.batch_max_wait", "must be positive, got %s", c.Processor.BatchMaxWait)
	}
	if c.Processor.WriteConcurrency < 1 {
		bad("processor.write_concurrency", "must be at least 1, got %d", c.Processor.WriteConcurrency)
	}
	if c.Processor.FlushTimeout <= 0 {
		bad("processor.flush_timeout", "must be positive, got %s", c.Processor.FlushTimeout)
	}
	if c.Processor.SessionTimeout < 6*time.Second || c.Processor.SessionTimeout > 30*time.Minute {
		bad("processor.session_timeout", "must be between 6s and 30m (Kafka's group.min/max.session.timeout.ms), got %s", c.Processor.SessionTimeout)
	}
	if c.Processor.Queue < 1 {
		bad("processor.queue", "must be at least 1, got %d", c.Processor.Queue)
	}
	if c.Processor.FetchMaxBytes < 1<<16 {
		bad("processor.fetch_max_bytes", "must be at least 65536, got %d", c.Processor.FetchMaxBytes)
	}
	if c.Processor.FetchMaxPartitionBytes < 1<<16 || c.Processor.FetchMaxPartitionBytes > c.Processor.FetchMaxBytes {
		bad("processor.fetch_max_partition_bytes", "must be between 65536 and processor.fetch_max_bytes, got %d", c.Processor.FetchMaxPartitionBytes)
	}
	if c.Dedupe.Window < time.Minute {
		bad("dedupe.window", "must be at least 1m, got %s", c.Dedupe.Window)
	}
	if c.Dedupe.CacheSize < 0 {
		bad("dedupe.cache_size", "must be 0 (off) or positive, got %d", c.Dedupe.CacheSize)
	}
	if c.Processor.MemoryLimit < 0 {
		bad("processor.memory_limit", "must be 0 (none) or a number of bytes, got %d", c.Processor.MemoryLimit)
	}
	if c.Jobs.Retention < time.Minute {
		bad("jobs.retention", "must be at least 1m, got %s", c.Jobs.Retention)
	}
	if c.Jobs.OpenTimeout < time.Second {
		bad("jobs.open_timeout", "must be at least 1s, got %s", c.Jobs.OpenTimeout)
	}
	if c.Ingress.IdempotencyWindow < time.Minute {
		bad("ingress.idempotency_window", "must be at least 1m, got %s", c.Ingress.IdempotencyWindow)
	}
	if c.Ingress.MaxLag < 0 {
		bad("ingress.max_lag", "must be 0 (no bound) or positive, got %d", c.Ingress.MaxLag)
	}
	if c.Ingress.ReadIdleTimeout < time.Second {
		bad("ingress.read_idle_timeout", "must be at least 1s, got %s", c.Ingress.ReadIdleTimeout)
	}
	if c.Ingress.MaxBodyBytes < 1 || c.Ingress.MaxRecordBytes < 64 || c.Ingress.MaxRecords < 1 || c.Ingress.MaxRejections < 0 {
		bad("ingress", "max_body_bytes, max_records must be positive, max_record_bytes at least 64")
	}
	if c.Ingress.MaxDecompressedBytes < int64(c.Ingress.MaxRecordBytes) {
		bad("ingress.max_decompressed_bytes", "must be at least ingress.max_record_bytes (%d), got %d", c.Ingress.MaxRecordBytes, c.Ingress.MaxDecompressedBytes)
	}
	if c.Ingress.MaxDecompressionRatio != 0 && c.Ingress.MaxDecompressionRatio < 10 {
		bad("ingress.max_decompression_ratio", "must be 0 (no bound) or at least 10 (ordinary uploads gzip 5–20 times smaller), got %d", c.Ingress.MaxDecompressionRatio)
	}
	if c.Ingress.MaxConcurrentUploads < 1 {
		bad("ingress.max_concurrent_uploads", "must be at least 1, got %d", c.Ingress.MaxConcurrentUploads)
	}
	if c.Ingress.MaxConcurrentUploadsPerTenant < 1 || c.Ingress.MaxConcurrentUploadsPerTenant > c.Ingress.MaxConcurrentUploads {
		bad("ingress.max_concurrent_uploads_per_tenant", "must be between 1 and ingress.max_concurrent_uploads (%d), got %d", c.Ingress.MaxConcurrentUploads, c.Ingress.MaxConcurrentUploadsPerTenant)
	}
	if c.Ingress.MinUploadBytesPerSecond < 0 {
		bad("ingress.min_upload_bytes_per_second", "must be 0 (no bound) or positive, got %d", c.Ingress.MinUploadBytesPerSecond)
	}
	if len(c.Auth.Keys) == 0 && !c.Auth.Disabled {
		bad("auth.keys", "no API keys configured: add {tenant, key_sha256} entries or set auth.disabled: true")
	}
	seenKeys := map[string]string{}
	for i, k := range c.Auth.Keys {
		if t, ok := seenKeys[k.KeySHA256]; ok && k.KeySHA256 != "" {
			bad(fmt.Sprintf("auth.keys[%d].key_sha256", i), "is also the key of tenant %q: one key, one tenant", t)
		}
		seenKeys[k.KeySHA256] = k.Tenant
		if k.Tenant == "" {
			bad(fmt.Sprintf("auth.keys[%d].tenant", i), "must be set")
		}
		if !hexRe.MatchString(k.KeySHA256) {
			bad(fmt.Sprintf("auth.keys[%d].key_sha256", i), "must be 64 lower-case hex digits (sha256sum of the key)")
		}
		for _, e := range k.Entities {
			if _, ok := c.Entities[e]; !ok {
				bad(fmt.Sprintf("auth.keys[%d].entities", i), "names entity %q, which is not configured", e)
			}
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "must be text or json, got %q", c.Log.Format)
	}
	for name, e := range c.Entities {
		key := "entities." + name
		if !identRe.MatchString(name) {
			bad(key, "entity names are letters, digits and _")
		}
		if _, _, err := e.SplitTable(); err != nil {
			bad(key+".table", "%v", err)
		}
		if len(e.Key) == 0 {
			bad(key+".key", "must list the key columns")
		}
		for _, col := range append(append([]string{}, e.Key...), e.VersionColumn) {
			if col != "" && !identRe.MatchString(col) {
				bad(key, "column %q is not a plain identifier", col)
			}
		}
	}
	return errors.Join(errs...)
}

// SplitTable splits "schema.table" (schema defaults to public). Names are
// plain identifiers; anything else is refused rather than quoted, so that a
// config cannot smuggle SQL.
func (e EntityConfig) SplitTable() (schema, table string, err error) {
	schema, table = "public", e.Table
	if s, t, ok := strings.Cut(e.Table, "."); ok {
		schema, table = s, t
	}
	if !identRe.MatchString(schema) || !identRe.MatchString(table) {
		return "", "", fmt.Errorf("%q is not schema.table of plain identifiers", e.Table)
	}
	return schema, table, nil
}

// RedactURL hides the passwords of a PostgreSQL connection string, in
// either of the forms pgx accepts: a URL (postgres://user:password@host/db,
// and password or sslpassword query parameters) or key=value settings
// (host=h password='a b'). It follows pgconn's grammar without importing
// pgx (internal/postgres is its one home). Whatever it cannot read
// unambiguously comes back as a placeholder, never as it was: a malformed
// string may hold a password in a place no parser would look.
func RedactURL(s string) string {
	if s == "" {
		return ""
	}
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return redactConnURL(s)
	}
	return redactKeywordValue(s)
}

// redactedConn stands for a connection string that could not be read.
const redactedConn = "(unreadable connection string, redacted)"

// secretSetting names the settings whose values are never shown.
func secretSetting(key string) bool {
	return strings.Contains(strings.ToLower(key), "password")
}

func redactConnURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" || u.Fragment != "" || u.RawFragment != "" {
		return redactedConn
	}
	// An '@' with no user parsed means a password holding '/', '?' or '#'
	// cut the authority short: part of it would show as the host, the path
	// or the query.
	if u.User == nil && strings.Contains(s, "@") || strings.Contains(u.Path, "@") {
		return redactedConn
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return redactedConn
		}
		for k := range q {
			if secretSetting(k) {
				q[k] = []string{"xxxxx"}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// redactKeywordValue rewrites key=value settings with each secret value
// replaced, keeping the others as written. The grammar is pgconn's: keys
// end at '=', values are a run of non-space characters with backslash
// escapes or a single-quoted string with backslash escapes.
func redactKeywordValue(s string) string {
	const space = " \t\n\r\v\f"
	if strings.IndexByte(s, 0) >= 0 {
		return redactedConn
	}
	var out []string
	s = strings.TrimLeft(s, space)
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return redactedConn
		}
		key := strings.Trim(s[:eq], space)
		if key == "" || strings.ContainsAny(key, space) {
			return redactedConn
		}
		s = strings.TrimLeft(s[eq+1:], space)
		end := 0
		if len(s) > 0 && s[0] == '\'' {
			end = 1
			for ; end < len(s) && s[end] != '\''; end++ {
				if s[end] == '\\' {
					end++
				}
			}
			if end >= len(s) {
				return redactedConn // unterminated quote
			}
			end++ // the closing quote
		} else {
			for ; end < len(s) && !strings.ContainsRune(space, rune(s[end])); end++ {
				if s[end] == '\\' {
					end++
				}
			}
			end = min(end, len(s))
		}
		val := s[:end]
		if secretSetting(key) {
			val = "xxxxx"
		}
		out = append(out, key+"="+val)
		s = strings.TrimLeft(s[end:], space)
	}
	return strings.Join(out, " ")
}

// Client is how spoolctl reaches a running ingress.
type Client struct {
	Server string
	APIKey string
}

// configFile is the config file to read: the one named (--config), else
// SPOOL_CONFIG's, else ./spool.yaml when present; empty for none.
func configFile(named string) string {
	if named != "" {
		return named
	}
	if f := os.Getenv("SPOOL_CONFIG"); f != "" {
		return f
	}
	if _, err := os.Stat("spool.yaml"); err == nil {
		return "spool.yaml"
	}
	return ""
}

// LoadClient reads --server/SPOOL_SERVER and --api-key/SPOOL_API_KEY, over
// the config file's client.server and client.api_key_file (the file named
// by --config, SPOOL_CONFIG or ./spool.yaml).
func LoadClient(fs *pflag.FlagSet) (Client, error) {
	v := viper.New()
	v.SetDefault("server", "http://127.0.0.1:8080")
	v.SetDefault("api_key", "")
	named := ""
	if f := fs.Lookup("config"); f != nil {
		named = f.Value.String()
	}
	if file := configFile(named); file != "" {
		fv := viper.New()
		fv.SetConfigFile(file)
		if err := fv.ReadInConfig(); err != nil {
			return Client{}, fmt.Errorf("reading config file %s: %w", file, err)
		}
		if s := fv.GetString("client.server"); s != "" {
			v.SetDefault("server", s)
		}
		keyGiven := os.Getenv("SPOOL_API_KEY") != "" || (fs.Lookup("api-key") != nil && fs.Changed("api-key"))
		if kf := fv.GetString("client.api_key_file"); kf != "" && !keyGiven {
			b, err := os.ReadFile(kf)
			if err != nil {
				return Client{}, fmt.Errorf("config client.api_key_file: %w", err)
			}
			v.SetDefault("api_key", strings.TrimRight(string(b), "\r\n"))
		}
	}
	v.SetEnvPrefix("SPOOL")
	v.AutomaticEnv()
	err := errors.Join(v.BindPFlag("server", fs.Lookup("server")), v.BindPFlag("api_key", fs.Lookup("api-key")))
	if err != nil {
		return Client{}, err
	}
	c := Client{Server: v.GetString("server"), APIKey: v.GetString("api_key")}
	if u, err := url.Parse(c.Server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Client{}, fmt.Errorf("config server: %q is not an http(s) URL", c.Server)
	}
	return c, nil
}

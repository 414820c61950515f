package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/tracing"
	"github.com/spoolhq/spool/pipeline"
)

// openDatabase connects and loads the configured entities from the
// catalog, waiting with backoff while PostgreSQL is starting or its
// connections fail; a configuration error (a missing table, say) fails at
// once.
func openDatabase(ctx context.Context, c *config.Config, spans postgres.Spans, logger *slog.Logger) (*postgres.DB, *entityCatalog, error) {
	specs, err := entitySpecs(c.Entities)
	if err != nil {
		return nil, nil, err
	}
	pool, err := postgres.OpenTraced(ctx, c.Database.URL, c.Database.MaxConns, spans)
	if err != nil {
		return nil, nil, err
	}
	var es pipeline.Entities
	err = backoff.Retry(func() error {
		if err := pool.Ping(ctx); err != nil {
			logger.Warn("waiting for PostgreSQL", "database", c.Database, "error", err)
			return err
		}
		es, err = postgres.LoadEntities(ctx, pool, specs)
		if err != nil && pipeline.ClassOf(err) != pipeline.ClassTransient {
			return backoff.Permanent(fmt.Errorf("loading entities: %w", err))
		}
		if err != nil {
			logger.Warn("retrying to load entities", "error", err)
		}
		return err
	}, backoff.WithContext(startupBackoff(), ctx))
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	if len(es) == 0 {
		logger.Warn("no entities configured: every command will be rejected; add an entities: section to spool.yaml")
	}
	return pool, newEntityCatalog(pool, specs, es, logger), nil
}

// ensureTopics creates spool's topics that are missing, with room for a
// record of ingress.max_record_bytes (kafka.max_message_bytes).
// It waits with backoff while the brokers are unreachable (a broker
// restarting as spool starts), as openDatabase waits for PostgreSQL.
func ensureTopics(ctx context.Context, c *config.Config, cluster kafka.Cluster, logger *slog.Logger) error {
	return backoff.Retry(func() error {
		err := kafka.EnsureTopicsWith(ctx, cluster, int32(c.Kafka.Partitions), int16(c.Kafka.ReplicationFactor),
			map[string]string{"max.message.bytes": strconv.Itoa(c.Kafka.TopicMaxMessageBytes(c.Ingress.MaxRecordBytes))},
			c.Kafka.Topic, c.Kafka.DLQTopic)
		if err != nil && pipeline.ClassOf(err) != pipeline.ClassTransient {
			return backoff.Permanent(err)
		}
		if err != nil {
			logger.Warn("waiting for Kafka", "brokers", cluster.String(), "error", err)
		}
		return err
	}, backoff.WithContext(startupBackoff(), ctx))
}

// KafkaCluster is how spool reaches Kafka as configured: the brokers, TLS
// with the CA, client certificate and server name of kafka.tls.*, and SASL
// with the credentials of kafka.sasl.*. A file that cannot be read or holds
// no certificate is an error naming its key.
func KafkaCluster(k config.Kafka) (kafka.Cluster, error) {
	cluster := kafka.Cluster{Brokers: k.Brokers, ClientID: k.ClientID,
		SASL: kafka.SASL{Mechanism: k.SASL.Mechanism, Username: k.SASL.Username, Password: k.SASL.Password, Token: k.SASL.Token}}
	if !k.TLS.On() {
		return cluster, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: k.TLS.ServerName,
		InsecureSkipVerify: k.TLS.InsecureSkipVerify} //nolint:gosec // kafka.tls.insecure_skip_verify is the operator's explicit choice
	if k.TLS.CAFile != "" {
		pem, err := os.ReadFile(k.TLS.CAFile)
		if err != nil {
			return kafka.Cluster{}, fmt.Errorf("config kafka.tls.ca_file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return kafka.Cluster{}, fmt.Errorf("config kafka.tls.ca_file: %s holds no PEM certificate", k.TLS.CAFile)
		}
	}
	if k.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(k.TLS.CertFile, k.TLS.KeyFile)
		if err != nil {
			return kafka.Cluster{}, fmt.Errorf("config kafka.tls.cert_file and key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	cluster.TLS = t
	return cluster, nil
}

func entitySpecs(m map[string]config.EntityConfig) ([]postgres.EntitySpec, error) {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	specs := make([]postgres.EntitySpec, 0, len(m))
	for _, n := range names {
		e := m[n]
		schema, table, err := e.SplitTable()
		if err != nil {
			return nil, fmt.Errorf("config entities.%s.table: %w", n, err)
		}
		specs = append(specs, postgres.EntitySpec{Name: n, Schema: schema, Table: table, Key: e.Key, VersionColumn: e.VersionColumn})
	}
	return specs, nil
}

func startupBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 200 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 2 * time.Minute
	return b
}

// listen opens the listener configured at key, naming the key on failure.
func listen(key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s: %w", key, addr, err)
	}
	return ln, nil
}

// tracers is the binary's tracer as each part takes it; all nil (no
// tracing, and no per-batch work for it) unless tracing.enabled.
type tracers struct {
	uploads    httpapi.Tracer
	batches    pipeline.Tracer
	statements postgres.Spans
}

// startTracing starts the binary's tracer when tracing.enabled; stop sends
// what is buffered, within a few seconds of the stop.
func startTracing(ctx context.Context, c config.Tracing, service string) (tracers, func(), error) {
	if !c.Enabled {
		return tracers{}, func() {}, nil
	}
	t, err := tracing.New(ctx, service, c.Endpoint, c.SampleRatio)
	if err != nil {
		return tracers{}, nil, err
	}
	return tracers{uploads: t, batches: t, statements: t}, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = t.Shutdown(sctx)
	}, nil
}

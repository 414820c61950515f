package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/postgres"
)

// devDefaults keep the local stack on loopback and without auth.
var devDefaults = map[string]any{
	"http.addr": "127.0.0.1:8080", "metrics.addr": "127.0.0.1:9090", "ingress.metrics_addr": "127.0.0.1:9091",
	"auth.disabled": true,
}

func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole system in one process: embedded broker, migrations, ingress and a processor",
		Long: `dev runs spool on a laptop: an embedded Kafka-protocol broker persisted under
--data-dir, the database migrated (and created if missing), ingress and one
processor. With no entities configured it creates and serves the demo entity
customers. Auth is off unless --api-key TENANT:KEY is given. Ctrl-C stops it.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: runDev,
	}
	f := cmd.Flags()
	config.AddFlags(f, devDefaults, "http.addr", "metrics.addr", "ingress.metrics_addr", "database.url")
	f.String("kafka-addr", "127.0.0.1:9092", "embedded broker listen address")
	f.String("data-dir", ".spool-dev", "where the embedded broker keeps its data")
	f.Int("partitions", 12, "partitions of the topics dev creates")
	f.StringArray("api-key", nil, "TENANT:KEY turns auth on with this key (repeatable)")
	return cmd
}

func runDev(cmd *cobra.Command, _ []string) error {
	ctx := cmd.Context()
	f := cmd.Flags()
	kafkaAddr, _ := f.GetString("kafka-addr")
	dataDir, _ := f.GetString("data-dir")
	apiKeys, _ := f.GetStringArray("api-key")

	overrides := map[string]any{"kafka.brokers": []string{kafkaAddr}}
	if f.Changed("partitions") {
		overrides["kafka.partitions"], _ = f.GetInt("partitions")
	}
	if len(apiKeys) > 0 {
		var keys []map[string]any
		for _, tk := range apiKeys {
			tenant, key, ok := strings.Cut(tk, ":")
			if !ok || tenant == "" || key == "" {
				return fmt.Errorf("--api-key %q: want TENANT:KEY", tk)
			}
			sum := sha256.Sum256([]byte(key))
			keys = append(keys, map[string]any{"tenant": tenant, "key_sha256": hex.EncodeToString(sum[:])})
		}
		overrides["auth.keys"] = keys
		overrides["auth.disabled"] = false
	}
	c, err := loadConfig(cmd, config.Options{Defaults: devDefaults, Overrides: overrides})
	if err != nil {
		return err
	}
	logger := app.NewLogger(c.Log)

	b, err := broker.Start(broker.Config{Addr: kafkaAddr, DataDir: dataDir, Partitions: c.Kafka.Partitions})
	if err != nil {
		return err
	}
	defer b.Close()
	c.Kafka.Brokers = []string{b.Addr()} // the resolved port when --kafka-addr ends in :0

	if err := postgres.EnsureDatabase(ctx, c.Database.URL); err != nil {
		return err
	}
	pool, err := postgres.Open(ctx, c.Database.URL, 2)
	if err != nil {
		return err
	}
	applied, err := postgres.Migrate(ctx, pool)
	if err == nil && len(c.Entities) == 0 {
		var table string
		table, err = postgres.EnsureDemoCustomers(ctx, pool)
		c.Entities = map[string]config.EntityConfig{
			"customers": {Table: table, Key: []string{"customer_id"}, VersionColumn: "version"},
		}
	}
	pool.Close()
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		logger.Info("migrated", "applied", applied)
	}

	ingress, err := app.NewIngress(c, logger)
	if err != nil {
		return err
	}
	processor, err := app.NewProcessor(c, logger)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "spool dev: ingress http://%s  broker %s  database %s\n",
		ingress.Addr(), b.Addr(), config.RedactURL(c.Database.URL))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ingress.Run(gctx) })
	g.Go(func() error { return processor.Run(gctx) })
	return g.Wait()
}

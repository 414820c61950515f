package cli

import (
	"crypto/tls"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/spoolhq/spool/internal/broker"
)

func newBrokerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the embedded Kafka-protocol broker alone, so that ingress and processors can run as separate processes",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, _ := cmd.Flags().GetString("addr")
			dir, _ := cmd.Flags().GetString("data-dir")
			parts, _ := cmd.Flags().GetInt("partitions")
			sync, _ := cmd.Flags().GetBool("sync-writes")
			advertise, _ := cmd.Flags().GetString("advertise")
			cfg := broker.Config{Addr: addr, Advertise: advertise, DataDir: dir, Partitions: parts, SyncWrites: sync}
			cert, _ := cmd.Flags().GetString("tls-cert")
			key, _ := cmd.Flags().GetString("tls-key")
			if (cert == "") != (key == "") {
				return fmt.Errorf("--tls-cert and --tls-key go together")
			}
			if cert != "" {
				pair, err := tls.LoadX509KeyPair(cert, key)
				if err != nil {
					return fmt.Errorf("--tls-cert and --tls-key: %w", err)
				}
				cfg.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
			}
			users, _ := cmd.Flags().GetStringArray("sasl-user")
			for _, s := range users {
				u, err := broker.ParseUser(s)
				if err != nil {
					return fmt.Errorf("--sasl-user: %w", err)
				}
				cfg.Users = append(cfg.Users, u)
			}
			b, err := broker.Start(cfg)
			if err != nil {
				return err
			}
			defer b.Close()
			how := "plaintext"
			if cfg.TLS != nil {
				how = "TLS"
			}
			if len(cfg.Users) > 0 {
				how += fmt.Sprintf(", SASL (%d users)", len(cfg.Users))
			}
			if advertise != "" {
				how += ", advertised as " + b.Addr()
			}
			fmt.Fprintf(cmd.OutOrStdout(), "broker listening on %s (%s), data in %s\n", b.ListenAddr(), how, dir)
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().String("addr", "127.0.0.1:9092", "listen address")
	cmd.Flags().String("advertise", "", "host:port clients are told to connect to, as Kafka's advertised.listeners (a proxy or NAT in front; empty: the listen address)")
	cmd.Flags().String("data-dir", ".spool-broker", "where the broker keeps its data")
	cmd.Flags().Int("partitions", 12, "partitions of auto-created topics")
	cmd.Flags().Bool("sync-writes", false, "fsync every produce before acknowledging it")
	cmd.Flags().String("tls-cert", "", "PEM certificate of a TLS listener (with --tls-key): clients set kafka.tls.ca_file to its CA")
	cmd.Flags().String("tls-key", "", "PEM private key of --tls-cert")
	cmd.Flags().StringArray("sasl-user", nil, "MECHANISM:NAME:PASSWORD of a SASL user (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); repeat for more; any turns SASL on")
	return cmd
}

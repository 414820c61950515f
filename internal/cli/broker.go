package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/spoolhq/spool/internal/broker"
)

func newBrokerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Run the embedded Kafka-protocol broker alone, so that ingress and processors can run as separate processes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, _ := cmd.Flags().GetString("addr")
			dir, _ := cmd.Flags().GetString("data-dir")
			parts, _ := cmd.Flags().GetInt("partitions")
			sync, _ := cmd.Flags().GetBool("sync-writes")
			b, err := broker.Start(broker.Config{Addr: addr, DataDir: dir, Partitions: parts, SyncWrites: sync})
			if err != nil {
				return err
			}
			defer b.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "broker listening on %s, data in %s\n", b.Addr(), dir)
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().String("addr", "127.0.0.1:9092", "listen address")
	cmd.Flags().String("data-dir", ".spool-broker", "where the broker keeps its data")
	cmd.Flags().Int("partitions", 12, "partitions of auto-created topics")
	cmd.Flags().Bool("sync-writes", false, "fsync every produce before acknowledging it")
	return cmd
}

package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/postgres"
)

func newMigrateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply spool's database migrations (idempotent; safe to run concurrently)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// migrate needs only the database: auth is the servers' concern.
			c, err := loadConfig(cmd, config.Options{Defaults: map[string]any{"auth.disabled": true}})
			if err != nil {
				return err
			}
			pool, err := postgres.Open(cmd.Context(), c.Database.URL, 2)
			if err != nil {
				return err
			}
			defer pool.Close()
			applied, err := postgres.Migrate(cmd.Context(), pool)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "database is up to date")
			}
			for _, m := range applied {
				fmt.Fprintln(cmd.OutOrStdout(), "applied", m)
			}
			return nil
		},
	}
	config.AddFlags(cmd.Flags(), nil, "database.url")
	return cmd
}

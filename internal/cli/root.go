package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/buildinfo"
	"github.com/spoolhq/spool/internal/config"
)

// New returns the spoolctl root command.
func New() *cobra.Command {
	root := &cobra.Command{
		Use:           "spoolctl",
		Short:         "Operate spool: run it locally, migrate, upload, follow jobs",
		Long:          "Operate spool: run it locally, migrate, upload, follow jobs.\n\n" + exitCodes,
		Version:       buildinfo.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(ExitUsage, err) })
	root.Args = cobra.ArbitraryArgs
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return withCode(ExitUsage, fmt.Errorf("unknown command %q for spoolctl (spoolctl --help lists them)", args[0]))
		}
		return cmd.Help()
	}
	root.PersistentFlags().String("config", "", "config file (default: $SPOOL_CONFIG, else ./spool.yaml if present)")
	root.AddCommand(newDevCmd(), newBrokerCmd(), newMigrateCmd(), newUploadCmd(), newJobsCmd(), newDLQCmd())
	return root
}

// loadConfig reads the server configuration with the command's flags.
func loadConfig(cmd *cobra.Command, opts config.Options) (*config.Config, error) {
	opts.Flags = cmd.Flags()
	opts.File, _ = cmd.Flags().GetString("config")
	c, err := config.Load(opts)
	return c, withCode(ExitUsage, err)
}

// addClientFlags adds --server and --api-key to a command that calls the API.
func addClientFlags(cmd *cobra.Command) {
	cmd.Flags().String("server", "http://127.0.0.1:8080", "ingress base URL (env SPOOL_SERVER)")
	cmd.Flags().String("api-key", "", "API key (env SPOOL_API_KEY)")
}

func newClient(cmd *cobra.Command) (*apiclient.Client, error) {
	c, err := config.LoadClient(cmd.Flags())
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	return &apiclient.Client{Server: c.Server, APIKey: c.APIKey}, nil
}

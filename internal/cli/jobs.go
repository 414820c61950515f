package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/pipeline"
)

func newJobsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Short: "Follow jobs through the API"}
	get := &cobra.Command{
		Use:   "get JOB_ID",
		Short: "Show a job's state and counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := newClient(cmd)
			if err != nil {
				return err
			}
			j, err := client.Job(cmd.Context(), pipeline.JobID(args[0]))
			if err != nil {
				return err
			}
			out, _ := cmd.Flags().GetString("output")
			return printJob(cmd.OutOrStdout(), j, out)
		},
	}
	addClientFlags(get)
	get.Flags().StringP("output", "o", "text", "text or json")
	cmd.AddCommand(get)
	return cmd
}

func printJob(w io.Writer, j *httpapi.JobView, out string) error {
	if out == "json" {
		return writeJSONOut(w, j)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "job\t%s\n", j.JobID)
	fmt.Fprintf(tw, "state\t%s\n", j.State)
	fmt.Fprintf(tw, "progress\t%.1f%%\n", j.Progress*100)
	c := j.Counts
	fmt.Fprintf(tw, "received\t%d\naccepted\t%d\nrejected\t%d\n", c.Received, c.Accepted, c.Rejected)
	fmt.Fprintf(tw, "applied\t%d\nduplicate\t%d\nstale\t%d\nconflict\t%d\ndead_lettered\t%d\n",
		c.Applied, c.Duplicate, c.Stale, c.Conflict, c.DeadLettered)
	fmt.Fprintf(tw, "created\t%s\n", j.CreatedAt.Format(time.RFC3339))
	if j.CompletedAt != nil {
		fmt.Fprintf(tw, "completed\t%s\n", j.CompletedAt.Format(time.RFC3339))
	}
	if j.Error != "" {
		fmt.Fprintf(tw, "error\t%s\n", j.Error)
	}
	return tw.Flush()
}

func writeJSONOut(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/pipeline"
)

func newJobsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Short: "Follow jobs through the API"}
	get := jobCmd("get", "Show a job's state and counts", []string{"text", "json"},
		func(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error {
			j, err := client.Job(cmd.Context(), id)
			if err != nil {
				return err
			}
			return printJob(cmd.OutOrStdout(), j, out)
		})
	wait := jobCmd("wait", "Follow a job to its end; exit non-zero unless it completed without failures", []string{"text", "json"},
		func(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error {
			return waitJob(cmd, client, id, out, nil)
		})
	addTimeoutFlag(wait)
	failures := jobCmd("failures", "List a job's rejected, conflicting and dead-lettered commands, by input index (json: NDJSON)",
		[]string{"text", "json", "csv"}, printFailures)
	abort := jobCmd("abort", "Abort a job: its commands not applied yet are skipped, counted as aborted", []string{"text", "json"},
		func(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error {
			j, err := client.AbortJob(cmd.Context(), id)
			if err != nil {
				return err
			}
			return printJob(cmd.OutOrStdout(), j, out)
		})
	results := jobCmd("results", "List a job's commands with their outcomes, by input index (json: NDJSON; the job must have been uploaded with --results)",
		[]string{"text", "json", "csv"}, printResults)
	results.Flags().StringSlice("outcome", nil, "only these outcomes ("+outcomeNames()+")")
	cmd.AddCommand(get, newJobsListCmd(), failures, results, wait, abort)
	return cmd
}

// jobCmd is a jobs subcommand on one JOB_ID with an -o flag.
func jobCmd(name, short string, outputs []string, run func(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error) *cobra.Command {
	cmd := &cobra.Command{
		Use:   name + " JOB_ID",
		Short: short,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := newClient(cmd)
			if err != nil {
				return err
			}
			out, _ := cmd.Flags().GetString("output")
			if err := checkOutput(out, outputs...); err != nil {
				return err
			}
			return run(cmd, client, pipeline.JobID(args[0]), out)
		},
	}
	addClientFlags(cmd)
	cmd.Flags().StringP("output", "o", "text", joinOr(outputs))
	return cmd
}

func newJobsListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List your jobs, newest first",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := newClient(cmd)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			state, _ := f.GetString("state")
			limit, _ := f.GetInt("limit")
			cursor, _ := f.GetString("cursor")
			all, _ := f.GetBool("all")
			out, _ := f.GetString("output")
			if err := checkOutput(out, "text", "json"); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			if out != "json" {
				fmt.Fprintln(tw, "JOB\tSTATE\tPROGRESS\tRECEIVED\tACCEPTED\tREJECTED\tAPPLIED\tDEAD\tCREATED")
			}
			for {
				page, err := client.Jobs(cmd.Context(), apiclient.JobsOptions{State: pipeline.JobState(state), Limit: limit, Cursor: cursor})
				if err != nil {
					return err
				}
				for _, j := range page.Jobs {
					if out == "json" {
						if err := json.NewEncoder(w).Encode(j); err != nil {
							return err
						}
						continue
					}
					c := j.Counts
					fmt.Fprintf(tw, "%s\t%s\t%.0f%%\t%d\t%d\t%d\t%d\t%d\t%s\n", field(string(j.JobID)), field(string(j.State)), j.Progress*100,
						c.Received, c.Accepted, c.Rejected, c.Applied, c.DeadLettered, j.CreatedAt.Format(time.RFC3339))
				}
				cursor = page.NextCursor
				if !all || cursor == "" {
					break
				}
			}
			if out == "json" {
				return nil
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if cursor != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: --cursor %s (or --all)\n", field(cursor))
			}
			return nil
		},
	}
	addClientFlags(cmd)
	f := cmd.Flags()
	f.String("state", "", "only jobs in this state")
	f.Int("limit", 50, "jobs per page (1-500)")
	f.String("cursor", "", "start after this cursor (printed after a page)")
	f.Bool("all", false, "follow every page")
	f.StringP("output", "o", "text", "text, or json (one job per line)")
	return cmd
}

func printJob(w io.Writer, j *httpapi.JobView, out string) error {
	if out == "json" {
		return writeJSONOut(w, j)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "job\t%s\n", field(string(j.JobID)))
	fmt.Fprintf(tw, "state\t%s\n", field(string(j.State)))
	fmt.Fprintf(tw, "progress\t%.1f%%\n", j.Progress*100)
	c := j.Counts
	fmt.Fprintf(tw, "received\t%d\naccepted\t%d\nrejected\t%d\n", c.Received, c.Accepted, c.Rejected)
	cv := c.Outcomes()
	for _, o := range pipeline.CountedOutcomes {
		fmt.Fprintf(tw, "%s\t%d\n", o, cv.Get(o))
	}
	if j.Parts != nil {
		fmt.Fprintf(tw, "parts\t%s\n", partsLine(*j.Parts))
	}
	fmt.Fprintf(tw, "created\t%s\n", j.CreatedAt.Format(time.RFC3339))
	if j.CompletedAt != nil {
		fmt.Fprintf(tw, "completed\t%s\n", j.CompletedAt.Format(time.RFC3339))
	}
	if j.Error != "" {
		fmt.Fprintf(tw, "error\t%s\n", shown(j.Error, pipeline.MaxErrorBytes))
	}
	return tw.Flush()
}

// partsLine sums up a job's parts by state: "3 done; broken: 2, 5".
func partsLine(parts []httpapi.PartStatus) string {
	if len(parts) == 0 {
		return "none yet"
	}
	var done int
	byState := map[string][]string{}
	for _, p := range parts {
		if p.State == pipeline.PartDone {
			done++
		} else {
			byState[p.State] = append(byState[p.State], strconv.Itoa(p.Number))
		}
	}
	line := fmt.Sprintf("%d done", done)
	for _, st := range []string{pipeline.PartReceiving, pipeline.PartBroken, pipeline.PartRefused} {
		if ns := byState[st]; len(ns) > 0 {
			line += fmt.Sprintf("; %s: %s", st, strings.Join(ns, ", "))
		}
	}
	return line
}

func writeJSONOut(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printFailures writes a job's failures: NDJSON or CSV as the API sends
// them, or a table written as the listing streams in.
func printFailures(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error {
	return printListing(cmd, out, "failures", "INDEX\tID\tSTAGE\tOUTCOME\tCLASS\tERROR",
		func(format string, w io.Writer) error { return client.Failures(cmd.Context(), id, format, w) },
		func(tw io.Writer, f httpapi.FailureView) {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", f.Index, field(string(f.ID)), field(f.Stage), field(string(f.Outcome)),
				field(string(f.Class)), shown(f.Error, 100))
		})
}

// printResults writes a job's results, as printFailures its failures.
func printResults(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error {
	outcomes, _ := cmd.Flags().GetStringSlice("outcome")
	for _, o := range outcomes {
		if !slices.Contains(pipeline.ResultOutcomes, pipeline.Outcome(o)) {
			return withCode(ExitUsage, fmt.Errorf("--outcome %s: use %s", o, outcomeNames()))
		}
	}
	return printListing(cmd, out, "commands", "INDEX\tID\tOUTCOME",
		func(format string, w io.Writer) error { return client.Results(cmd.Context(), id, outcomes, format, w) },
		func(tw io.Writer, r httpapi.ResultView) {
			fmt.Fprintf(tw, "%d\t%s\t%s\n", r.Index, field(string(r.ID)), field(string(r.Outcome)))
		})
}

func outcomeNames() string {
	names := make([]string, len(pipeline.ResultOutcomes))
	for i, o := range pipeline.ResultOutcomes {
		names[i] = string(o)
	}
	return strings.Join(names, ", ")
}

// printListing writes a job's listing: NDJSON or CSV as the API sends it
// (list copies it in a format), or a table of rows written as the listing
// streams in, then how many (what) it held.
func printListing[T any](cmd *cobra.Command, out, what, header string, list func(format string, w io.Writer) error, row func(io.Writer, T)) error {
	w := cmd.OutOrStdout()
	switch out {
	case "json":
		return list("ndjson", w)
	case "csv":
		return list("csv", w)
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := list("ndjson", pw)
		pw.CloseWithError(err)
		errc <- err
	}()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	dec := json.NewDecoder(pr)
	n := 0
	for {
		var v T
		if err := dec.Decode(&v); err == io.EOF {
			break
		} else if err != nil {
			_ = pr.CloseWithError(err)
			if lerr := <-errc; lerr != nil && !errors.Is(lerr, io.ErrClosedPipe) {
				return lerr // the listing broke off first
			}
			return err
		}
		n++
		row(tw, v)
		if n%1000 == 0 {
			_ = tw.Flush()
		}
	}
	if err := <-errc; err != nil {
		return err
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d %s\n", n, what)
	return nil
}

package cli

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/upload"
	"github.com/spoolhq/spool/pipeline"
)

func newUploadCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "upload FILE",
		Short: "Stream a file of commands to POST /v1/jobs",
		Long: `upload streams FILE to ingress and prints the job. The format follows the
extension (.ndjson/.jsonl, .json, .csv; .gz is sent gzip-encoded) or --format;
--gzip compresses a plain file on the fly. A bar shows bytes and records sent on
a terminal, a plain line every 10 seconds otherwise.
FILE - reads standard input (with --format), kept in a temporary file so that
a resend can send it again.
--wait follows the job to its end and exits non-zero if anything failed
(--timeout bounds the wait).
--part-size 64MiB sends a large file as a job in parts, split on record
boundaries, --parallel at once, each resent on its own when its connection
breaks; if the whole command stops, --resume JOB (with the same file and
--part-size) sends only the parts the job has not received.

` + exitCodes,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: runUpload,
	}
	addClientFlags(cmd)
	f := cmd.Flags()
	f.String("entity", "", "default entity of the records")
	f.String("format", "", "ndjson, json or csv (default: from the extension)")
	f.String("idempotency-key", "", "Idempotency-Key header")
	f.String("id-column", "", "CSV: the column holding the command id (server default: id)")
	f.String("version-column", "", "CSV: the column holding the version")
	f.String("op", "", "CSV: "+pipeline.OpNames()+" for every row (server default: upsert)")
	f.Bool("results", false, "keep each command's outcome, for spoolctl jobs results (a row a command on the server)")
	f.String("part-size", "", "send the file as a job in parts of about this size (64MiB, 512k…), split on record boundaries (NDJSON, CSV, a JSON array)")
	f.Int("parallel", 4, "with --part-size: parts sent at once")
	f.String("resume", "", "with --part-size: the job an interrupted upload of this file opened; the parts it received are not sent again")
	f.Bool("gzip", false, "compress the file on the fly (a .gz file is sent as it is)")
	f.Bool("wait", false, "follow the job to its end; exit non-zero if anything failed")
	f.StringP("output", "o", "text", "text or json (with --wait: one document, the upload's answer and the job)")
	addTimeoutFlag(cmd)
	return cmd
}

func runUpload(cmd *cobra.Command, args []string) error {
	f := cmd.Flags()
	client, err := newClient(cmd)
	if err != nil {
		return err
	}
	path := args[0]
	name, _ := f.GetString("format")
	gz := strings.HasSuffix(path, ".gz")
	if name == "" {
		name = strings.TrimPrefix(filepath.Ext(strings.TrimSuffix(path, ".gz")), ".")
	}
	format, ok := upload.ByName(name)
	if !ok {
		return withCode(ExitUsage, fmt.Errorf("cannot tell the format of %s: use --format ndjson|json|csv", path))
	}
	out, _ := f.GetString("output")
	if err := checkOutput(out, "text", "json"); err != nil {
		return err
	}
	if path == "-" {
		// A resend needs the body again: standard input is kept in a
		// temporary file first.
		if path, err = spoolStdin(cmd.InOrStdin()); err != nil {
			return err
		}
		defer os.Remove(path)
	}
	entity, _ := f.GetString("entity")
	key, _ := f.GetString("idempotency-key")
	if key == "" {
		key = newIdempotencyKey()
		fmt.Fprintf(cmd.ErrOrStderr(), "idempotency key %s (pass --idempotency-key %s to retry this upload safely)\n", key, key)
	}
	params := url.Values{}
	for flag, param := range map[string]string{"id-column": "id_column", "version-column": "version_column", "op": "op"} {
		if v, _ := f.GetString(flag); v != "" {
			params.Set(param, v)
		}
	}
	results, _ := f.GetBool("results")
	opts := apiclient.UploadOptions{ContentType: format.MediaType, Gzip: gz, Entity: entity, IdempotencyKey: key,
		Results: results, ExtraParameters: params}
	w := cmd.OutOrStdout()
	wait, _ := f.GetBool("wait")
	if size, _ := f.GetString("part-size"); size != "" {
		return uploadParts(cmd, client, path, format, opts, size, out, wait)
	}
	if resume, _ := f.GetString("resume"); resume != "" {
		return withCode(ExitUsage, errors.New("--resume needs the --part-size the upload was split with"))
	}
	compress, _ := f.GetBool("gzip")
	res, err := uploadWithRetry(cmd, client, path, format, compress, opts)
	if err != nil {
		return err
	}
	switch {
	case out == "json" && wait: // one document, with the job, once it ends
	case out == "json":
		if err := writeJSONOut(w, res); err != nil {
			return err
		}
	default:
		fmt.Fprintf(w, "job %s %s: received %d, accepted %d, rejected %d\n", field(string(res.JobID)), field(string(res.State)),
			res.Received, res.Accepted, res.Rejected)
		for _, r := range res.Rejections {
			fmt.Fprintf(w, "  rejected #%d %s: %s\n", r.Index, pipeline.Quote(string(r.ID)), shown(r.Error, pipeline.MaxErrorBytes))
		}
	}
	if wait {
		return waitJob(cmd, client, res.JobID, out, res)
	}
	if res.Rejected > 0 {
		return fmt.Errorf("%d records rejected", res.Rejected)
	}
	return nil
}

// uploadParts sends the file as a job in parts and prints the completed
// job, or follows it to its end with wait.
func uploadParts(cmd *cobra.Command, client *apiclient.Client, path string, format upload.Format, o apiclient.UploadOptions,
	size, out string, wait bool,
) error {
	f := cmd.Flags()
	n, err := parseSize(size)
	if err != nil {
		return err
	}
	parallel, _ := f.GetInt("parallel")
	if parallel < 1 {
		return withCode(ExitUsage, errors.New("--parallel must be at least 1"))
	}
	resume, _ := f.GetString("resume")
	o.IdempotencyKey = "" // each part is its own idempotent request
	job, err := uploadInParts(cmd, client, path, format, o, n, parallel, resume)
	if err != nil {
		return err
	}
	if wait {
		return waitJob(cmd, client, job.JobID, out, nil)
	}
	if err := printJob(cmd.OutOrStdout(), job, out); err != nil {
		return err
	}
	if job.Counts.Rejected > 0 {
		return fmt.Errorf("%d records rejected", job.Counts.Rejected)
	}
	return nil
}

// uploadWithRetry sends the file, again where apiclient.Resend says it is
// safe and useful.
func uploadWithRetry(cmd *cobra.Command, client *apiclient.Client, path string, format upload.Format, compress bool, o apiclient.UploadOptions) (*httpapi.UploadView, error) {
	return apiclient.Resend(cmd.Context(), func(context.Context) (*httpapi.UploadView, error) {
		return uploadOnce(cmd, client, path, format, compress, o)
	}, func(attempt int, err error, wait time.Duration) {
		fmt.Fprintf(cmd.ErrOrStderr(), "upload attempt %d: %s; retrying in %s with the same idempotency key\n", attempt, shown(err.Error(), pipeline.MaxErrorBytes), wait)
	})
}

// uploadOnce streams the file, compressing it on the way when asked, and
// shows its bytes and records as they go.
func uploadOnce(cmd *cobra.Command, client *apiclient.Client, path string, format upload.Format, compress bool, o apiclient.UploadOptions) (*httpapi.UploadView, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil, err
	}
	counter := newRecordCounter(format, o.ExtraParameters)
	sink := io.WriteCloser(counter)
	if o.Gzip {
		sink = gunzipTo(counter)
	}
	prog := newProgress(cmd.ErrOrStderr(), term.IsTerminal(int(os.Stderr.Fd())), filepath.Base(path), st.Size(), counter.Count)
	body := io.TeeReader(file, io.MultiWriter(sink, prog))
	stop := func() {}
	if compress && !o.Gzip {
		body, stop = gzipped(body)
		o.Gzip = true
	}
	res, err := client.Upload(cmd.Context(), body, o)
	stop() // the compressor reads the file no more
	_ = sink.Close()
	prog.Finish()
	return res, err
}

// gzipped compresses r on the fly; stop ends the compression, whether or
// not all of r was read, and returns once it has ended.
func gzipped(r io.Reader) (_ io.Reader, stop func()) {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		zw := gzip.NewWriter(pw)
		_, err := io.Copy(zw, r)
		if err == nil {
			err = zw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, func() {
		_ = pr.CloseWithError(errors.New("upload ended"))
		<-done
	}
}

func newIdempotencyKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// spoolStdin copies r to a temporary file and returns its path.
func spoolStdin(r io.Reader) (string, error) {
	f, err := os.CreateTemp("", "spoolctl-stdin-*")
	if err != nil {
		return "", fmt.Errorf("keeping standard input for resends: %w", err)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("reading standard input: %w", err)
	}
	return f.Name(), nil
}

// writeUploadAndJob writes upload --wait -o json's one document: the
// upload's answer and the job as last seen (null if never).
func writeUploadAndJob(w io.Writer, upload *httpapi.UploadView, job *httpapi.JobView) error {
	return writeJSONOut(w, struct {
		Upload *httpapi.UploadView `json:"upload"`
		Job    *httpapi.JobView    `json:"job"`
	}{upload, job})
}

// addTimeoutFlag adds --timeout to a command that follows a job.
func addTimeoutFlag(cmd *cobra.Command) {
	cmd.Flags().Duration("timeout", 0, "give up following the job after this long (exit 3); 0: no bound")
}

// waitJob follows a job to its end and fails unless it completed cleanly.
// With -o json and the upload that made the job, it prints one document:
// {"upload": …, "job": …}.
func waitJob(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string, upload *httpapi.UploadView) error {
	ctx := cmd.Context()
	if timeout, _ := cmd.Flags().GetDuration("timeout"); timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var bar *progressbar.ProgressBar
	if term.IsTerminal(int(os.Stderr.Fd())) {
		bar = progressbar.NewOptions(1000, progressbar.OptionSetDescription("job "+field(string(id))),
			progressbar.OptionSetWriter(os.Stderr), progressbar.OptionClearOnFinish())
	}
	var last *httpapi.JobView
	j, err := client.WaitJob(ctx, id, 300*time.Millisecond, func(j *httpapi.JobView) {
		last = j
		if bar != nil {
			_ = bar.Set(int(j.Progress * 1000))
		}
	})
	if bar != nil {
		_ = bar.Finish()
	}
	if err != nil && upload != nil && out == "json" {
		_ = writeUploadAndJob(cmd.OutOrStdout(), upload, last) // the upload's answer (its job id) still reaches a script
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && cmd.Context().Err() == nil {
		state := "not yet seen"
		if last != nil {
			state = string(last.State)
		}
		timeout, _ := cmd.Flags().GetDuration("timeout")
		return withCode(ExitUnreachable, fmt.Errorf("--timeout %s passed; job %s is %s", timeout, field(string(id)), field(state)))
	}
	if err != nil {
		return err
	}
	if upload != nil && out == "json" {
		err = writeUploadAndJob(cmd.OutOrStdout(), upload, j)
	} else {
		err = printJob(cmd.OutOrStdout(), j, out)
	}
	if err != nil {
		return err
	}
	switch j.State {
	case pipeline.JobCompleted:
		return nil
	case pipeline.JobFailed, pipeline.JobAborted:
		return withCode(ExitJobFailed, fmt.Errorf("job %s ended %s", field(string(j.JobID)), field(string(j.State))))
	}
	return withCode(ExitFailed, fmt.Errorf("job %s ended %s", field(string(j.JobID)), field(string(j.State))))
}

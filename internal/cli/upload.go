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
--wait follows the job to its end and exits non-zero if anything failed.`,
		Args: cobra.ExactArgs(1),
		RunE: runUpload,
	}
	addClientFlags(cmd)
	f := cmd.Flags()
	f.String("entity", "", "default entity of the records")
	f.String("format", "", "ndjson, json or csv (default: from the extension)")
	f.String("idempotency-key", "", "Idempotency-Key header")
	f.String("id-column", "", "CSV: the column holding the command id (server default: id)")
	f.String("version-column", "", "CSV: the column holding the version")
	f.String("op", "", "CSV: upsert or delete for every row (server default: upsert)")
	f.Bool("gzip", false, "compress the file on the fly (a .gz file is sent as it is)")
	f.Bool("wait", false, "follow the job to its end; exit non-zero if anything failed")
	f.StringP("output", "o", "text", "text or json")
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
		return fmt.Errorf("cannot tell the format of %s: use --format ndjson|json|csv", path)
	}
	entity, _ := f.GetString("entity")
	key, _ := f.GetString("idempotency-key")
	out, _ := f.GetString("output")
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
	opts := apiclient.UploadOptions{ContentType: format.MediaType, Gzip: gz, Entity: entity, IdempotencyKey: key, ExtraParameters: params}
	compress, _ := f.GetBool("gzip")
	res, err := uploadWithRetry(cmd, client, path, format, compress, opts)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if out == "json" {
		if err := writeJSONOut(w, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "job %s %s: received %d, accepted %d, rejected %d\n", field(string(res.JobID)), field(string(res.State)),
			res.Received, res.Accepted, res.Rejected)
		for _, r := range res.Rejections {
			fmt.Fprintf(w, "  rejected #%d %s: %s\n", r.Index, pipeline.Quote(string(r.ID)), shown(r.Error, pipeline.MaxErrorBytes))
		}
	}
	if wait, _ := f.GetBool("wait"); wait {
		return waitJob(cmd, client, res.JobID, out)
	}
	if res.Rejected > 0 {
		return fmt.Errorf("%d records rejected", res.Rejected)
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
	prog := newProgress(cmd.ErrOrStderr(), term.IsTerminal(int(os.Stderr.Fd())), filepath.Base(path), st.Size(), counter)
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

// waitJob follows a job to its end and fails unless it completed cleanly.
func waitJob(cmd *cobra.Command, client *apiclient.Client, id pipeline.JobID, out string) error {
	var bar *progressbar.ProgressBar
	if term.IsTerminal(int(os.Stderr.Fd())) {
		bar = progressbar.NewOptions(1000, progressbar.OptionSetDescription("job "+field(string(id))),
			progressbar.OptionSetWriter(os.Stderr), progressbar.OptionClearOnFinish())
	}
	j, err := client.WaitJob(cmd.Context(), id, 300*time.Millisecond, func(j *httpapi.JobView) {
		if bar != nil {
			_ = bar.Set(int(j.Progress * 1000))
		}
	})
	if bar != nil {
		_ = bar.Finish()
	}
	if err != nil {
		return err
	}
	if err := printJob(cmd.OutOrStdout(), j, out); err != nil {
		return err
	}
	if j.State != pipeline.JobCompleted {
		return fmt.Errorf("job %s ended %s", field(string(j.JobID)), field(string(j.State)))
	}
	return nil
}

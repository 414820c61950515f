package cli_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/cli"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/pipeline"
)

// TestUploadInParts: spoolctl upload --part-size splits an NDJSON file, a
// CSV file (its header repeated in each part) and a JSON array (each part
// an array of its elements) on record boundaries and sends the parts at
// once; an upload that stopped after some parts is
// resumed with --resume, which sends only the rest, and a file that
// changed since is refused.
func TestUploadInParts(t *testing.T) {
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dev := startDev(ctx, t, db)
	dir := t.TempDir()
	var ndjson, csv, array strings.Builder
	csv.WriteString("id,customer_id,name,version\n")
	array.WriteString("[\n")
	for i := range 300 {
		fmt.Fprintf(&ndjson, `{"id":"n-%d","entity":"customers","version":1,"data":{"customer_id":"n%d","name":"line, %d"}}`+"\n", i, i, i)
		fmt.Fprintf(&csv, "c-%d,c%d,\"a name\nover two lines %d\",1\n", i, i, i)
		if i > 0 {
			array.WriteString(",\n  ")
		}
		fmt.Fprintf(&array, `{"id":"a-%d","version":1,"data":{"customer_id":"a%d","name":"[%d], {}"}}`, i, i, i)
	}
	array.WriteString("\n]\n")
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		c := cli.New()
		c.SetArgs(append(args, "--server", dev.server))
		c.SetOut(&out)
		c.SetErr(io.Discard)
		err := c.ExecuteContext(ctx)
		return out.String(), err
	}
	type job struct {
		ID     pipeline.JobID    `json:"job_id"`
		State  pipeline.JobState `json:"state"`
		Counts struct {
			Accepted int64 `json:"accepted"`
			Applied  int64 `json:"applied"`
		} `json:"counts"`
		Parts []httpapi.PartStatus `json:"parts"`
	}
	for _, tt := range []struct{ file, format string }{{write("c.ndjson", ndjson.String()), "ndjson"},
		{write("c.csv", csv.String()), "csv"}, {write("c.json", array.String()), "json"}} {
		args := []string{"upload", tt.file, "--part-size", "4k", "--parallel", "3", "--wait", "-o", "json", "--entity", "customers"}
		if tt.format == "csv" {
			args = append(args, "--version-column", "version")
		}
		out, err := run(args...)
		require.NoError(t, err, out)
		var j job
		require.NoError(t, json.Unmarshal([]byte(out), &j), out)
		require.Equal(t, pipeline.JobCompleted, j.State, tt.format)
		require.Equal(t, int64(300), j.Counts.Accepted, tt.format)
		require.Equal(t, int64(300), j.Counts.Applied, tt.format)
		require.GreaterOrEqual(t, len(j.Parts), 3, "%s: the file was split", tt.format)
	}

	// An upload stopped after its first part: open the job and send part 1
	// as spoolctl would (the same split), then resume.
	file := write("r.ndjson", strings.NewReplacer(`"n-`, `"r-`, `"customer_id":"n`, `"customer_id":"r`).Replace(ndjson.String()))
	client := &apiclient.Client{Server: dev.server}
	opened, err := client.OpenJob(ctx, apiclient.UploadOptions{})
	require.NoError(t, err)
	body, err := os.ReadFile(file)
	require.NoError(t, err)
	first := body[:bytes.IndexByte(body[4096:], '\n')+4096+1] // the first part: 4 KiB, to the next line's end
	_, err = client.PutPart(ctx, opened.JobID, 1, bytes.NewReader(first), apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	require.NoError(t, err)
	out, err := run("upload", file, "--part-size", "4k", "--resume", string(opened.JobID), "--wait", "-o", "json")
	require.NoError(t, err, out)
	var j job
	require.NoError(t, json.Unmarshal([]byte(out), &j), out)
	require.Equal(t, opened.JobID, j.ID)
	require.Equal(t, int64(300), j.Counts.Applied)

	// The file changed: its first part no longer matches what the job took.
	reopened, err := client.OpenJob(ctx, apiclient.UploadOptions{})
	require.NoError(t, err)
	_, err = client.PutPart(ctx, reopened.JobID, 1, bytes.NewReader(first), apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	require.NoError(t, err)
	changed := write("changed.ndjson", "\n"+string(body))
	_, err = run("upload", changed, "--part-size", "4k", "--resume", string(reopened.JobID))
	require.ErrorContains(t, err, "received with other bytes")
	_, err = run("upload", file, "--resume", string(reopened.JobID))
	require.Equal(t, cli.ExitUsage, cli.ExitCode(err), "--resume needs --part-size")

	// A part refused after some of its records (its gzip stream broken
	// before its end) is final: resuming says so, and sends nothing.
	refused, err := client.OpenJob(ctx, apiclient.UploadOptions{})
	require.NoError(t, err)
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	_, err = zw.Write(first)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	torn := zipped.Bytes()[:zipped.Len()-8] // no trailer
	_, err = client.PutPart(ctx, refused.JobID, 1, bytes.NewReader(torn), apiclient.UploadOptions{ContentType: "application/x-ndjson", Gzip: true})
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusBadRequest, apiErr.Status, apiErr.Error())
	_, err = run("upload", file, "--part-size", "4k", "--resume", string(refused.JobID))
	require.ErrorContains(t, err, "part 1 of job "+string(refused.JobID)+" was refused after")
	got, err := client.Job(ctx, refused.JobID)
	require.NoError(t, err)
	require.Len(t, *got.Parts, 1, "nothing more was sent")
	require.Equal(t, pipeline.PartRefused, (*got.Parts)[0].State)
	shown, err := run("jobs", "get", string(refused.JobID))
	require.NoError(t, err)
	require.Regexp(t, `parts\s+0 done; refused: 1\n`, shown)
}

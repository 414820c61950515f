package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/upload"
	"github.com/spoolhq/spool/pipeline"
)

// filePart is one part of a file split on record boundaries: its bytes
// are the file's from offset for length, between head and tail (a CSV
// file's header row, which every part repeats; a JSON array's brackets
// around its run of elements).
type filePart struct {
	n              int
	offset, length int64
	head, tail     []byte
}

// body opens the part's bytes anew (a resend reads them again).
func (p filePart) body(file *os.File) io.Reader {
	return io.MultiReader(bytes.NewReader(p.head), io.NewSectionReader(file, p.offset, p.length), bytes.NewReader(p.tail))
}

// digest is the hex SHA-256 of the part's bytes: what the server records
// of a part it received, so that a resumed upload skips it.
func (p filePart) digest(file *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, p.body(file)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// splitFile cuts a file of NDJSON, CSV or a JSON array into parts of at
// least size bytes (the last may be smaller), each ending on a record's
// end.
func splitFile(file *os.File, format upload.Format, size int64) ([]filePart, error) {
	var parts []filePart
	var head, tail []byte
	start := int64(0)
	cut := func(end int64) {
		if end > start {
			parts = append(parts, filePart{n: len(parts) + 1, offset: start, length: end - start, head: head, tail: tail})
			start = end
		}
	}
	switch format.Name {
	case upload.NDJSON.Name:
		r := bufio.NewReaderSize(file, 1<<20)
		var off int64
		for {
			line, err := r.ReadSlice('\n')
			for errors.Is(err, bufio.ErrBufferFull) { // a line longer than the buffer
				off += int64(len(line))
				line, err = r.ReadSlice('\n')
			}
			off += int64(len(line))
			if off-start >= size {
				cut(off)
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, err
			}
		}
		cut(off)
	case upload.CSV.Name:
		cr := csv.NewReader(bufio.NewReaderSize(file, 1<<20))
		cr.FieldsPerRecord, cr.ReuseRecord = -1, true
		if _, err := cr.Read(); err != nil {
			return nil, fmt.Errorf("reading the CSV header: %w", err)
		}
		start = cr.InputOffset()
		head = make([]byte, start)
		if _, err := file.ReadAt(head, 0); err != nil {
			return nil, err
		}
		for {
			_, err := cr.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("splitting the CSV file: %w", err)
			}
			if off := cr.InputOffset(); off-start >= size {
				cut(off)
			}
		}
		cut(cr.InputOffset())
	case upload.JSON.Name:
		// Each part is the run of elements from the first's start to the
		// last's end, commas between them included, in brackets.
		head, tail = []byte("["), []byte("]")
		dec := json.NewDecoder(bufio.NewReaderSize(file, 1<<20))
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return nil, withCode(ExitUsage, errors.New("a .json file is sent as a JSON array of commands: it does not start with ["))
		}
		start = -1 // the part's first element's start, once read
		var end int64
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf("splitting the JSON array: %w", err)
			}
			end = dec.InputOffset()
			if start < 0 {
				start = end - int64(len(raw))
			}
			if end-start >= size {
				cut(end)
				start = -1
			}
		}
		if start >= 0 {
			cut(end)
		}
	default:
		return nil, withCode(ExitUsage, fmt.Errorf("--part-size does not split %s files", format.Name))
	}
	if len(parts) > pipeline.MaxParts {
		return nil, withCode(ExitUsage, fmt.Errorf("the file makes %d parts, over the %d a job takes: use a larger --part-size", len(parts), pipeline.MaxParts))
	}
	return parts, nil
}

// uploadInParts sends the file as a job in parts: size bytes a part,
// parallel at once, each resent where apiclient.Resend says it is safe;
// resume names a job opened before, whose parts received already (with the
// same bytes) are not sent again. It returns the completed job.
func uploadInParts(cmd *cobra.Command, client *apiclient.Client, path string, format upload.Format, o apiclient.UploadOptions,
	size int64, parallel int, resume string,
) (*httpapi.JobView, error) {
	if o.Gzip {
		return nil, withCode(ExitUsage, errors.New("--part-size splits a plain file: decompress it first (--gzip compresses each part on the way)"))
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	parts, err := splitFile(file, format, size)
	if err != nil {
		return nil, err
	}
	ctx := cmd.Context()
	var job *httpapi.JobView
	if resume != "" {
		job, err = client.Job(ctx, pipeline.JobID(resume))
	} else {
		job, err = client.OpenJob(ctx, o)
	}
	if err != nil {
		return nil, err
	}
	if job.State != pipeline.JobOpen {
		return nil, fmt.Errorf("job %s is %s, not open for parts", field(string(job.JobID)), field(string(job.State)))
	}
	received := map[int]httpapi.PartStatus{}
	if job.Parts != nil {
		for _, p := range *job.Parts {
			switch p.State {
			case pipeline.PartDone:
				received[p.Number] = p
			case pipeline.PartRefused:
				return nil, fmt.Errorf("part %d of job %s was refused after %d of its records (%s): a refused part is final, so the job cannot hold the whole file; "+
					"abort it (spoolctl jobs abort %s) and send the file, corrected, as a new job",
					p.Number, field(string(job.JobID)), p.Received, shown(p.Error, pipeline.MaxErrorBytes), field(string(job.JobID)))
			}
			// A part broken or still receiving is sent again.
		}
	}
	var total int64
	var records atomic.Int64
	var todo []filePart
	for _, p := range parts {
		total += p.length
		done, ok := received[p.n]
		if !ok {
			todo = append(todo, p)
			continue
		}
		sum, err := p.digest(file)
		if err != nil {
			return nil, err
		}
		if sum != done.SHA256 {
			return nil, fmt.Errorf("part %d of job %s was received with other bytes: is this the file that job was sent from, with the same --part-size?", p.n, job.JobID)
		}
		records.Add(done.Received)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "job %s: %d parts, %d to send (spoolctl upload --resume %s sends the rest if this stops)\n",
		job.JobID, len(parts), len(todo), job.JobID)
	prog := newProgress(cmd.ErrOrStderr(), term.IsTerminal(int(os.Stderr.Fd())),
		fmt.Sprintf("%s in %d parts", filepath.Base(path), len(parts)), total, records.Load)
	for _, p := range parts {
		if _, ok := received[p.n]; ok {
			prog.add(p.length)
		}
	}
	compress, _ := cmd.Flags().GetBool("gzip")
	var mu sync.Mutex
	var rejections []string
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, p := range todo {
		g.Go(func() error {
			res, err := apiclient.Resend(gctx, func(ctx context.Context) (*httpapi.PartView, error) {
				body, stop := p.body(file), func() {}
				po := o
				po.Results = false // the job's, chosen at its opening
				if compress {
					body, stop = gzipped(body)
					po.Gzip = true
				}
				defer stop()
				return client.PutPart(ctx, job.JobID, p.n, body, po)
			}, func(attempt int, err error, wait time.Duration) {
				fmt.Fprintf(cmd.ErrOrStderr(), "part %d, attempt %d: %s; retrying in %s\n", p.n, attempt, shown(err.Error(), pipeline.MaxErrorBytes), wait)
			})
			if err != nil {
				return fmt.Errorf("part %d: %w", p.n, err)
			}
			records.Add(res.Received)
			prog.add(p.length)
			mu.Lock()
			for _, r := range res.Rejections {
				rejections = append(rejections, fmt.Sprintf("  rejected part %d #%d %s: %s", p.n, r.Index, pipeline.Quote(string(r.ID)), shown(r.Error, pipeline.MaxErrorBytes)))
			}
			mu.Unlock()
			return nil
		})
	}
	err = g.Wait()
	prog.Finish()
	for _, r := range rejections {
		fmt.Fprintln(cmd.ErrOrStderr(), r)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (the parts received are kept: spoolctl upload --resume %s sends the rest)", err, job.JobID)
	}
	return client.CompleteJob(ctx, job.JobID)
}

// parseSize reads a size such as 64MiB, 512k or 1G (binary units).
func parseSize(s string) (int64, error) {
	n, err := units.RAMInBytes(s)
	if err != nil || n <= 0 {
		return 0, withCode(ExitUsage, fmt.Errorf("--part-size %s: use a size such as 64MiB", s))
	}
	return n, nil
}

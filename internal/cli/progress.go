package cli

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/spoolhq/spool/internal/upload"
	"github.com/spoolhq/spool/pipeline"
)

// recordCounter counts the records of an upload body as it streams past,
// with the reader ingress decodes the format with (upload.Formats), so that
// both count alike: a record the server will reject counts too, as it does
// in the server's received. The server's answer is the truth; this is what
// the progress shows meanwhile. A body the reader cannot read further stops
// the counting, never the upload.
type recordCounter struct {
	*io.PipeWriter
	records atomic.Int64
	done    chan struct{}
}

// countBound is the largest record the counter reads: far past what a
// server takes, so that the counter never gives up before the server does.
const countBound = 64 << 20

// newRecordCounter counts records of format; params are the upload's CSV
// parameters (id_column, version_column, op), as sent.
func newRecordCounter(format upload.Format, params url.Values) *recordCounter {
	pr, pw := io.Pipe()
	c := &recordCounter{PipeWriter: pw, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer func() { _, _ = io.Copy(io.Discard, pr) }() // the upload goes on whatever the count does
		r, err := format.NewReader(pr, upload.Options{MaxRecordBytes: countBound, IDColumn: params.Get("id_column"),
			VersionColumn: params.Get("version_column"), Op: pipeline.Op(params.Get("op"))})
		if err != nil {
			return
		}
		for {
			_, err := r.Next()
			var body *upload.BodyError
			if errors.Is(err, io.EOF) || errors.As(err, &body) {
				return
			}
			c.records.Add(1)
		}
	}()
	return c
}

// Count reports the records seen so far.
func (c *recordCounter) Count() int64 { return c.records.Load() }

// Close ends the body and waits for its last records to be counted.
func (c *recordCounter) Close() error {
	err := c.PipeWriter.Close()
	<-c.done
	return err
}

// gunzipTo returns a writer that decompresses what is written to it into w,
// for counting the records of a gzip file while its compressed bytes are
// sent. A corrupt stream stops the counting, never the upload: the server
// names the problem. Close waits for the last records to be counted.
func gunzipTo(w io.WriteCloser) io.WriteCloser {
	pr, pw := io.Pipe()
	g := &gunzipWriter{PipeWriter: pw, w: w}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if zr, err := gzip.NewReader(pr); err == nil {
			_, _ = io.Copy(w, zr)
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	return g
}

type gunzipWriter struct {
	*io.PipeWriter
	w  io.WriteCloser
	wg sync.WaitGroup
}

func (g *gunzipWriter) Close() error {
	_ = g.PipeWriter.Close()
	g.wg.Wait()
	return g.w.Close()
}

// progress shows an upload's bytes and records: a bar on a terminal, a plain
// line every interval otherwise.
type progress struct {
	name    string
	size    int64
	records func() int64
	sent    atomic.Int64
	bar     *progressbar.ProgressBar
	out     io.Writer
	start   time.Time
	stop    chan struct{}
	done    sync.WaitGroup
}

// plainEvery is how often a non-terminal upload prints its progress.
var plainEvery = 10 * time.Second

func newProgress(out io.Writer, terminal bool, name string, size int64, records func() int64) *progress {
	p := &progress{name: name, size: size, records: records, out: out, start: time.Now(), stop: make(chan struct{})}
	if terminal {
		p.bar = progressbar.NewOptions64(size,
			progressbar.OptionSetWriter(out),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowCount(),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(out) }),
			progressbar.OptionSetDescription(p.describe()),
		)
		return p
	}
	fmt.Fprintf(out, "uploading %s (%d bytes)\n", name, size)
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(plainEvery)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				fmt.Fprintf(out, "uploading %s: %d of %d bytes, %d records\n", name, p.sent.Load(), size, records())
			}
		}
	}()
	return p
}

func (p *progress) describe() string {
	return fmt.Sprintf("%s: %d records", p.name, p.records())
}

// Write implements io.Writer for the file's bytes as they are sent.
func (p *progress) Write(b []byte) (int, error) {
	p.add(int64(len(b)))
	return len(b), nil
}

// add counts n bytes sent.
func (p *progress) add(n int64) {
	p.sent.Add(n)
	if p.bar != nil {
		p.bar.Describe(p.describe())
		_ = p.bar.Add64(n)
	}
}

// Finish ends the progress with the totals.
func (p *progress) Finish() {
	if p.bar != nil {
		p.bar.Describe(p.describe())
		_ = p.bar.Finish()
		return
	}
	close(p.stop)
	p.done.Wait()
	fmt.Fprintf(p.out, "sent %s: %d bytes, %d records in %s\n", p.name, p.sent.Load(), p.records(),
		time.Since(p.start).Round(time.Millisecond))
}

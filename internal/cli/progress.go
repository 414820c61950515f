package cli

import (
	"compress/gzip"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
)

// recordCounter counts the records of an upload body as it streams past,
// without decoding them: non-blank lines of NDJSON, rows of CSV after the
// header (a newline inside quotes does not end a row), objects at the top
// level of a JSON array. The server's count in the answer is the truth; this
// is what the progress shows meanwhile.
type recordCounter struct {
	format  string
	records atomic.Int64

	blank    bool // no content yet on the current line (NDJSON, CSV)
	header   bool // CSV: the header row has been seen
	inString bool // inside a JSON string or a quoted CSV field
	escape   bool // JSON: the last byte was a backslash inside a string
	depth    int  // JSON: nesting depth, the array itself is 1
}

func newRecordCounter(format string) *recordCounter {
	return &recordCounter{format: format, blank: true}
}

// Count reports the records seen so far.
func (c *recordCounter) Count() int64 { return c.records.Load() }

// Write implements io.Writer and never fails.
func (c *recordCounter) Write(p []byte) (int, error) {
	var n int64
	switch c.format {
	case "json":
		n = c.json(p)
	default:
		n = c.lines(p)
	}
	c.records.Add(n)
	return len(p), nil
}

func (c *recordCounter) lines(p []byte) (n int64) {
	csv := c.format == "csv"
	for _, b := range p {
		switch {
		case csv && b == '"':
			c.inString = !c.inString
			c.blank = false
		case b == '\n' && !c.inString:
			n += c.endLine()
		case b != ' ' && b != '\t' && b != '\r':
			c.blank = false
		}
	}
	return n
}

// endLine counts the line just ended, unless it was blank or the CSV header.
func (c *recordCounter) endLine() int64 {
	blank := c.blank
	c.blank = true
	switch {
	case blank:
		return 0
	case c.format == "csv" && !c.header:
		c.header = true
		return 0
	}
	return 1
}

func (c *recordCounter) json(p []byte) (n int64) {
	for _, b := range p {
		switch {
		case c.escape:
			c.escape = false
		case c.inString:
			switch b {
			case '\\':
				c.escape = true
			case '"':
				c.inString = false
			}
		case b == '"':
			c.inString = true
		case b == '[' || b == '{':
			if b == '{' && c.depth == 1 {
				n++
			}
			c.depth++
		case b == ']' || b == '}':
			c.depth--
		}
	}
	return n
}

// Close counts a last line that had no newline.
func (c *recordCounter) Close() error {
	if c.format != "json" {
		c.records.Add(c.endLine())
	}
	return nil
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
	counter *recordCounter
	sent    atomic.Int64
	bar     *progressbar.ProgressBar
	out     io.Writer
	start   time.Time
	stop    chan struct{}
	done    sync.WaitGroup
}

// plainEvery is how often a non-terminal upload prints its progress.
var plainEvery = 10 * time.Second

func newProgress(out io.Writer, terminal bool, name string, size int64, counter *recordCounter) *progress {
	p := &progress{name: name, size: size, counter: counter, out: out, start: time.Now(), stop: make(chan struct{})}
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
				fmt.Fprintf(out, "uploading %s: %d of %d bytes, %d records\n", name, p.sent.Load(), size, counter.Count())
			}
		}
	}()
	return p
}

func (p *progress) describe() string {
	return fmt.Sprintf("%s: %d records", p.name, p.counter.Count())
}

// Write implements io.Writer for the file's bytes as they are sent.
func (p *progress) Write(b []byte) (int, error) {
	p.sent.Add(int64(len(b)))
	if p.bar != nil {
		p.bar.Describe(p.describe())
		_ = p.bar.Add(len(b))
	}
	return len(b), nil
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
	fmt.Fprintf(p.out, "sent %s: %d bytes, %d records in %s\n", p.name, p.sent.Load(), p.counter.Count(),
		time.Since(p.start).Round(time.Millisecond))
}

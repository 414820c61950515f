package upload

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spoolhq/spool/pipeline"
)

// Format is one format spool takes uploads in: the name a client gives
// it (spoolctl's --format, a file's extension), the media type it is sent
// as, and the reader ingress decodes it with — the one registry ingress and
// the CLI share.
type Format struct {
	Name      string
	MediaType string
	// Aliases are other media types taken as this format.
	Aliases []string
	// Extensions are the file extensions, without the dot, that name it.
	Extensions []string
	newReader  func(body io.Reader, o Options) (Reader, error)
}

// The formats spool takes.
var (
	NDJSON = Format{Name: "ndjson", MediaType: "application/x-ndjson",
		Aliases:    []string{"application/ndjson", "application/jsonl", "application/x-jsonlines"},
		Extensions: []string{"ndjson", "jsonl"},
		newReader: func(body io.Reader, o Options) (Reader, error) {
			return &ndjsonReader{lines: newLineReader(body, o.MaxRecordBytes), max: o.MaxRecordBytes}, nil
		}}
	JSON = Format{Name: "json", MediaType: "application/json", Extensions: []string{"json"},
		newReader: func(body io.Reader, o Options) (Reader, error) {
			return newJSONArrayReader(body, o.MaxRecordBytes), nil
		}}
	CSV = Format{Name: "csv", MediaType: "text/csv", Extensions: []string{"csv"},
		newReader: func(body io.Reader, o Options) (Reader, error) { return newCSVReader(body, o) }}
)

// Formats lists every format, in the order messages name them.
var Formats = []Format{NDJSON, JSON, CSV}

// ByMediaType is the format sent as mediaType (or one of its aliases).
func ByMediaType(mediaType string) (Format, bool) {
	for _, f := range Formats {
		if f.MediaType == mediaType || slices.Contains(f.Aliases, mediaType) {
			return f, true
		}
	}
	return Format{}, false
}

// ByName is the format named name, or whose file extension name is.
func ByName(name string) (Format, bool) {
	for _, f := range Formats {
		if f.Name == name || slices.Contains(f.Extensions, name) {
			return f, true
		}
	}
	return Format{}, false
}

// NewReader returns the format's reader of body.
func (f Format) NewReader(body io.Reader, o Options) (Reader, error) { return f.newReader(body, o) }

// Options qualify how an upload's records become commands.
type Options struct {
	// MaxRecordBytes bounds one record. An oversize NDJSON line is rejected
	// on its own; in a JSON array or CSV body, where the next record cannot
	// be found without reading this one, it ends the upload.
	MaxRecordBytes int
	// CSV only: which column holds the id (default "id"), which the version
	// (none by default), and the op of every row (default upsert). Every
	// other column is data; an empty cell is NULL.
	IDColumn      string
	VersionColumn string
	Op            pipeline.Op
}

// Reader yields an upload's records in order. Next returns the next
// command; a classified *pipeline.Error rejects that record alone and reading goes
// on; io.EOF ends the upload; any other error (*BodyError) means the body
// cannot be read further.
type Reader interface {
	Next() (pipeline.Command, error)
}

// BodyError is a fault of the whole body: it cannot be parsed further.
type BodyError struct {
	Err error
	// TooLarge is set when a record exceeded MaxRecordBytes.
	TooLarge bool
}

func (e *BodyError) Error() string { return e.Err.Error() }
func (e *BodyError) Unwrap() error { return e.Err }

// NewReader returns the reader for a media type, or an error naming the
// supported ones.
func NewReader(mediaType string, body io.Reader, o Options) (Reader, error) {
	f, ok := ByMediaType(mediaType)
	if !ok {
		return nil, fmt.Errorf("Content-Type %s is not supported; send %s, %s or %s", pipeline.Quote(mediaType),
			NDJSON.MediaType, JSON.MediaType, CSV.MediaType)
	}
	return f.NewReader(body, o)
}

// ndjsonReader reads one JSON object a line; blank lines are skipped.
type ndjsonReader struct {
	lines *lineReader
	max   int
}

func (r *ndjsonReader) Next() (pipeline.Command, error) {
	for {
		line, err := r.lines.next()
		if errors.Is(err, errLineTooLong) {
			return pipeline.Command{}, pipeline.Errorf(pipeline.ClassInvalidCommand, "record is longer than %d bytes", r.max)
		}
		if errors.Is(err, io.EOF) {
			return pipeline.Command{}, io.EOF
		}
		if err != nil {
			return pipeline.Command{}, bodyErr(err)
		}
		if len(bytes.TrimSpace(line)) > 0 {
			return pipeline.DecodeCommand(line)
		}
	}
}

var errLineTooLong = errors.New("line too long")

// lineReader yields lines of at most max bytes; a longer line is skipped
// whole and reported as errLineTooLong, so that one oversize record is
// rejected without ending the upload, and memory stays bounded.
type lineReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

func newLineReader(r io.Reader, limit int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: limit}
}

func (l *lineReader) next() ([]byte, error) {
	l.buf = l.buf[:0]
	tooLong := false
	for {
		chunk, err := l.r.ReadSlice('\n')
		if !tooLong {
			if len(l.buf)+len(chunk) > l.max+1 { // +1: the newline itself
				tooLong = true
				l.buf = l.buf[:0]
			} else {
				l.buf = append(l.buf, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if tooLong {
				return nil, errLineTooLong
			}
			if len(l.buf) == 0 {
				return nil, io.EOF
			}
			return l.buf, nil
		case err != nil:
			return nil, err
		case tooLong:
			return nil, errLineTooLong
		default:
			return l.buf, nil
		}
	}
}

// guard bounds how much may be read between two calls of reset: it keeps a
// decoder from buffering an unbounded record. slack covers the decoder's
// read-ahead.
type guard struct {
	r     io.Reader
	limit int
	n     int
}

const guardSlack = 64 << 10

func (g *guard) reset() { g.n = 0 }

func (g *guard) Read(p []byte) (int, error) {
	left := g.limit + guardSlack - g.n
	if left <= 0 {
		return 0, &BodyError{Err: fmt.Errorf("a record is longer than %d bytes", g.limit), TooLarge: true}
	}
	if len(p) > left {
		p = p[:left]
	}
	n, err := g.r.Read(p)
	g.n += n
	return n, err
}

// jsonArrayReader streams the elements of one top-level JSON array.
type jsonArrayReader struct {
	g       *guard
	dec     *json.Decoder
	started bool
	done    bool
}

func newJSONArrayReader(body io.Reader, limit int) *jsonArrayReader {
	g := &guard{r: body, limit: limit}
	return &jsonArrayReader{g: g, dec: json.NewDecoder(g)}
}

func (r *jsonArrayReader) Next() (pipeline.Command, error) {
	if r.done {
		return pipeline.Command{}, io.EOF
	}
	if !r.started {
		tok, err := r.dec.Token()
		if err != nil {
			return pipeline.Command{}, bodyErr(fmt.Errorf("reading the JSON array: %w", err))
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return pipeline.Command{}, bodyErr(errors.New("the body must be a JSON array of commands"))
		}
		r.started = true
	}
	r.g.reset()
	if !r.dec.More() {
		if _, err := r.dec.Token(); err != nil {
			return pipeline.Command{}, bodyErr(fmt.Errorf("reading the JSON array: %w", err))
		}
		if _, err := r.dec.Token(); !errors.Is(err, io.EOF) {
			return pipeline.Command{}, bodyErr(errors.New("trailing data after the JSON array"))
		}
		r.done = true
		return pipeline.Command{}, io.EOF
	}
	start := r.dec.InputOffset()
	var raw json.RawMessage
	if err := r.dec.Decode(&raw); err != nil {
		return pipeline.Command{}, bodyErr(fmt.Errorf("reading the JSON array: %w", err))
	}
	if r.dec.InputOffset()-start > int64(r.g.limit) {
		return pipeline.Command{}, pipeline.Errorf(pipeline.ClassInvalidCommand, "record is longer than %d bytes", r.g.limit)
	}
	return pipeline.DecodeCommand(raw)
}

// csvReader turns rows under a header into commands.
type csvReader struct {
	g       *guard
	r       *csv.Reader
	o       Options
	header  []string
	idCol   int
	verCol  int
	dataCol []int
}

func newCSVReader(body io.Reader, o Options) (*csvReader, error) {
	if o.IDColumn == "" {
		o.IDColumn = "id"
	}
	if o.Op == "" {
		o.Op = pipeline.OpUpsert
	}
	if !o.Op.Valid() {
		return nil, fmt.Errorf("op %s is not one of %s", pipeline.Quote(string(o.Op)), pipeline.OpNames())
	}
	g := &guard{r: body, limit: o.MaxRecordBytes}
	cr := csv.NewReader(g)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	return &csvReader{g: g, r: cr, o: o, idCol: -1, verCol: -1}, nil
}

func (c *csvReader) readHeader() error {
	h, err := c.r.Read()
	if errors.Is(err, io.EOF) {
		return bodyErr(errors.New("the CSV body has no header row"))
	}
	if err != nil {
		return bodyErr(fmt.Errorf("reading the CSV header: %w", err))
	}
	c.header = append([]string(nil), h...)
	seen := map[string]bool{}
	for i, name := range c.header {
		name = strings.TrimSpace(strings.TrimPrefix(name, "\uFEFF"))
		c.header[i] = name
		if name == "" || seen[name] {
			return bodyErr(fmt.Errorf("CSV header column %d is empty or repeated (%s)", i+1, pipeline.Quote(name)))
		}
		seen[name] = true
		switch name {
		case c.o.IDColumn:
			c.idCol = i
		case c.o.VersionColumn:
			c.verCol = i
		default:
			c.dataCol = append(c.dataCol, i)
		}
	}
	if c.idCol < 0 {
		return bodyErr(fmt.Errorf("the CSV header has no id column %s (set ?id_column=)", pipeline.Quote(c.o.IDColumn)))
	}
	if c.o.VersionColumn != "" && c.verCol < 0 {
		return bodyErr(fmt.Errorf("the CSV header has no version column %s", pipeline.Quote(c.o.VersionColumn)))
	}
	return nil
}

func (c *csvReader) Next() (pipeline.Command, error) {
	if c.header == nil {
		if err := c.readHeader(); err != nil {
			return pipeline.Command{}, err
		}
	}
	c.g.reset()
	row, err := c.r.Read()
	if errors.Is(err, io.EOF) {
		return pipeline.Command{}, io.EOF
	}
	var pe *csv.ParseError
	if errors.As(err, &pe) && !errors.Is(err, csv.ErrFieldCount) {
		return pipeline.Command{}, pipeline.Errorf(pipeline.ClassInvalidCommand, "CSV row at line %d: %v", pe.StartLine, pe.Err)
	}
	if err != nil && !errors.Is(err, csv.ErrFieldCount) {
		return pipeline.Command{}, bodyErr(err)
	}
	if len(row) != len(c.header) {
		return pipeline.Command{}, pipeline.Errorf(pipeline.ClassInvalidCommand, "CSV row has %d fields; the header has %d", len(row), len(c.header))
	}
	for i, v := range row {
		if !utf8.ValidString(v) {
			return pipeline.Command{}, pipeline.Errorf(pipeline.ClassInvalidCommand, "CSV column %s is not valid UTF-8", pipeline.Quote(c.header[i]))
		}
	}
	cmd := pipeline.Command{ID: pipeline.CommandID(row[c.idCol]), Op: c.o.Op, Data: make(map[string]json.RawMessage, len(c.dataCol))}
	if c.verCol >= 0 {
		v, err := strconv.ParseInt(strings.TrimSpace(row[c.verCol]), 10, 64)
		if err != nil {
			return cmd, pipeline.Errorf(pipeline.ClassInvalidCommand, "version %s is not an integer", pipeline.Quote(row[c.verCol]))
		}
		cmd.Version = &v
	}
	for _, i := range c.dataCol {
		if row[i] == "" {
			cmd.Data[c.header[i]] = json.RawMessage("null")
			continue
		}
		b, err := json.Marshal(row[i])
		if err != nil {
			return cmd, pipeline.Errorf(pipeline.ClassInvalidCommand, "column %s: %v", pipeline.Quote(c.header[i]), err)
		}
		cmd.Data[c.header[i]] = b
	}
	return cmd, nil
}

// bodyErr wraps a reading error as a body fault. io.EOF is not the end of
// the upload here: only the readers decide where a body may end.
func bodyErr(err error) error {
	var be *BodyError
	if errors.As(err, &be) {
		return be
	}
	if errors.Is(err, io.EOF) {
		// A body that stops early is cut short, not complete.
		return &BodyError{Err: fmt.Errorf("%v: %w", err, io.ErrUnexpectedEOF)} //nolint:errorlint // io.EOF is named, not wrapped: this body did not end
	}
	return &BodyError{Err: err}
}

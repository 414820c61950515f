package upload

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

type readResult struct {
	ids      []string
	rejected []int // indexes of per-record errors
	bodyErr  error
}

func readAll(t testing.TB, mediaType, body string, o Options) readResult {
	t.Helper()
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = 1 << 10
	}
	r, err := NewReader(mediaType, strings.NewReader(body), o)
	require.NoError(t, err)
	var res readResult
	for i := 0; ; i++ {
		cmd, err := r.Next()
		if errors.Is(err, io.EOF) {
			return res
		}
		var be *BodyError
		if errors.As(err, &be) {
			res.bodyErr = err
			return res
		}
		if err != nil {
			require.True(t, pipeline.IsPermanent(err), "per-record errors are classified: %v", err)
			res.rejected = append(res.rejected, i)
			continue
		}
		res.ids = append(res.ids, string(cmd.ID))
	}
}

func TestNDJSONReader(t *testing.T) {
	t.Parallel()
	body := `{"id":"a","data":{}}` + "\n\n" + `not json` + "\n" + `{"id":"` + strings.Repeat("x", 2000) + `","data":{}}` + "\n" + `{"id":"b","data":{}}`
	res := readAll(t, NDJSON.MediaType, body, Options{})
	require.Equal(t, []string{"a", "b"}, res.ids)
	require.Equal(t, []int{1, 2}, res.rejected, "a bad line and an oversize line are rejected alone")
	require.NoError(t, res.bodyErr)
}

func TestJSONArrayReader(t *testing.T) {
	t.Parallel()
	res := readAll(t, JSON.MediaType, ` [ {"id":"a","data":{}}, {"id":"b","verison":1,"data":{}}, {"id":"c","data":{}} ] `, Options{})
	require.Equal(t, []string{"a", "c"}, res.ids)
	require.Equal(t, []int{1}, res.rejected)
	require.NoError(t, res.bodyErr)

	for body, want := range map[string]string{
		`{"id":"a"}`:                    "must be a JSON array",
		`[{"id":"a","data":{}}`:         "reading the JSON array",
		`[{"id":"a","data":{}}, {"id":`: "reading the JSON array",
		`[{"id":"a","data":{}}] [1]`:    "trailing data",
		``:                              "reading the JSON array",
		`[{"id":"a","data":{"x":"` + strings.Repeat("y", 100<<10) + `"}}]`: "longer than",
	} {
		res := readAll(t, JSON.MediaType, body, Options{})
		require.ErrorContains(t, res.bodyErr, want, body[:min(len(body), 40)])
	}
}

func TestCSVReader(t *testing.T) {
	t.Parallel()
	body := "\uFEFFcommand,customer_id,name,ver\r\n" +
		"c1,k1,Ada,3\n" +
		"c2,k2,,4\n" +
		"c3,k3\n" + // ragged
		"c4,k4,\"Grace, H\",x\n" + // bad version
		"c5,k5,\"multi\nline\",5\n"
	r, err := NewReader(CSV.MediaType, strings.NewReader(body), Options{MaxRecordBytes: 1024, IDColumn: "command", VersionColumn: "ver"})
	require.NoError(t, err)
	var got []pipeline.Command
	var errs []string
	for {
		cmd, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		got = append(got, cmd)
	}
	require.Len(t, got, 3)
	require.Equal(t, pipeline.CommandID("c1"), got[0].ID)
	require.Equal(t, int64(3), *got[0].Version)
	require.Equal(t, pipeline.OpUpsert, got[0].Op)
	require.Equal(t, `"Ada"`, string(got[0].Data["name"]))
	require.Equal(t, `null`, string(got[1].Data["name"]), "an empty cell is NULL")
	require.Equal(t, `"multi\nline"`, string(got[2].Data["name"]))
	require.Equal(t, []string{"CSV row has 2 fields; the header has 4", `version "x" is not an integer`}, errs)

	for body, want := range map[string]string{
		"":             "no header row",
		"name\nx\n":    `no id column "id"`,
		"id,id\na,b\n": "empty or repeated",
	} {
		res := readAll(t, CSV.MediaType, body, Options{})
		require.ErrorContains(t, res.bodyErr, want)
	}
	_, err = NewReader("text/plain", strings.NewReader(""), Options{})
	require.ErrorContains(t, err, "is not supported")
}

// The fuzz targets feed arbitrary bodies to each reader: none may panic,
// loop forever or return a command with an empty id without an error; and
// no error about a record, from the reader or from validation, may grow
// with the record: whatever it quotes is bounded.
func fuzzReader(f *testing.F, mediaType string, seeds ...string) {
	for _, s := range seeds {
		f.Add(s)
	}
	es := pipeline.Entities{"customers": {Name: "customers", Schema: "public", Table: "customers", Key: []string{"id"},
		Columns: map[string]pipeline.Column{"id": {Name: "id", Type: "text"}, "n": {Name: "n", Type: "numeric", Kind: pipeline.KindNumeric},
			"b": {Name: "b", Type: "boolean", Kind: pipeline.KindBoolean}, "i": {Name: "i", Type: "bigint", Kind: pipeline.KindInteger}}}}
	bounded := func(t *testing.T, err error) {
		if msg := err.Error(); len(msg) > 2*pipeline.MaxErrorBytes {
			t.Fatalf("a %d-byte message: %.200q…", len(msg), msg)
		}
	}
	f.Fuzz(func(t *testing.T, body string) {
		r, err := NewReader(mediaType, strings.NewReader(body), Options{MaxRecordBytes: 64 << 10, VersionColumn: "v"})
		require.NoError(t, err)
		for i := 0; i <= len(body)+1; i++ {
			cmd, err := r.Next()
			if err != nil {
				var be *BodyError
				if errors.Is(err, io.EOF) || errors.As(err, &be) {
					return
				}
				bounded(t, err)
				continue
			}
			if err := es.Validate(&cmd, "customers"); err != nil {
				bounded(t, err)
			}
		}
		t.Fatalf("reader did not end after %d records of a %d-byte body", len(body)+2, len(body))
	})
}

// long is a seed whose every field is far longer than a message may be.
var long = strings.Repeat("\u00ad\u001b", 2000)

func FuzzNDJSON(f *testing.F) {
	fuzzReader(f, NDJSON.MediaType, `{"id":"a","data":{"k":1}}`+"\n"+`{"id":"b"}`, "\n\n\n", `{"id":`,
		`{"id":"`+long+`","entity":"`+long+`","op":"`+long+`","data":{"`+long+`":"`+long+`","n":"`+long+`"}}`,
		`{"id":"a","data":{"id":"k","i":"`+long+`","b":"`+long+`"}}`)
}

func FuzzJSONArray(f *testing.F) {
	fuzzReader(f, JSON.MediaType, `[{"id":"a","data":{"k":1}},{"id":"b","data":{}}]`, `[]`, `[`, `[{}]`)
}

func FuzzCSV(f *testing.F) {
	fuzzReader(f, CSV.MediaType, "id,v,name\na,1,x\nb,2,\"y\"\n", "id\n", "id,v\n\"a,1\n", "",
		"id,v,"+long+"\na,1,x\n", "id,v,n\na,"+long+",1\nb,1,"+long+"\n")
}

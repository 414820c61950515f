package cli

import (
	"bytes"
	"compress/gzip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/upload"
)

func TestRecordCounter(t *testing.T) {
	for _, tc := range []struct {
		name, format, body string
		want               int64
	}{
		{"ndjson", "ndjson", "{\"id\":\"a\"}\n\n  \n{\"id\":\"b\"}\r\n{\"id\":\"c\"}", 3},
		{"ndjson trailing newline", "ndjson", "{}\n{}\n", 2},
		{"ndjson bad record counts", "ndjson", "{\"id\":\"a\"}\nnot json\n{\"id\":\"c\"}\n", 3},
		{"csv header only", "csv", "id,name\n", 0},
		{"csv quoted newline", "csv", "id,name\n1,\"two\nlines\"\n2,\"say \"\"hi\"\"\"\n3,x", 3},
		{"json array", "json", `[{"id":"a","data":{"x":[1,{"y":2}]}}, {"id":"b}{\"","data":{}} ,{"id":"c"}]`, 3},
		{"json empty", "json", `[]`, 0},
		{"json cut short stops counting", "json", `[{"id":"a","data":{}}, {"id":`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Byte by byte and whole: state carries across writes.
			for _, chunk := range []int{1, len(tc.body)} {
				format, ok := upload.ByName(tc.format)
				require.True(t, ok)
				c := newRecordCounter(format, nil)
				for i := 0; i < len(tc.body); i += chunk {
					_, _ = c.Write([]byte(tc.body[i:min(i+chunk, len(tc.body))]))
				}
				require.NoError(t, c.Close())
				require.Equal(t, tc.want, c.Count(), "chunk %d", chunk)
			}
		})
	}
}

func TestRecordCounterGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	for range 1000 {
		_, _ = zw.Write([]byte(`{"id":"x"}` + "\n"))
	}
	require.NoError(t, zw.Close())
	c := newRecordCounter(upload.NDJSON, nil)
	w := gunzipTo(c)
	_, err := w.Write(buf.Bytes())
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.EqualValues(t, 1000, c.Count())

	// A corrupt stream stops the counting, not the writer.
	c = newRecordCounter(upload.NDJSON, nil)
	w = gunzipTo(c)
	_, err = w.Write([]byte("not gzip at all"))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.Zero(t, c.Count())
}

package httpapi

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

func inflate(t *testing.T, data []byte, bound int64, ratio int) (int64, error) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	_, err := zw.Write(data)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	sent := &countingReader{r: &z}
	gz, err := gzip.NewReader(sent)
	require.NoError(t, err)
	return io.Copy(io.Discard, &inflateBound{r: gz, sent: sent, max: bound, ratio: ratio})
}

func TestInflateBound(t *testing.T) {
	t.Parallel()
	newlines := bytes.Repeat([]byte("\n"), 64<<20)
	n, err := inflate(t, newlines, 1<<30, 100)
	var be *boundError
	require.ErrorAs(t, err, &be)
	require.Equal(t, "ingress.max_decompression_ratio", be.Key)
	require.Less(t, n, int64(2*ratioGrace), "stopped soon after the grace")

	n, err = inflate(t, newlines[:8<<20], 4<<20, 0)
	require.ErrorAs(t, err, &be)
	require.Equal(t, "ingress.max_decompressed_bytes", be.Key)
	require.LessOrEqual(t, n, int64(4<<20))

	n, err = inflate(t, newlines[:8<<20], 8<<20, 0)
	require.NoError(t, err, "a body of exactly the bound passes")
	require.Equal(t, int64(8<<20), n)
}

// FuzzInflateBound: whatever the body, no more than the bound is ever
// delivered, a body within both bounds arrives whole, and a refusal names
// its key.
func FuzzInflateBound(f *testing.F) {
	f.Add([]byte("{}\n"), uint32(10), uint8(0))
	f.Add(bytes.Repeat([]byte{'\n'}, 4096), uint32(1000), uint8(10))
	f.Fuzz(func(t *testing.T, data []byte, bound uint32, ratio uint8) {
		n, err := inflate(t, data, int64(bound), int(ratio))
		if bound > 0 && n > int64(bound) {
			t.Fatalf("delivered %d bytes past the bound %d", n, bound)
		}
		var be *boundError
		switch {
		case err == nil:
			if n != int64(len(data)) {
				t.Fatalf("delivered %d of %d bytes without an error", n, len(data))
			}
		case errors.As(err, &be):
			if be.Key != "ingress.max_decompressed_bytes" && be.Key != "ingress.max_decompression_ratio" {
				t.Fatalf("refused under %s", be.Key)
			}
			if be.Key == "ingress.max_decompressed_bytes" && int64(len(data)) <= int64(bound) {
				t.Fatalf("a %d-byte body refused under a bound of %d", len(data), bound)
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}

package pipeline

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestQuoteAndPrintable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in, quote, printable string
	}{
		{"plain", "cust-42", `"cust-42"`, "cust-42"},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`, `a"b\c`},
		{"terminal escape", "\x1b]0;pwned\a", `"\x1b]0;pwned\a"`, `\x1b]0;pwned\a`},
		{"soft hyphens", "\u00ad\u00ad", `"\u00ad\u00ad"`, `\u00ad\u00ad`},
		{"invalid UTF-8", "a\xffb", `"a\xffb"`, `a\xffb`},
		{"newline", "line\nnext", `"line\nnext"`, `line\nnext`},
		{"letters stay", "Ünïcødé 日本", `"Ünïcødé 日本"`, "Ünïcødé 日本"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.quote, Quote(tc.in))
			require.Equal(t, tc.printable, Printable(tc.in, MaxQuote))
		})
	}
}

func TestQuoteBoundsHostileInput(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		strings.Repeat("x", 1<<20),
		strings.Repeat("\u00ad", 500_000), // 2 bytes in, 6 out each
		strings.Repeat("\xff", 1<<20),
		strings.Repeat("日", 1000),
	} {
		q := Quote(in)
		require.LessOrEqual(t, len(q), MaxQuote+2)
		require.True(t, strings.HasSuffix(q, `…"`), q[len(q)-10:])
		p := Printable(in, 100)
		require.LessOrEqual(t, len(p), 100)
		require.True(t, utf8.ValidString(p))
		require.True(t, strings.HasSuffix(p, "…"))
	}
	require.Equal(t, "exactly", Printable("exactly", 7), "a text that fits is not cut")
	require.Equal(t, "exac…", Printable("exactly!", 7))
	require.LessOrEqual(t, len(BoundError(errors.New(strings.Repeat("e", 1<<20)))), MaxErrorBytes)
}

// FuzzPrintable holds the bound: whatever the input, the output is valid
// UTF-8, at most limit bytes, holds no control character, and is the input
// itself when that was printable and short enough.
func FuzzPrintable(f *testing.F) {
	for _, s := range []string{"", "abc", "\x1b[31m", "\u00ad", "\xff\xfe", `"\`, "日本語"} {
		f.Add(s, 16)
	}
	f.Fuzz(func(t *testing.T, s string, limit int) {
		if limit < 4 || limit > 4096 {
			return
		}
		for _, out := range []string{Printable(s, limit), strings.Trim(Quote(s), `"`)} {
			if !utf8.ValidString(out) {
				t.Fatalf("invalid UTF-8: %q", out)
			}
			for _, r := range out {
				if !strconv.IsPrint(r) {
					t.Fatalf("non-printable %U in %q", r, out)
				}
			}
		}
		if p := Printable(s, limit); len(p) > limit {
			t.Fatalf("%d bytes over %d", len(p), limit)
		}
		if len(Quote(s)) > MaxQuote+2 {
			t.Fatalf("quote of %d bytes", len(Quote(s)))
		}
		if len(s) <= limit && isPrintable(s) && Printable(s, limit) != s {
			t.Fatalf("printable %q changed", s)
		}
	})
}

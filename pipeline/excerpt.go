package pipeline

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// User input reaches error messages, rejections, failure rows, DLQ headers,
// logs and operators' terminals. These bounds keep a hostile record from
// making any of them larger than a line, or from writing escape sequences
// to a terminal.
const (
	// MaxQuote bounds a quoted piece of user input inside a message.
	MaxQuote = 256
	// MaxErrorBytes bounds a whole error message as it is stored and shown.
	MaxErrorBytes = 1024
)

// Quote is %q for user input: Go-quoted (so control characters, format
// characters such as U+00AD and invalid UTF-8 are escaped, never raw), and
// cut after MaxQuote bytes of output with "…" before the closing quote.
func Quote(s string) string { return `"` + escape(s, MaxQuote, true) + `"` }

// Printable makes text safe to store and to show on a terminal: valid
// UTF-8, every non-printable rune (control, format, invalid byte) escaped
// as Go escapes it, at most limit bytes with "…" marking a cut. Text that is
// already printable and short enough comes back unchanged.
func Printable(s string, limit int) string {
	if len(s) <= limit && isPrintable(s) {
		return s
	}
	return escape(s, limit, false)
}

// BoundError is err's message as it may be stored and shown: Printable,
// at most MaxErrorBytes.
func BoundError(err error) string { return Printable(err.Error(), MaxErrorBytes) }

func isPrintable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			return false // RuneError: invalid UTF-8, or a literal U+FFFD (kept escaped too)
		}
	}
	return true
}

// escape writes s's runes, escaping those strconv.Quote escapes (and, when
// quoted, the quote and backslash). When the whole does not fit in limit
// bytes, it ends at the last rune that leaves room for "…".
func escape(s string, limit int, quoted bool) string {
	const ellipsis = "…"
	var b strings.Builder
	keep := 0 // the output's length at the last rune that leaves room for the ellipsis
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		piece := s[i : i+size]
		if (r == utf8.RuneError && size == 1) || !strconv.IsPrint(r) || (quoted && (r == '"' || r == '\\')) {
			q := strconv.Quote(piece)
			piece = q[1 : len(q)-1]
		}
		if b.Len()+len(piece) > limit {
			return b.String()[:keep] + ellipsis
		}
		b.WriteString(piece)
		if b.Len() <= limit-len(ellipsis) {
			keep = b.Len()
		}
		i += size
	}
	return b.String()
}

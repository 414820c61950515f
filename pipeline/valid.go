package pipeline

import "unicode/utf8"

// maxNestingDepth is encoding/json's limit on nested objects and arrays.
const maxNestingDepth = 10000

// validJSON reports whether b is valid UTF-8 and one valid JSON value
// (RFC 8259), exactly as utf8.Valid(b) && json.Valid(b) do. The plain
// command decoder's scanners assume valid JSON; json.Valid, which checked
// it, stepped through a state function per byte and cost ~8% of the
// processor's CPU. It holds the open objects and arrays in a slice rather
// than recursing, so deep input cannot grow the goroutine's stack, and
// allocates only past 64 levels. FuzzValid holds it to encoding/json.
func validJSON(b []byte) bool {
	var small [64]byte
	closers := small[:0] // '}' or ']' for each open object or array
	i := skipSpace(b, 0)
	for {
		// A value begins at b[i].
		if i >= len(b) {
			return false
		}
		switch c := b[i]; c {
		case '{', '[':
			if len(closers) == maxNestingDepth {
				return false
			}
			closer := byte(']')
			if c == '{' {
				closer = '}'
			}
			closers = append(closers, closer)
			if i = skipSpace(b, i+1); i < len(b) && b[i] == closer {
				closers = closers[:len(closers)-1]
				i++
				break
			}
			if c == '{' {
				i = memberValue(b, i)
			}
			if i < 0 {
				return false
			}
			continue
		case '"':
			i = validStringEnd(b, i)
		case 't':
			i = literalEnd(b, i, "true")
		case 'f':
			i = literalEnd(b, i, "false")
		case 'n':
			i = literalEnd(b, i, "null")
		default:
			i = numberEnd(b, i)
		}
		if i < 0 {
			return false
		}
		// After a value: the end, closers, or a comma and the next value.
		for {
			i = skipSpace(b, i)
			if len(closers) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			closer := closers[len(closers)-1]
			if b[i] == closer {
				closers = closers[:len(closers)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return false
			}
			if i = skipSpace(b, i+1); closer == '}' {
				if i = memberValue(b, i); i < 0 {
					return false
				}
			}
			break
		}
	}
}

// memberValue returns the index of the value of the object member whose
// name begins at b[i], or -1 if no name and colon begin there.
func memberValue(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = validStringEnd(b, i); i < 0 {
		return -1
	}
	if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// validStringEnd returns the index after the valid string that starts at
// b[i], or -1.
func validStringEnd(b []byte, i int) int {
	for i++; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c == '\\':
			if i+1 >= len(b) {
				return -1
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return -1
				}
				i += 6
			default:
				return -1
			}
		case c < 0x20:
			return -1
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return -1
			}
			i += size
		}
	}
	return -1
}

// numberEnd returns the index after the valid number that starts at b[i],
// or -1.
func numberEnd(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digitsEnd(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		start := i + 1
		if i = digitsEnd(b, start); i == start {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		start := i
		if i = digitsEnd(b, i); i == start {
			return -1
		}
	}
	return i
}

func digitsEnd(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}

// literalEnd returns the index after lit, which should begin at b[i], or -1.
func literalEnd(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
	"iter"
	"slices"
)

// DecodedCommand is a command as the processor holds it, from decoding to
// its batch's commit: Command's fields, with the data kept as Fields.
//
// It is a second command type on purpose. The processor holds batch_size
// decoded commands for each partition it owns, and with Command's map a
// decoded command cost about 0.9 KiB besides its record, against 0.73 KiB
// as Fields (slices of one copy of the data object); a value also becomes
// its column's text without encoding/json's reflection, three times a
// command (docs/benchmarks.md, "The decoded data as a map"). Ingress holds
// one command at a time, and clients build them as literals: Command's map
// suits both.
type DecodedCommand struct {
	ID      CommandID `json:"id"`
	Entity  string    `json:"entity,omitempty"`
	Op      Op        `json:"op,omitempty"`
	Version *int64    `json:"version,omitempty"`
	Data    Fields    `json:"data"`
}

// Fields is a command's data: each column's raw JSON value, all of them
// slices of one copy of the data object.
type Fields []Field

// Field is one column's value as raw JSON.
type Field struct {
	Name  string
	Value json.RawMessage
}

// Get returns the named column's value; a missing one is nil, which
// Column.Value takes for null, as it does a map's.
func (fs Fields) Get(name string) (json.RawMessage, bool) {
	for _, f := range fs {
		if f.Name == name {
			return f.Value, true
		}
	}
	return nil, false
}

// set replaces the named column's value, or adds the column.
func (fs *Fields) set(name string, v json.RawMessage) {
	for i := range *fs {
		if (*fs)[i].Name == name {
			(*fs)[i].Value = v
			return
		}
	}
	*fs = append(*fs, Field{Name: name, Value: v})
}

var errNotObject = errors.New("data is not a JSON object")

// UnmarshalJSON keeps the members of a JSON object, as decoding into
// Command's map does: null clears them, and a name given twice (or a data
// object given twice) keeps the last value. encoding/json hands it one
// complete, valid value.
func (fs *Fields) UnmarshalJSON(b []byte) error {
	return fs.decode(bytes.Clone(b), nil) // encoding/json may reuse b
}

// decode is UnmarshalJSON keeping the values inside b, for a caller whose
// b lives as long as the Fields (a record's value, which its Message keeps).
// A name that is a column of e (when set) is the column's own string.
func (fs *Fields) decode(b []byte, e *Entity) error {
	if string(b) == "null" {
		*fs = nil
		return nil
	}
	if len(b) == 0 || b[0] != '{' {
		return errNotObject
	}
	n := 0
	for range members(b) {
		n++
	}
	got := slices.Grow(slices.Clip(*fs), n)
	for quoted, v := range members(b) {
		name, err := unquoteName(quoted, e)
		if err != nil {
			return err
		}
		got.set(name, v)
	}
	*fs = got
	return nil
}

// members yields the quoted name and the value of each member of a valid
// JSON object.
func members(b []byte) iter.Seq2[[]byte, json.RawMessage] {
	return func(yield func([]byte, json.RawMessage) bool) {
		for i := skipSpace(b, 1); b[i] != '}'; {
			end := stringEnd(b, i)
			name := b[i:end]
			i = skipSpace(b, skipSpace(b, end)+1) // past the colon
			end = valueEnd(b, i)
			if !yield(name, b[i:end:end]) {
				return
			}
			if i = skipSpace(b, end); b[i] == ',' {
				i = skipSpace(b, i+1)
			}
		}
	}
}

// unquoteName decodes a member name, through encoding/json only when it
// holds escapes; a name that is a column of e (when set) is the column's
// own string, not a copy.
func unquoteName(quoted []byte, e *Entity) (string, error) {
	if bytes.IndexByte(quoted, '\\') < 0 {
		inner := quoted[1 : len(quoted)-1]
		if e != nil {
			if c, ok := e.Columns[string(inner)]; ok {
				return c.Name, nil
			}
		}
		return string(inner), nil
	}
	var s string
	err := json.Unmarshal(quoted, &s)
	return s, err
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index after the string that starts at b[i].
func stringEnd(b []byte, i int) int {
	for i++; b[i] != '"'; i++ {
		if b[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// valueEnd returns the index after the valid JSON value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	default: // a number, true, false or null
		for i < len(b) && !endsLiteral(b[i]) {
			i++
		}
		return i
	}
}

func endsLiteral(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

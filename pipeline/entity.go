package pipeline

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ColumnKind groups PostgreSQL types by how a JSON value must look to fit
// them. It drives the cheap checks at ingress and the text conversion at
// write time; the database remains the final judge.
type ColumnKind int

const (
	// KindText accepts strings, numbers and booleans (written as their text).
	KindText ColumnKind = iota
	// KindInteger accepts integral numbers or strings holding one.
	KindInteger
	// KindNumeric accepts numbers or strings holding one.
	KindNumeric
	// KindBoolean accepts true/false or the strings "true"/"false".
	KindBoolean
	// KindJSON accepts any JSON value and stores it as JSON.
	KindJSON
	// KindOther (timestamps, uuid, date, …) accepts strings and numbers and
	// lets the database parse them.
	KindOther
)

// Column is one column of an entity's table, as read from the catalog.
type Column struct {
	Name string
	Type string // as format_type prints it, e.g. "numeric(18,2)"
	// CastType is Type without its modifier ("numeric", "bpchar"): values
	// are cast to it, and the column's modifier applies as they are
	// stored, which refuses a value too long for character varying(n)
	// where a cast to Type would cut it short.
	CastType string
	Kind     ColumnKind
	NotNull  bool
	// MaxChars is n of character varying(n) and character(n), 0 for
	// other types: a longer value is refused (unless what is over is
	// spaces, which PostgreSQL drops).
	MaxChars int
}

// Entity is a configured target table with its catalog columns.
type Entity struct {
	Name          string
	Schema        string
	Table         string
	Key           []string
	VersionColumn string
	Columns       map[string]Column
	// KeysRoundTrip is set when every key column prints a stored value as
	// exactly the text it was written as, and equal keys have equal texts:
	// text or varchar under a deterministic collation, and integers (whose
	// text Column.AppendValue makes canonical). A store can then tell the
	// rows a statement wrote by the keys it returns.
	KeysRoundTrip bool
	// Generation is the Catalog version this definition came with: a
	// statement built for it is built again for the next one.
	Generation uint64
}

// Versioned reports whether the entity guards writes by version.
func (e *Entity) Versioned() bool { return e.VersionColumn != "" }

// Entities maps entity names to their definitions.
type Entities map[string]*Entity

// Names lists the configured entities, sorted.
func (es Entities) Names() []string {
	names := make([]string, 0, len(es))
	for n := range es {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// MaxIDLength bounds a command id, in characters.
const MaxIDLength = 128

// Validate fills a command's defaults (entity from defaultEntity, op upsert)
// and checks it against the configured entities. The error is classified and
// names the problem so that a client can fix the record.
func (es Entities) Validate(cmd *Command, defaultEntity string) error {
	e, err := es.entityOf(cmd.ID, &cmd.Entity, &cmd.Op, cmd.Version, defaultEntity)
	if err != nil {
		return err
	}
	for _, k := range e.Key {
		if err := e.checkKey(k, cmd.Data[k]); err != nil {
			return err
		}
	}
	for name, v := range cmd.Data {
		if err := e.checkColumn(name, v); err != nil {
			return err
		}
	}
	return nil
}

// validateFields is Validate for a record's command, whose data are Fields
// and whose defaults were filled by ingress. (Its loops are its own, not
// Validate's through an interface: that cost an iterator's allocations a
// command.)
func (es Entities) validateFields(id CommandID, entity *string, op *Op, version *int64, data Fields) error {
	e, err := es.entityOf(id, entity, op, version, "")
	if err != nil {
		return err
	}
	for _, k := range e.Key {
		v, _ := data.Get(k)
		if err := e.checkKey(k, v); err != nil {
			return err
		}
	}
	for _, f := range data {
		if err := e.checkColumn(f.Name, f.Value); err != nil {
			return err
		}
	}
	return nil
}

// entityOf checks what a command holds besides its data, fills its
// defaults and returns its entity.
func (es Entities) entityOf(id CommandID, entity *string, op *Op, version *int64, defaultEntity string) (*Entity, error) {
	if err := validateID(id); err != nil {
		return nil, err
	}
	if *entity == "" {
		*entity = defaultEntity
	}
	if *entity == "" {
		return nil, Errorf(ClassUnknownEntity, "entity is missing and the upload names no default (?entity=)")
	}
	e, ok := es[*entity]
	if !ok {
		return nil, Errorf(ClassUnknownEntity, "entity %s is not configured (known: %s)", Quote(*entity), strings.Join(es.Names(), ", "))
	}
	*entity = e.Name // the entity's own string, not one per command
	switch *op {
	case "":
		*op = OpUpsert
	default:
		if !op.Valid() {
			return nil, Errorf(ClassInvalidCommand, "op %s is not one of %s", Quote(string(*op)), OpNames())
		}
	}
	if e.Versioned() && version == nil {
		return nil, Errorf(ClassMissingKey, "version is required: entity %q is guarded by column %q", e.Name, e.VersionColumn)
	}
	return e, nil
}

// Route is what places a command among the partitions of the commands
// topic: its entity and the texts of its key values, as KeyOf makes them.
// Every command on one row then goes through one partition, so batches of
// different partitions, written at once, do not wait for each other's row
// locks. The record's key stays the command id. It is nil for a command
// Validate refuses.
func (es Entities) Route(cmd *Command) []byte {
	e, ok := es[cmd.Entity]
	if !ok {
		return nil
	}
	route := append(make([]byte, 0, len(e.Name)+32), e.Name...)
	for _, k := range e.Key {
		var null bool
		var err error
		// A separator no text value holds (PostgreSQL's text has no NUL).
		if route, null, err = e.Columns[k].AppendValue(append(route, 0), cmd.Data[k]); err != nil || null {
			return nil
		}
	}
	return route
}

// checkKey checks that the value of key column k is there.
func (e *Entity) checkKey(k string, v json.RawMessage) error {
	if isNull(v) {
		return Errorf(ClassMissingKey, "data lacks key column %q of entity %q", k, e.Name)
	}
	return nil
}

// checkColumn checks that a command may write v into column name.
func (e *Entity) checkColumn(name string, v json.RawMessage) error {
	col, ok := e.Columns[name]
	if !ok {
		return Errorf(ClassUnknownColumn, "column %s does not exist in %s", Quote(name), e.QualifiedName())
	}
	if name == e.VersionColumn {
		return Errorf(ClassInvalidCommand, "column %q is the version column: set it with the command's version field", name)
	}
	return col.check(v)
}

// QualifiedName is schema.table for messages (not SQL: quoting is the
// writer's job).
func (e *Entity) QualifiedName() string { return e.Schema + "." + e.Table }

func validateID(id CommandID) error {
	if id == "" {
		return Errorf(ClassInvalidCommand, "id is missing")
	}
	n := 0
	for _, r := range string(id) {
		n++
		if r == '\uFFFD' || !strconv.IsPrint(r) {
			return Errorf(ClassInvalidCommand, "id %s holds a non-printable character", Quote(string(id)))
		}
	}
	if n > MaxIDLength {
		return Errorf(ClassInvalidCommand, "id is %d characters long; the limit is %d", n, MaxIDLength)
	}
	return nil
}

func isNull(v json.RawMessage) bool { return len(v) == 0 || string(v) == "null" }

// Value converts a JSON value to the text PostgreSQL parses for this
// column, or null for SQL NULL. It is the one place that decides whether a
// value fits its column.
func (c Column) Value(v json.RawMessage) (text string, null bool, err error) {
	b, null, err := c.AppendValue(nil, v)
	return string(b), null, err
}

// AppendValue is Value appending the text to dst, so that a caller
// converting many values can keep their texts in one buffer.
func (c Column) AppendValue(dst []byte, v json.RawMessage) (out []byte, null bool, err error) {
	return c.convert(dst, v, true)
}

// check is Value's decision alone: validation's, which needs no text and so
// makes none for the common values (a plain string, a number).
func (c Column) check(v json.RawMessage) error {
	_, _, err := c.convert(nil, v, false)
	return err
}

// convert decides whether v fits the column and, when keep is set, appends
// its text to dst. Without keep the text may be left out.
func (c Column) convert(dst []byte, v json.RawMessage, keep bool) (out []byte, null bool, err error) {
	v = bytes.TrimSpace(v)
	if isNull(v) {
		if c.NotNull {
			return dst, false, Errorf(ClassTypeMismatch, "column %q is NOT NULL; got null", c.Name)
		}
		return dst, true, nil
	}
	if c.Kind == KindJSON {
		if keep {
			dst = append(dst, v...)
		}
		return dst, false, nil
	}
	var s []byte // the value's text, before the column's kind checks it
	switch v[0] {
	case '"':
		inner, plain := plainBytes(v)
		switch {
		case plain && !keep && c.Kind == KindText:
			return dst, false, c.checkLength(inner)
		case plain && !keep && c.Kind == KindOther:
			return dst, false, nil
		case plain && !keep && c.Kind == KindNumeric && isDecimal(inner):
			return dst, false, nil
		case plain:
			s = inner
		default:
			var str string
			if err := json.Unmarshal(v, &str); err != nil {
				return dst, false, Errorf(ClassInvalidCommand, "column %q: %v", c.Name, BoundError(err))
			}
			s = []byte(str)
		}
	case '{', '[':
		return dst, false, c.mismatch("an object or array")
	case 't', 'f':
		if c.Kind != KindBoolean && c.Kind != KindText {
			return dst, false, c.mismatch("a boolean")
		}
		s = v
	default:
		if c.Kind == KindBoolean {
			return dst, false, c.mismatch("a number")
		}
		if !keep && c.Kind != KindInteger && (c.Kind != KindNumeric || isDecimal(v)) {
			return dst, false, c.checkLength(v)
		}
		s = v
	}
	switch c.Kind {
	case KindInteger:
		if canonicalInteger(s) {
			return append(dst, s...), false, nil // what big.Int would print
		}
		n, ok := new(big.Int).SetString(string(bytes.TrimSpace(s)), 10)
		if !ok {
			return dst, false, c.mismatch(Quote(string(s)))
		}
		return n.Append(dst, 10), false, nil
	case KindNumeric:
		if !isDecimal(bytes.TrimSpace(s)) && !isSpecialNumeric(string(s)) {
			return dst, false, c.mismatch(Quote(string(s)))
		}
	case KindBoolean:
		b, err := strconv.ParseBool(string(s))
		if err != nil {
			return dst, false, c.mismatch(Quote(string(s)))
		}
		return strconv.AppendBool(dst, b), false, nil
	case KindText:
		if err := c.checkLength(s); err != nil {
			return dst, false, err
		}
	}
	return append(dst, s...), false, nil
}

// canonicalInteger reports whether s is an integer as big.Int prints it:
// an optional minus, then digits without a leading zero (or 0 alone).
func canonicalInteger(s []byte) bool {
	digits := bytes.TrimPrefix(s, []byte("-"))
	if len(digits) == 0 || (digits[0] == '0' && len(s) > 1) {
		return false // empty, a leading zero, or -0
	}
	for _, c := range digits {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// checkLength refuses a text longer than MaxChars characters, as
// PostgreSQL does when storing it, unless only spaces are over.
func (c Column) checkLength(s []byte) error {
	if c.MaxChars == 0 || len(s) <= c.MaxChars {
		return nil // no more characters than bytes
	}
	n, cut := 0, len(s)
	for i := range string(s) {
		if n == c.MaxChars {
			cut = i
			break
		}
		n++
	}
	if len(bytes.TrimRight(s[cut:], " ")) == 0 {
		return nil
	}
	return Errorf(ClassTypeMismatch, "column %q is %s, at most %d characters; got %d", c.Name, c.Type, c.MaxChars, utf8.RuneCount(s))
}

// plainString returns the text of a JSON string that holds no escapes, no
// control characters and only valid UTF-8: its bytes between the quotes,
// which is what encoding/json would decode, without its reflection.
func plainString(v []byte) (string, bool) {
	inner, ok := plainBytes(v)
	if !ok {
		return "", false
	}
	return string(inner), true
}

// plainBytes is plainString's bytes, without copying them.
func plainBytes(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, false
	}
	inner := v[1 : len(v)-1]
	var high byte // the bits of every byte or'ed: 0x80 set once one is not ASCII
	for _, c := range inner {
		if c == '"' || c == '\\' || c < 0x20 {
			return nil, false
		}
		high |= c
	}
	if high >= utf8.RuneSelf && !utf8.Valid(inner) {
		return nil, false
	}
	return inner, true
}

// isDecimal reports whether s is a number as PostgreSQL's numeric and
// floating-point types read it: a sign, digits with at most one point
// among them, and an exponent. (big.Rat, used before, was slow here and
// took fractions and hexadecimal that PostgreSQL refuses.)
func isDecimal[T ~string | ~[]byte](s T) bool {
	i, digits := 0, 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	for ; i < len(s) && isDigit(s[i]); i++ {
		digits++
	}
	if i < len(s) && s[i] == '.' {
		for i++; i < len(s) && isDigit(s[i]); i++ {
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		start := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == start {
			return false
		}
	}
	return i == len(s)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isSpecialNumeric(s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "nan", "infinity", "-infinity":
		return true
	}
	return false
}

func (c Column) mismatch(got string) error {
	return Errorf(ClassTypeMismatch, "column %q has type %s; got %s", c.Name, c.Type, got)
}

// KeyOf returns the canonical text of a command's key, a JSON array of the
// key columns' canonical texts: equal keys give equal strings, so commands
// touching one row can be collapsed before a set-based write (PostgreSQL
// refuses an upsert that touches one row twice), and tombstones can name
// the row. ParseKey inverts it.
func (e *Entity) KeyOf(data Fields) (string, error) {
	var buf, text [128]byte // a column's text converted into its own buffer, then appended
	out := append(buf[:0], '[')
	for i, k := range e.Key {
		v, _ := data.Get(k)
		t, null, err := e.Columns[k].AppendValue(text[:0], v)
		if err != nil {
			return "", err
		}
		if null {
			return "", Errorf(ClassMissingKey, "data lacks key column %q of entity %q", k, e.Name)
		}
		if out != nil && i > 0 {
			out = append(out, ',')
		}
		if out != nil {
			out = appendPlainJSON(out, t)
		}
	}
	if out == nil {
		return e.marshalKey(data)
	}
	return string(append(out, ']')), nil
}

// marshalKey is KeyOf through encoding/json, for keys with bytes it escapes.
func (e *Entity) marshalKey(data Fields) (string, error) {
	parts := make([]string, len(e.Key))
	for i, k := range e.Key {
		v, _ := data.Get(k)
		t, _, _ := e.Columns[k].Value(v) // checked by KeyOf
		parts[i] = t
	}
	b, err := json.Marshal(parts)
	if err != nil {
		return "", Errorf(ClassInvalidCommand, "encoding key: %w", err)
	}
	return string(b), nil
}

// appendPlainJSON appends s as json.Marshal writes it when that is s
// between quotes (no byte it escapes); otherwise it returns nil, and the
// caller asks encoding/json.
func appendPlainJSON(out, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || separatorAt(s, i) {
			return nil
		}
	}
	if !utf8.Valid(s) {
		return nil
	}
	out = append(out, '"')
	out = append(out, s...)
	return append(out, '"')
}

// ParseKey splits a key made by KeyOf into the key columns' texts.
func (e *Entity) ParseKey(key string) ([]string, error) {
	if parts, ok := plainKey(key, len(e.Key)); ok {
		return parts, nil
	}
	var parts []string
	if err := json.Unmarshal([]byte(key), &parts); err != nil || len(parts) != len(e.Key) {
		return nil, fmt.Errorf("key %s of entity %s is not a %d-part key", Quote(key), e.Name, len(e.Key))
	}
	return parts, nil
}

// plainKey splits a key of n plain strings (no escapes, as KeyOf and
// PostgreSQL's json_build_array write them most of the time) without
// encoding/json: what json.Unmarshal would find.
func plainKey(key string, n int) ([]string, bool) {
	rest, ok := strings.CutPrefix(key, "[")
	if !ok {
		return nil, false
	}
	parts := make([]string, 0, n)
	for i := range n {
		if i > 0 {
			if rest, ok = strings.CutPrefix(rest, ","); !ok {
				return nil, false
			}
			rest = strings.TrimLeft(rest, " ")
		}
		end := strings.IndexByte(rest[min(1, len(rest)):], '"') + 1
		if !strings.HasPrefix(rest, `"`) || end <= 0 {
			return nil, false
		}
		p, ok := plainString([]byte(rest[:end+1]))
		if !ok {
			return nil, false
		}
		parts, rest = append(parts, p), rest[end+1:]
	}
	return parts, rest == "]"
}

package pipeline

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Record is a Kafka record as the pipeline sees it, free of any client
// library's types.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []Header
	Timestamp time.Time
	// Route, when set, places a produced record in its topic's partitions
	// instead of its key: a command's entity and key (Entities.Route). It
	// is not sent; a fetched record has none.
	Route []byte
}

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Header names ingress sets on every command record. Values are plain UTF-8.
const (
	HeaderJobID  = "spool-job-id"
	HeaderTenant = "spool-tenant"
	HeaderIndex  = "spool-index"
	// HeaderReplayOf marks a command re-produced from the dead-letter topic:
	// its value is the dead letter's TOPIC:PARTITION:OFFSET. The processor
	// counts such a command by moving it out of its job's dead letters.
	HeaderReplayOf = "spool-replay-of"
	// HeaderTraceparent carries the W3C trace context of the upload a
	// record came from, when ingress traces (tracing.enabled), so that the
	// processor's batch span links back to it.
	HeaderTraceparent = "traceparent"
)

// Header returns the value of the first header named key.
func (r *Record) Header(key string) (string, bool) {
	v, ok := r.header(key)
	return string(v), ok
}

// header is Header's value as it is held, not copied.
func (r *Record) header(key string) ([]byte, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return nil, false
}

// DecodeCommand parses one uploaded JSON object into a Command. Unknown
// fields are refused so that a typo ("verison") is reported, not ignored.
func DecodeCommand(line []byte) (Command, error) {
	if d, ok := decodePlainCommand(line, false, nil); ok {
		cmd := Command{ID: d.ID, Entity: d.Entity, Op: d.Op, Version: d.Version}
		if d.Data != nil {
			cmd.Data = make(map[string]json.RawMessage, len(d.Data))
			for _, f := range d.Data {
				cmd.Data[f.Name] = f.Value
			}
		}
		return cmd, nil
	}
	var cmd Command
	if err := decodeCommand(line, &cmd); err != nil {
		return Command{}, err
	}
	return cmd, nil
}

// decodeCommandValue parses a command record's value as DecodeCommand does,
// into a DecodedCommand whose data are parts of value (a record's value
// lives as long as its Message) and whose entity, op and column names are
// es's own strings where they name what es knows.
func decodeCommandValue(value []byte, es Entities) (DecodedCommand, error) {
	if cmd, ok := decodePlainCommand(value, true, es); ok {
		return cmd, nil
	}
	var cmd DecodedCommand
	if err := decodeCommand(value, &cmd); err != nil {
		// Fields stops decoding at data that is not an object, where the map
		// goes on and reports the first of all the problems: a record is
		// refused in the words DecodeCommand uses at ingress.
		if _, cerr := DecodeCommand(value); cerr != nil {
			err = cerr
		}
		return DecodedCommand{}, err
	}
	return cmd, nil
}

// decodePlainCommand decodes the shape ingress writes, a third of the
// processor's CPU through encoding/json's reflection, without it: valid
// UTF-8 and JSON, one object whose members are spelled exactly id, entity,
// op, version and data, each at most once, the strings without escapes and
// the version an integer or absent. It reports false for anything else
// (another spelling, a duplicate, an escape, a wrong type), which
// decodeCommand then decodes or refuses in its own words; so it never
// decides differently (FuzzDecodeCommand holds it to encoding/json). With
// alias the data's values are parts of b; without, of a copy. An entity
// es knows (and, when the entity comes before the data, as ingress writes
// it, its column names) takes es's string instead of a copy, and so does
// an op spool knows: one string for all a batch's commands.
func decodePlainCommand(b []byte, alias bool, es Entities) (DecodedCommand, bool) {
	var cmd DecodedCommand
	if !validJSON(b) {
		return cmd, false
	}
	if b = b[skipSpace(b, 0):]; b[0] != '{' {
		return cmd, false
	}
	var seen uint8
	var e *Entity // the command's, once known
	for name, v := range members(b) {
		var bit uint8
		var ok bool
		switch string(name) {
		case `"id"`:
			bit = 1 << 0
			cmd.ID, ok = plainAs[CommandID](v)
		case `"entity"`:
			bit = 1 << 1
			var inner []byte
			if inner, ok = plainBytes(v); ok {
				if e = es[string(inner)]; e != nil {
					cmd.Entity = e.Name
				} else {
					cmd.Entity = string(inner)
				}
			}
		case `"op"`:
			bit = 1 << 2
			var inner []byte
			if inner, ok = plainBytes(v); ok {
				cmd.Op = knownOp(inner)
			}
		case `"version"`:
			bit = 1 << 3
			n, err := parseIndex(v)
			cmd.Version, ok = &n, err == nil
		case `"data"`:
			bit = 1 << 4
			if !alias {
				v = bytes.Clone(v)
			}
			ok = cmd.Data.decode(v, e) == nil
			if ok && cmd.Data == nil && v[0] == '{' {
				cmd.Data = Fields{} // an empty object, not null: DecodeCommand's map is empty, not nil
			}
		default:
			return cmd, false
		}
		if !ok || seen&bit != 0 {
			return cmd, false
		}
		seen |= bit
	}
	return cmd, true
}

// plainAs is plainString as one of the command's string types.
func plainAs[T ~string](v []byte) (T, bool) {
	s, ok := plainString(v)
	return T(s), ok
}

// decodeCommand decodes one JSON object into cmd, a *Command or a
// *DecodedCommand.
func decodeCommand(line []byte, cmd any) error {
	// encoding/json would turn invalid UTF-8 into U+FFFD without a word:
	// a command is refused rather than changed.
	if !utf8.Valid(line) {
		return Errorf(ClassInvalidCommand, "decoding command: not valid UTF-8 (at byte %d)", invalidUTF8At(line))
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cmd); err != nil {
		return Errorf(ClassInvalidCommand, "decoding command: %s", describeJSONError(err))
	}
	if dec.More() {
		return Errorf(ClassInvalidCommand, "decoding command: trailing data after the object")
	}
	return nil
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %s must be %s, got %s", Quote(te.Field), jsonKind(te.Type.Kind().String()), Printable(te.Value, MaxQuote))
		}
		return fmt.Sprintf("expected a JSON object, got %s", Printable(te.Value, MaxQuote))
	}
	return BoundError(err)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int64", "ptr":
		return "an integer"
	case "map":
		return "an object"
	default:
		return "a string"
	}
}

// NewRecord encodes a validated command for the commands topic: the key is
// the command id, the value the command's canonical JSON (map keys sorted,
// whitespace removed), and the headers carry the job context.
func NewRecord(cmd *Command, job JobID, tenant string, index int64) (Record, error) {
	value, err := encodeCommand(cmd)
	if err != nil {
		return Record{}, Errorf(ClassInvalidCommand, "encoding command %s: %w", Quote(string(cmd.ID)), err)
	}
	return Record{
		Key:   []byte(cmd.ID),
		Value: value,
		Headers: []Header{
			{Key: HeaderJobID, Value: []byte(job)},
			{Key: HeaderTenant, Value: []byte(tenant)},
			{Key: HeaderIndex, Value: strconv.AppendInt(nil, index, 10)},
		},
	}, nil
}

// encodeCommand is json.Marshal(cmd), byte for byte: the value a command
// was first recorded with is what its repeats are compared with. It writes
// the common case (strings and values that encoding/json would copy as they
// are) without reflection, and leaves the rest to json.Marshal
// (FuzzEncodeCommand holds the two together).
func encodeCommand(cmd *Command) ([]byte, error) {
	plain := plainJSONString(string(cmd.ID)) && plainJSONString(cmd.Entity) && plainJSONString(string(cmd.Op))
	size := 64 + len(cmd.ID) + len(cmd.Entity)
	for k, v := range cmd.Data {
		plain = plain && plainJSONString(k) && plainJSONValue(v)
		size += len(k) + len(v) + 4
	}
	if !plain {
		return json.Marshal(cmd)
	}
	b := make([]byte, 0, size)
	b = append(append(append(b, `{"id":"`...), cmd.ID...), '"')
	if cmd.Entity != "" {
		b = append(append(append(b, `,"entity":"`...), cmd.Entity...), '"')
	}
	if cmd.Op != "" {
		b = append(append(append(b, `,"op":"`...), cmd.Op...), '"')
	}
	if cmd.Version != nil {
		b = strconv.AppendInt(append(b, `,"version":`...), *cmd.Version, 10)
	}
	if cmd.Data == nil {
		return append(b, `,"data":null}`...), nil
	}
	b = append(b, `,"data":{`...)
	for i, k := range slices.Sorted(maps.Keys(cmd.Data)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(append(append(append(b, '"'), k...), `":`...), cmd.Data[k]...)
	}
	return append(b, "}}"...), nil
}

// plainJSONString reports whether encoding/json writes s as it is between
// quotes: valid UTF-8 with nothing it escapes (quotes, backslashes, control
// characters, <, >, &, U+2028 and U+2029).
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		case separatorAt(s, i):
			return false
		}
	}
	return utf8.ValidString(s)
}

// plainJSONValue reports whether encoding/json copies the valid JSON value
// v as it is: compact (no whitespace outside strings) and nothing it
// escapes (<, >, &, U+2028 and U+2029, which can only be inside strings).
func plainJSONValue(v json.RawMessage) bool {
	if !json.Valid(v) {
		return false
	}
	inString := false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '<', c == '>', c == '&', separatorAt(v, i):
			return false
		case inString && c == '\\':
			i++ // the escaped character
		case c == '"':
			inString = !inString
		case !inString && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			return false
		}
	}
	return true
}

// separatorAt reports whether U+2028 or U+2029, which encoding/json
// escapes, begins at s[i].
func separatorAt[T ~string | ~[]byte](s T, i int) bool {
	return i+2 < len(s) && s[i] == 0xE2 && s[i+1] == 0x80 && (s[i+2] == 0xA8 || s[i+2] == 0xA9)
}

// PayloadHash identifies a command's content: the same id with a different
// hash is a conflict.
type PayloadHash [16]byte

// Message is a decoded command record with its job context.
type Message struct {
	Record  *Record
	Command DecodedCommand
	JobID   JobID
	Tenant  string
	Index   int64
	Hash    PayloadHash
	// ReplayOf is the dead letter this command was replayed from, if any.
	ReplayOf string
	// Err is set when the record could not be decoded or validated; such a
	// message is dead-lettered without touching the database.
	Err error
	// KeepValue is set by the DeadLetterer when the dead letter does not
	// carry the record's value whole (it did not fit the dead-letter
	// topic): the store then keeps the value in the job's failure row, so
	// that nothing is lost and a replay can send the whole command.
	KeepValue bool
	// parked is set once the dead-letter topic acknowledged the message, so
	// that retrying or splitting its batch does not publish it again.
	parked bool
	// catalog is the Catalog version the command was last checked against.
	catalog uint64
}

// Origin is a record's place in its upload: its job and index. Kafka may
// deliver one record twice (a producer's resend after a broker failure);
// both copies have one origin, while a client's repeat of a command in
// another upload, or another place of the same upload, does not.
type Origin struct {
	Job   JobID
	Index int64
}

// Sum is the origin in 64 bits, for the ledger to keep beside a claim: two
// origins of one command id that differ collide with odds of 2⁻⁶⁴.
func (o Origin) Sum() int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(o.Job))
	var index [8]byte
	binary.BigEndian.PutUint64(index[:], uint64(o.Index))
	_, _ = h.Write(index[:])
	return int64(h.Sum64())
}

// Origin returns the message's origin, unless it has none: a record
// without a job (produced by another tool), or a replay, which is a new
// record of an old command (replays are settled as moves).
func (m *Message) Origin() (Origin, bool) {
	if m.JobID == "" || m.Index < 0 || m.ReplayOf != "" {
		return Origin{}, false
	}
	return Origin{m.JobID, m.Index}, true
}

// DecodeRecord turns a commands-topic record into a Message, validating it
// against the entities this processor knows. It never fails: a bad record
// comes back with Err set, so that it is dead-lettered on its own.
func DecodeRecord(r Record, es Entities) Message { return decodeRecord(&r, es, nil) }

// decodeRecord is DecodeRecord; a batch's records mostly share their job
// and tenant, so each takes prev's strings (when set) where its headers
// hold the same, rather than a copy of its own. The message points at r,
// which must live as long as it does.
func decodeRecord(r *Record, es Entities, prev *Message) Message {
	var prevJob, prevTenant string
	if prev != nil {
		prevJob, prevTenant = string(prev.JobID), prev.Tenant
	}
	m := Message{Record: r, Hash: hashPayload(r.Value)}
	m.JobID = JobID(headerLike(r, HeaderJobID, prevJob))
	m.Tenant = headerLike(r, HeaderTenant, prevTenant)
	m.ReplayOf = headerLike(r, HeaderReplayOf, "")
	m.Index = -1 // unknown, and no origin, unless the header says
	if v, ok := r.header(HeaderIndex); ok {
		n, err := parseIndex(v)
		if err != nil {
			m.Err = Errorf(ClassInvalidCommand, "header %s=%s is not an integer", HeaderIndex, Quote(string(v)))
			return m
		}
		m.Index = n
	}
	cmd, err := decodeCommandValue(r.Value, es)
	if err != nil {
		m.Err = err
		return m
	}
	if string(cmd.ID) != string(r.Key) {
		m.Err = Errorf(ClassInvalidCommand, "record key %s differs from command id %s", Quote(string(r.Key)), Quote(string(cmd.ID)))
		return m
	}
	if err := es.validateFields(cmd.ID, &cmd.Entity, &cmd.Op, cmd.Version, cmd.Data); err != nil {
		m.Err = err
	}
	m.Command = cmd
	return m
}

// parseIndex reads the index header: strconv.ParseInt's decision, without
// its copy of the text for the common plain digits.
func parseIndex(v []byte) (int64, error) {
	if len(v) == 0 || len(v) > 18 {
		return strconv.ParseInt(string(v), 10, 64)
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return strconv.ParseInt(string(v), 10, 64)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// invalidUTF8At is the offset of the first byte of b that is not valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(b)
}

// headerLike returns the header's value, as like when equal to it (so
// without a copy of its own), "" when absent.
func headerLike(r *Record, key, like string) string {
	v, ok := r.header(key)
	switch {
	case !ok:
		return ""
	case string(v) == like:
		return like
	}
	return string(v)
}

func hashPayload(b []byte) PayloadHash {
	sum := sha256.Sum256(b)
	var h PayloadHash
	copy(h[:], sum[:])
	return h
}

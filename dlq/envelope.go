package dlq

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/spoolhq/spool/pipeline"
)

// Header names a dead-lettered record carries besides the original's. The
// job id, tenant and input index are the original record's own headers,
// named here too so that every field of the envelope has a constant.
const (
	HeaderErrorClass      = "spool-dlq-error-class"
	HeaderError           = "spool-dlq-error"
	HeaderSourceTopic     = "spool-dlq-source-topic"
	HeaderSourcePartition = "spool-dlq-source-partition"
	HeaderSourceOffset    = "spool-dlq-source-offset"
	HeaderAttempt         = "spool-dlq-attempt"
	HeaderFirstFailure    = "spool-dlq-first-failure"
	HeaderLastFailure     = "spool-dlq-last-failure"
	HeaderCommandID       = "spool-dlq-command-id"
	HeaderInstance        = "spool-dlq-processor"
	// HeaderValueTruncated marks a dead letter whose value is cut (or
	// dropped) to fit the dead-letter topic; it holds the original value's
	// size in bytes. The whole command is in its job's failure row.
	HeaderValueTruncated = "spool-dlq-value-truncated"

	HeaderJobID    = pipeline.HeaderJobID
	HeaderTenant   = pipeline.HeaderTenant
	HeaderIndex    = pipeline.HeaderIndex
	HeaderReplayOf = pipeline.HeaderReplayOf
)

// timeFormat is how failure times are written: UTC, readable as they are.
const timeFormat = time.RFC3339Nano

// maxErrorHeader bounds the error message header, so that a long database
// message cannot push a dead letter past the broker's record size.
const maxErrorHeader = pipeline.MaxErrorBytes

// maxHeader bounds every other header spool writes from what a record
// carried (its key as the command id, its job, tenant and replay-of
// headers): a record another producer wrote may carry anything there.
const maxHeader = pipeline.MaxQuote

// Envelope is a dead letter: the original record (key, value, headers) and
// why and where it failed.
type Envelope struct {
	Key   []byte
	Value []byte
	// Headers are the original record's headers other than the job id,
	// tenant, index and replay-of (fields below) and the dead-letter headers.
	Headers []pipeline.Header

	ErrorClass      pipeline.ErrorClass
	Error           string
	SourceTopic     string
	SourcePartition int32
	SourceOffset    int64
	// Attempt counts the times the command was processed and failed: 1 for
	// a first failure, one more for each replay that failed again.
	Attempt      int
	FirstFailure time.Time
	LastFailure  time.Time
	JobID        pipeline.JobID
	Tenant       string
	CommandID    pipeline.CommandID
	// Index is the command's 0-based position in its upload, -1 if unknown.
	Index int64
	// Instance names the processor that dead-lettered the command.
	Instance string
	// ReplayOf is the earlier dead letter this command was replayed from.
	ReplayOf string
	// ValueTruncated is the size of the original value when the dead letter
	// carries it cut or not at all (HeaderValueTruncated); 0 when whole.
	ValueTruncated int

	// Where the dead letter itself is, set by Parse.
	Topic     string
	Partition int32
	Offset    int64
	Timestamp time.Time
}

// Coordinates names the dead letter in its topic: PARTITION:OFFSET, the
// argument of spoolctl dlq show.
func (e *Envelope) Coordinates() string { return fmt.Sprintf("%d:%d", e.Partition, e.Offset) }

// Entity is the command's entity, read from its value; "" when the value is
// not a JSON object with one.
func (e *Envelope) Entity() string {
	var v struct {
		Entity string `json:"entity"`
	}
	if json.Unmarshal(e.Value, &v) != nil {
		return ""
	}
	return v.Entity
}

// Record encodes the envelope as a dead-letter record.
func (e *Envelope) Record() pipeline.Record {
	hs := e.originalHeaders(len(e.Headers) + 14)
	add := func(k, v string) { hs = append(hs, pipeline.Header{Key: k, Value: []byte(v)}) }
	add(HeaderErrorClass, pipeline.Printable(string(e.ErrorClass), maxHeader))
	add(HeaderError, pipeline.Printable(e.Error, maxErrorHeader))
	add(HeaderSourceTopic, pipeline.Printable(e.SourceTopic, maxHeader))
	add(HeaderSourcePartition, strconv.Itoa(int(e.SourcePartition)))
	add(HeaderSourceOffset, strconv.FormatInt(e.SourceOffset, 10))
	add(HeaderAttempt, strconv.Itoa(e.Attempt))
	add(HeaderFirstFailure, e.FirstFailure.UTC().Format(timeFormat))
	add(HeaderLastFailure, e.LastFailure.UTC().Format(timeFormat))
	add(HeaderCommandID, pipeline.Printable(string(e.CommandID), maxHeader))
	add(HeaderInstance, pipeline.Printable(e.Instance, maxHeader))
	if e.ReplayOf != "" {
		add(HeaderReplayOf, pipeline.Printable(e.ReplayOf, maxHeader))
	}
	if e.ValueTruncated > 0 {
		add(HeaderValueTruncated, strconv.Itoa(e.ValueTruncated))
	}
	return pipeline.Record{Key: e.Key, Value: e.Value, Headers: hs}
}

// RecordWithin encodes the envelope as a dead-letter record of at most limit
// bytes as Kafka measures it (pipeline.Record.BatchBytes; max ≤ 0: no
// bound). The value is kept whole when it fits; otherwise as much of it as
// fits is kept, cut on a UTF-8 boundary, and HeaderValueTruncated gives its
// original size. Should the key and headers alone not fit (a record another
// producer wrote, with large headers of its own), the original's other
// headers and the value are dropped and the key cut to maxHeader bytes:
// that is Minimal. cut reports whether the value is not whole.
func (e *Envelope) RecordWithin(limit int) (r pipeline.Record, cut bool) {
	r = e.Record()
	if limit <= 0 || r.BatchBytes() <= limit {
		return r, false
	}
	c := *e
	c.ValueTruncated = max(len(e.Value), 1) // a marker even for an empty value
	c.Value = nil
	r = c.Record()
	// A cut value's length varint takes up to 4 bytes more than nil's.
	if room := limit - r.BatchBytes() - 4; room > 0 {
		c.Value = cutBytes(e.Value, room)
		r = c.Record()
	}
	if r.BatchBytes() <= limit {
		return r, true
	}
	return e.Minimal(), true
}

// Minimal is the smallest dead letter of the envelope: no value, none of
// the original's other headers, the key cut to maxHeader bytes, every header
// bounded. Its size depends on no user input beyond those bounds (a few
// kilobytes), so any dead-letter topic takes it.
func (e *Envelope) Minimal() pipeline.Record {
	c := *e
	c.ValueTruncated = max(len(e.Value), 1)
	c.Value, c.Headers = nil, nil
	if len(c.Key) > maxHeader {
		c.Key = cutBytes(c.Key, maxHeader)
	}
	return c.Record()
}

// cutBytes returns at most n bytes of b, ending on a UTF-8 rune boundary
// when b is UTF-8 text.
func cutBytes(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	cut := n
	for cut > 0 && cut > n-utf8.UTFMax && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return b[:cut]
}

// ReplayRecord is the command to send back to topic: the
// original key, value and headers, the attempt it will be, the first
// failure time (so that a dead letter of it again keeps it) and which dead
// letter it replays.
func (e *Envelope) ReplayRecord(topic string) pipeline.Record {
	hs := e.originalHeaders(len(e.Headers) + 6)
	add := func(k, v string) { hs = append(hs, pipeline.Header{Key: k, Value: []byte(v)}) }
	add(HeaderAttempt, strconv.Itoa(e.Attempt+1))
	add(HeaderFirstFailure, e.FirstFailure.UTC().Format(timeFormat))
	add(HeaderReplayOf, e.Topic+":"+e.Coordinates())
	return pipeline.Record{Topic: topic, Key: e.Key, Value: e.Value, Headers: hs}
}

// originalHeaders are the command's own headers: the others, then job id,
// tenant and index where known.
func (e *Envelope) originalHeaders(capacity int) []pipeline.Header {
	hs := make([]pipeline.Header, 0, capacity)
	hs = append(hs, e.Headers...)
	if e.JobID != "" {
		hs = append(hs, pipeline.Header{Key: HeaderJobID, Value: []byte(pipeline.Printable(string(e.JobID), maxHeader))})
	}
	if e.Tenant != "" {
		hs = append(hs, pipeline.Header{Key: HeaderTenant, Value: []byte(pipeline.Printable(e.Tenant, maxHeader))})
	}
	if e.Index >= 0 {
		hs = append(hs, pipeline.Header{Key: HeaderIndex, Value: strconv.AppendInt(nil, e.Index, 10)})
	}
	return hs
}

// Parse decodes a dead-letter record. It fails, naming the header, when one
// that every dead letter carries is missing or malformed.
func Parse(r pipeline.Record) (*Envelope, error) {
	e := &Envelope{Key: r.Key, Value: r.Value, Index: -1,
		Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp}
	seen := map[string]string{}
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderErrorClass, HeaderError, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset,
			HeaderAttempt, HeaderFirstFailure, HeaderLastFailure, HeaderCommandID, HeaderInstance,
			HeaderJobID, HeaderTenant, HeaderIndex, HeaderReplayOf, HeaderValueTruncated:
			if _, dup := seen[h.Key]; dup {
				return nil, fmt.Errorf("header %s appears twice", h.Key)
			}
			seen[h.Key] = string(h.Value)
		default:
			e.Headers = append(e.Headers, h)
		}
	}
	for _, k := range []string{HeaderErrorClass, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset,
		HeaderAttempt, HeaderFirstFailure, HeaderLastFailure} {
		if _, ok := seen[k]; !ok {
			return nil, fmt.Errorf("not a dead letter: header %s is missing", k)
		}
	}
	var err error
	e.ErrorClass = pipeline.ErrorClass(seen[HeaderErrorClass])
	e.Error = seen[HeaderError]
	e.SourceTopic = seen[HeaderSourceTopic]
	e.JobID = pipeline.JobID(seen[HeaderJobID])
	e.Tenant = seen[HeaderTenant]
	e.CommandID = pipeline.CommandID(seen[HeaderCommandID])
	e.Instance = seen[HeaderInstance]
	e.ReplayOf = seen[HeaderReplayOf]
	p, err := parseInt(seen, HeaderSourcePartition, 32)
	if err != nil {
		return nil, err
	}
	e.SourcePartition = int32(p)
	if e.SourceOffset, err = parseInt(seen, HeaderSourceOffset, 64); err != nil {
		return nil, err
	}
	attempt, err := parseInt(seen, HeaderAttempt, 32)
	if err != nil {
		return nil, err
	}
	if attempt < 1 {
		return nil, fmt.Errorf("header %s=%d: attempts count from 1", HeaderAttempt, attempt)
	}
	e.Attempt = int(attempt)
	if _, ok := seen[HeaderIndex]; ok {
		if e.Index, err = parseInt(seen, HeaderIndex, 64); err != nil {
			return nil, err
		}
		if e.Index < 0 {
			return nil, fmt.Errorf("header %s=%d is negative", HeaderIndex, e.Index)
		}
	}
	if _, ok := seen[HeaderValueTruncated]; ok {
		n, err := parseInt(seen, HeaderValueTruncated, 32)
		if err != nil {
			return nil, err
		}
		if n < 1 {
			return nil, fmt.Errorf("header %s=%d: a size counts from 1", HeaderValueTruncated, n)
		}
		e.ValueTruncated = int(n)
	}
	if e.FirstFailure, err = parseTime(seen, HeaderFirstFailure); err != nil {
		return nil, err
	}
	if e.LastFailure, err = parseTime(seen, HeaderLastFailure); err != nil {
		return nil, err
	}
	return e, nil
}

func parseInt(hs map[string]string, key string, bits int) (int64, error) {
	n, err := strconv.ParseInt(hs[key], 10, bits)
	if err != nil {
		return 0, fmt.Errorf("header %s=%q is not an integer", key, hs[key])
	}
	return n, nil
}

func parseTime(hs map[string]string, key string) (time.Time, error) {
	t, err := time.Parse(timeFormat, hs[key])
	if err != nil {
		return time.Time{}, fmt.Errorf("header %s=%q is not an RFC 3339 time", key, hs[key])
	}
	return t.UTC(), nil
}

// Producer sends records and returns once all are acknowledged.
type Producer interface {
	ProduceSync(ctx context.Context, topic string, recs ...pipeline.Record) error
}

// Publisher parks messages in the dead-letter topic.
type Publisher struct {
	producer Producer
	topic    string
	instance string
	now      func() time.Time
	// MaxRecordBytes bounds each dead letter as Kafka measures it
	// (pipeline.Record.BatchBytes): the dead-letter topic's
	// max.message.bytes, no more than the producer's batch limit. 0: no
	// bound.
	MaxRecordBytes int
}

// NewPublisher returns a publisher writing to topic; instance names this
// processor in the records it writes.
func NewPublisher(p Producer, topic, instance string) *Publisher {
	return &Publisher{producer: p, topic: topic, instance: instance, now: time.Now}
}

// DeadLetter implements pipeline.DeadLetterer. Each dead letter is bounded
// by MaxRecordBytes (Envelope.RecordWithin); one whose value it cut or
// dropped marks its message KeepValue, so that the store keeps the whole
// command in the job's failure row. Should the topic still refuse them as
// too large (its max.message.bytes lowered since it was read, or not
// readable), they are sent once more as Minimal dead letters rather than
// retried for ever behind their partition.
func (p *Publisher) DeadLetter(ctx context.Context, msgs []*pipeline.Message) error {
	recs := make([]pipeline.Record, len(msgs))
	envs := make([]*Envelope, len(msgs))
	for i, m := range msgs {
		envs[i] = p.envelope(m)
		var cut bool
		recs[i], cut = envs[i].RecordWithin(p.MaxRecordBytes)
		m.KeepValue = m.KeepValue || cut
	}
	err := p.producer.ProduceSync(ctx, p.topic, recs...)
	if pipeline.ClassOf(err) != pipeline.ClassTooLarge {
		return err
	}
	for i, m := range msgs {
		recs[i] = envs[i].Minimal()
		m.KeepValue = true
	}
	if err := p.producer.ProduceSync(ctx, p.topic, recs...); err != nil {
		return fmt.Errorf("producing %d dead letters without their values, after %s refused them as too large: %w", len(recs), p.topic, err)
	}
	return nil
}

// envelope wraps a failed message. A replayed command carries the attempt it
// is and its first failure time; any other starts at attempt 1, now.
func (p *Publisher) envelope(m *pipeline.Message) *Envelope {
	now := p.now().UTC()
	src := m.Record
	e := &Envelope{
		Key: src.Key, Value: src.Value,
		ErrorClass: pipeline.ClassOf(m.Err), Error: m.Err.Error(),
		SourceTopic: src.Topic, SourcePartition: src.Partition, SourceOffset: src.Offset,
		Attempt: 1, FirstFailure: now, LastFailure: now,
		CommandID: pipeline.CommandID(src.Key), Index: -1, Instance: p.instance,
	}
	for _, h := range src.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderAttempt:
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				e.Attempt = n
			}
		case HeaderFirstFailure:
			if t, err := time.Parse(timeFormat, v); err == nil {
				e.FirstFailure = t
			}
		case HeaderJobID:
			e.JobID = pipeline.JobID(v)
		case HeaderTenant:
			e.Tenant = v
		case HeaderIndex:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				e.Index = n
			}
		case HeaderErrorClass, HeaderError, HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset,
			HeaderLastFailure, HeaderCommandID, HeaderInstance, HeaderValueTruncated:
			// a dead-letter header on a source record (another tool's copy): dropped
		case HeaderReplayOf:
			e.ReplayOf = v
		default:
			e.Headers = append(e.Headers, h)
		}
	}
	return e
}

package dlq

import (
	"context"
	"errors"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// Reader reads a topic from its first record to its last as of the call,
// partition by partition in offset order. A topic that does not exist reads
// as empty.
type Reader interface {
	Read(ctx context.Context, topic string, partition int32, fn func(pipeline.Record) error) error
}

// AllPartitions reads every partition.
const AllPartitions int32 = -1

// Filter selects dead letters. Zero fields select everything.
type Filter struct {
	Job        pipeline.JobID
	Tenant     string
	ErrorClass pipeline.ErrorClass
	Entity     string
	// Since and Until bound the last failure time: Since ≤ t < Until.
	Since, Until time.Time
	// Partition, when set, selects one partition of the dead-letter topic.
	Partition *int32
}

// partition is what the filter asks the Reader for.
func (f Filter) partition() int32 {
	if f.Partition == nil {
		return AllPartitions
	}
	return *f.Partition
}

// Match reports whether e passes the filter.
func (f Filter) Match(e *Envelope) bool {
	switch {
	case f.Job != "" && e.JobID != f.Job,
		f.Tenant != "" && e.Tenant != f.Tenant,
		f.ErrorClass != "" && e.ErrorClass != f.ErrorClass,
		f.Partition != nil && e.Partition != *f.Partition,
		!f.Since.IsZero() && e.LastFailure.Before(f.Since),
		!f.Until.IsZero() && !e.LastFailure.Before(f.Until),
		f.Entity != "" && e.Entity() != f.Entity:
		return false
	}
	return true
}

// ErrStop ends a Scan early without an error.
var ErrStop = errors.New("stop scanning")

// Scan calls fn for each dead letter of topic that f selects. A record that
// is not a dead letter goes to bad (when set) with the reason, never to fn.
func Scan(ctx context.Context, r Reader, topic string, f Filter, fn func(*Envelope) error, bad func(pipeline.Record, error)) error {
	err := r.Read(ctx, topic, f.partition(), func(rec pipeline.Record) error {
		e, err := Parse(rec)
		if err != nil {
			if bad != nil {
				bad(rec, err)
			}
			return nil
		}
		if !f.Match(e) {
			return nil
		}
		return fn(e)
	})
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}

// Stats counts dead letters by error class, job and entity.
type Stats struct {
	Total      int            `json:"total"`
	ByClass    map[string]int `json:"by_error_class"`
	ByJob      map[string]int `json:"by_job"`
	ByEntity   map[string]int `json:"by_entity"`
	Unreadable int            `json:"unreadable"`
}

// NewStats returns empty counts.
func NewStats() *Stats {
	return &Stats{ByClass: map[string]int{}, ByJob: map[string]int{}, ByEntity: map[string]int{}}
}

// Add counts one dead letter.
func (s *Stats) Add(e *Envelope) {
	s.Total++
	s.ByClass[string(e.ErrorClass)]++
	s.ByJob[string(e.JobID)]++
	s.ByEntity[e.Entity()]++
}

package pipeline

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// CommandID is a command's idempotency key and its Kafka record key.
type CommandID string

// JobID names one upload. Jobs are created by ingress and counted by the
// processor.
type JobID string

// Op is what a command does to its row.
type Op string

const (
	// OpUpsert inserts the row or updates the columns named in Data.
	OpUpsert Op = "upsert"
	// OpDelete removes the row named by the key columns in Data.
	OpDelete Op = "delete"
	// OpInsert inserts the row only when its key is absent; otherwise the
	// command's outcome is exists.
	OpInsert Op = "insert"
	// OpUpdate updates the columns named in Data only when the row is
	// present; otherwise the command's outcome is missing.
	OpUpdate Op = "update"
)

// Ops lists every op, upsert (the default) first.
var Ops = []Op{OpUpsert, OpDelete, OpInsert, OpUpdate}

// knownOp is op as its constant when it is one of Ops (no copy), a copy
// otherwise.
func knownOp(op []byte) Op {
	for _, o := range Ops {
		if string(op) == string(o) {
			return o
		}
	}
	return Op(op)
}

// OpNames lists the ops for messages: "upsert, delete, insert, update".
func OpNames() string {
	names := make([]string, len(Ops))
	for i, op := range Ops {
		names[i] = string(op)
	}
	return strings.Join(names, ", ")
}

// Valid tells whether op is one spool knows.
func (op Op) Valid() bool { return slices.Contains(Ops, op) }

// Conditional tells whether the op's effect depends on whether the row is
// there: the outcome of an insert or an update is known only once the
// database answers.
func (op Op) Conditional() bool { return op == OpInsert || op == OpUpdate }

// Writes tells whether the op writes data columns (all but delete).
func (op Op) Writes() bool { return op != OpDelete }

// Command is one write, as uploaded and as carried in a Kafka record value.
//
// Data holds the column values as raw JSON so that a command is decoded once
// and never re-interpreted: the processor converts each value to its column's
// type at write time.
type Command struct {
	ID      CommandID                  `json:"id"`
	Entity  string                     `json:"entity,omitempty"`
	Op      Op                         `json:"op,omitempty"`
	Version *int64                     `json:"version,omitempty"`
	Data    map[string]json.RawMessage `json:"data"`
}

// Outcome is how a command ended. Every accepted command ends in exactly one
// of these; counts per job add up to the accepted total.
type Outcome string

const (
	// OutcomeApplied means the command changed (or, for a delete, cleared) its row.
	OutcomeApplied Outcome = "applied"
	// OutcomeDuplicate means the id was applied before within the dedupe window.
	OutcomeDuplicate Outcome = "duplicate"
	// OutcomeStale means the stored row (or a command in the same batch) carries
	// a version at least as new.
	OutcomeStale Outcome = "stale"
	// OutcomeConflict means the id was seen before with a different payload.
	OutcomeConflict Outcome = "conflict"
	// OutcomeExists means an insert found its row already there (and not
	// at a version at least as new, which is stale).
	OutcomeExists Outcome = "exists"
	// OutcomeMissing means an update found no row to update (and no
	// tombstone at a version at least as new, which is stale).
	OutcomeMissing Outcome = "missing"
	// OutcomeAborted means the command's job was aborted before the command
	// was applied, so it was skipped.
	OutcomeAborted Outcome = "aborted"
	// OutcomeDeadLettered means the command failed permanently and was parked in
	// the dead-letter topic.
	OutcomeDeadLettered Outcome = "dead_lettered"
	// OutcomeRejected means ingress refused the record, which never became a
	// command. It is counted as rejected on its job, not among the accepted,
	// and listed among the job's failures.
	OutcomeRejected Outcome = "rejected"
	// OutcomeRedelivered means the record is one Kafka delivered again (a
	// producer resent it after a broker failed before acknowledging): the
	// same place of the same job, whose outcome was counted when it first
	// came. It changes nothing and is counted nowhere, so that a job's
	// counts still add up to its accepted commands.
	OutcomeRedelivered Outcome = "redelivered"
)

// Counts tallies outcomes. The processor adds one Counts per job and batch.
type Counts struct {
	Applied      int64
	Duplicate    int64
	Stale        int64
	Conflict     int64
	Exists       int64
	Missing      int64
	Aborted      int64
	DeadLettered int64
}

// Add counts one outcome.
func (c *Counts) Add(o Outcome) {
	switch o {
	case OutcomeApplied:
		c.Applied++
	case OutcomeDuplicate:
		c.Duplicate++
	case OutcomeStale:
		c.Stale++
	case OutcomeConflict:
		c.Conflict++
	case OutcomeExists:
		c.Exists++
	case OutcomeMissing:
		c.Missing++
	case OutcomeAborted:
		c.Aborted++
	case OutcomeDeadLettered:
		c.DeadLettered++
	case OutcomeRedelivered:
		// counted when the record first came
	default:
		panic(fmt.Sprintf("pipeline: outcome %q is not counted by the processor", o))
	}
}

// Done is the number of commands that reached an outcome.
func (c Counts) Done() int64 {
	return c.Applied + c.Duplicate + c.Stale + c.Conflict + c.Exists + c.Missing + c.Aborted + c.DeadLettered
}

// Get returns the count of one outcome (0 for one not counted here).
func (c *Counts) Get(o Outcome) int64 {
	switch o {
	case OutcomeApplied:
		return c.Applied
	case OutcomeDuplicate:
		return c.Duplicate
	case OutcomeStale:
		return c.Stale
	case OutcomeConflict:
		return c.Conflict
	case OutcomeExists:
		return c.Exists
	case OutcomeMissing:
		return c.Missing
	case OutcomeAborted:
		return c.Aborted
	case OutcomeDeadLettered:
		return c.DeadLettered
	}
	return 0
}

// CountedOutcomes are the outcomes Counts tallies, in the order the API
// and the tools show them.
var CountedOutcomes = []Outcome{OutcomeApplied, OutcomeDuplicate, OutcomeStale, OutcomeConflict,
	OutcomeExists, OutcomeMissing, OutcomeAborted, OutcomeDeadLettered}

// JobState is where a job stands.
type JobState string

const (
	// JobOpen means the job takes parts (PUT …/parts/{n}) until it is
	// completed.
	JobOpen JobState = "open"
	// JobReceiving means the upload is still streaming in.
	JobReceiving JobState = "receiving"
	// JobQueued means every accepted command is in Kafka; none has an outcome yet.
	JobQueued JobState = "queued"
	// JobProcessing means some accepted commands have an outcome.
	JobProcessing JobState = "processing"
	// JobCompleted means every accepted command has an outcome and none failed.
	JobCompleted JobState = "completed"
	// JobCompletedWithErrors means every accepted command has an outcome, and some commands were rejected,
	// conflicting or dead-lettered.
	JobCompletedWithErrors JobState = "completed_with_errors"
	// JobFailed means the upload broke off. What was accepted before is still
	// applied and counted.
	JobFailed JobState = "failed"
	// JobAborted means the job was aborted: its commands not applied by then
	// are skipped by the processors as aborted, and counted so.
	JobAborted JobState = "aborted"
)

// JobStates lists every state, in the order a job goes through them.
var JobStates = []JobState{JobOpen, JobReceiving, JobQueued, JobProcessing, JobCompleted, JobCompletedWithErrors, JobFailed, JobAborted}

// Finished tells whether the state is final: no state follows it (though
// a failed or aborted job's commands may still be counting in).
func (s JobState) Finished() bool {
	switch s {
	case JobCompleted, JobCompletedWithErrors, JobFailed, JobAborted:
		return true
	}
	return false
}

// JobOptions are what a job is created with.
type JobOptions struct {
	// Results keeps each command's outcome for the results listing, at the
	// cost of a row a command.
	Results bool
	// Parts opens the job for parts: it takes them until completed.
	Parts bool
}

// MaxParts bounds the parts of a job, numbered from 1.
const MaxParts = 10000

// PartBase is the index of part n's first record in its job: each part
// has room for 2^32 records, so that indices follow the part order whatever
// order the parts come in. Listings show a record's place in the whole
// upload instead: its index in its part after the records of the parts
// before it (Part.Received).
func PartBase(n int) int64 { return int64(n-1) << 32 }

// PartOf splits an index of a job in parts into its part (from 1) and its
// index in that part.
func PartOf(index int64) (part int, local int64) { return int(index>>32) + 1, index & (1<<32 - 1) }

// Part is one part of a job uploaded in parts.
type Part struct {
	Number int
	// State is one of the Part states below.
	State string
	// Received, Accepted and Rejected count the part's records; for a
	// part receiving or broken, those that reached Kafka so far.
	Received int64
	Accepted int64
	Rejected int64
	// SHA256 is the hex SHA-256 of the part's decoded body, once done.
	SHA256 string
	// Error tells why a part refused or broken ended so.
	Error string
}

// Part states. A part that ends before any of its records reached Kafka
// leaves no state: it is forgotten, and may be sent again corrected.
const (
	// PartReceiving is a part streaming in.
	PartReceiving = "receiving"
	// PartDone is a part received whole.
	PartDone = "done"
	// PartRefused is a part refused for what it holds (a 4xx) after some of
	// its records reached Kafka: it is final, and those records count.
	PartRefused = "refused"
	// PartBroken is a part cut off (a lost connection, a timeout, a 5xx)
	// after some of its records reached Kafka: it must be sent again with
	// the same bytes before the job completes, and what reached Kafka of it
	// is then counted once.
	PartBroken = "broken"
)

// PartsBrokenError is CompleteJob's refusal while parts are broken, or
// were receiving when their ingress stopped: they must be sent again.
type PartsBrokenError struct {
	ID    JobID
	Parts []int
}

func (e *PartsBrokenError) Error() string {
	return fmt.Sprintf("parts %v of job %s broke off after some of their records reached Kafka", e.Parts, e.ID)
}

// Job is a job's status as the API shows it.
type Job struct {
	ID      JobID
	Tenant  string
	State   JobState
	Results bool
	// InParts tells whether the job was opened for parts; Parts lists the
	// parts it received.
	InParts     bool
	Parts       []Part
	Received    int64
	Accepted    int64
	Rejected    int64
	Counts      Counts
	Error       string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	CompletedAt *time.Time
}

// JobCursor is where a page of a job listing ends: the last job's creation
// time and id.
type JobCursor struct {
	CreatedAt time.Time
	ID        JobID
}

// JobQuery selects a page of a tenant's jobs, newest first.
type JobQuery struct {
	// State, when set, selects jobs in that state only.
	State JobState
	// After, when set, starts the page after that job.
	After *JobCursor
	Limit int
}

// Progress is the share of accepted commands that have an outcome, 0 to 1.
func (j *Job) Progress() float64 {
	if j.Accepted == 0 {
		if j.State.Finished() {
			return 1
		}
		return 0
	}
	return min(1, float64(j.Counts.Done())/float64(j.Accepted))
}

// Failure is one command of a job that did not apply: rejected at ingress,
// conflicting, or dead-lettered by the processor.
type Failure struct {
	Index   int64
	ID      CommandID
	Stage   string
	Outcome Outcome
	Class   ErrorClass
	Error   string
	// Command is the whole command (the record's value), kept for a dead
	// letter that could not carry it whole; nil otherwise.
	Command []byte
	// ValueHash is the SHA-256 of the value a command was dead-lettered
	// with, which a replay checks a dead letter against; nil otherwise.
	ValueHash []byte
}

// Result is one command's outcome, by its place in the upload.
type Result struct {
	Index   int64
	ID      CommandID
	Outcome Outcome
}

// ResultOutcomes are the outcomes a results listing shows: every counted
// one, and rejected.
var ResultOutcomes = append(slices.Clone(CountedOutcomes), OutcomeRejected)

// DeadLetterRecord is what spool recorded when it dead-lettered a command:
// its job's failure row. A replay checks each dead letter against it.
type DeadLetterRecord struct {
	// Tenant owns the job.
	Tenant string
	// ID is the command id.
	ID CommandID
	// ValueHash is the SHA-256 of the value the command was dead-lettered
	// with (nil for a dead letter recorded before spool kept it).
	ValueHash []byte
	// Command is the whole value, kept when the dead letter could not
	// carry it; nil otherwise.
	Command []byte
}

// Failure stages.
const (
	StageIngress   = "ingress"
	StageProcessor = "processor"
)

// UploadResult is what ingress knows once an upload has ended.
type UploadResult struct {
	Received, Accepted, Rejected int64
	// Err is why the upload broke off; nil when it ended normally.
	Err error
}

// IdempotentRecord is what an Idempotency-Key remembers of its first
// request: the body's fingerprint and the answer, or that it is in flight.
type IdempotentRecord struct {
	InFlight bool
	// LeaseLeft is how long an in-flight key's owner still holds it
	// without another heartbeat: when a retry may take it over.
	LeaseLeft   time.Duration
	Fingerprint []byte
	Status      int
	Location    string
	Body        []byte
}

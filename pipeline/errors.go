package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/cenkalti/backoff/v4"
)

// ErrorClass names why a command failed. Classes are stable strings: they
// appear in rejections, job failures, DLQ headers and metric labels, so the
// set is small and bounded.
type ErrorClass string

const (
	// ClassInvalidCommand means the record is not a well-formed command.
	ClassInvalidCommand ErrorClass = "invalid_command"
	// ClassUnknownEntity means the entity is not configured.
	ClassUnknownEntity ErrorClass = "unknown_entity"
	// ClassUnknownColumn means data names a column the table does not have.
	ClassUnknownColumn ErrorClass = "unknown_column"
	// ClassForbidden means the API key that uploaded the command may not write
	// its entity.
	ClassForbidden ErrorClass = "forbidden_entity"
	// ClassMissingKey means data lacks a key column (or a versioned entity's
	// command lacks its version).
	ClassMissingKey ErrorClass = "missing_key"
	// ClassTypeMismatch means a value does not fit its column's type.
	ClassTypeMismatch ErrorClass = "type_mismatch"
	// ClassConstraint means the database refused the row (SQLSTATE class 23).
	ClassConstraint ErrorClass = "constraint_violation"
	// ClassDataException means the database could not convert or store a value
	// (SQLSTATE class 22).
	ClassDataException ErrorClass = "data_exception"
	// ClassTooLarge means the record is larger than Kafka takes (the topic's
	// max.message.bytes or the producer's batch limit). Permanent: resending
	// the same bytes cannot help.
	ClassTooLarge ErrorClass = "too_large"
	// ClassConflict means the id was seen before with a different payload.
	ClassConflict ErrorClass = "conflict"
	// ClassTransient covers connection loss, timeout, serialization failure,
	// deadlock, broker unavailable. Retried, never dead-lettered.
	ClassTransient ErrorClass = "transient"
	// ClassSchema means the table changed under spool: a statement met a
	// column that is gone or retyped (retried once the catalog is read
	// again, never dead-lettered for that), or a command accepted before the
	// change names such a column (dead-lettered, to replay once the table
	// takes it again).
	ClassSchema ErrorClass = "schema"
	// ClassInternal is anything unclassified. Treated as transient by the
	// processor, since retrying is safe and dead-lettering is not reversible
	// without an operator.
	ClassInternal ErrorClass = "internal"
)

// Error is an error with its class. Permanent errors (every class but
// transient and internal) belong to one command, or to a batch that must be
// split until the offending command is found.
type Error struct {
	Class ErrorClass
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns a classified error with a formatted message.
func Errorf(class ErrorClass, format string, args ...any) error {
	return &Error{Class: class, Err: fmt.Errorf(format, args...)}
}

// Classify wraps err with class, keeping an existing classification.
func Classify(class ErrorClass, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Class: class, Err: err}
}

// ClassOf returns err's class, or ClassInternal when it has none.
func ClassOf(err error) ErrorClass {
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return ClassInternal
}

// IsPermanent reports whether retrying err cannot help.
func IsPermanent(err error) bool {
	switch ClassOf(err) {
	case ClassTransient, ClassInternal, ClassSchema:
		return false
	default:
		return true
	}
}

// RetryTransient calls fn until it succeeds, fails for good (IsPermanent)
// or ctx ends, waiting between calls as policy says; retrying, when set,
// hears of each error that is tried again. A processor must not stop over
// a transient error (SPEC §4.5): this is how its one-off reads wait one out.
func RetryTransient(ctx context.Context, policy backoff.BackOff, retrying func(error), fn func() error) error {
	return backoff.Retry(func() error {
		err := fn()
		if err != nil && IsPermanent(err) {
			return backoff.Permanent(err)
		}
		if err != nil && ctx.Err() == nil && retrying != nil {
			retrying(err)
		}
		return err
	}, backoff.WithContext(policy, ctx))
}

// Package pipeline is spool's pure core: the vocabulary every other package
// speaks (Command, CommandID, JobID, Outcome, ErrorClass), the wire codec that
// turns an upload line into a Kafka record and back, per-record validation
// against the configured entities, the in-batch planning (dedupe within a
// batch, collapse per key) and the per-partition Worker that batches records
// and hands them to a Store.
//
// It imports no Kafka client, database driver, metrics or HTTP code: those
// live in internal/… and depend on this package, never the other way round.
package pipeline

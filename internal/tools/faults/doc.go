// Package faults proves spool's guarantees (SPEC §4) under the faults a
// deployment meets: it runs the real binaries as separate processes (the
// broker from spoolctl, ingress, several processors) against the real
// PostgreSQL, drives a deterministic workload through uploads, and
// meanwhile, at moments drawn from a printed seed, SIGKILLs processors,
// adds and removes them, SIGKILLs ingress mid-upload (the clients resend
// under the same Idempotency-Key), restarts PostgreSQL or terminates its
// backends, SIGKILLs the broker and restarts it on the same data, slows
// every write statement for seconds, freezes a processor past its session
// timeout, cuts one off from the broker alone (a proxy every client passes
// through), and takes every PostgreSQL connection for seconds. Half the
// faults come alone, so that one fault's recovery is measured apart from
// the storms the others make.
//
// Its checker trusts none of spool's counters: a trigger records every
// committed write per command id; at the end every accepted command must
// have been written at most once, every one not superseded by a newer
// version exactly once unless it is a poison command, which must be in the
// dead-letter topic and its job's failures instead; the tables must equal
// an oracle (a key whose newest command is a delete has no row); every
// job's counts must add up and agree with the audit; and no processor may
// pass its rate limit or a bound on its memory.
// cmd/spool-faults is its command line; `make faults` runs it.
package faults

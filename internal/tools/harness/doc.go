// Package harness runs spool's binaries as separate processes for the tools
// that measure and break them (internal/bench, internal/faults): it starts a
// binary with its output kept, waits until it serves, stops or kills it, and
// reads its CPU seconds and peak RSS from /proc; and KafkaProxy stands
// between Kafka clients and a broker to cut one client off.
package harness

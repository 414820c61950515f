// Package dlq owns the dead-letter envelope: the header names a
// dead-lettered record carries (plain UTF-8, so that kcat -f '%h' shows them
// as they are) and the Publisher the processor parks poison commands with.
// A dead-lettered record keeps the original key, value and headers.
package dlq

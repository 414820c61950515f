// Package storetest is the conformance suite of pipeline.Store, as river's
// riverdrivertest is of its drivers: what any store must do with a batch —
// outcomes (applied, duplicate, conflict, stale, redelivered,
// dead-lettered) and the counters that agree with them, collapse within a
// batch, the version guard and its tombstones, the offset compare-and-set
// that fences a writer off, and all of it or nothing in one transaction.
// A store's test builds a fresh Backend per test — the store, its catalog's
// entities, and readers of the target through the backend's own means —
// and calls Run. internal/postgres runs it; docs/design.md says what a
// second store would implement.
package storetest

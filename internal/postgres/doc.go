// Package postgres is the product's only pgx importer (tooling has
// internal/tools/tooldb, tests internal/pgtest): the embedded migrations,
// the entity catalog read at start-up, the batch writer that applies a
// partition's batch in one transaction (dedupe claim, set-based upserts and
// deletes under the version guard, job counters, failures and the offset
// compare-and-set), and the job records ingress and the API read and write.
//
// The batch writer by responsibility: store.go is the transaction
// (WriteBatch and what follows its commit), claim.go the ledger claim and
// redeliveries, statements.go the statements built at run time for each
// group (golden files in testdata/ show each shape), counters.go the job
// counters and failures, repair.go the rows behind tombstones.
//
// SQLSTATEs are classified here, once, into pipeline error classes.
package postgres

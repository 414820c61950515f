// Package kafka is the only franz-go importer in production code: the
// producer ingress and the dead-letter publisher use (idempotent, acks=all),
// topic creation, and the group consumer that gives each assigned partition
// its own pipeline.Worker, starting it from the offset stored in PostgreSQL.
package kafka

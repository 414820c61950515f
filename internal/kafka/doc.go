// Package kafka is the only franz-go importer in production code: the
// producer ingress and the dead-letter publisher use (idempotent, acks=all),
// topic creation, and the group consumer that gives each assigned partition
// its own pipeline.Worker, starting it from the offset stored in PostgreSQL.
// The group speaks KIP-848's consumer protocol where the brokers do, the
// classic cooperative one elsewhere (group.go).
package kafka

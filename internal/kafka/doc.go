// Package kafka is the only franz-go importer in production code: the
// producer ingress and the dead-letter publisher use (idempotent, acks=all;
// a record with a route, a command's entity and key, is placed by it, any
// other by its key as Kafka places it: records.go), topic creation, and
// the group consumer that gives each assigned partition its own
// pipeline.Worker, starting it from the offset stored in PostgreSQL.
// The group speaks KIP-848's consumer protocol where the brokers do, the
// classic cooperative one elsewhere (group.go). Every client reaches the
// brokers through a Cluster (cluster.go): TLS and SASL through franz-go's
// own dialer and mechanisms, and the errors a cluster that refuses spool
// gives (an untrusted certificate, refused credentials, TLS expected)
// explained and not retried.
package kafka

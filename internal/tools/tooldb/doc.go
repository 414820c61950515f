// Package tooldb is the benchmark's and the fault suite's own access to
// the database: the fault suite's audit of every write (Audit), the limits
// spool is measured against (Limits), a lock that keeps two runs apart, and
// the schema each run makes anew. It is tooling's pgx home; ingress and the
// processor never link it (the depguard rules in .golangci.yaml hold that).
package tooldb

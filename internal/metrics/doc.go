// Package metrics is the product's only importer of the Prometheus libraries: it
// defines every spool_… metric on a registry the caller injects, implements
// the observer interfaces of pipeline (workers) and httpapi (uploads), hands
// franz-go's kprom hooks to the Kafka clients, and serves /metrics.
// docs/metrics.md lists every metric; a test holds it to that.
package metrics

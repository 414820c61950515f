// Package tracing is spool's only OpenTelemetry importer: with
// tracing.enabled, ingress and the processor export spans over OTLP/HTTP.
// An upload's span continues the trace its request carries (the W3C
// traceparent header) and hands its own context to every record it
// produces (pipeline.HeaderTraceparent); a processor's batch span links to
// the uploads of its records, and the statements either sends to
// PostgreSQL are children of its span (postgres.Spans), so one upload can
// be followed from its request into the statements that wrote it.
package tracing

// Package httpapi is ingress's HTTP surface on net/http.ServeMux: uploads
// (POST /v1/jobs), job status, listing and failures, dead-letter counts,
// health and readiness, the OpenAPI document, and the read-only /ui/ page
// (plain HTML, CSS and JavaScript embedded in the binary, on the same API).
// It reaches Kafka and PostgreSQL only through the small interfaces it
// declares, and answers every error as RFC 9457 application/problem+json.
// The API's JSON shapes are its own (JobView, UploadView, PartView,
// FailureView, ResultView): pipeline's types carry no JSON tags of the
// API, so the wire contract changes only here and in openapi.yaml.
package httpapi

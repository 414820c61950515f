// Package httpapi is ingress's HTTP surface on net/http.ServeMux: uploads
// (POST /v1/jobs), job status, listing and failures, dead-letter counts,
// health and readiness, the OpenAPI document, and the read-only /ui/ page
// (plain HTML, CSS and JavaScript embedded in the binary, on the same API).
// It reaches Kafka and PostgreSQL only through the small interfaces it
// declares, and answers every error as RFC 9457 application/problem+json.
package httpapi

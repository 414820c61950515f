// Package httpapi is ingress's HTTP surface on net/http.ServeMux: uploads
// (POST /v1/jobs), job status, health and readiness. It reaches Kafka and
// PostgreSQL only through the small interfaces it declares, and answers
// every error as RFC 9457 application/problem+json.
package httpapi

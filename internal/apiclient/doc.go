// Package apiclient is the Go client of the ingress HTTP API that spoolctl
// uses: uploads and job status, with problem+json errors turned into Go
// errors that keep the server's detail.
package apiclient

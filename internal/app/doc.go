// Package app composes spool's long-lived parts from a config.Config: the
// ingress server and the processor, each with Run(ctx) error. The ingress
// and processor binaries and spoolctl dev all start them from here, so the
// three run the same code.
package app

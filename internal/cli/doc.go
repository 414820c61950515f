// Package cli is spoolctl: the cobra commands for the local stack (dev,
// broker), the database (migrate) and the job API (upload, jobs). Commands
// write to the command's output writers, so tests run them in-process.
package cli

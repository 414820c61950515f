// Command spoolctl is spool's operator and user CLI; the commands live in
// internal/cli.
package main

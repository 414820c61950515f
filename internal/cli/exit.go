package cli

import (
	"context"
	"errors"
	"net"
	"net/url"

	"github.com/spf13/cobra"
)

// Exit codes spoolctl returns, so that a script can tell what happened.
const (
	// ExitOK: done, and any job it followed completed cleanly.
	ExitOK = 0
	// ExitFailed: the job ended with errors (rejected, conflicting or
	// dead-lettered commands), or any failure without a code of its own.
	ExitFailed = 1
	// ExitUsage: a bad flag, argument, output format or configuration.
	ExitUsage = 2
	// ExitUnreachable: the server, broker or database did not answer, or
	// --timeout passed.
	ExitUnreachable = 3
	// ExitJobFailed: the job itself failed (its upload broke off) or was
	// aborted.
	ExitJobFailed = 4
)

// exitCodes is the help's account of the codes.
const exitCodes = `Exit codes: 0 done (and the job completed cleanly); 1 the job ended with errors, or another failure;
2 usage: a bad flag, argument, output format or configuration; 3 the server, broker or database did
not answer, or --timeout passed; 4 the job failed or was aborted.`

// exitError is an error with the exit code it ends spoolctl with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withCode gives err an exit code (nil stays nil).
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// ExitCode is the process exit code for what a command returned.
func ExitCode(err error) int {
	var ee *exitError
	var ne net.Error
	var ue *url.Error
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, context.Canceled):
		return ExitFailed // interrupted: not a sign the server is away
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne), errors.As(err, &ue):
		return ExitUnreachable
	}
	return ExitFailed
}

// usageArgs makes an argument check's failure a usage error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return withCode(ExitUsage, check(cmd, args))
	}
}

// checkOutput refuses an -o value the command does not print.
func checkOutput(out string, allowed ...string) error {
	for _, a := range allowed {
		if out == a {
			return nil
		}
	}
	return withCode(ExitUsage, errors.New("-o "+out+": use "+joinOr(allowed)))
}

func joinOr(words []string) string {
	switch len(words) {
	case 0:
		return ""
	case 1:
		return words[0]
	}
	s := words[0]
	for _, w := range words[1 : len(words)-1] {
		s += ", " + w
	}
	return s + " or " + words[len(words)-1]
}

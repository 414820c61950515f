package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExitCode: what a command returned decides the exit code; an
// interrupt is not "unreachable", a timeout is.
func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("3 records rejected"), ExitFailed},
		{withCode(ExitUsage, errors.New("bad flag")), ExitUsage},
		{fmt.Errorf("waiting: %w", withCode(ExitJobFailed, errors.New("job failed"))), ExitJobFailed},
		{&url.Error{Op: "Get", URL: "http://x", Err: errors.New("connection refused")}, ExitUnreachable},
		{&url.Error{Op: "Get", URL: "http://x", Err: context.Canceled}, ExitFailed},
		{context.DeadlineExceeded, ExitUnreachable},
	} {
		require.Equal(t, tt.want, ExitCode(tt.err), "%v", tt.err)
	}
}

package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want pipeline.ErrorClass
	}{
		{kerr.NotEnoughReplicas, pipeline.ClassTransient},
		{kerr.LeaderNotAvailable, pipeline.ClassTransient},
		{kerr.NotLeaderForPartition, pipeline.ClassTransient},
		{kerr.RequestTimedOut, pipeline.ClassTransient},
		{kgo.ErrRecordTimeout, pipeline.ClassTransient},
		{kgo.ErrRecordRetries, pipeline.ClassTransient},
		{context.DeadlineExceeded, pipeline.ClassTransient},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, pipeline.ClassTransient},
		{syscall.ECONNRESET, pipeline.ClassTransient},
		// Never permanent: a broker problem is not the command's fault.
		{kerr.TopicAuthorizationFailed, pipeline.ClassInternal},
		{errors.New("odd"), pipeline.ClassInternal},
	}
	for _, tt := range tests {
		got := classify(fmt.Errorf("producing: %w", tt.err))
		require.Equal(t, tt.want, pipeline.ClassOf(got), "%v", tt.err)
		require.False(t, pipeline.IsPermanent(got), "%v", tt.err)
		require.ErrorIs(t, got, tt.err)
	}
	// A record too large for the topic or the producer is permanent for
	// that record: the same bytes never fit, so retrying would stall its
	// partition for ever. franz-go refuses a record over its batch limit
	// before sending, wrapping MESSAGE_TOO_LARGE with the size.
	for _, err := range []error{
		kerr.MessageTooLarge,
		kerr.RecordListTooLarge,
		fmt.Errorf("%w (uncompressed_bytes=%d)", kerr.MessageTooLarge, 1048576),
	} {
		got := classify(fmt.Errorf("producing: %w", err))
		require.Equal(t, pipeline.ClassTooLarge, pipeline.ClassOf(got), "%v", err)
		require.True(t, pipeline.IsPermanent(got), "%v", err)
		require.ErrorIs(t, got, err)
	}
	require.NoError(t, classify(nil))
	require.ErrorIs(t, classify(context.Canceled), context.Canceled)
}

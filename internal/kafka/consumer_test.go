package kafka

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

// flakyOffsets fails its first calls with err, then answers 42.
type flakyOffsets struct {
	fails int
	err   error
	calls int
}

func (f *flakyOffsets) LoadOffset(context.Context, string, int32) (int64, error) {
	f.calls++
	if f.calls <= f.fails {
		return 0, f.err
	}
	return 42, nil
}

// TestLoadOffsetRetriesTransientErrors: a backend terminated while a
// partition is assigned is retried, not the end of the processor; a
// permanent error is not retried.
func TestLoadOffsetRetriesTransientErrors(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	flaky := &flakyOffsets{fails: 2, err: pipeline.Errorf(pipeline.ClassTransient, "terminating connection due to administrator command")}
	c := &Consumer{cfg: ConsumerConfig{Topic: "t", Offsets: flaky, Logger: logger}}
	next, err := c.loadOffset(context.Background(), 0)
	require.NoError(t, err)
	require.EqualValues(t, 42, next)
	require.Equal(t, 3, flaky.calls)

	broken := &flakyOffsets{fails: 1, err: pipeline.Errorf(pipeline.ClassConstraint, "permanent")}
	c.cfg.Offsets = broken
	_, err = c.loadOffset(context.Background(), 0)
	require.Error(t, err)
	require.Equal(t, 1, broken.calls)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.cfg.Offsets = &flakyOffsets{fails: 100, err: errors.New("unclassified: retried")}
	_, err = c.loadOffset(ctx, 0)
	require.Error(t, err, "a closing client ends the retries")
}

package kafka

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

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

// fastRetries retries every 10 ms, for ever.
func fastRetries() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }

// TestLoadOffsetRetriesTransientErrors: a backend terminated while a
// partition is assigned is retried, not the end of the processor; a
// permanent error is not retried.
func TestLoadOffsetRetriesTransientErrors(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	flaky := &flakyOffsets{fails: 2, err: pipeline.Errorf(pipeline.ClassTransient, "terminating connection due to administrator command")}
	c := &Consumer{cfg: ConsumerConfig{Topic: "t", Offsets: flaky, Logger: logger, Backoff: fastRetries}}
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

// TestAssignmentEndsWithTheConsumer: an assignment waiting for a database
// that is away ends once the consumer is told to stop, and fails it: polls
// wait for the callback (BlockRebalanceOnPoll), so Run could not return
// otherwise, and a stopped processor would hang until the database came
// back.
func TestAssignmentEndsWithTheConsumer(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	away := &flakyOffsets{fails: 1 << 30, err: pipeline.Errorf(pipeline.ClassTransient, "connection refused")}
	c := &Consumer{cfg: ConsumerConfig{Topic: "t", Offsets: away, Logger: logger, Backoff: fastRetries},
		workers: map[int32]*running{}, offsets: map[int32]int64{}}
	c.life, c.endLife = context.WithCancel(context.Background())
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"))
	require.NoError(t, err)
	defer cl.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.assigned(context.Background(), cl, map[string][]int32{"t": {0}})
	}()
	c.endLife()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the assignment still waits for the database")
	}
	require.ErrorContains(t, c.failure(), "loading offset of partition 0")
}

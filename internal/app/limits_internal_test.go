package app

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/kafka"
)

// TestRecordLimitAtStartUp: ingress.max_record_bytes is checked against
// what the commands topic takes, spool's key and headers counted: a topic
// with Kafka's default max.message.bytes is too small for a 1 MiB record,
// and a log line names the key and the effective limit; the topic spool
// creates by default is not. A limit the brokers do not give falls back to
// franz-go's default, and a log line says so.
func TestRecordLimitAtStartUp(t *testing.T) {
	t.Parallel()
	c, err := config.Load(config.Options{Overrides: map[string]any{"auth.disabled": true}})
	require.NoError(t, err)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))

	checkRecordLimit(c, c.Kafka.TopicMaxMessageBytes(c.Ingress.MaxRecordBytes), "default", logger)
	require.Empty(t, logs.String())

	checkRecordLimit(c, 1_048_588, "default", logger)
	require.Contains(t, logs.String(), "ingress.max_record_bytes is more than the commands topic takes")
	require.Contains(t, logs.String(), "ingress.max_record_bytes=1048576")
	require.Regexp(t, `effective_max_record_bytes=104[0-9]{4}\s`, logs.String())

	logs.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c.Kafka.Brokers = []string{"127.0.0.1:1"}
	require.Equal(t, kafka.DefaultMaxMessageBytes, recordLimit(ctx, kafka.Plaintext(c.Kafka.Brokers...), "spool.commands", logger))
	require.Contains(t, logs.String(), "reading the topic's max.message.bytes; assuming Kafka's old default")
}

package app_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

// TestTablesChangeUnderARunningStack: a column added to the table is taken
// without a restart (ingress and the processor read the table again when a
// command names it); a column dropped while commands naming it wait in
// Kafka dead-letters those commands with class schema — the others apply,
// nothing is lost — and once the column is back a replay applies them.
func TestTablesChangeUnderARunningStack(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"processor.batch_size": 100, "processor.rate_limit": 2000})
	s.startProcessor(t, nil)
	ctx := t.Context()

	s.db.Exec(t, `ALTER TABLE customers ADD COLUMN tier text`)
	added := s.upload(t, []string{`{"id":"t1","entity":"customers","version":1,"data":{"customer_id":"k-t","tier":"gold"}}`})
	require.Equal(t, int64(1), added.accepted, "ingress read the table again before rejecting the new column")
	require.Equal(t, pipeline.Counts{Applied: 1}, s.wait(t, added.id).c, "so did the processor")
	var tier string
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT tier FROM customers WHERE customer_id = 'k-t'`).Scan(&tier))
	require.Equal(t, "gold", tier)

	// 3,000 commands, every third naming email, drain at 2,000/s; email
	// goes mid-drain.
	const n = 3000
	lines := make([]string, n)
	for i := range lines {
		if i%3 == 0 {
			lines[i] = fmt.Sprintf(`{"id":"e-%d","entity":"customers","version":1,"data":{"customer_id":"k-%d","email":"%d@example.com"}}`, i, i, i)
		} else {
			lines[i] = fmt.Sprintf(`{"id":"e-%d","entity":"customers","version":1,"data":{"customer_id":"k-%d","name":"n"}}`, i, i)
		}
	}
	up := s.upload(t, lines)
	require.Equal(t, int64(n), up.accepted)
	require.Eventually(t, func() bool {
		j, err := s.client.Job(ctx, up.id)
		return err == nil && j.Counts.Applied > 300
	}, time.Minute, 10*time.Millisecond)
	s.db.Exec(t, `ALTER TABLE customers DROP COLUMN email`)
	j := s.wait(t, up.id)
	require.Equal(t, int64(n), j.c.Applied+j.c.DeadLettered, "nothing lost: %+v", j.c)
	require.Positive(t, j.c.DeadLettered, "commands naming the dropped column waited in Kafka: %+v", j.c)
	require.LessOrEqual(t, j.c.DeadLettered, int64(n/3), "only commands naming it: %+v", j.c)
	var classes []string
	rows, err := s.db.Pool.Query(ctx, `SELECT DISTINCT error_class FROM spool_job_failures WHERE job_id = $1`, up.id)
	require.NoError(t, err)
	for rows.Next() {
		var c string
		require.NoError(t, rows.Scan(&c))
		classes = append(classes, c)
	}
	require.Equal(t, []string{"schema"}, classes)
	var named int64
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM spool_job_failures WHERE job_id = $1 AND idx % 3 <> 0`, up.id).Scan(&named))
	require.Zero(t, named, "no command without email was dead-lettered")

	// The column is back: the dead letters replay and apply.
	s.db.Exec(t, `ALTER TABLE customers ADD COLUMN email text`)
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(s.brokers...)})
	require.NoError(t, err)
	defer producer.Close()
	require.NoError(t, kafka.EnsureTopics(ctx, kafka.Plaintext(s.brokers...), 1, -1, dlq.CheckpointTopic("spool.commands.dlq")))
	res, err := dlq.Replay(ctx, kafka.Reader{Cluster: kafka.Plaintext(s.brokers...)}, producer, "spool.commands.dlq", dlq.ReplayOptions{
		Topic: "spool.commands", Ledger: postgres.NewStore(s.db.Postgres, nil, "", nil), Filter: dlq.Filter{Job: up.id}})
	require.NoError(t, err)
	require.Equal(t, j.c.DeadLettered, int64(res.Replayed))
	require.Eventually(t, func() bool { return s.wait(t, up.id).c == pipeline.Counts{Applied: n} }, time.Minute, 100*time.Millisecond)
	var emails int64
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT count(email) FROM customers`).Scan(&emails))
	require.Equal(t, j.c.DeadLettered, emails, "the replayed commands wrote their email")
}

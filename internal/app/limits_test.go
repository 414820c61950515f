package app_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/upload"
	"github.com/spoolhq/spool/pipeline"
)

// kafkaSize is the size of line as ingress produces it (canonical value,
// spool's key and headers: a 36-character job id, the default tenant, its
// index), as Kafka measures it.
func kafkaSize(t *testing.T, line string, index int64) int {
	t.Helper()
	r, err := upload.NDJSON.NewReader(strings.NewReader(line+"\n"), upload.Options{MaxRecordBytes: 8 << 20})
	require.NoError(t, err)
	cmd, err := r.Next()
	require.NoError(t, err)
	rec, err := pipeline.NewRecord(&cmd, "01936f3c-0000-7000-8000-000000000000", "default", index)
	require.NoError(t, err)
	return rec.BatchBytes()
}

// TestRecordsAndDeadLettersFitKafka: with the default
// ingress.max_record_bytes (1 MiB), a poison command of exactly that size is
// accepted, refused by the database and dead-lettered although the
// dead-letter topic (made by hand with Kafka's default max.message.bytes)
// cannot take it whole: the dead letter carries the value cut, with its
// size, the job's failure row keeps the whole command, the partition moves
// on, and a replay sends the whole command. In the same upload a record
// whose Kafka record is just over what the commands topic takes is rejected
// by index (202, not 503), and one just under is applied.
func TestRecordsAndDeadLettersFitKafka(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const maxRecord = 1 << 20 // ingress.max_record_bytes' default
	const kafkaDefault = 1_048_588
	s := newStackWith(t, map[string]any{"kafka.partitions": 1}, func(brokers []string) {
		require.NoError(t, kafka.EnsureTopicsWith(ctx, kafka.Plaintext(brokers...), 1, -1,
			map[string]string{"max.message.bytes": strconv.Itoa(kafkaDefault)}, "spool.commands.dlq"))
	})
	s.startProcessor(t, nil)
	limits, err := kafka.MaxMessageBytes(ctx, kafka.Plaintext(s.brokers...), "spool.commands", "spool.commands.dlq")
	require.NoError(t, err)
	limit := limits["spool.commands"]
	require.Equal(t, maxRecord+64<<10, limit, "spool made its commands topic with room for a record of ingress.max_record_bytes")
	require.Equal(t, kafkaDefault, limits["spool.commands.dlq"])

	good := func(i int) string {
		return fmt.Sprintf(`{"id":"g-%d","entity":"customers","op":"upsert","version":1,"data":{"customer_id":"g%d","balance":"1.00"}}`, i, i)
	}
	head := `{"id":"poison","entity":"customers","op":"upsert","version":1,"data":{"balance":"-1.00","customer_id":"kp","name":"`
	poison := head + strings.Repeat("p", maxRecord-len(head)-len(`"}}`)) + `"}}`
	require.Len(t, poison, maxRecord)
	// '<' is six bytes (\u003c) in the canonical value: a line well under
	// ingress.max_record_bytes whose Kafka record is just over the topic's.
	sized := func(id string, n int) string {
		return `{"id":"` + id + `","entity":"customers","op":"upsert","version":1,"data":{"customer_id":"` + id + `","name":"` + strings.Repeat("<", n) + `"}}`
	}
	n := 1
	for kafkaSize(t, sized("over", n), 2) <= limit {
		n += max(1, (limit-kafkaSize(t, sized("over", n), 2))/6)
	}
	over, fits := sized("over", n), sized("fits", n-1)
	require.Greater(t, kafkaSize(t, over, 2), limit)
	require.LessOrEqual(t, kafkaSize(t, over, 2), limit+6)
	require.LessOrEqual(t, kafkaSize(t, fits, 3), limit)
	require.Less(t, len(over), maxRecord)

	body := strings.Join([]string{good(0), poison, over, fits, good(1)}, "\n") + "\n"
	resp, m := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(body), false)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%v", m)
	require.EqualValues(t, 5, m["received"])
	require.EqualValues(t, 4, m["accepted"])
	require.EqualValues(t, 1, m["rejected"])
	rej := m["rejections"].([]any)[0].(map[string]any)
	require.EqualValues(t, 2, rej["index"])
	require.Equal(t, "too_large", rej["error_class"])
	require.Contains(t, rej["error"], fmt.Sprintf("over the %d bytes that topic spool.commands takes", limit))
	job := pipeline.JobID(m["job_id"].(string))

	j := s.wait(t, job)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state)
	require.Equal(t, pipeline.Counts{Applied: 3, DeadLettered: 1}, j.c)
	// The partition moved on: a later upload to it is applied.
	later := s.upload(t, []string{good(2)})
	require.Equal(t, pipeline.Counts{Applied: 1}, s.wait(t, later.id).c)

	// The dead letter fits its topic: the value cut, its size said.
	recs := s.dlqRecords(t, 1)
	require.Len(t, recs, 1)
	r := recs[0]
	require.Equal(t, "poison", string(r.Key))
	canonical := []byte(nil)
	var stored, hash []byte
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT command, value_sha256 FROM spool_job_failures
		WHERE job_id = $1 AND idx = 1 AND outcome = 'dead_lettered'`, job).Scan(&stored, &hash))
	canonical = stored
	sum := sha256.Sum256(canonical)
	require.Equal(t, sum[:], hash)
	require.Equal(t, strconv.Itoa(len(canonical)), header(r, dlq.HeaderValueTruncated))
	require.Less(t, len(r.Value), len(canonical))
	require.Equal(t, string(canonical[:len(r.Value)]), string(r.Value), "the value's head is kept")
	require.Greater(t, len(r.Value), kafkaDefault-8<<10, "as much of it as fits")
	require.Equal(t, "constraint_violation", header(r, dlq.HeaderErrorClass))
	require.Equal(t, decodeJSON(t, []byte(poison)), decodeJSON(t, canonical), "the failure row keeps the whole command")

	// Fixed, and replayed: the whole command from the failure row is sent
	// and applied.
	s.db.Exec(t, `ALTER TABLE customers DROP CONSTRAINT customers_balance_check`)
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(s.brokers...), BatchMaxBytes: limit})
	require.NoError(t, err)
	defer producer.Close()
	require.NoError(t, kafka.EnsureTopics(ctx, kafka.Plaintext(s.brokers...), 1, -1, dlq.CheckpointTopic("spool.commands.dlq")))
	res, err := dlq.Replay(ctx, kafka.Reader{Cluster: kafka.Plaintext(s.brokers...)}, producer, "spool.commands.dlq", dlq.ReplayOptions{
		Topic: "spool.commands", Ledger: postgres.NewStore(s.db.Postgres, nil, "", nil), Filter: dlq.Filter{Job: job}})
	require.NoError(t, err)
	require.Equal(t, dlq.ReplayResult{Selected: 1, Replayed: 1}, res)
	// (The job stays completed_with_errors: it has a rejection.)
	require.Eventually(t, func() bool { return s.wait(t, job).c == pipeline.Counts{Applied: 4} }, 60*time.Second, 100*time.Millisecond)
	var name string
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT name FROM customers WHERE customer_id = 'kp'`).Scan(&name))
	require.Len(t, name, maxRecord-len(head)-len(`"}}`), "applied whole")
}

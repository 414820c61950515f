package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

// Backend is a store under test, fresh and empty, with what the suite
// reads back through the backend's own means rather than the store's word.
type Backend struct {
	Store pipeline.Store
	// Entities are what the store writes, as its catalog describes them:
	// "customers", versioned by column version, key customer_id (text),
	// name (text) and balance (numeric, refusing a negative value, so that
	// a batch can fail); and "lines", unversioned, key (order_id text,
	// line integer), qty (integer) and note (text).
	Entities pipeline.Entities
	// LoadOffset reads a partition's stored next offset, -1 if none.
	LoadOffset func(ctx context.Context, topic string, partition int32) (int64, error)
	// Customers reads the customers table as customer_id → "name@version".
	Customers func(ctx context.Context) (map[string]string, error)
	// Lines reads the lines table as "order_id/line" → qty.
	Lines func(ctx context.Context) (map[string]int64, error)
	// Counts sums a job's outcome counters.
	Counts func(ctx context.Context, job pipeline.JobID) (pipeline.Counts, error)
	// Failures lists a job's failures.
	Failures func(ctx context.Context, job pipeline.JobID) ([]pipeline.Failure, error)
	// Abort aborts a job (creating it first where the store keeps jobs
	// apart from their counters), as an operator's abort does.
	Abort func(ctx context.Context, job pipeline.JobID) error
}

// Run runs every test of the suite, each on a backend of its own.
func Run(t *testing.T, newBackend func(t *testing.T) *Backend) {
	t.Helper()
	for _, tt := range []struct {
		name string
		test func(t *testing.T, s *suite)
	}{
		{"Outcomes", testOutcomes},
		{"DeleteLeavesTombstone", testDeleteLeavesTombstone},
		{"UnversionedCompositeKey", testUnversionedCompositeKey},
		{"InsertAndUpdate", testInsertAndUpdate},
		{"InsertAndUpdateUnversioned", testInsertAndUpdateUnversioned},
		{"InsertAndUpdateInOneBatch", testInsertAndUpdateInOneBatch},
		{"FailedBatchLeavesNothing", testFailedBatchLeavesNothing},
		{"OffsetFencing", testOffsetFencing},
		{"RedeliveredRecordCountsOnce", testRedeliveredRecordCountsOnce},
		{"DeadLettersCountedAndListed", testDeadLettersCountedAndListed},
		{"ReplayedDeadLetterRedeliveredCountsOnce", testReplayedDeadLetterRedeliveredCountsOnce},
		{"AbortedJobSkipped", testAbortedJobSkipped},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.test(t, &suite{Backend: newBackend(t), next: map[int32]int64{}})
		})
	}
}

// Topic is the topic the suite's batches come from.
const Topic = "spool.commands"

// job is the job of the suite's commands.
const job pipeline.JobID = "job-1"

const (
	applied      = pipeline.OutcomeApplied
	duplicate    = pipeline.OutcomeDuplicate
	stale        = pipeline.OutcomeStale
	conflict     = pipeline.OutcomeConflict
	deadLettered = pipeline.OutcomeDeadLettered
	redelivered  = pipeline.OutcomeRedelivered
	exists       = pipeline.OutcomeExists
	missing      = pipeline.OutcomeMissing
	aborted      = pipeline.OutcomeAborted
)

type suite struct {
	*Backend
	next  map[int32]int64 // each partition's next offset, as the batches moved it
	index int64           // the next command's place in the job
}

// write applies lines as one batch of partition p, continuing its
// offsets, each line the next command of the job.
func (s *suite) write(t *testing.T, p int32, lines ...string) ([]pipeline.Outcome, error) {
	t.Helper()
	msgs := make([]*pipeline.Message, len(lines))
	for i, l := range lines {
		msgs[i] = s.message(t, l, s.index)
		s.index++
	}
	return s.writeMessages(t, p, msgs)
}

// message decodes line as the record of the job's command at index.
func (s *suite) message(t *testing.T, line string, index int64) *pipeline.Message {
	t.Helper()
	return s.messageOf(t, job, line, index)
}

// messageOf decodes line as the record of job j's command at index.
func (s *suite) messageOf(t *testing.T, j pipeline.JobID, line string, index int64) *pipeline.Message {
	t.Helper()
	cmd, err := pipeline.DecodeCommand([]byte(line))
	require.NoError(t, err)
	require.NoError(t, s.Entities.Validate(&cmd, ""))
	rec, err := pipeline.NewRecord(&cmd, j, "tenant", index)
	require.NoError(t, err)
	m := pipeline.DecodeRecord(rec, s.Entities)
	return &m
}

// writeMessages applies msgs as one batch of partition p, giving them the
// partition's next offsets.
func (s *suite) writeMessages(t *testing.T, p int32, msgs []*pipeline.Message) ([]pipeline.Outcome, error) {
	t.Helper()
	prev, ok := s.next[p]
	if !ok {
		prev = -1
	}
	start := max(prev, 0)
	b := &pipeline.Batch{Topic: Topic, Partition: p, PrevOffset: prev, NextOffset: start + int64(len(msgs)), Messages: msgs}
	for i, m := range msgs {
		m.Record.Topic, m.Record.Partition, m.Record.Offset = Topic, p, start+int64(i)
	}
	out, err := s.Store.WriteBatch(t.Context(), b, b.Dedupe())
	if err == nil {
		s.next[p] = b.NextOffset
	}
	return out, err
}

func (s *suite) customers(t *testing.T) map[string]string {
	t.Helper()
	rows, err := s.Customers(t.Context())
	require.NoError(t, err)
	return rows
}

func (s *suite) counts(t *testing.T) pipeline.Counts {
	t.Helper()
	return s.countsOf(t, job)
}

func (s *suite) countsOf(t *testing.T, j pipeline.JobID) pipeline.Counts {
	t.Helper()
	c, err := s.Counts(t.Context(), j)
	require.NoError(t, err)
	return c
}

func cust(id, key string, version int, name string) string {
	return fmt.Sprintf(`{"id":%q,"entity":"customers","version":%d,"data":{"customer_id":%q,"name":%q}}`, id, version, key, name)
}

// cmd is a customers command of any op.
func cmd(op pipeline.Op, id, key string, version int, name string) string {
	return fmt.Sprintf(`{"id":%q,"entity":"customers","op":%q,"version":%d,"data":{"customer_id":%q,"name":%q}}`,
		id, op, version, key, name)
}

func del(id, key string, version int) string {
	return fmt.Sprintf(`{"id":%q,"entity":"customers","op":"delete","version":%d,"data":{"customer_id":%q}}`, id, version, key)
}

// testOutcomes: each command gets one outcome — applied, a duplicate of an
// id seen with the same payload, a conflict of one seen with another, stale
// under the version guard (against the table or a newer command in the same
// batch) — and the counters agree with them.
func testOutcomes(t *testing.T, s *suite) {
	out, err := s.write(t, 0, cust("c1", "a", 2, "a2"), cust("c2", "b", 1, "b1"), cust("c3", "a", 1, "a1"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, applied, stale}, out)

	out, err = s.write(t, 0,
		cust("c1", "a", 2, "a2"),      // same id, same payload: duplicate
		cust("c2", "b", 9, "changed"), // same id, other payload: conflict
		cust("c4", "a", 1, "older"),   // older than the stored row: stale
		cust("c5", "b", 3, "b3"),      // newer: applied
		cust("c6", "c", 1, "c1"),      // new row
		cust("c6", "c", 1, "c1"),      // repeated inside the batch
		del("c7", "c", 1),             // same version as the row: stale
		cust("c8", "zz", 1, "zz"),     // older than the delete after it in the batch
		del("c9", "zz", 2))            // collapsed with c8: the delete wins
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{duplicate, conflict, stale, applied, applied, duplicate, stale, stale, applied}, out)
	require.Equal(t, map[string]string{"a": "a2@2", "b": "b3@3", "c": "c1@1"}, s.customers(t))
	require.Equal(t, pipeline.Counts{Applied: 5, Duplicate: 2, Stale: 4, Conflict: 1}, s.counts(t))

	failures, err := s.Failures(t.Context(), job)
	require.NoError(t, err)
	require.Len(t, failures, 1)
	require.Equal(t, pipeline.CommandID("c2"), failures[0].ID)
	require.Equal(t, conflict, failures[0].Outcome)
}

// testDeleteLeavesTombstone: a delete that arrives before older upserts of
// its key (on another partition) keeps them from bringing the row back; a
// newer upsert does.
func testDeleteLeavesTombstone(t *testing.T, s *suite) {
	out, err := s.write(t, 0, del("d", "k", 3))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out)
	out, err = s.write(t, 1, cust("u1", "k", 1, "v1"), cust("u2", "k2", 1, "other"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{stale, applied}, out)
	out, err = s.write(t, 1, del("d-old", "k", 2), cust("u4", "k", 4, "v4"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{stale, applied}, out, "a newer upsert revives the row")
	require.Equal(t, map[string]string{"k": "v4@4", "k2": "other@1"}, s.customers(t))
}

// testUnversionedCompositeKey: without a version, the later command in
// offset order wins; a key's values name one row however they are spelled.
func testUnversionedCompositeKey(t *testing.T, s *suite) {
	out, err := s.write(t, 0,
		`{"id":"l1","entity":"lines","data":{"order_id":"o","line":1,"qty":1}}`,
		`{"id":"l2","entity":"lines","data":{"order_id":"o","line":"01","qty":2}}`,
		`{"id":"l3","entity":"lines","data":{"order_id":"o","line":2,"qty":3}}`,
		`{"id":"l4","entity":"lines","op":"delete","data":{"order_id":"o","line":2}}`)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, applied, applied, applied}, out)
	lines, err := s.Lines(t.Context())
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"o/1": 2}, lines)
}

// testInsertAndUpdate: an insert applies only where its row is absent
// (else exists), an update only where it is present (else missing); the
// version guard comes first for both, against the row or a tombstone: a
// command not newer than either is stale, whatever its op.
func testInsertAndUpdate(t *testing.T, s *suite) {
	_, err := s.write(t, 0, cust("s1", "present", 2, "p2"), cust("s2", "kept", 2, "k2"),
		del("s3", "gone-new", 5), del("s4", "gone-old", 2), del("s5", "gone-new-2", 5), del("s6", "gone-old-2", 2))
	require.NoError(t, err)
	before := s.counts(t)

	out, err := s.write(t, 0,
		cmd(pipeline.OpInsert, "i1", "absent", 1, "a1"),       // absent: applied
		cmd(pipeline.OpInsert, "i2", "present", 3, "x"),       // present, older: exists
		cmd(pipeline.OpInsert, "i3", "kept", 1, "x"),          // present, not older: stale
		cmd(pipeline.OpInsert, "i4", "gone-new", 3, "x"),      // a newer tombstone: stale
		cmd(pipeline.OpInsert, "i5", "gone-old", 3, "back"),   // an older tombstone: applied
		cmd(pipeline.OpUpdate, "u1", "nowhere", 1, "x"),       // absent: missing
		cmd(pipeline.OpUpdate, "u2", "gone-new-2", 3, "x"),    // a newer tombstone: stale
		cmd(pipeline.OpUpdate, "u3", "gone-old-2", 3, "x"),    // an older tombstone, no row: missing
		cmd(pipeline.OpInsert, "i6", "present-2", 1, "first"), // absent: applied
	)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, exists, stale, stale, applied, missing, stale, missing, applied}, out)

	out, err = s.write(t, 1,
		cmd(pipeline.OpUpdate, "u4", "present", 3, "p3"), // present, older: applied
		cmd(pipeline.OpUpdate, "u5", "kept", 2, "x"),     // present, same version: stale
		cmd(pipeline.OpUpdate, "u6", "present-2", 4, ""), // present: applied, the name emptied
	)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, stale, applied}, out)
	require.Equal(t, map[string]string{"present": "p3@3", "kept": "k2@2", "absent": "a1@1", "gone-old": "back@3",
		"present-2": "@4"}, s.customers(t))
	after := s.counts(t)
	require.Equal(t, pipeline.Counts{Applied: 5, Stale: 4, Exists: 1, Missing: 2},
		pipeline.Counts{Applied: after.Applied - before.Applied, Stale: after.Stale - before.Stale,
			Exists: after.Exists, Missing: after.Missing})
}

// testInsertAndUpdateUnversioned: without versions, presence alone decides.
func testInsertAndUpdateUnversioned(t *testing.T, s *suite) {
	line := func(op pipeline.Op, id string, n, qty int) string {
		return fmt.Sprintf(`{"id":%q,"entity":"lines","op":%q,"data":{"order_id":"o","line":%d,"qty":%d}}`, id, op, n, qty)
	}
	_, err := s.write(t, 0, line(pipeline.OpUpsert, "l1", 1, 1))
	require.NoError(t, err)
	out, err := s.write(t, 0,
		line(pipeline.OpInsert, "l2", 1, 9), // present: exists
		line(pipeline.OpInsert, "l3", 2, 2), // absent: applied
		line(pipeline.OpUpdate, "l4", 3, 9), // absent: missing
		`{"id":"l5","entity":"lines","op":"update","data":{"order_id":"o","line":1,"note":"n"}}`, // present: applied, qty kept
		`{"id":"l6","entity":"lines","op":"update","data":{"order_id":"o","line":2}}`,            // the key alone: applied, nothing changed
		`{"id":"l7","entity":"lines","op":"update","data":{"order_id":"o","line":4}}`,            // the key alone, absent: missing
	)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{exists, applied, missing, applied, applied, missing}, out)
	lines, err := s.Lines(t.Context())
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"o/1": 1, "o/2": 2}, lines)
	require.Equal(t, pipeline.Counts{Applied: 4, Exists: 1, Missing: 2}, s.counts(t))
}

// testInsertAndUpdateInOneBatch: commands of one key with inserts and
// updates among them have the effect they would have applied one by one,
// in offset order.
func testInsertAndUpdateInOneBatch(t *testing.T, s *suite) {
	out, err := s.write(t, 0,
		cmd(pipeline.OpInsert, "m1", "m", 1, "m1"), // absent: applied
		cmd(pipeline.OpUpdate, "m2", "m", 2, "m2"), // present now: applied
		cmd(pipeline.OpInsert, "m3", "m", 3, "m3"), // present: exists
		cmd(pipeline.OpUpdate, "n1", "n", 1, "n1"), // absent: missing
		cust("n2", "n", 2, "n2"),                   // upsert: applied
		cmd(pipeline.OpUpdate, "n3", "n", 3, "n3"), // present now: applied
		cmd(pipeline.OpUpdate, "n4", "n", 1, "x"),  // older than the row now: stale
		del("o1", "o", 1),                          // absent: applied, a tombstone at 1
		cmd(pipeline.OpInsert, "o2", "o", 1, "x"),  // not newer than the tombstone: stale
		cmd(pipeline.OpInsert, "o3", "o", 2, "o2"), // newer: applied
	)
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, applied, exists, missing, applied, applied, stale, applied, stale, applied}, out)
	require.Equal(t, map[string]string{"m": "m2@2", "n": "n3@3", "o": "o2@2"}, s.customers(t))
	require.Equal(t, pipeline.Counts{Applied: 6, Stale: 2, Exists: 1, Missing: 1}, s.counts(t))
}

// testFailedBatchLeavesNothing: a batch the target refuses leaves no row,
// claim, counter or offset behind, so that the same ids go through once
// the poison is gone.
func testFailedBatchLeavesNothing(t *testing.T, s *suite) {
	_, err := s.write(t, 0,
		cust("ok", "a", 1, "a"),
		`{"id":"poison","entity":"customers","version":1,"data":{"customer_id":"b","balance":-5}}`)
	require.Error(t, err)
	require.True(t, pipeline.IsPermanent(err), "a constraint the row breaks is permanent: %v", err)
	require.Empty(t, s.customers(t))
	require.Equal(t, pipeline.Counts{}, s.counts(t))
	next, err := s.LoadOffset(t.Context(), Topic, 0)
	require.NoError(t, err)
	require.Equal(t, int64(-1), next)

	out, err := s.write(t, 0, cust("ok", "a", 1, "a"))
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out, "the claim of the failed batch was rolled back")
}

// testOffsetFencing: the stored offset moves with each batch, and a batch
// whose PrevOffset is no longer the stored one (its writer lost the
// partition) writes nothing.
func testOffsetFencing(t *testing.T, s *suite) {
	_, err := s.write(t, 0, cust("c1", "a", 1, "a"))
	require.NoError(t, err)
	next, err := s.LoadOffset(t.Context(), Topic, 0)
	require.NoError(t, err)
	require.Equal(t, int64(1), next)

	s.next[0] = -1
	_, err = s.write(t, 0, cust("c2", "b", 1, "b"))
	require.ErrorIs(t, err, pipeline.ErrFenced)
	require.Equal(t, map[string]string{"a": "a@1"}, s.customers(t))
	require.Equal(t, pipeline.Counts{Applied: 1}, s.counts(t))
}

// testRedeliveredRecordCountsOnce: a record Kafka delivers again (the same
// place of the same job), in a later batch or the same one, is told from a
// client's repeat and counted once.
func testRedeliveredRecordCountsOnce(t *testing.T, s *suite) {
	first := s.message(t, cust("c1", "a", 1, "a"), 0)
	again := s.message(t, cust("c1", "a", 1, "a"), 0)
	twice := s.message(t, cust("c1", "a", 1, "a"), 0)
	out, err := s.writeMessages(t, 0, []*pipeline.Message{first})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out)
	out, err = s.writeMessages(t, 0, []*pipeline.Message{again, twice})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{redelivered, redelivered}, out)

	repeat := s.message(t, cust("c1", "a", 1, "a"), 1) // the client sent it again
	out, err = s.writeMessages(t, 0, []*pipeline.Message{repeat})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{duplicate}, out)
	require.Equal(t, pipeline.Counts{Applied: 1, Duplicate: 1}, s.counts(t))
}

// testAbortedJobSkipped: once a job is aborted its commands not applied
// yet end aborted, repeats of its ids among them, and claim nothing (the
// same id in another job applies); a record Kafka delivers again counts
// once, whether it first came before the abort or after; a replay still
// applies.
func testAbortedJobSkipped(t *testing.T, s *suite) {
	first := s.message(t, cust("c1", "a", 1, "a"), 0)
	out, err := s.writeMessages(t, 0, []*pipeline.Message{first})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out)

	require.NoError(t, s.Abort(t.Context(), job))
	skipped := s.message(t, cust("c2", "b", 1, "b"), 1)
	out, err = s.writeMessages(t, 0, []*pipeline.Message{
		s.message(t, cust("c1", "a", 1, "a"), 0), // the first record again: counted already
		skipped,
		s.message(t, cust("c2", "b", 1, "b"), 2), // a repeat of c2 in the batch
		s.message(t, cust("c1", "a", 1, "a"), 3), // a repeat of the applied c1
	})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{redelivered, aborted, aborted, aborted}, out)

	out, err = s.writeMessages(t, 1, []*pipeline.Message{
		s.message(t, cust("c2", "b", 1, "b"), 1),            // the aborted record again
		s.messageOf(t, "job-2", cust("c2", "b", 1, "b"), 0), // its id in another job
		s.messageOf(t, "job-2", cust("c3", "c", 1, "c"), 1), // another job goes on
	})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{redelivered, applied, applied}, out)
	require.Equal(t, map[string]string{"a": "a@1", "b": "b@1", "c": "c@1"}, s.customers(t))
	require.Equal(t, pipeline.Counts{Applied: 1, Aborted: 3}, s.counts(t))
	require.Equal(t, pipeline.Counts{Applied: 2}, s.countsOf(t, "job-2"))
}

// testDeadLettersCountedAndListed: a message that failed before the store
// (it could not be decoded or validated, and was parked) is counted as
// dead-lettered and listed among its job's failures with its class, in the
// same transaction as the batch's writes.
func testDeadLettersCountedAndListed(t *testing.T, s *suite) {
	good := s.message(t, cust("c1", "a", 1, "a"), 0)
	bad := s.message(t, cust("c2", "b", 1, "b"), 1)
	bad.Err = pipeline.Errorf(pipeline.ClassConstraint, "new row violates check constraint")
	out, err := s.writeMessages(t, 0, []*pipeline.Message{good, bad})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied, deadLettered}, out)
	require.Equal(t, map[string]string{"a": "a@1"}, s.customers(t))
	require.Equal(t, pipeline.Counts{Applied: 1, DeadLettered: 1}, s.counts(t))
	failures, err := s.Failures(t.Context(), job)
	require.NoError(t, err)
	require.Len(t, failures, 1)
	f := failures[0]
	require.Equal(t, int64(1), f.Index)
	require.Equal(t, deadLettered, f.Outcome)
	require.Equal(t, pipeline.ClassConstraint, f.Class)
	require.NotEmpty(t, f.ValueHash, "a replay checks a dead letter against its value's hash")
}

// testReplayedDeadLetterRedeliveredCountsOnce: once a replay of a dead
// letter is applied, its count moves from dead_lettered to applied; a copy
// of the original record Kafka delivers after that — failing as before, or
// not, now that the cause is gone — counts nowhere.
func testReplayedDeadLetterRedeliveredCountsOnce(t *testing.T, s *suite) {
	const line = `{"id":"c1","entity":"customers","version":1,"data":{"customer_id":"a","name":"a"}}`
	poisoned := func() *pipeline.Message {
		m := s.message(t, line, 0)
		m.Err = pipeline.Errorf(pipeline.ClassConstraint, "new row violates check constraint")
		return m
	}
	out, err := s.writeMessages(t, 0, []*pipeline.Message{poisoned()})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{deadLettered}, out)
	require.Equal(t, pipeline.Counts{DeadLettered: 1}, s.counts(t))

	replay := s.message(t, line, 0)
	replay.ReplayOf = "spool.commands.dlq:0:0"
	out, err = s.writeMessages(t, 0, []*pipeline.Message{replay})
	require.NoError(t, err)
	require.Equal(t, []pipeline.Outcome{applied}, out)
	require.Equal(t, pipeline.Counts{Applied: 1}, s.counts(t), "the replay moved the count")

	for _, again := range []*pipeline.Message{poisoned(), s.message(t, line, 0)} {
		out, err = s.writeMessages(t, 0, []*pipeline.Message{again})
		require.NoError(t, err)
		require.Equal(t, []pipeline.Outcome{redelivered}, out, "failing again: %v", again.Err)
	}
	require.Equal(t, pipeline.Counts{Applied: 1}, s.counts(t))
	require.Equal(t, map[string]string{"a": "a@1"}, s.customers(t))
}

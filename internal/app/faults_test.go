package app_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/broker"
	"github.com/spoolhq/spool/internal/tools/harness"
	"github.com/spoolhq/spool/pipeline"
)

// storedOffsets reads the processors' offsets from PostgreSQL.
func (s *stack) storedOffsets(t *testing.T) map[int32]int64 {
	t.Helper()
	got, err := s.readOffsets(context.Background())
	require.NoError(t, err)
	return got
}

// readOffsets is storedOffsets for a goroutine other than the test's.
func (s *stack) readOffsets(ctx context.Context) (map[int32]int64, error) {
	rows, err := s.db.Pool.Query(ctx, `SELECT partition, next_offset FROM spool_offsets`)
	if err != nil {
		return nil, err
	}
	got := map[int32]int64{}
	var p int32
	var o int64
	_, err = pgx.ForEachRow(rows, []any{&p, &o}, func() error {
		got[p] = o
		return nil
	})
	return got, err
}

// progress is how many commands the processors have settled, by the jobs'
// counters.
func (s *stack) progress(t *testing.T) int64 {
	t.Helper()
	var n int64
	require.NoError(t, s.db.Pool.QueryRow(context.Background(),
		`SELECT coalesce(sum(applied + duplicate + stale), 0) FROM spool_job_counts`).Scan(&n))
	return n
}

// dlqRecords reads the whole dead-letter topic.
func (s *stack) dlqRecords(t *testing.T, want int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...), kgo.ConsumeTopics("spool.commands.dlq"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	require.NoError(t, err)
	defer cl.Close()
	// Up to 30 s for the first want records (a loaded machine can take
	// seconds to join and fetch), then 2 s more for any beyond them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var recs []*kgo.Record
	wait := ctx
	for wait.Err() == nil && len(recs) <= want {
		cl.PollFetches(wait).EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
		if len(recs) == want && wait == ctx {
			var more context.CancelFunc
			wait, more = context.WithTimeout(ctx, 2*time.Second)
			defer more()
		}
	}
	return recs
}

// refuseProduces makes the broker answer every produce request with code
// for as long as refuse says so; other requests pass. (Newer Produce
// versions name topics by id, so matching on names would not do.)
func (s *stack) refuseProduces(code int16, refuse func() bool) {
	c := s.broker.Cluster()
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !refuse() {
			return nil, nil, false
		}
		pr := req.(*kmsg.ProduceRequest)
		resp := pr.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range pr.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// TestDLQOutageHoldsTheOffset: while the dead-letter topic refuses writes,
// the poison's partition does not move past it; once the broker recovers,
// the poison is dead-lettered exactly once and everything else applied.
func TestDLQOutageHoldsTheOffset(t *testing.T) {
	t.Parallel()
	s := newStack(t, nil)
	up := s.upload(t, poisonedUpload("d", 500, 250))

	// From now on the only producer is the processor's dead-letter
	// publisher: refuse every produce.
	var failing atomic.Bool
	failing.Store(true)
	var refused atomic.Int64
	s.refuseProduces(kerr.NotEnoughReplicas.Code, func() bool {
		if !failing.Load() {
			return false
		}
		refused.Add(1)
		return true
	})
	s.startProcessor(t, nil)

	// Wait until the DLQ was refused a few times, then look at the offsets.
	require.Eventually(t, func() bool { return refused.Load() >= 3 }, 30*time.Second, 20*time.Millisecond)
	during := s.storedOffsets(t)
	j, err := s.client.Job(context.Background(), up.id)
	require.NoError(t, err)
	require.Zero(t, j.Counts.DeadLettered)
	require.Less(t, j.Counts.Applied, int64(499), "the poison's partition must be held")

	failing.Store(false)
	done := s.wait(t, up.id)
	require.Equal(t, pipeline.JobCompletedWithErrors, done.state)
	require.Equal(t, int64(499), done.c.Applied)
	require.Equal(t, int64(1), done.c.DeadLettered)

	recs := s.dlqRecords(t, 1)
	require.Len(t, recs, 1, "dead-lettered exactly once")
	require.Equal(t, "d-250", string(recs[0].Key))
	var p int32
	var o int64
	_, err = fmt.Sscan(header(recs[0], dlq.HeaderSourcePartition), &p)
	require.NoError(t, err)
	_, err = fmt.Sscan(header(recs[0], dlq.HeaderSourceOffset), &o)
	require.NoError(t, err)
	stored, ok := during[p]
	require.True(t, !ok || stored <= o, "while the DLQ failed, partition %d was stored at %d, past the poison at %d", p, stored, o)
}

// TestBackendTerminationsAreRetried: the processor's database connections
// are killed again and again while it drains a backlog; everything is
// retried, nothing dead-lettered, nothing lost or doubled.
func TestBackendTerminationsAreRetried(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"processor.batch_size": 500})
	w := newWorkload(2, 12_000, 4_000, 600, 3)
	jobs := w.run(t, s)
	victim := s.db.Schema + "_processor"
	s.startProcessor(t, map[string]any{"database.url": s.db.URL + "&application_name=" + victim})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var killed atomic.Int64
	go func() {
		for ctx.Err() == nil {
			var n int64
			err := s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE application_name = $1) t`, victim).Scan(&n)
			if err == nil {
				killed.Add(n)
			}
			// Every 100–500 ms: a fixed interval shorter than a batch's
			// round trips on a slow machine would let no batch through at
			// all (a livelock of the test, not of the processor).
			time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		}
	}()
	w.check(t, s, jobs)
	cancel()
	require.Positive(t, killed.Load(), "the test must actually have killed connections")
	t.Logf("terminated %d backends", killed.Load())
}

// TestRebalanceLosesNothing: a second processor joins mid-stream and the
// first leaves mid-stream; partitions move twice while batches are in
// flight.
func TestRebalanceLosesNothing(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"processor.batch_size": 200, "processor.rate_limit": 1000})
	w := newWorkload(3, 6_000, 2_000, 300, 3)
	jobs := w.run(t, s)
	stopFirst := s.startProcessor(t, nil)
	progress := func() int64 { return s.progress(t) }
	total := int64(w.commands + w.repeats)
	require.Eventually(t, func() bool { return progress() > total/5 }, 60*time.Second, 20*time.Millisecond)
	s.startProcessor(t, nil)
	require.Eventually(t, func() bool { return progress() > total/2 }, 60*time.Second, 20*time.Millisecond)
	require.Less(t, progress(), total*3/4, "the rebalances must happen mid-stream")
	stopFirst()
	w.check(t, s, jobs)
}

// TestKafkaOffsetsAreNotTrusted: the database, not Kafka, says where a
// partition resumes. Rewinding the group's Kafka offsets to the start (as
// a crash between the database commit and the Kafka commit would leave
// them) applies nothing again.
func TestKafkaOffsetsAreNotTrusted(t *testing.T) {
	t.Parallel()
	s := newStack(t, nil)
	w := newWorkload(4, 3_000, 1_000, 150, 2)
	jobs := w.run(t, s)
	stop := s.startProcessor(t, nil)
	w.check(t, s, jobs)
	stop()

	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokers...))
	require.NoError(t, err)
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	starts, err := adm.ListStartOffsets(ctx, "spool.commands")
	require.NoError(t, err)
	err = adm.CommitAllOffsets(ctx, "spool-processor", starts.Offsets())
	require.NoError(t, err)

	s.startProcessor(t, nil)
	marker := s.upload(t, []string{`{"id":"marker","entity":"customers","version":1,"data":{"customer_id":"marker"}}`})
	require.Equal(t, pipeline.JobCompleted, s.wait(t, marker.id).state)
	// Every partition has been consumed up to the marker's; had the old
	// records been read again they would count as duplicates.
	time.Sleep(500 * time.Millisecond)
	w.want["marker"] = row{version: 1}
	for k, r := range s.table(t) {
		if k == "marker" {
			w.want[k] = r
		}
	}
	w.check(t, s, jobs)
}

// TestRateLimitHeld: processor.rate_limit caps rows/s within ±10% over
// several seconds of backlog. The rate is read from the database's counters
// between the first batches and the end, so that joining the group and
// the bucket's initial burst are not counted.
func TestRateLimitHeld(t *testing.T) {
	t.Parallel()
	const limit, total = 2000, 9_000
	s := newStack(t, map[string]any{"processor.batch_size": 200})
	var lines []string
	for i := range total {
		lines = append(lines, fmt.Sprintf(`{"id":"r-%d","entity":"customers","version":1,"data":{"customer_id":"k%d"}}`, i, i))
	}
	up := s.upload(t, lines)
	s.startProcessor(t, map[string]any{"processor.rate_limit": limit})
	applied := func() int64 {
		var n int64
		require.NoError(t, s.db.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(applied), 0) FROM spool_job_counts`).Scan(&n))
		return n
	}
	var n0 int64
	require.Eventually(t, func() bool { n0 = applied(); return n0 >= 1000 }, 60*time.Second, 5*time.Millisecond)
	t0 := time.Now()
	require.Eventually(t, func() bool { return applied() == total }, 60*time.Second, 5*time.Millisecond)
	elapsed := time.Since(t0)
	rate := float64(total-n0) / elapsed.Seconds()
	t.Logf("%.0f rows/s over %s against a limit of %d", rate, elapsed, limit)
	require.GreaterOrEqual(t, elapsed, 3*time.Second)
	require.InEpsilon(t, limit, rate, 0.10)
	require.Equal(t, pipeline.JobCompleted, s.wait(t, up.id).state)
}

// TestProcessorWaitsForKafka: a processor started while its broker is
// still down (a broker restarting as a deployment rolls) waits for it with
// backoff, as it waits for PostgreSQL, instead of exiting.
func TestProcessorWaitsForKafka(t *testing.T) {
	t.Parallel()
	s := newStack(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	s.startProcessor(t, map[string]any{"kafka.brokers": []string{addr}})
	time.Sleep(time.Second)
	b, err := broker.Start(broker.Config{Addr: addr})
	require.NoError(t, err)
	t.Cleanup(b.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	require.NoError(t, err)
	defer cl.Close()
	require.Eventually(t, func() bool {
		topics, err := kadm.NewClient(cl).ListTopics(context.Background())
		return err == nil && topics.Has("spool.commands") && topics.Has("spool.commands.dlq")
	}, 15*time.Second, 100*time.Millisecond, "the processor never created its topics on the late broker")
}

// TestCleanStopHandsOverAtOnce: a processor stopped cleanly (a rolling
// deployment's SIGTERM) flushes, leaves the group and its partitions move
// to the one left at once, not after the session timeout (30 s here):
// commands uploaded right after the stop are applied within seconds.
func TestCleanStopHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"processor.session_timeout": "30s"})
	s.startProcessor(t, nil)
	stopSecond := s.startProcessor(t, nil)
	warm := newWorkload(5, 400, 400, 0, 1)
	warm.check(t, s, warm.run(t, s)) // both own partitions and have written
	stopSecond()
	stopped := time.Now()
	w := newWorkload(6, 400, 400, 0, 1)
	jobs := w.run(t, s)
	for _, id := range jobs {
		s.wait(t, id)
	}
	require.Less(t, time.Since(stopped), 15*time.Second,
		"the stopped processor's partitions waited for its session to time out")
}

// TestPartitionedProcessorIsFenced: a processor cut off from the broker
// alone (a proxy silences its connections; PostgreSQL stays reachable)
// keeps writing the records it holds while its partitions move to another
// processor after its session timeout; the other finishes the jobs while
// it is still cut off, and once let back it rejoins, and alone (the other
// stopped) applies the next upload. Nothing is lost or applied twice,
// every count is right, and the table is the oracle's. No stored offset
// ever moves back: the cut processor's batches behind the new owner are
// fenced (the offset compare-and-set), not committed.
func TestPartitionedProcessorIsFenced(t *testing.T) {
	t.Parallel()
	addr, err := harness.FreeAddr()
	require.NoError(t, err)
	proxy, err := harness.NewKafkaProxy(addr)
	require.NoError(t, err)
	t.Cleanup(proxy.Close)
	b, err := broker.Start(broker.Config{Addr: addr, Advertise: proxy.Addr()})
	require.NoError(t, err)
	t.Cleanup(b.Close)
	s := newStackOn(t, b, map[string]any{"processor.batch_size": 200, "processor.session_timeout": "6s"}, nil)
	w := newWorkload(11, 9_000, 2_000, 300, 3)
	jobs := s.uploadAll(t, w.uploads[:2])
	// The first is slow, so that it holds records when cut off and could
	// not finish the jobs alone for many seconds.
	const slow = 200
	s.startProcessor(t, map[string]any{"kafka.client_id": "cut-off", "processor.rate_limit": slow})
	require.Eventually(t, func() bool { return s.progress(t) > 500 }, 60*time.Second, 20*time.Millisecond)
	require.Positive(t, proxy.Cut("cut-off"))
	cut, cutAt := time.Now(), s.progress(t)
	watching, stopWatching := context.WithCancel(context.Background())
	backwards := make(chan string, 1)
	watched := make(chan struct{})
	t.Cleanup(func() { stopWatching(); <-watched }) // before the database goes
	go func() {
		defer close(watched)
		defer close(backwards)
		highest := map[int32]int64{}
		for watching.Err() == nil {
			offsets, _ := s.readOffsets(watching) // an error: the watch is stopping
			for p, o := range offsets {
				if o < highest[p] {
					select {
					case backwards <- fmt.Sprintf("partition %d's stored offset moved back from %d to %d", p, highest[p], o):
					default: // one is enough
					}
					stopWatching()
				}
				highest[p] = max(highest[p], o)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	stopOther := s.startProcessor(t, map[string]any{"kafka.client_id": "other"})
	for _, id := range jobs {
		require.Equal(t, pipeline.JobCompleted, s.wait(t, id).state, "the jobs finish while the first processor is cut off")
	}
	alone := time.Duration(float64(int64(w.commands*2/3)-cutAt) / slow * float64(time.Second))
	require.Less(t, time.Since(cut), alone*3/4, "the other processor took the partitions over")

	// The cut-off processor still holds records it fetched, and writes
	// them behind the new owner for a while (fenced) before it is let back.
	time.Sleep(3 * time.Second)
	proxy.Restore("cut-off")
	stopOther()
	w.check(t, s, append(jobs, s.uploadAll(t, w.uploads[2:])...))
	stopWatching()
	<-watched
	for msg := range backwards {
		t.Error(msg)
	}
}

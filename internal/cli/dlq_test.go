package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/cli"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/internal/tooltest"
	"github.com/spoolhq/spool/pipeline"
)

// spoolctl runs one spoolctl command in-process and returns its output.
func spoolctl(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := cli.New()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(ctx)
	if errOut.Len() > 0 {
		t.Logf("spoolctl %s: %s", strings.Join(args, " "), errOut.String())
	}
	return out.String(), err
}

func mustSpoolctl(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := spoolctl(ctx, t, args...)
	require.NoError(t, err, "spoolctl %s\n%s", strings.Join(args, " "), out)
	return out
}

// jsonLines decodes NDJSON output.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var vs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var v map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &v), l)
		vs = append(vs, v)
	}
	return vs
}

// TestDLQReplay is the operator's round trip of SPEC §5 on the real parts:
// spoolctl dev (PostgreSQL, the embedded broker over TCP), poison commands
// dead-lettered by a CHECK constraint, the dead letters read by kcat and by
// spoolctl dlq list/stats/show, the constraint dropped, a replay that applies
// each command exactly once (a trigger counts every write) and completes the
// job, and a second replay that sends nothing.
func TestDLQReplay(t *testing.T) {
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The demo table, with a CHECK that refuses negative balances and an
	// audit of every write that does not trust spool's counters.
	db.Exec(t, `CREATE TABLE customers (customer_id text PRIMARY KEY, name text, email text,
			balance numeric(18,2) CONSTRAINT positive CHECK (balance >= 0), version bigint NOT NULL, updated_at timestamptz);
		CREATE TABLE audit (customer_id text, version bigint);
		CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN INSERT INTO audit VALUES (NEW.customer_id, NEW.version); RETURN NEW; END$$;
		CREATE TRIGGER audit AFTER INSERT OR UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION audit();`)
	dev := startDev(ctx, t, db)
	client := &apiclient.Client{Server: dev.server}
	kafkaArgs := []string{"--brokers", dev.broker}
	// replay also checks each dead letter against the job ledger.
	replayArgs := append([]string{"--database-url", db.URL}, kafkaArgs...)

	// Job A: 100 commands, every fifth with a negative balance. Job B: 10
	// commands, 3 with a balance too large for numeric(18,2).
	upload := func(prefix string, n int, bad func(int) bool, balance string) pipeline.JobID {
		var b strings.Builder
		for i := range n {
			bal := "1.00"
			if bad(i) {
				bal = balance
			}
			fmt.Fprintf(&b, `{"id":"%s-%d","entity":"customers","version":1,"data":{"customer_id":"%s%d","balance":%q}}`+"\n", prefix, i, prefix, i, bal)
		}
		res, err := client.Upload(ctx, strings.NewReader(b.String()), apiclient.UploadOptions{ContentType: "application/x-ndjson"})
		require.NoError(t, err)
		return res.JobID
	}
	jobA := upload("a", 100, func(i int) bool { return i%5 == 0 }, "-1.00")
	jobB := upload("b", 10, func(i int) bool { return i < 3 }, "1e17")
	wait := func(id pipeline.JobID) *pipelineJob {
		j, err := client.WaitJob(ctx, id, 50*time.Millisecond, nil)
		require.NoError(t, err)
		return &pipelineJob{state: j.State, counts: j.Counts.Outcomes()}
	}
	require.Equal(t, &pipelineJob{pipeline.JobCompletedWithErrors, pipeline.Counts{Applied: 80, DeadLettered: 20}}, wait(jobA))
	require.Equal(t, &pipelineJob{pipeline.JobCompletedWithErrors, pipeline.Counts{Applied: 7, DeadLettered: 3}}, wait(jobB))

	// The jobs commands show the same from the API.
	server := []string{"--server", dev.server}
	listed := mustSpoolctl(ctx, t, append([]string{"jobs", "list"}, server...)...)
	require.Regexp(t, string(jobA)+`\s+completed_with_errors\s+100%\s+100\s+100\s+0\s+80\s+20`, listed)
	require.Len(t, jsonLines(t, mustSpoolctl(ctx, t, append([]string{"jobs", "list", "-o", "json", "--limit", "1", "--all"}, server...)...)), 2)
	failuresCSV := mustSpoolctl(ctx, t, append([]string{"jobs", "failures", string(jobA), "-o", "csv"}, server...)...)
	require.Len(t, strings.Split(strings.TrimSpace(failuresCSV), "\n"), 21, "a header and 20 dead letters")
	failuresTable := mustSpoolctl(ctx, t, append([]string{"jobs", "failures", string(jobA)}, server...)...)
	require.Regexp(t, `(?m)^0\s+a-0\s+processor\s+dead_lettered\s+constraint_violation`, failuresTable)
	require.Contains(t, failuresTable, "20 failures")
	_, err := spoolctl(ctx, t, append([]string{"jobs", "wait", string(jobA)}, server...)...)
	require.ErrorContains(t, err, "ended completed_with_errors", "wait exits non-zero when the job has failures")
	require.Equal(t, cli.ExitFailed, cli.ExitCode(err))

	// An ordinary Kafka client reads the dead letters and their headers.
	haveKcat := tooltest.Have(t, "kcat", "apt-get install kcat (make test installs it)", tooltest.OnPath("kcat"))
	perPartition := map[string]int{}
	if haveKcat {
		kcat := exec.CommandContext(ctx, "kcat", "-b", dev.broker, "-C", "-t", "spool.commands.dlq", "-o", "beginning", "-e", "-q",
			"-f", "%p:%o %k %h\n")
		raw, err := kcat.CombinedOutput()
		require.NoError(t, err, "kcat: %s", raw)
		kcatLines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		require.Len(t, kcatLines, 23, string(raw))
		for _, l := range kcatLines {
			require.Regexp(t, `^\d+:\d+ [ab]-\d+ .*spool-dlq-error-class=(constraint_violation|data_exception)`, l)
			require.Contains(t, l, "spool-dlq-attempt=1")
			require.Regexp(t, `spool-dlq-first-failure=\d{4}-\d\d-\d\dT`, l)
			require.Contains(t, l, "spool-dlq-source-topic=spool.commands")
			require.Contains(t, l, "spool-job-id=")
			perPartition[l[:strings.IndexByte(l, ':')]]++
		}
	} else {
		require.NoError(t, kafka.Reader{Cluster: kafka.Plaintext(dev.broker)}.Read(ctx, "spool.commands.dlq", dlq.AllPartitions, func(r pipeline.Record) error {
			perPartition[strconv.Itoa(int(r.Partition))]++
			return nil
		}))
	}

	// list and its filters select exactly what they say.
	list := func(args ...string) []map[string]any {
		return jsonLines(t, mustSpoolctl(ctx, t, append(append([]string{"dlq", "list", "--json"}, kafkaArgs...), args...)...))
	}
	require.Len(t, list(), 23)
	for _, d := range list("--job", string(jobA)) {
		require.Equal(t, string(jobA), d["job_id"])
		require.Equal(t, "constraint_violation", d["error_class"])
	}
	require.Len(t, list("--job", string(jobA)), 20)
	require.Len(t, list("--error-class", "data_exception"), 3)
	require.Len(t, list("--error-class", "data_exception", "--job", string(jobA)), 0)
	require.Len(t, list("--entity", "customers"), 23)
	require.Len(t, list("--entity", "orders"), 0)
	require.Len(t, list("--since", "1h"), 23)
	require.Len(t, list("--until", time.Now().Add(-time.Hour).Format(time.RFC3339)), 0)
	require.Len(t, list("--partition", "1"), perPartition["1"])
	table := mustSpoolctl(ctx, t, append([]string{"dlq", "list"}, kafkaArgs...)...)
	require.Contains(t, table, "DEAD LETTER")
	require.Contains(t, table, `violates check constraint "positive"`)
	require.Contains(t, table, "23 dead letters in spool.commands.dlq")

	var st dlq.Stats
	require.NoError(t, json.Unmarshal([]byte(mustSpoolctl(ctx, t, append([]string{"dlq", "stats", "--json"}, kafkaArgs...)...)), &st))
	require.Equal(t, 23, st.Total)
	require.Equal(t, map[string]int{"constraint_violation": 20, "data_exception": 3}, st.ByClass)
	require.Equal(t, map[string]int{string(jobA): 20, string(jobB): 3}, st.ByJob)
	require.Equal(t, map[string]int{"customers": 23}, st.ByEntity)

	first := list("--job", string(jobA), "--limit", "1")
	require.Len(t, first, 1)
	shown := mustSpoolctl(ctx, t, append([]string{"dlq", "show", first[0]["dead_letter"].(string)}, kafkaArgs...)...)
	require.Regexp(t, `spool-dlq-error-class +constraint_violation`, shown)
	require.Contains(t, shown, `"balance": "-1.00"`, "the value is pretty-printed")
	_, err = spoolctl(ctx, t, append([]string{"dlq", "show", "0:999999"}, kafkaArgs...)...)
	require.ErrorContains(t, err, "holds offsets")
	_, err = spoolctl(ctx, t, append([]string{"dlq", "show", "zero"}, kafkaArgs...)...)
	require.ErrorContains(t, err, "is not PARTITION:OFFSET")

	// A dry run sends nothing.
	sourceBefore := countRecords(ctx, t, dev.broker, "spool.commands")
	dry := mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--dry-run", "--job", string(jobA)}, replayArgs...)...)
	require.Contains(t, dry, "would replay 20 of 20 selected dead letters; 0 already replayed, 0 parked at the attempt bound, 0 refused")
	// What spool recorded of job A's dead letters, before the replay
	// settles them (a replay of the lost checkpoint below checks against it).
	ledger := recordedLedger{}
	store := postgres.NewStore(db.Postgres, nil, "", nil)
	for i := int64(0); i < 100; i += 5 {
		rec, err := store.LookupDeadLetter(ctx, jobA, i)
		require.NoError(t, err)
		require.NotNil(t, rec, "index %d", i)
		ledger[pipeline.Origin{Job: jobA, Index: i}] = rec
	}
	require.Equal(t, sourceBefore, countRecords(ctx, t, dev.broker, "spool.commands"))

	// Fixed: the constraint goes, and one of job A's keys meanwhile got a
	// newer version, which the replay must not overwrite.
	db.Exec(t, `ALTER TABLE customers DROP CONSTRAINT positive`)
	newer, err := client.Upload(ctx, strings.NewReader(`{"id":"n-0","entity":"customers","version":7,"data":{"customer_id":"a0","balance":"7.00"}}`+"\n"),
		apiclient.UploadOptions{ContentType: "application/x-ndjson"})
	require.NoError(t, err)
	wait(newer.JobID)

	start := time.Now()
	var res dlq.ReplayResult
	out := mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--json", "--rate", "10", "--job", string(jobA)}, replayArgs...)...)
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.GreaterOrEqual(t, time.Since(start), 1800*time.Millisecond, "20 records at --rate 10 take about 2 s")
	require.Equal(t, dlq.ReplayResult{Selected: 20, Replayed: 20}, res)
	require.Equal(t, sourceBefore+1+20, countRecords(ctx, t, dev.broker, "spool.commands"))

	// The job's dead letters move to their new outcomes and it completes.
	// (Its state follows the counters just after their commit: waiting for
	// the counters alone races the settling.)
	waitFor(t, func() bool {
		j := wait(jobA)
		return j.counts.DeadLettered == 0 && j.state == pipeline.JobCompleted
	})
	mustSpoolctl(ctx, t, append([]string{"jobs", "wait", string(jobA)}, server...)...)
	require.Contains(t, mustSpoolctl(ctx, t, append([]string{"jobs", "failures", string(jobA)}, server...)...), "0 failures")
	require.Equal(t, &pipelineJob{pipeline.JobCompleted, pipeline.Counts{Applied: 99, Stale: 1}}, wait(jobA))
	var balance string
	var version int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT balance, version FROM customers WHERE customer_id = 'a0'`).Scan(&balance, &version))
	require.Equal(t, "7.00", balance, "the version guard kept the newer row")
	require.EqualValues(t, 7, version)
	var failures int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM spool_job_failures WHERE job_id = $1`, jobA).Scan(&failures))
	require.Zero(t, failures)
	audit := func() map[string]int {
		rows, err := db.Pool.Query(ctx, `SELECT customer_id, count(*) FROM audit WHERE customer_id LIKE 'a%' GROUP BY 1`)
		require.NoError(t, err)
		m := map[string]int{}
		for rows.Next() {
			var k string
			var n int
			require.NoError(t, rows.Scan(&k, &n))
			m[k] = n
		}
		require.NoError(t, rows.Err())
		return m
	}
	writes := audit()
	require.Len(t, writes, 100)
	for k, n := range writes {
		want := 1
		if k == "a0" {
			want = 1 // only the newer upsert: the replayed version 1 was stale
		}
		require.Equal(t, want, n, "writes of %s", k)
	}

	// The same replay again sends nothing.
	out = mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--json", "--job", string(jobA)}, replayArgs...)...)
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, dlq.ReplayResult{Selected: 20, AlreadyReplayed: 20}, res)
	require.Equal(t, sourceBefore+21, countRecords(ctx, t, dev.broker, "spool.commands"))

	// Even sent twice (a replay whose checkpoint was lost), the commands
	// apply nothing twice and move no count twice: the ledger and the
	// failure rows see to it.
	reader := kafka.Reader{Cluster: kafka.Plaintext(dev.broker)}
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(dev.broker), Logger: testLogger(t)})
	require.NoError(t, err)
	defer producer.Close()
	// With the checkpoint lost, the ledger alone refuses them now: the
	// replay settled their failure rows.
	res, err = dlq.Replay(ctx, withoutCheckpoint{reader}, producer, "spool.commands.dlq",
		dlq.ReplayOptions{Topic: "spool.commands", Ledger: store, Filter: dlq.Filter{Job: jobA}})
	require.NoError(t, err)
	require.Equal(t, 0, res.Replayed)
	require.Equal(t, 20, res.Refused)
	require.Contains(t, res.Refusals[0].Reason, "replayed and settled since")
	require.Equal(t, sourceBefore+21, countRecords(ctx, t, dev.broker, "spool.commands"))
	// Checked against what was recorded before (a replay racing the
	// processor), they are sent: the processor's ledger applies nothing twice.
	res, err = dlq.Replay(ctx, withoutCheckpoint{reader}, producer, "spool.commands.dlq",
		dlq.ReplayOptions{Topic: "spool.commands", Ledger: ledger, Filter: dlq.Filter{Job: jobA}})
	require.NoError(t, err)
	require.Equal(t, 20, res.Replayed)
	waitFor(t, func() bool { return countProcessed(ctx, t, db) >= int64(sourceBefore+41) })
	require.Equal(t, &pipelineJob{pipeline.JobCompleted, pipeline.Counts{Applied: 99, Stale: 1}}, wait(jobA))
	require.Equal(t, writes, audit(), "nothing applied twice")

	// Job B's dead letters, replayed unfixed, die again: back in the DLQ at
	// attempt 2, still counted once; past --max-attempts 2 they are parked.
	out = mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--json", "--job", string(jobB)}, replayArgs...)...)
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, 3, res.Replayed)
	waitFor(t, func() bool { return len(list("--job", string(jobB))) == 6 })
	again := list("--job", string(jobB), "--since", "1h")
	attempts := map[float64]int{}
	for _, d := range again {
		attempts[d["attempt"].(float64)]++
	}
	require.Equal(t, map[float64]int{1: 3, 2: 3}, attempts)
	require.Equal(t, &pipelineJob{pipeline.JobCompletedWithErrors, pipeline.Counts{Applied: 7, DeadLettered: 3}}, wait(jobB))
	out = mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--json", "--max-attempts", "2", "--job", string(jobB)}, replayArgs...)...)
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, dlq.ReplayResult{Selected: 6, AlreadyReplayed: 3, Parked: 3}, res)

	if !haveKcat {
		return
	}
	// Forged dead letters, written by an ordinary Kafka client: one naming
	// another source topic, one claiming job B's dead letter for another
	// tenant, one at a place of job B spool never dead-lettered. Replay
	// refuses and reports each, sends none, and never checkpoints them.
	// The first keeps b-0's genuine value: only its source topic is wrong.
	var genuineB0 []byte
	require.NoError(t, reader.Read(ctx, "spool.commands.dlq", dlq.AllPartitions, func(r pipeline.Record) error {
		if string(r.Key) == "b-0" {
			genuineB0 = r.Value
		}
		return nil
	}))
	require.NotEmpty(t, genuineB0)
	forge := func(index, tenant, sourceTopic string) {
		args := []string{"-P", "-b", dev.broker, "-t", "spool.commands.dlq", "-X", "partitioner=murmur2_random", "-k", "b-" + index}
		for _, h := range []string{"spool-dlq-error-class=constraint_violation", "spool-dlq-error=forged",
			"spool-dlq-source-topic=" + sourceTopic, "spool-dlq-source-partition=0", "spool-dlq-source-offset=0",
			"spool-dlq-attempt=1", "spool-dlq-first-failure=2026-01-01T00:00:00Z", "spool-dlq-last-failure=" + time.Now().UTC().Format(time.RFC3339),
			"spool-dlq-command-id=b-" + index, "spool-job-id=" + string(jobB), "spool-tenant=" + tenant, "spool-index=" + index} {
			args = append(args, "-H", h)
		}
		kcat := exec.CommandContext(ctx, "kcat", args...)
		value := `{"id":"b-` + index + `","entity":"customers","version":9,"data":{"customer_id":"b` + index + `","balance":"1000.00"}}`
		if index == "0" {
			value = string(genuineB0)
		}
		kcat.Stdin = strings.NewReader(value + "\n")
		raw, err := kcat.CombinedOutput()
		require.NoError(t, err, "kcat: %s", raw)
	}
	forge("0", "default", "spool.other")
	forge("1", "intruder", "spool.commands")
	forge("5", "default", "spool.commands")
	waitFor(t, func() bool { return len(list("--job", string(jobB))) == 9 })
	sourceBefore = countRecords(ctx, t, dev.broker, "spool.commands")
	human := mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--max-attempts", "2", "--job", string(jobB)}, replayArgs...)...)
	require.Contains(t, human, "replayed 0 of 9 selected dead letters; 3 already replayed, 3 parked at the attempt bound, 3 refused")
	require.Regexp(t, `refused .* index 0 command b-0: its source-topic header names "spool.other", not spool.commands`, human)
	require.Regexp(t, `refused .* index 1 command b-1: its tenant header "intruder" is not the job's tenant`, human)
	require.Regexp(t, `refused .* index 5 command b-5: job "`+string(jobB)+`" has no dead-lettered command at index 5`, human)
	out = mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--json", "--max-attempts", "2", "--job", string(jobB)}, replayArgs...)...)
	res = dlq.ReplayResult{}
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Equal(t, 3, res.Refused)
	require.Len(t, res.Refusals, 3)
	require.Zero(t, res.Replayed)
	require.Equal(t, sourceBefore, countRecords(ctx, t, dev.broker, "spool.commands"), "nothing forged is sent")
	// Named explicitly, another topic is allowed; the ledger still decides.
	out = mustSpoolctl(ctx, t, append([]string{"dlq", "replay", "--json", "--dry-run", "--to-topic", "spool.other", "--max-attempts", "2",
		"--job", string(jobB)}, replayArgs...)...)
	res = dlq.ReplayResult{}
	// An object per dead letter, then the result.
	for dec := json.NewDecoder(strings.NewReader(out)); dec.More(); {
		res = dlq.ReplayResult{}
		require.NoError(t, dec.Decode(&res))
	}
	require.Equal(t, 2, res.Refused, "the other tenant's and the unknown place: %+v", res.Refusals)
	require.Equal(t, 1, res.Replayed, "the dead letter naming spool.other, which matches the ledger")
	require.Equal(t, sourceBefore, countRecords(ctx, t, dev.broker, "spool.commands"))
	require.Equal(t, &pipelineJob{pipeline.JobCompletedWithErrors, pipeline.Counts{Applied: 7, DeadLettered: 3}}, wait(jobB))
}

// recordedLedger is a snapshot of what spool recorded of dead letters.
type recordedLedger map[pipeline.Origin]*pipeline.DeadLetterRecord

func (l recordedLedger) LookupDeadLetter(_ context.Context, job pipeline.JobID, index int64) (*pipeline.DeadLetterRecord, error) {
	return l[pipeline.Origin{Job: job, Index: index}], nil
}

type pipelineJob struct {
	state  pipeline.JobState
	counts pipeline.Counts
}

// withoutCheckpoint hides the replay checkpoint, as if it had been lost.
type withoutCheckpoint struct{ kafka.Reader }

func (w withoutCheckpoint) Read(ctx context.Context, topic string, p int32, fn func(pipeline.Record) error) error {
	if topic == dlq.CheckpointTopic("spool.commands.dlq") {
		return nil
	}
	return w.Reader.Read(ctx, topic, p, fn)
}

func countRecords(ctx context.Context, t *testing.T, broker, topic string) int {
	t.Helper()
	n := 0
	require.NoError(t, kafka.Reader{Cluster: kafka.Plaintext(broker)}.Read(ctx, topic, dlq.AllPartitions, func(pipeline.Record) error {
		n++
		return nil
	}))
	return n
}

// countProcessed sums the processor's stored offsets: the records it has
// committed.
func countProcessed(ctx context.Context, t *testing.T, db *pgtest.DB) int64 {
	t.Helper()
	var n int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM spool_offsets WHERE topic = 'spool.commands'`).Scan(&n))
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

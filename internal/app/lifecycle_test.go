package app_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/pipeline"
)

// TestAbortMidDrain: a job aborted while two processors drain it ends
// aborted with every accepted command counted once, applied or aborted; the
// table holds exactly the applied ones; the aborted ids claimed nothing, so
// the same upload sent again applies them (and finds the others
// duplicates); a second abort is refused.
func TestAbortMidDrain(t *testing.T) {
	t.Parallel()
	const n = 20000
	s := newStack(t, map[string]any{"processor.batch_size": 250, "processor.rate_limit": 4000})
	s.startProcessor(t, nil)
	s.startProcessor(t, nil)
	lines := make([]string, n)
	for i := range lines {
		lines[i] = fmt.Sprintf(`{"id":"c-%d","entity":"customers","version":1,"data":{"customer_id":"k-%d","name":"n"}}`, i, i)
	}
	up := s.upload(t, lines)
	require.Equal(t, int64(n), up.accepted)

	ctx := t.Context()
	require.Eventually(t, func() bool {
		j, err := s.client.Job(ctx, up.id)
		return err == nil && j.Counts.Applied > n/10
	}, time.Minute, 20*time.Millisecond, "the drain never started")
	aborted, err := s.client.AbortJob(ctx, up.id)
	require.NoError(t, err)
	require.Equal(t, pipeline.JobAborted, aborted.State)
	require.NotNil(t, aborted.CompletedAt)

	j := s.wait(t, up.id)
	require.Equal(t, pipeline.JobAborted, j.state)
	require.Equal(t, int64(n), j.c.Done(), "every command counted once: %+v", j.c)
	require.Equal(t, int64(n), j.c.Applied+j.c.Aborted, "%+v", j.c)
	require.Positive(t, j.c.Aborted, "the abort came too late to skip anything: %+v", j.c)
	t.Logf("aborted mid-drain: %+v", j.c)
	require.Less(t, j.c.Applied, int64(n))
	var rows int64
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM customers`).Scan(&rows))
	require.Equal(t, j.c.Applied, rows, "the table holds the applied commands and no aborted one")

	_, err = s.client.AbortJob(ctx, up.id)
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 409, apiErr.Status)
	require.Contains(t, apiErr.Detail, "aborted already")

	again := s.upload(t, lines)
	k := s.wait(t, again.id)
	require.Equal(t, pipeline.JobCompleted, k.state)
	require.Equal(t, pipeline.Counts{Applied: j.c.Aborted, Duplicate: j.c.Applied}, k.c,
		"what the abort skipped applies when sent again; what was applied is a duplicate")
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM customers`).Scan(&rows))
	require.Equal(t, int64(n), rows)
}

// TestInsertAndUpdateThroughTheAPI: ops insert and update, in NDJSON and
// as a CSV upload's op, end applied, exists or missing, counted on the
// job and shown by the API.
func TestInsertAndUpdateThroughTheAPI(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	first := s.upload(t, []string{
		`{"id":"a1","entity":"customers","op":"insert","version":1,"data":{"customer_id":"a","name":"first"}}`,
		`{"id":"b1","entity":"customers","op":"update","version":1,"data":{"customer_id":"b","name":"nobody"}}`,
	})
	require.Equal(t, pipeline.Counts{Applied: 1, Missing: 1}, s.wait(t, first.id).c)

	csv := "id,customer_id,name,version\na2,a,second,2\nb2,b,created,2\n"
	res, err := s.client.Upload(t.Context(), strings.NewReader(csv), apiclient.UploadOptions{
		ContentType: "text/csv", Entity: "customers", ExtraParameters: url.Values{"op": {"insert"}, "version_column": {"version"}}})
	require.NoError(t, err)
	require.Equal(t, pipeline.Counts{Applied: 1, Exists: 1}, s.wait(t, res.JobID).c)

	third := s.upload(t, []string{
		`{"id":"a3","entity":"customers","op":"update","version":3,"data":{"customer_id":"a","name":"updated"}}`,
		`{"id":"a4","entity":"customers","op":"update","version":2,"data":{"customer_id":"a","name":"old"}}`,
	})
	j := s.wait(t, third.id)
	require.Equal(t, pipeline.JobCompleted, j.state)
	// Their ids put them on partitions of their own, in either order: the
	// older applies first or is stale, and the newer wins either way.
	require.Equal(t, int64(2), j.c.Applied+j.c.Stale, "%+v", j.c)

	names := map[string]string{}
	rows, err := s.db.Pool.Query(context.Background(), `SELECT customer_id, name FROM customers`)
	require.NoError(t, err)
	for rows.Next() {
		var k, v string
		require.NoError(t, rows.Scan(&k, &v))
		names[k] = v
	}
	require.NoError(t, rows.Err())
	require.Equal(t, map[string]string{"a": "updated", "b": "created"}, names)
}

// TestResultsThroughTheAPI: a job uploaded with results=true lists every
// place of its upload once, in order, with the outcome its counts hold
// (over 2,500 commands, so several chunks): rejected by ingress, applied,
// duplicate, exists; as NDJSON, as CSV and filtered. A job uploaded without
// them answers 409.
func TestResultsThroughTheAPI(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const n = 2500
	var lines []string
	want := map[int64]pipeline.Outcome{}
	for i := range n {
		switch {
		case i%500 == 7:
			lines = append(lines, `{"id":"bad","entity":"customers","data":{}}`) // no version, no key: rejected
			want[int64(i)] = pipeline.OutcomeRejected
		case i%100 == 3 && i > 100:
			lines = append(lines, lines[1]) // a repeat of place 1
			want[int64(i)] = pipeline.OutcomeDuplicate
		case i%250 == 11:
			lines = append(lines, fmt.Sprintf(`{"id":"i-%d","entity":"customers","op":"insert","version":2,"data":{"customer_id":"k-0","name":"x"}}`, i))
			want[int64(i)] = pipeline.OutcomeExists
		default:
			lines = append(lines, fmt.Sprintf(`{"id":"c-%d","entity":"customers","version":1,"data":{"customer_id":"k-%d","name":"n"}}`, i, i))
			want[int64(i)] = pipeline.OutcomeApplied
		}
	}
	// k-0 is written by place 0 before any insert of it can run: send it
	// first, alone.
	first := s.upload(t, lines[:1])
	s.wait(t, first.id)
	res, err := s.client.Upload(t.Context(), strings.NewReader(strings.Join(lines, "\n")),
		apiclient.UploadOptions{ContentType: "application/x-ndjson", Results: true})
	require.NoError(t, err)
	want[0] = pipeline.OutcomeDuplicate // place 0's id was applied by the first upload
	j := s.wait(t, res.JobID)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state) // the rejections

	var ndjson bytes.Buffer
	require.NoError(t, s.client.Results(t.Context(), res.JobID, nil, "ndjson", &ndjson))
	got := map[int64]pipeline.Outcome{}
	var counts pipeline.Counts
	last := int64(-1)
	dec := json.NewDecoder(&ndjson)
	for dec.More() {
		var r httpapi.ResultView
		require.NoError(t, dec.Decode(&r))
		require.Greater(t, r.Index, last, "in input order, each place once")
		last = r.Index
		got[r.Index] = r.Outcome
		if r.Outcome != pipeline.OutcomeRejected {
			counts.Add(r.Outcome)
		}
	}
	require.Equal(t, want, got)
	require.Equal(t, j.c, counts, "the results agree with the counts")

	var table bytes.Buffer
	require.NoError(t, s.client.Results(t.Context(), res.JobID, []string{"exists", "rejected"}, "csv", &table))
	rows, err := csv.NewReader(&table).ReadAll()
	require.NoError(t, err)
	require.Equal(t, []string{"index", "id", "outcome"}, rows[0])
	for _, row := range rows[1:] {
		i, err := strconv.ParseInt(row[0], 10, 64)
		require.NoError(t, err)
		require.Contains(t, []pipeline.Outcome{pipeline.OutcomeExists, pipeline.OutcomeRejected}, want[i])
		require.Equal(t, string(want[i]), row[2])
	}
	require.Len(t, rows, 1+5+10, "five rejections, ten inserts of a present key")

	err = s.client.Results(t.Context(), first.id, nil, "ndjson", &bytes.Buffer{})
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 409, apiErr.Status)
}

// TestJobInParts: a job opened for parts takes its parts in any order and
// at once; a part sent again with the same bytes gets its first answer, with
// others 409; records are placed across parts in part order, so listings
// point into the whole upload; complete queues it and it settles as any job;
// a job left open is failed after jobs.open_timeout.
func TestJobInParts(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"ingress.max_records": 3, "ingress.read_idle_timeout": "1s"})
	s.startProcessor(t, map[string]any{"jobs.open_timeout": "1s"})
	ctx := t.Context()
	do := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, s.server+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	code, b := do("POST", "/v1/jobs?parts=true&results=true", "")
	require.Equal(t, http.StatusCreated, code, string(b))
	var opened httpapi.JobView
	require.NoError(t, json.Unmarshal(b, &opened))
	require.Equal(t, pipeline.JobOpen, opened.State)
	require.NotNil(t, opened.Parts)
	jobPath := "/v1/jobs/" + string(opened.JobID)

	// Part 1: three records, the second rejected; part 2: two records, the
	// first rejected. Part 2 comes first.
	cmd := func(i int) string {
		return fmt.Sprintf(`{"id":"p-%d","entity":"customers","version":1,"data":{"customer_id":"k-%d","name":"n"}}`, i, i)
	}
	bad := `{"id":"bad","entity":"customers","data":{}}`
	part1 := strings.Join([]string{cmd(0), bad, cmd(2)}, "\n")
	part2 := strings.Join([]string{bad, cmd(4)}, "\n")
	code, b = do("PUT", jobPath+"/parts/2", part2)
	require.Equal(t, http.StatusAccepted, code, string(b))
	var p2 httpapi.PartView
	require.NoError(t, json.Unmarshal(b, &p2))
	require.Equal(t, httpapi.PartView{JobID: opened.JobID, Part: 2, Received: 2, Accepted: 1, Rejected: 1,
		Rejections: p2.Rejections, StatusURL: jobPath}, p2)
	require.Equal(t, int64(0), p2.Rejections[0].Index, "an answer's rejections count from the part's start")
	req, err := http.NewRequestWithContext(ctx, "PUT", s.server+jobPath+"/parts/1?entity=customers", strings.NewReader("name\nx\n"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "text/csv")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "a CSV part without an id column")
	code, b = do("PUT", jobPath+"/parts/1", part1)
	require.Equal(t, http.StatusAccepted, code, "a part refused is sent again corrected: %s", b)
	again, replayed := do("PUT", jobPath+"/parts/1", part1)
	require.Equal(t, http.StatusAccepted, again)
	require.JSONEq(t, string(b), string(replayed), "the same part again gets its first answer")
	code, b = do("PUT", jobPath+"/parts/1", part1+"\n"+cmd(9))
	require.Equal(t, http.StatusConflict, code, string(b))
	require.Contains(t, string(b), "other bytes")

	code, b = do("POST", jobPath+"/complete", "")
	require.Equal(t, http.StatusOK, code, string(b))
	j := s.wait(t, opened.JobID)
	require.Equal(t, pipeline.JobCompletedWithErrors, j.state)
	require.Equal(t, int64(5), j.received)
	require.Equal(t, int64(2), j.rejected)
	require.Equal(t, pipeline.Counts{Applied: 3}, j.c)
	code, b = do("PUT", jobPath+"/parts/3", cmd(5))
	require.Equal(t, http.StatusConflict, code, "a completed job takes no part: %s", b)

	// Places run across the parts in part order: part 1 holds 0-2, part 2
	// holds 3-4.
	var results bytes.Buffer
	require.NoError(t, s.client.Results(ctx, opened.JobID, nil, "csv", &results))
	require.Equal(t, "index,id,outcome\n0,p-0,applied\n1,bad,rejected\n2,p-2,applied\n3,bad,rejected\n4,p-4,applied\n", results.String())
	got, err := s.client.Job(ctx, opened.JobID)
	require.NoError(t, err)
	require.Len(t, *got.Parts, 2)
	require.Equal(t, pipeline.PartDone, (*got.Parts)[0].State)
	sum := sha256.Sum256([]byte(part1))
	require.Equal(t, hex.EncodeToString(sum[:]), (*got.Parts)[0].SHA256, "the part's digest, for a client resuming")

	// A part refused after some of its records went to Kafka (over
	// ingress.max_records) is kept as it came: those are applied and
	// counted, sending it again with other bytes is refused, and the rest
	// goes in another part.
	code, b = do("POST", "/v1/jobs?parts=true", "")
	require.Equal(t, http.StatusCreated, code, string(b))
	var cut httpapi.JobView
	require.NoError(t, json.Unmarshal(b, &cut))
	cutPath := "/v1/jobs/" + string(cut.JobID)
	four := strings.Join([]string{cmd(10), cmd(11), cmd(12), cmd(13)}, "\n")
	code, b = do("PUT", cutPath+"/parts/1", four)
	require.Equal(t, http.StatusRequestEntityTooLarge, code, string(b))
	code, b = do("PUT", cutPath+"/parts/1", cmd(13))
	require.Equal(t, http.StatusConflict, code, "the part is final: %s", b)
	code, b = do("PUT", cutPath+"/parts/2", cmd(13))
	require.Equal(t, http.StatusAccepted, code, string(b))
	code, b = do("POST", cutPath+"/complete", "")
	require.Equal(t, http.StatusOK, code, string(b))
	k := s.wait(t, cut.JobID)
	require.Equal(t, int64(4), k.accepted)
	require.Equal(t, pipeline.Counts{Applied: 4}, k.c)

	// Parts cut off after some of their records reached Kafka — the
	// connection lost, the client too slow (408) — are broken: the job does
	// not complete until they are sent again with the same bytes, and then
	// every command counts once, in its place.
	code, b = do("POST", "/v1/jobs?parts=true&results=true", "")
	require.Equal(t, http.StatusCreated, code, string(b))
	var torn httpapi.JobView
	require.NoError(t, json.Unmarshal(b, &torn))
	tornPath := "/v1/jobs/" + string(torn.JobID)
	partOne := strings.Join([]string{cmd(20), cmd(21), cmd(22)}, "\n")
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.server, "http://"))
	require.NoError(t, err)
	head := cmd(20) + "\n" + cmd(21) + "\n"
	_, err = fmt.Fprintf(conn, "PUT %s/parts/1 HTTP/1.1\r\nHost: spool\r\nContent-Type: application/x-ndjson\r\n"+
		"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", tornPath, len(head), head)
	require.NoError(t, err)
	require.NoError(t, conn.Close(), "the connection is lost mid-part")
	brokenPart := func(n int) httpapi.PartStatus {
		t.Helper()
		var found httpapi.PartStatus
		require.Eventually(t, func() bool {
			j, err := s.client.Job(ctx, torn.JobID)
			require.NoError(t, err)
			for _, p := range *j.Parts {
				if p.Number == n && p.State == pipeline.PartBroken {
					found = p
					return true
				}
			}
			return false
		}, 10*time.Second, 50*time.Millisecond)
		return found
	}
	p1 := brokenPart(1)
	require.EqualValues(t, 2, p1.Received, "what ingress read of it (some may have reached Kafka)")
	require.NotEmpty(t, p1.Error)

	pr, pw := io.Pipe()
	req, err = http.NewRequestWithContext(ctx, "PUT", s.server+tornPath+"/parts/2", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-ndjson")
	go func() { _, _ = io.WriteString(pw, cmd(23)+"\n") }() // then nothing
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	pw.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode, string(b))
	require.NotEmpty(t, resp.Header.Get("Retry-After"), "a part cut off is worth sending again")
	require.EqualValues(t, 1, brokenPart(2).Accepted)

	code, b = do("POST", tornPath+"/complete", "")
	require.Equal(t, http.StatusConflict, code, string(b))
	require.Contains(t, string(b), "parts 1, 2 of job")
	code, b = do("PUT", tornPath+"/parts/1", partOne)
	require.Equal(t, http.StatusAccepted, code, string(b))
	code, b = do("PUT", tornPath+"/parts/2", cmd(23))
	require.Equal(t, http.StatusAccepted, code, string(b))
	code, b = do("POST", tornPath+"/complete", "")
	require.Equal(t, http.StatusOK, code, string(b))
	tj := s.wait(t, torn.JobID)
	require.Equal(t, [2]int64{4, 4}, [2]int64{tj.received, tj.accepted})
	require.Equal(t, pipeline.Counts{Applied: 4}, tj.c, "the first copies of the cut-off records count once")
	results.Reset()
	require.NoError(t, s.client.Results(ctx, torn.JobID, nil, "csv", &results))
	require.Equal(t, "index,id,outcome\n0,p-20,applied\n1,p-21,applied\n2,p-22,applied\n3,p-23,applied\n", results.String())

	// Left open: failed once jobs.open_timeout passes.
	code, b = do("POST", "/v1/jobs?parts=true", "")
	require.Equal(t, http.StatusCreated, code, string(b))
	var idle httpapi.JobView
	require.NoError(t, json.Unmarshal(b, &idle))
	require.Eventually(t, func() bool {
		j, err := s.client.Job(ctx, idle.JobID)
		return err == nil && j.State == pipeline.JobFailed
	}, 30*time.Second, 100*time.Millisecond)
}

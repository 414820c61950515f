package app_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/apiclient"
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
		var r pipeline.Result
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

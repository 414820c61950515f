package app_test

import (
	"context"
	"fmt"
	"net/url"
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

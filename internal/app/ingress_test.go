package app_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/pipeline"
)

func (s *stack) post(t *testing.T, path, contentType, key string, body io.Reader, gz bool) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.server+path, body)
	require.NoError(t, err)
	req.Header.Set("Content-Type", contentType)
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var m map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &m)
	return resp, m
}

func gzipped(t *testing.T, s string) io.Reader {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, err := zw.Write([]byte(s))
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return &b
}

// TestUploadFormats: NDJSON, a JSON array and CSV, each also gzipped, all
// reach the table.
func TestUploadFormats(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ndjson := `{"id":"n1","entity":"customers","version":1,"data":{"customer_id":"n1","name":"nd"}}` + "\n"
	array := `[{"id":"j1","version":1,"data":{"customer_id":"j1","name":"arr"}},{"id":"j2","version":1,"data":{"customer_id":"j2"}}]`
	csv := "command,customer_id,name,balance,ver\nc1,c1,\"Lovelace, Ada\",10.50,1\nc2,c2,,,1\n"
	for _, tt := range []struct {
		name, path, ct, body string
		gz                   bool
		accepted             float64
	}{
		{"ndjson", "/v1/jobs", "application/x-ndjson", ndjson, false, 1},
		{"ndjson gzip", "/v1/jobs", "application/x-ndjson; charset=utf-8", strings.ReplaceAll(ndjson, "n1", "n2"), true, 1},
		{"json array", "/v1/jobs?entity=customers", "application/json", array, false, 2},
		{"json array gzip", "/v1/jobs?entity=customers", "application/json", strings.ReplaceAll(array, "j", "k"), true, 2},
		{"csv", "/v1/jobs?entity=customers&id_column=command&version_column=ver", "text/csv", csv, false, 2},
		{"csv gzip", "/v1/jobs?entity=customers&id_column=command&version_column=ver", "text/csv", "command,customer_id,ver\nd1,d1,1\nd2,d2,1\n", true, 2},
	} {
		var body io.Reader = strings.NewReader(tt.body)
		if tt.gz {
			body = gzipped(t, tt.body)
		}
		resp, m := s.post(t, tt.path, tt.ct, "", body, tt.gz)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s: %v", tt.name, m)
		require.Equal(t, tt.accepted, m["accepted"], tt.name)
		require.Equal(t, pipeline.JobCompleted, s.wait(t, pipeline.JobID(m["job_id"].(string))).state, tt.name)
	}
	got := s.table(t)
	require.Len(t, got, 10)
	require.Equal(t, "Lovelace, Ada", got["c1"].name)
	require.Equal(t, "10.50", got["c1"].balance)
	require.Equal(t, "", got["c2"].balance, "an empty CSV cell is NULL")
}

// TestUploadPlacesARowsCommandsInOnePartition: ingress places each
// command by its entity and key, not its id (which stays the record key),
// so that one row's commands go through one partition and batches of
// different partitions never wait for each other's row locks.
func TestUploadPlacesARowsCommandsInOnePartition(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"kafka.partitions": 6})
	const keys, perKey = 12, 8
	var lines []string
	for i := range keys * perKey {
		lines = append(lines, fmt.Sprintf(`{"id":"c-%d","entity":"customers","version":%d,"data":{"customer_id":"cust-%d","name":"n%d"}}`,
			i, i, i%keys, i))
	}
	u := s.upload(t, lines)
	require.EqualValues(t, keys*perKey, u.accepted)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := map[string]int32{} // customer_id → partition
	used := map[int32]bool{}
	n := 0
	require.NoError(t, kafka.Reader{Cluster: kafka.Plaintext(s.brokers...)}.Read(ctx, "spool.commands", -1, func(r pipeline.Record) error {
		c, err := pipeline.DecodeCommand(r.Value)
		require.NoError(t, err)
		require.Equal(t, string(c.ID), string(r.Key), "the record key is the command id")
		var key string
		require.NoError(t, json.Unmarshal(c.Data["customer_id"], &key))
		if p, ok := at[key]; ok {
			require.Equal(t, p, r.Partition, "the commands of %s", key)
		}
		at[key], used[r.Partition] = r.Partition, true
		n++
		return nil
	}))
	require.Equal(t, keys*perKey, n)
	require.Greater(t, len(used), 2, "rows spread over the partitions")
}

// TestUploadRefusesBadBodies: each answer is problem+json naming the
// problem, and nothing half-read is claimed as accepted.
func TestUploadRefusesBadBodies(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for _, tt := range []struct {
		name, path, ct, body string
		status               int
		detail               string
	}{
		{"unsupported type", "/v1/jobs", "text/plain", "x", http.StatusUnsupportedMediaType, "is not supported"},
		{"not an array", "/v1/jobs", "application/json", `{"id":"a"}`, http.StatusBadRequest, "must be a JSON array"},
		{"cut short", "/v1/jobs?entity=customers", "application/json", `[{"id":"a","version":1,"data":{"customer_id":"a"}}`, http.StatusBadRequest, "unexpected EOF"},
		{"csv without id", "/v1/jobs?entity=customers", "text/csv", "customer_id\nx\n", http.StatusBadRequest, `no id column "id"`},
		{"csv bad op", "/v1/jobs?entity=customers&op=merge", "text/csv", "id\nx\n", http.StatusBadRequest, `op "merge"`},
		{"unknown entity", "/v1/jobs?entity=nope", "application/x-ndjson", "{}", http.StatusBadRequest, `entity "nope"`},
	} {
		resp, m := s.post(t, tt.path, tt.ct, "", strings.NewReader(tt.body), false)
		require.Equal(t, tt.status, resp.StatusCode, tt.name)
		require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"), tt.name)
		require.Contains(t, m["detail"], tt.detail, tt.name)
	}
	// Gzip that is not gzip.
	resp, m := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader("plain"), true)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, m["detail"], "gzip")

	// A broken array fails its job; what came before is still applied.
	resp, m = s.post(t, "/v1/jobs?entity=customers", "application/json", "", strings.NewReader(`[{"id":"ok","version":1,"data":{"customer_id":"ok"}}, {"id":`), false)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	j := s.wait(t, pipeline.JobID(m["job_id"].(string)))
	require.Equal(t, pipeline.JobFailed, j.state)
	require.Equal(t, int64(1), j.accepted)
	require.Equal(t, int64(1), j.c.Applied)
}

// TestAuthAndTenants: keys map to tenants; no key or a wrong one is 401; a
// tenant never sees another's job; command ids dedupe per tenant.
func TestAuthAndTenants(t *testing.T) {
	t.Parallel()
	sum := func(k string) string { h := sha256.Sum256([]byte(k)); return hex.EncodeToString(h[:]) }
	s := newStack(t, map[string]any{
		"auth.disabled": false,
		"auth.keys": []map[string]any{
			{"tenant": "acme", "key_sha256": sum("acme-secret")},
			{"tenant": "globex", "key_sha256": sum("globex-secret")},
		},
	})
	s.startProcessor(t, nil)
	line := func(key string) string {
		return fmt.Sprintf(`{"id":"same-id","entity":"customers","version":1,"data":{"customer_id":%q}}`, key)
	}
	for _, key := range []string{"", "wrong"} {
		resp, m := s.post(t, "/v1/jobs", "application/x-ndjson", key, strings.NewReader(line("x")), false)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		require.Equal(t, `Bearer realm="spool"`, resp.Header.Get("WWW-Authenticate"))
		require.Contains(t, m["detail"], "API key")
	}
	resp, a := s.post(t, "/v1/jobs", "application/x-ndjson", "acme-secret", strings.NewReader(line("acme-row")), false)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	resp, g := s.post(t, "/v1/jobs", "application/x-ndjson", "globex-secret", strings.NewReader(line("globex-row")), false)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	acme := &apiclient.Client{Server: s.server, APIKey: "acme-secret"}
	globex := &apiclient.Client{Server: s.server, APIKey: "globex-secret"}
	ctx := context.Background()
	ja, err := acme.WaitJob(ctx, pipeline.JobID(a["job_id"].(string)), 50e6, nil)
	require.NoError(t, err)
	jg, err := globex.WaitJob(ctx, pipeline.JobID(g["job_id"].(string)), 50e6, nil)
	require.NoError(t, err)
	require.Equal(t, int64(1), ja.Counts.Applied, "the same id from another tenant is not a duplicate")
	require.Equal(t, int64(1), jg.Counts.Applied)

	_, err = globex.Job(ctx, ja.JobID)
	var apiErr *apiclient.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusNotFound, apiErr.Status, "a tenant never sees another's job")
	require.Len(t, s.table(t), 2)
}

// TestUploadLimits: a body, a record or a record count past its bound is
// refused with a clear answer; an oversize NDJSON record is rejected alone.
func TestUploadLimits(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{
		"ingress.max_body_bytes": 4096, "ingress.max_record_bytes": 128, "ingress.max_records": 10,
		"ingress.read_idle_timeout": "1s",
	})
	s.startProcessor(t, nil)
	rec := func(i int) string {
		return fmt.Sprintf(`{"id":"l%d","entity":"customers","version":1,"data":{"customer_id":"k%d"}}`, i, i)
	}

	long := `{"id":"long","entity":"customers","version":1,"data":{"customer_id":"` + strings.Repeat("x", 200) + `"}}`
	resp, m := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(rec(1)+"\n"+long+"\n"+rec(2)), false)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%v", m)
	require.Equal(t, float64(2), m["accepted"])
	require.Contains(t, fmt.Sprint(m["rejections"]), "longer than 128 bytes")

	var many []string
	for i := range 11 {
		many = append(many, rec(100+i))
	}
	resp, m = s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(strings.Join(many, "\n")), false)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Contains(t, m["detail"], "more than 10 records")
	require.NotEmpty(t, m["job_id"], "the job exists: what was accepted is applied")

	resp, m = s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(strings.Repeat(" ", 5000)), false)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	require.Contains(t, m["detail"], "ingress.max_body_bytes")

	// A client that stops sending mid-body is cut off after the idle time,
	// with 408 naming the key.
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.server, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n%s\n", rec(7))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(20*time.Second)))
	status, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err, "the server must answer a stalled upload")
	require.Contains(t, status, "408")
}

// TestBrokerFailsMidUpload: when Kafka stops acknowledging part way, the
// answer is 503 with Retry-After, never 202; the job is failed with the
// records Kafka did acknowledge, and exactly those are applied.
func TestBrokerFailsMidUpload(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	var produces atomic.Int64
	s.refuseProduces(kerr.InvalidRecord.Code, func() bool { return produces.Add(1) > 3 }) // the first requests go through
	var lines []string
	for i := range 20_000 {
		lines = append(lines, fmt.Sprintf(`{"id":"m-%d","entity":"customers","version":1,"data":{"customer_id":"k%d"}}`, i, i))
	}
	resp, m := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(strings.Join(lines, "\n")), false)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%v", m)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	require.Contains(t, m["detail"], "retrying the whole upload is safe")

	j := s.wait(t, pipeline.JobID(m["job_id"].(string)))
	require.Equal(t, pipeline.JobFailed, j.state)
	require.Less(t, j.accepted, int64(20_000))
	require.Positive(t, j.accepted, "some records were acknowledged before the failure")
	require.Equal(t, j.accepted, j.c.Applied, "what Kafka acknowledged is applied, nothing else")
	require.Len(t, s.table(t), int(j.accepted))
}

// TestBacklogBound: while the processors are more than ingress.max_lag
// commands behind, uploads get 429 with Retry-After; once they catch up,
// uploads are accepted again.
func TestBacklogBound(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"ingress.max_lag": 100})
	var lines []string
	for i := range 300 {
		lines = append(lines, fmt.Sprintf(`{"id":"b-%d","entity":"customers","version":1,"data":{"customer_id":"k%d"}}`, i, i))
	}
	resp, _ := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(strings.Join(lines, "\n")), false)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	one := `{"id":"late","entity":"customers","version":1,"data":{"customer_id":"late"}}`
	require.Eventually(t, func() bool {
		resp, m := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(one), false)
		if resp.StatusCode != http.StatusTooManyRequests {
			return false
		}
		require.Equal(t, "5", resp.Header.Get("Retry-After"))
		require.Contains(t, m["detail"], "over the bound of 100")
		return true
	}, 20*time.Second, 200*time.Millisecond, "uploads must be turned away while 300 commands wait")

	s.startProcessor(t, nil)
	require.Eventually(t, func() bool {
		resp, _ := s.post(t, "/v1/jobs", "application/x-ndjson", "", strings.NewReader(one), false)
		return resp.StatusCode == http.StatusAccepted
	}, 30*time.Second, 200*time.Millisecond, "uploads must be accepted once the backlog drains")
}

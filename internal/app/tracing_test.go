package app_test

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/spoolhq/spool/pipeline"
)

// TestTracingFollowsAnUpload: with tracing.enabled, an upload whose request
// carries a W3C traceparent gets a span in that trace, and the processor's
// batch that writes its records links back to that span; the statements
// each sends to PostgreSQL are their children — sent over OTLP/HTTP to a
// receiver that decodes what a collector would.
func TestTracingFollowsAnUpload(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var spans []*tracepb.Span
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		var req coltrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(raw, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				spans = append(spans, ss.Spans...)
			}
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	defer receiver.Close()

	s := newStack(t, map[string]any{"tracing.enabled": true, "tracing.endpoint": receiver.URL})
	s.startProcessor(t, nil)

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	var lines []string
	for i := range 10 {
		lines = append(lines, fmt.Sprintf(`{"id":"t-%d","entity":"customers","version":1,"data":{"customer_id":"t%d"}}`, i, i))
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.server+"/v1/jobs",
		strings.NewReader(strings.Join(lines, "\n")+"\n"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(body))
	job := pipeline.JobID(strings.Split(strings.Split(string(body), `"job_id":"`)[1], `"`)[0])
	require.Equal(t, pipeline.JobCompleted, s.wait(t, job).state)

	find := func(name string) []*tracepb.Span {
		mu.Lock()
		defer mu.Unlock()
		var out []*tracepb.Span
		for _, sp := range spans {
			if sp.Name == name {
				out = append(out, sp)
			}
		}
		return out
	}
	var upload *tracepb.Span
	require.Eventually(t, func() bool { // spans go out in batches, every few seconds
		for _, sp := range find("spool.upload") {
			if hex.EncodeToString(sp.TraceId) == traceID {
				upload = sp
			}
		}
		return upload != nil
	}, 30*time.Second, 100*time.Millisecond, "no upload span in the request's trace")
	require.Equal(t, parentID, hex.EncodeToString(upload.ParentSpanId), "the upload's span continues the request's")
	var batch *tracepb.Span
	require.Eventually(t, func() bool {
		for _, sp := range find("spool.batch") {
			for _, l := range sp.Links {
				if bytes.Equal(l.TraceId, upload.TraceId) && bytes.Equal(l.SpanId, upload.SpanId) {
					batch = sp
				}
			}
		}
		return batch != nil
	}, 30*time.Second, 100*time.Millisecond, "no batch span links to the upload's")
	// Into PostgreSQL: the batch's statements are its children, the
	// upload's job records the upload's.
	childOf := func(parent *tracepb.Span) bool {
		for _, sp := range append(find("postgres.batch"), find("postgres.query")...) {
			if bytes.Equal(sp.ParentSpanId, parent.SpanId) && bytes.Equal(sp.TraceId, parent.TraceId) {
				return true
			}
		}
		return false
	}
	require.Eventually(t, func() bool { return childOf(batch) && childOf(upload) }, 30*time.Second, 100*time.Millisecond,
		"the statements of the batch and of the upload are not their spans' children")
}

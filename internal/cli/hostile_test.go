package cli_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/pipeline"
)

// hostile is text a client or a database can put in an id or an error: an
// OSC that retitles the terminal (ESC … BEL), a screen clear, a carriage
// return that overwrites the line, a soft hyphen and a right-to-left
// override that hide or reorder what is shown, and a byte that is not UTF-8.
const hostile = "x\x1b]0;pwned\x07\x1b[2J\rover\u00ad\u202e\x7f\xff"

// requireTerminalSafe holds human output to what a terminal shows as
// text: no control byte but newline and tab, no DEL, no C1 control, no
// format character, valid UTF-8.
func requireTerminalSafe(t *testing.T, what, out string) {
	t.Helper()
	require.True(t, utf8.ValidString(out), "%s: invalid UTF-8 in %q", what, out)
	for i, r := range out {
		if r == '\n' || r == '\t' {
			continue
		}
		bad := r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u00ad' || r == '\u202e'
		require.False(t, bad, "%s: raw %U at byte %d of %q", what, r, i, out)
	}
	require.NotContains(t, out, "\x1b", what)
}

// TestCLIShowsHostileTextEscaped: the dlq and jobs commands show ids,
// errors, keys, headers and values that carry terminal escapes escaped,
// never raw; their JSON output stays JSON.
func TestCLIShowsHostileTextEscaped(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Two dead letters: one whose value is JSON, one whose value is not.
	cluster := kafkatest.NewCluster(t)
	brokers := []string{cluster.Addr()}
	const topic = "hostile.dlq"
	require.NoError(t, kafka.EnsureTopics(ctx, kafka.Plaintext(brokers...), 1, 1, topic))
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: kafka.Plaintext(brokers...), Logger: testLogger(t)})
	require.NoError(t, err)
	defer producer.Close()
	now := time.Now().UTC()
	value, err := json.Marshal(map[string]any{"id": hostile, "entity": "customers" + hostile, "data": map[string]string{"name": hostile}})
	require.NoError(t, err)
	envelope := func(value []byte) pipeline.Record {
		e := &dlq.Envelope{
			Key: []byte(hostile), Value: value,
			Headers:    []pipeline.Header{{Key: "trace" + hostile, Value: []byte(hostile)}},
			ErrorClass: pipeline.ErrorClass("constraint" + hostile), Error: "violates check " + hostile,
			SourceTopic: "spool.commands" + hostile, Attempt: 1, FirstFailure: now, LastFailure: now,
			JobID: pipeline.JobID("job" + hostile), Tenant: "acme" + hostile, CommandID: pipeline.CommandID(hostile),
			Index: 3, Instance: "p" + hostile,
		}
		// spool's publisher escapes what it writes; another producer's
		// dead letter need not: the headers carry the raw bytes.
		raw := map[string]string{dlq.HeaderError: e.Error, dlq.HeaderErrorClass: string(e.ErrorClass),
			dlq.HeaderSourceTopic: e.SourceTopic, dlq.HeaderJobID: string(e.JobID), dlq.HeaderTenant: e.Tenant,
			dlq.HeaderCommandID: string(e.CommandID), dlq.HeaderInstance: e.Instance}
		r := e.Record()
		for i, h := range r.Headers {
			if v, ok := raw[h.Key]; ok {
				r.Headers[i].Value = []byte(v)
			}
		}
		return r
	}
	require.NoError(t, producer.ProduceSync(ctx, topic, envelope(value), envelope([]byte("not json "+hostile))))

	kafkaArgs := []string{"--brokers", cluster.Addr(), "--topic", topic}
	for _, args := range [][]string{
		{"dlq", "list"},
		{"dlq", "stats"},
		{"dlq", "show", "0:0"},
		{"dlq", "show", "0:1"},
		{"dlq", "replay", "--dry-run"},
	} {
		out := mustSpoolctl(ctx, t, append(args, kafkaArgs...)...)
		requireTerminalSafe(t, strings.Join(args, " "), out)
		require.Contains(t, out, `\x1b]0;pwned\a`, "%s shows the escape escaped:\n%s", strings.Join(args, " "), out)
	}
	show := mustSpoolctl(ctx, t, append([]string{"dlq", "show", "0:0"}, kafkaArgs...)...)
	require.Contains(t, show, `"entity": "customersx\u001b]0;pwned\u0007`, "the value is still pretty-printed JSON")

	// --json is JSON: the encoder escapes control characters.
	out := mustSpoolctl(ctx, t, append([]string{"dlq", "list", "--json"}, kafkaArgs...)...)
	lines := jsonLines(t, out)
	require.Len(t, lines, 2)
	require.NotContains(t, out, "\x1b")
	require.Contains(t, lines[0]["error"], "\x1b]0;pwned\x07", "JSON output keeps the text whole")

	// The jobs commands, from an API that answers hostile text.
	job := pipeline.JobID("job" + hostile)
	api := http.NewServeMux()
	api.HandleFunc("GET /v1/jobs/{id}/failures", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(pipeline.Failure{Index: 0, ID: pipeline.CommandID(hostile), Stage: "processor",
			Outcome: pipeline.Outcome("dead_lettered"), Class: pipeline.ErrorClass("constraint" + hostile), Error: "violates " + hostile})
	})
	api.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(httpapi.JobView{JobID: job, State: pipeline.JobState("failed" + hostile), Error: "upload broke off: " + hostile})
	})
	api.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(httpapi.JobList{Jobs: []httpapi.JobView{{JobID: job, State: pipeline.JobState("failed" + hostile)}}})
	})
	srv := httptest.NewServer(api)
	defer srv.Close()
	server := []string{"--server", srv.URL}
	for _, args := range [][]string{
		{"jobs", "failures", string(job)},
		{"jobs", "get", string(job)},
		{"jobs", "list"},
	} {
		out := mustSpoolctl(ctx, t, append(args, server...)...)
		requireTerminalSafe(t, strings.Join(args[:2], " "), out)
		require.Contains(t, out, `\x1b]0;pwned\a`, "%s shows the escape escaped:\n%s", strings.Join(args[:2], " "), out)
	}
}

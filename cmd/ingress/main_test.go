package main_test

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/internal/kafkatest"
	"github.com/spoolhq/spool/internal/pgtest"
	"github.com/spoolhq/spool/internal/tools/harness"
	"github.com/spoolhq/spool/pipeline"
)

// maxRSS is what ingress may hold at its peak in any one case below.
const maxRSS = 256 << 20

// hostile is the real ingress binary with two tenants: acme writes every
// entity, other only events.
type hostile struct {
	url  string
	proc *harness.Proc
}

func startHostile(t *testing.T) *hostile {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ingress")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, string(out))

	db := pgtest.New(t)
	db.Exec(t, `CREATE TABLE customers (customer_id text PRIMARY KEY, name text,
		balance numeric(18,2) CHECK (balance >= 0), version bigint NOT NULL)`)
	db.Exec(t, `CREATE TABLE events (event_id text PRIMARY KEY, payload text)`)
	b := kafkatest.NewCluster(t)
	addr, err := harness.FreeAddr()
	require.NoError(t, err)
	cfg := filepath.Join(t.TempDir(), "spool.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`
auth:
  keys:
    - {tenant: acme, key_sha256: %s}
    - {tenant: other, key_sha256: %s, entities: [events]}
ingress:
  read_idle_timeout: 5s
  metrics_addr: "127.0.0.1:0"
  max_concurrent_uploads: 12
  max_concurrent_uploads_per_tenant: 8
entities:
  customers: {table: %s.customers, key: [customer_id], version_column: version}
  events: {table: %s.events, key: [event_id]}
`, sum("acme-key"), sum("other-key"), db.Schema, db.Schema)), 0o600))
	return startIngress(t, bin, addr, cfg, "SPOOL_DATABASE_URL="+db.URL, "SPOOL_KAFKA_BROKERS="+b.Addr(), "SPOOL_KAFKA_PARTITIONS=2",
		"SPOOL_LOG_LEVEL=warn")
}

// startIngress runs the binary bin on addr with the config file cfg and
// the environment env, and waits until it is ready.
func startIngress(t *testing.T, bin, addr, cfg string, env ...string) *hostile {
	t.Helper()
	p, err := harness.Start(filepath.Dir(bin), "ingress", append(env, "SPOOL_HTTP_ADDR="+addr), "--config", cfg)
	require.NoError(t, err)
	t.Cleanup(p.Kill)
	h := &hostile{url: "http://" + addr, proc: p}
	require.NoError(t, p.WaitFor(t.Context(), "ready", harness.HTTPOK(h.url+"/readyz")))
	return h
}

func sum(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:])
}

// oneShot sends each upload on a connection of its own: an answer given
// before the body was read closes the connection, and a pooled connection
// could be reused just as the server closes it.
var oneShot = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(a.body, &m), "%d %s", a.status, a.body)
	return m
}

func (h *hostile) post(t *testing.T, key, path, contentType string, gz bool, body io.Reader) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.url+path, body)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", contentType)
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := oneShot.Do(req)
	require.NoError(t, err, "ingress's log:\n%s", h.proc.Log())
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{resp.StatusCode, resp.Header, b}
}

func (h *hostile) get(t *testing.T, key, path string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.url+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	return b
}

// peak runs one case and reports ingress's peak RSS during it (the kernel's
// high-water mark, reset before the case).
func (h *hostile) peak(t *testing.T, name string, run func(t *testing.T)) {
	t.Helper()
	require.NoError(t, os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", h.proc.Pid()), []byte("5"), 0))
	before, err := h.proc.Usage()
	require.NoError(t, err)
	t.Run(name, run)
	after, err := h.proc.Usage()
	require.NoError(t, err)
	t.Logf("%s: ingress peak RSS %d MiB, CPU %s", name, after.PeakRSS>>20, after.Sub(before).CPU)
	require.Less(t, after.PeakRSS, int64(maxRSS), "%s: ingress peak RSS %d MiB", name, after.PeakRSS>>20)
}

func gzipped(t *testing.T, write func(w io.Writer)) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	require.NoError(t, err)
	write(zw)
	require.NoError(t, zw.Close())
	return &b
}

// waitUploading waits until ingress reads n uploads at once.
func (h *hostile) waitUploading(t *testing.T, n int) {
	t.Helper()
	want := fmt.Sprintf("spool_ingress_uploads_in_progress %d\n", n)
	require.Eventually(t, func() bool {
		resp, err := http.Get(h.url + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), want)
	}, 10*time.Second, 20*time.Millisecond, "ingress never read %d uploads at once", n)
}

// requireBoundedRejections checks an upload answer and the job's failures
// listing: every rejection is there, each short and printable.
func (h *hostile) requireBoundedRejections(t *testing.T, key string, a answer, rejected int) {
	t.Helper()
	require.Equal(t, http.StatusAccepted, a.status, "%s", a.body)
	m := a.json(t)
	require.EqualValues(t, rejected, m["rejected"])
	for _, r := range m["rejections"].([]any) {
		r := r.(map[string]any)
		require.LessOrEqual(t, len(r["error"].(string)), pipeline.MaxErrorBytes)
		require.LessOrEqual(t, len(r["id"].(string)), 4*pipeline.MaxIDLength)
	}
	require.Less(t, len(a.body), 512<<10, "the answer is bounded in bytes")
	failures := h.get(t, key, "/v1/jobs/"+m["job_id"].(string)+"/failures?format=csv")
	lines := strings.Split(strings.TrimSpace(string(failures)), "\n")
	require.Len(t, lines, rejected+1, "every rejection is listed (and a header)")
	for _, l := range lines {
		require.Less(t, len(l), 2<<10)
	}
	requirePrintable(t, failures)
}

// requirePrintable: no control character but the line ends reaches a
// terminal that shows b.
func requirePrintable(t *testing.T, b []byte) {
	t.Helper()
	for i, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' || c == 0x7f {
			t.Fatalf("control byte %#x at %d: %q", c, i, b[max(0, i-40):min(len(b), i+40)])
		}
	}
}

// TestHostileUploads sends each attack an authenticated client could try
// to the real ingress binary: each gets a clear 4xx or per-record
// rejections, no rejection is lost, and ingress's peak RSS stays under
// 256 MiB in every case.
func TestHostileUploads(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	h := startHostile(t)

	h.peak(t, "CSV header with a 900 KB column name", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("id,customer_id,version," + strings.Repeat("n", 900_000) + "\n")
		for i := range 400 {
			fmt.Fprintf(&b, "c%d,k%d,1,x\n", i, i)
		}
		a := h.post(t, "acme-key", "/v1/jobs?entity=customers&version_column=version", "text/csv", false, strings.NewReader(b.String()))
		h.requireBoundedRejections(t, "acme-key", a, 400)
		require.Contains(t, string(a.body), "unknown_column")
	})

	h.peak(t, "ids of 900 KB of soft hyphens", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			id := strings.Repeat("\u00ad", 450_000)
			for i := range 100 {
				fmt.Fprintf(pw, `{"id":"%s%d","entity":"customers","version":1,"data":{"customer_id":"k"}}`+"\n", id, i)
			}
			pw.Close()
		}()
		a := h.post(t, "acme-key", "/v1/jobs", "application/x-ndjson", false, pr)
		h.requireBoundedRejections(t, "acme-key", a, 100)
	})

	h.peak(t, "terminal escapes in a value and an id", func(t *testing.T) {
		body := `{"id":"e1","entity":"customers","version":1,"data":{"customer_id":"k","balance":"\u001b]0;pwned\u0007"}}` + "\n" +
			`{"id":"e2\u001b[2J","entity":"customers","version":1,"data":{"customer_id":"k"}}` + "\n"
		a := h.post(t, "acme-key", "/v1/jobs", "application/x-ndjson", false, strings.NewReader(body))
		h.requireBoundedRejections(t, "acme-key", a, 2)
		require.Contains(t, string(a.body), `\\x1b]0;pwned\\a`, "the value is quoted escaped")
	})

	h.peak(t, "gzip of soft-hyphen ids", func(t *testing.T) {
		body := gzipped(t, func(w io.Writer) {
			id := strings.Repeat("\u00ad", 500_000)
			for i := range 250 {
				fmt.Fprintf(w, `{"id":"%s%d","entity":"customers","version":1,"data":{"customer_id":"k"}}`+"\n", id, i)
			}
		})
		a := h.post(t, "acme-key", "/v1/jobs", "application/x-ndjson", true, body)
		require.Equal(t, http.StatusRequestEntityTooLarge, a.status, "%s", a.body)
		require.Contains(t, a.json(t)["detail"], "ingress.max_decompression_ratio")
	})

	h.peak(t, "gzip bomb of newlines", func(t *testing.T) {
		body := gzipped(t, func(w io.Writer) {
			line := bytes.Repeat([]byte("\n"), 1<<20)
			for range 512 {
				_, _ = w.Write(line)
			}
		})
		a := h.post(t, "acme-key", "/v1/jobs", "application/x-ndjson", true, body)
		require.Equal(t, http.StatusRequestEntityTooLarge, a.status, "%s", a.body)
		require.Contains(t, a.json(t)["detail"], "ingress.max_decompression_ratio")
	})

	h.peak(t, "records of ingress.max_record_bytes", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			name := strings.Repeat("n", 1<<20-200)
			for i := range 40 {
				fmt.Fprintf(pw, `{"id":"big-%d","entity":"customers","version":1,"data":{"customer_id":"k%d","name":"%s"}}`+"\n", i, i, name)
			}
			pw.Close()
		}()
		a := h.post(t, "acme-key", "/v1/jobs", "application/x-ndjson", false, pr)
		require.Equal(t, http.StatusAccepted, a.status, "%s", a.body)
		require.EqualValues(t, 40, a.json(t)["accepted"], "a record of the limit fits the topic spool created")
	})

	h.peak(t, "a tenant writing an entity it may not", func(t *testing.T) {
		a := h.post(t, "other-key", "/v1/jobs?entity=customers", "application/x-ndjson", false,
			strings.NewReader(`{"id":"f1","version":1,"data":{"customer_id":"k"}}`))
		require.Equal(t, http.StatusForbidden, a.status, "%s", a.body)
		body := `{"id":"f2","entity":"events","data":{"event_id":"ev1","payload":"ok"}}` + "\n" +
			`{"id":"f3","entity":"customers","version":9,"data":{"customer_id":"k","name":"overwritten"}}` + "\n"
		a = h.post(t, "other-key", "/v1/jobs", "application/x-ndjson", false, strings.NewReader(body))
		h.requireBoundedRejections(t, "other-key", a, 1)
		m := a.json(t)
		require.EqualValues(t, 1, m["accepted"])
		rej := m["rejections"].([]any)[0].(map[string]any)
		require.EqualValues(t, 1, rej["index"])
		require.Equal(t, string(pipeline.ClassForbidden), rej["error_class"])
	})

	h.peak(t, "trickling uploads hold no slot for ever", func(t *testing.T) {
		var wg sync.WaitGroup
		statuses := make(chan int, 12)
		trickle := func(key string) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pr, pw := io.Pipe()
				go func() {
					defer pw.Close()
					for range 600 { // a minute at 10 bytes/s, under the minimum rate
						if _, err := pw.Write([]byte("\n")); err != nil {
							return
						}
						time.Sleep(100 * time.Millisecond)
					}
				}()
				req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/jobs", pr)
				req.Header.Set("Authorization", "Bearer "+key)
				req.Header.Set("Content-Type", "application/x-ndjson")
				resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
				if err != nil {
					statuses <- 0
					return
				}
				resp.Body.Close()
				statuses <- resp.StatusCode
			}()
		}
		small := `{"id":"s-` + strconv.FormatInt(time.Now().UnixNano(), 10) + `","entity":"events","data":{"event_id":"ev2"}}`
		busy := func(key string) bool {
			a := h.post(t, key, "/v1/jobs", "application/x-ndjson", false, strings.NewReader(small))
			if a.status == http.StatusTooManyRequests {
				require.NotEmpty(t, a.header.Get("Retry-After"))
				return true
			}
			require.Equal(t, http.StatusAccepted, a.status, "%s", a.body)
			return false
		}
		for range 8 {
			trickle("acme-key")
		}
		h.waitUploading(t, 8)
		require.True(t, busy("acme-key"), "a ninth upload of the tenant is turned away")
		require.False(t, busy("other-key"), "another tenant still uploads")
		for range 4 {
			trickle("other-key")
		}
		h.waitUploading(t, 12)
		require.True(t, busy("other-key"), "past max_concurrent_uploads in all, every tenant is turned away")
		wg.Wait()
		close(statuses)
		for s := range statuses {
			require.Equal(t, http.StatusRequestTimeout, s, "a trickle is cut off under the minimum rate")
		}
		require.False(t, busy("acme-key"), "the slots are free again")
	})
}

// TestSIGHUPReloadsEntities: the real binary reads its configuration's
// entities again on SIGHUP: an entity added to the file is written from
// then on, without a restart; a file that does not load leaves them as
// they were.
func TestSIGHUPReloadsEntities(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ingress")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, string(out))
	db := pgtest.New(t)
	db.Exec(t, `CREATE TABLE customers (customer_id text PRIMARY KEY, name text, version bigint NOT NULL)`)
	db.Exec(t, `CREATE TABLE events (event_id text PRIMARY KEY, payload text)`)
	b := kafkatest.NewCluster(t)
	addr, err := harness.FreeAddr()
	require.NoError(t, err)
	cfg := filepath.Join(t.TempDir(), "spool.yaml")
	entities := func(extra string) []byte {
		return []byte(fmt.Sprintf("ingress:\n  metrics_addr: \"127.0.0.1:0\"\nentities:\n  customers: {table: %s.customers, key: [customer_id], version_column: version}\n%s",
			db.Schema, extra))
	}
	require.NoError(t, os.WriteFile(cfg, entities(""), 0o600))
	h := startIngress(t, bin, addr, cfg, "SPOOL_DATABASE_URL="+db.URL, "SPOOL_KAFKA_BROKERS="+b.Addr(), "SPOOL_KAFKA_PARTITIONS=1",
		"SPOOL_AUTH_DISABLED=true")
	p := h.proc
	event := `{"id":"e1","entity":"events","data":{"event_id":"e1","payload":"x"}}`
	accepted := func() float64 {
		a := h.post(t, "", "/v1/jobs", "application/x-ndjson", false, strings.NewReader(event))
		require.Equal(t, http.StatusAccepted, a.status, "%s", a.body)
		return a.json(t)["accepted"].(float64)
	}
	require.Zero(t, accepted(), "events is not configured yet")

	require.NoError(t, os.WriteFile(cfg, entities("  events: {table: nowhere.events, key: [event_id]}\n"), 0o600))
	require.NoError(t, syscall.Kill(p.Pid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(p.Log(), "SIGHUP: loading the entities again") },
		10*time.Second, 50*time.Millisecond, "a table that does not exist keeps the entities as they were")
	require.Zero(t, accepted())

	require.NoError(t, os.WriteFile(cfg, entities(fmt.Sprintf("  events: {table: %s.events, key: [event_id]}\n", db.Schema)), 0o600))
	require.NoError(t, syscall.Kill(p.Pid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return accepted() == 1 }, 10*time.Second, 100*time.Millisecond,
		"events is configured after SIGHUP; ingress's log:\n%s", p.Log())
}

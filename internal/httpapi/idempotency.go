package httpapi

import (
	"bytes"
	"context"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// IdempotencyStore keeps Idempotency-Key records (see
// postgres.Store.ClaimIdempotencyKey for the semantics).
type IdempotencyStore interface {
	ClaimIdempotencyKey(ctx context.Context, tenant, key string, window time.Duration) (bool, *pipeline.IdempotentRecord, error)
	HeartbeatIdempotencyKey(ctx context.Context, tenant, key string) error
	FinishIdempotencyKey(ctx context.Context, tenant, key string, rec *pipeline.IdempotentRecord) error
}

// heartbeatEvery keeps an upload's lease (its idempotency key's, its
// job's: postgres.UploadLease, 10 s) alive while it streams.
const heartbeatEvery = 2 * time.Second

// idempotencyKey reads the header. The draft makes it a structured-field
// string ("…"); the bare form most clients send is accepted too.
func idempotencyKey(r *http.Request) (string, bool) {
	k := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
	if len(k) >= 2 && k[0] == '"' && k[len(k)-1] == '"' {
		k = k[1 : len(k)-1]
	}
	if r.Header.Get("Idempotency-Key") == "" {
		return "", true
	}
	if k == "" || len(k) > 255 {
		return "", false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return "", false
		}
	}
	return k, true
}

// replay answers a request whose key another request owns: 409 while that
// one runs; once done, 422 if this body differs, else the first answer.
func (s *Server) replay(w http.ResponseWriter, body io.Reader, fingerprint hash.Hash, rec *pipeline.IdempotentRecord, mismatch int, detail string) {
	if rec.InFlight {
		// Retry once the owner's lease has run out: if it died, the retry
		// takes the key over; if it lives, the retry meets its answer.
		w.Header().Set("Retry-After", strconv.Itoa(int(rec.LeaseLeft.Seconds())+1))
		writeProblem(w, http.StatusConflict, "a request with this Idempotency-Key is still in progress; retry later")
		return
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		status, detail := readStatus(err)
		writeProblem(w, status, detail)
		return
	}
	if !bytes.Equal(fingerprint.Sum(nil), rec.Fingerprint) {
		writeProblem(w, mismatch, detail)
		return
	}
	ct := "application/json"
	if rec.Status >= 400 {
		ct = "application/problem+json"
	}
	w.Header().Set("Content-Type", ct)
	if rec.Location != "" {
		w.Header().Set("Location", rec.Location)
	}
	w.Header().Set("Idempotent-Replayed", "true")
	w.WriteHeader(rec.Status)
	_, _ = w.Write(rec.Body)
}

// heartbeat calls beat every heartbeatEvery until stop is called; stop
// returns once no beat runs any more.
func (s *Server) heartbeat(ctx context.Context, what string, beat func(context.Context) error) (stop func()) {
	done, ended := make(chan struct{}), make(chan struct{})
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer close(ended)
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := beat(ctx); err != nil {
					s.log(ctx).Warn(what, "error", err)
				}
			}
		}
	}()
	return func() { close(done); <-ended }
}

// capture buffers an answer so that it can be stored before it is sent.
type capture struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newCapture() *capture { return &capture{header: http.Header{}, status: http.StatusOK} }

func (c *capture) Header() http.Header         { return c.header }
func (c *capture) Write(b []byte) (int, error) { return c.body.Write(b) }
func (c *capture) WriteHeader(status int)      { c.status = status }

func (c *capture) sendTo(w http.ResponseWriter) {
	for k, v := range c.header {
		w.Header()[k] = v
	}
	w.WriteHeader(c.status)
	_, _ = w.Write(c.body.Bytes()) // a client that went away gets nothing more
}

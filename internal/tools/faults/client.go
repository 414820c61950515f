package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spoolhq/spool/internal/apiclient"
	"github.com/spoolhq/spool/internal/httpapi"
)

// answer is an upload's final answer, after its resends.
type answer struct {
	Upload   int
	View     *httpapi.UploadView
	Attempts int
}

// clients uploads the workload, several uploads at a time, each streamed
// at a steady pace so that faults meet uploads in flight, each under its
// own Idempotency-Key and resent with apiclient.Resend, as spoolctl upload
// does.
type clients struct {
	w        *workload
	api      *apiclient.Client
	parallel int
	// linesPerTick lines are sent every tick by each upload.
	linesPerTick int
	// inFlight counts uploads whose body is being sent.
	inFlight atomic.Int32
	gate     *gate
	events   *eventLog
}

const tick = 50 * time.Millisecond

func newClients(w *workload, server string, parallel int, rate float64, g *gate, ev *eventLog) *clients {
	return &clients{
		w: w, api: &apiclient.Client{Server: server, HTTP: &http.Client{Timeout: 2 * time.Minute}},
		parallel: parallel, gate: g, events: ev,
		linesPerTick: max(1, int(rate*tick.Seconds())/parallel),
	}
}

// run uploads every upload and returns their answers, or the first upload
// that failed for good.
func (c *clients) run(ctx context.Context) ([]answer, error) {
	next := make(chan int)
	go func() {
		defer close(next)
		for u := range c.w.uploads {
			select {
			case next <- u:
			case <-ctx.Done():
				return
			}
		}
	}()
	var mu sync.Mutex
	var answers []answer
	var failed error
	var wg sync.WaitGroup
	for range c.parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range next {
				c.gate.wait()
				a, err := c.upload(ctx, u)
				mu.Lock()
				if err != nil && failed == nil {
					failed = err
				}
				answers = append(answers, a)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return answers, failed
}

func (c *clients) upload(ctx context.Context, u int) (answer, error) {
	body := c.w.body(u)
	key := fmt.Sprintf("faults-upload-%d", u)
	a := answer{Upload: u}
	send := func(ctx context.Context) (*httpapi.UploadView, error) {
		a.Attempts++
		return c.api.Upload(ctx, c.paced(ctx, body), apiclient.UploadOptions{ContentType: "application/x-ndjson", IdempotencyKey: key})
	}
	view, err := apiclient.Resend(ctx, send, func(attempt int, err error, wait time.Duration) {
		c.events.log("upload %d attempt %d: %v; resending in %s", u, attempt, err, wait)
	})
	if err != nil {
		return a, fmt.Errorf("upload %d (%d attempts): %w", u, a.Attempts, err)
	}
	a.View = view
	return a, nil
}

// paced streams body a few lines every tick.
func (c *clients) paced(ctx context.Context, body []byte) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		c.inFlight.Add(1)
		defer c.inFlight.Add(-1)
		t := time.NewTicker(tick)
		defer t.Stop()
		rest := body
		for len(rest) > 0 {
			n := 0
			for range c.linesPerTick {
				i := bytes.IndexByte(rest[n:], '\n')
				if i < 0 {
					n = len(rest)
					break
				}
				n += i + 1
			}
			if _, err := pw.Write(rest[:n]); err != nil {
				return // the request ended: the answer says why
			}
			rest = rest[n:]
			select {
			case <-ctx.Done():
				pw.CloseWithError(ctx.Err())
				return
			case <-t.C:
			}
		}
		pw.Close()
	}()
	return pr
}

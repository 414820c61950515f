package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// Limits bound what one upload may cost: its size before and after
// decompression, its records, its rejections, how many uploads run at once
// and how slowly one may send. MaxLag and the bounds after it are off at
// zero.
type Limits struct {
	// ReadIdleTimeout cuts off an upload that sends nothing for this long;
	// each read pushes the deadline on, so a long healthy upload lives.
	ReadIdleTimeout time.Duration
	MaxBodyBytes    int64
	MaxRecordBytes  int
	// MaxKafkaRecordBytes bounds a record as Kafka measures it
	// (pipeline.Record.BatchBytes: key, value and headers with their
	// overhead): the commands topic's max.message.bytes and the producer's
	// batch limit. A record over it is rejected alone. 0: no bound.
	MaxKafkaRecordBytes int
	MaxRecords          int64
	MaxRejections       int
	MaxLag              int64
	// MaxDecompressedBytes bounds the body once its Content-Encoding is
	// undone; MaxDecompressionRatio bounds decompressed over sent bytes,
	// past the first ratioGrace bytes.
	MaxDecompressedBytes  int64
	MaxDecompressionRatio int
	// MaxUploads and MaxUploadsPerTenant bound the uploads read at once.
	MaxUploads          int
	MaxUploadsPerTenant int
	// MinBytesPerSecond is the slowest average an upload may send at, over
	// the time ingress waits for it, once ReadIdleTimeout has passed.
	MinBytesPerSecond int
}

// ratioGrace is how much an upload inflates before the ratio is checked:
// the first bytes of a stream may gzip far better than the rest.
const ratioGrace = 1 << 20

// boundError is an upload past a configured bound, answered with Status:
// 413 past a size, 408 for an idle or trickling upload, 429 past a
// concurrency bound. The message names the configuration key.
type boundError struct {
	Key    string
	Status int
	Detail string
}

func (e *boundError) Error() string { return e.Detail + " (" + e.Key + ")" }

func overBound(key, format string, args ...any) *boundError {
	return &boundError{Key: key, Status: http.StatusRequestEntityTooLarge, Detail: fmt.Sprintf(format, args...)}
}

// readStatus is the status and message that answer an upload whose body
// could not be read to its end.
func readStatus(err error) (int, string) {
	var be *boundError
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &be):
		return be.Status, be.Error()
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes (ingress.max_body_bytes)", tooLarge.Limit)
	default:
		return http.StatusBadRequest, "reading the upload: " + err.Error()
	}
}

// uploadSlots counts the uploads being read, in all and per tenant.
type uploadSlots struct {
	mu        sync.Mutex
	total     int
	perTenant map[string]int
}

// take reserves a slot for tenant, or says which bound is full.
func (u *uploadSlots) take(tenant string, l Limits) (release func(), err *boundError) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case l.MaxUploadsPerTenant > 0 && u.perTenant[tenant] >= l.MaxUploadsPerTenant:
		return nil, &boundError{Key: "ingress.max_concurrent_uploads_per_tenant", Status: http.StatusTooManyRequests,
			Detail: fmt.Sprintf("this tenant already has %d uploads in progress; retry when one has finished", u.perTenant[tenant])}
	case l.MaxUploads > 0 && u.total >= l.MaxUploads:
		return nil, &boundError{Key: "ingress.max_concurrent_uploads", Status: http.StatusTooManyRequests,
			Detail: fmt.Sprintf("ingress is reading %d uploads already; retry shortly", u.total)}
	}
	if u.perTenant == nil {
		u.perTenant = map[string]int{}
	}
	u.total++
	u.perTenant[tenant]++
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			defer u.mu.Unlock()
			u.total--
			if u.perTenant[tenant]--; u.perTenant[tenant] == 0 {
				delete(u.perTenant, tenant)
			}
		})
	}, nil
}

// pacedBody moves the connection's read deadline on before every read: a
// client that stops sending for Limits.ReadIdleTimeout is cut off, and so
// is one whose bytes, over the time ingress has waited in reads (not the
// time it spent producing, when the broker is the slow one), average under
// Limits.MinBytesPerSecond once the first ReadIdleTimeout has passed. A
// trickle cannot hold a slot for ever.
type pacedBody struct {
	r       io.Reader
	rc      *http.ResponseController
	idle    time.Duration
	minRate int
	n       int64         // bytes read
	waited  time.Duration // time spent waiting in reads
}

func (p *pacedBody) Read(b []byte) (int, error) {
	wait, paced := p.idle, false
	if p.minRate > 0 {
		budget := p.idle + time.Duration(float64(p.n)/float64(p.minRate)*float64(time.Second)) - p.waited
		if budget <= 0 {
			return 0, p.tooSlow()
		}
		if budget < wait {
			wait, paced = budget, true
		}
	}
	_ = p.rc.SetReadDeadline(time.Now().Add(wait)) // unsupported writers just keep no deadline
	start := time.Now()
	n, err := p.r.Read(b)
	p.waited += time.Since(start)
	p.n += int64(n)
	switch {
	case !errors.Is(err, os.ErrDeadlineExceeded):
		return n, err
	case paced:
		return n, p.tooSlow()
	default:
		return n, &boundError{Key: "ingress.read_idle_timeout", Status: http.StatusRequestTimeout,
			Detail: fmt.Sprintf("the upload sent nothing for %s", p.idle)}
	}
}

func (p *pacedBody) tooSlow() error {
	return &boundError{Key: "ingress.min_upload_bytes_per_second", Status: http.StatusRequestTimeout,
		Detail: fmt.Sprintf("the upload sent %d bytes in %s, slower than %d bytes per second",
			p.n, p.waited.Round(time.Second), p.minRate)}
}

// inflateBound bounds a decoded body: at most max bytes, and, when ratio is
// set, at most ratio times the bytes sent once past ratioGrace. Whitespace
// and blank lines count like any other byte.
type inflateBound struct {
	r     io.Reader
	sent  *countingReader
	max   int64
	ratio int
	n     int64
}

func (l *inflateBound) Read(p []byte) (int, error) {
	if l.max > 0 && int64(len(p)) > l.max-l.n+1 {
		p = p[:l.max-l.n+1]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	switch {
	case l.max > 0 && l.n > l.max:
		return 0, overBound("ingress.max_decompressed_bytes", "the body is larger than %d bytes once decompressed", l.max)
	case l.ratio > 0 && l.n > ratioGrace && l.n > int64(l.ratio)*l.sent.n:
		return 0, overBound("ingress.max_decompression_ratio",
			"the body inflates more than %d times: %d bytes sent became %d", l.ratio, l.sent.n, l.n)
	}
	return n, err
}

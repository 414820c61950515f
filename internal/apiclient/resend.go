package apiclient

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// ResendFor bounds how long Resend keeps sending an upload. It outlasts an
// ingress that died mid-upload: its restart, and the lease (10 s) after
// which the upload's Idempotency-Key may be taken over.
const ResendFor = 3 * time.Minute

// Resendable reports whether an upload that failed with err may be sent
// again under the same Idempotency-Key: its answer was 409 with a
// Retry-After (the same key still in progress), 408 with a Retry-After (a
// part cut off), 429, 503, or lost on the network. A file that cannot
// be opened or read is not the network's fault: sending it again cannot
// help.
func Resendable(err error) bool {
	var pathErr *fs.PathError
	if err == nil || errors.As(err, &pathErr) {
		return false
	}
	var apiErr *Error
	if errors.As(err, &apiErr) {
		// A 409 is worth waiting out only with a Retry-After: the same key
		// (or part) still in flight. Without one it is final (other bytes,
		// a job no longer open). So is a 408: with a Retry-After it is a
		// part cut off, to be sent again; without, an upload's kept answer.
		return ((apiErr.Status == http.StatusConflict || apiErr.Status == http.StatusRequestTimeout) && apiErr.RetryAfter > 0) ||
			apiErr.Status == http.StatusTooManyRequests || apiErr.Status == http.StatusServiceUnavailable
	}
	return true
}

// Resend calls send, a whole upload under one Idempotency-Key, until it
// succeeds, fails for good (Resendable says no), ctx ends or ResendFor has
// passed, waiting between attempts 1 s, 2 s, 4 s, then 5 s, each ±30% so
// that clients cut off together do not come back together, or the
// server's Retry-After when longer; a 409's Retry-After (when the key's
// lease runs out) is followed as it is. An ingress restarting is back in
// seconds: a longer wait would only leave the upload idle. The key makes
// every resend safe: the server replays the answer of an upload that did
// go through. notify, when set, hears of each failed attempt before its
// wait.
func Resend[T any](ctx context.Context, send func(context.Context) (T, error), notify func(attempt int, err error, wait time.Duration)) (T, error) {
	deadline := time.Now().Add(ResendFor)
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.RandomizationFactor, b.MaxElapsedTime = time.Second, 5*time.Second, 0.3, 0
	b.Reset()
	for attempt := 1; ; attempt++ {
		res, err := send(ctx)
		if !Resendable(err) || ctx.Err() != nil {
			return res, err
		}
		wait := b.NextBackOff()
		var apiErr *Error
		switch {
		case errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict && apiErr.RetryAfter > 0:
			wait = apiErr.RetryAfter // when the key's lease runs out: the server knows
		case errors.As(err, &apiErr) && apiErr.RetryAfter > wait:
			wait = apiErr.RetryAfter
		}
		if time.Now().Add(wait).After(deadline) {
			return res, err
		}
		if notify != nil {
			notify(attempt, err, wait)
		}
		select {
		case <-ctx.Done():
			var none T
			return none, ctx.Err()
		case <-time.After(wait):
		}
	}
}

package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spoolhq/spool/internal/httpapi"
	"github.com/spoolhq/spool/pipeline"
)

// Client talks to one ingress.
type Client struct {
	Server string // base URL, e.g. http://127.0.0.1:8080
	APIKey string
	HTTP   *http.Client
}

// Error is a non-2xx answer.
type Error struct {
	Status int
	Detail string
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("server answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Detail)
}

// UploadOptions qualify an upload.
type UploadOptions struct {
	ContentType    string
	Gzip           bool
	Entity         string
	IdempotencyKey string
	// Results asks the job to keep each command's outcome.
	Results         bool
	ExtraParameters url.Values
}

// Upload streams body to POST /v1/jobs.
func (c *Client) Upload(ctx context.Context, body io.Reader, o UploadOptions) (*httpapi.UploadView, error) {
	var v httpapi.UploadView
	if err := c.send(ctx, http.MethodPost, "/v1/jobs", body, o, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// OpenJob opens a job for parts (o.Results asks it to keep results).
func (c *Client) OpenJob(ctx context.Context, o UploadOptions) (*httpapi.JobView, error) {
	q := url.Values{"parts": {"true"}}
	if o.Results {
		q.Set("results", "true")
	}
	return call[httpapi.JobView](ctx, c, http.MethodPost, "/v1/jobs?"+q.Encode())
}

// PutPart streams body as part n of a job opened for parts.
func (c *Client) PutPart(ctx context.Context, id pipeline.JobID, n int, body io.Reader, o UploadOptions) (*httpapi.PartView, error) {
	var v httpapi.PartView
	path := "/v1/jobs/" + url.PathEscape(string(id)) + "/parts/" + strconv.Itoa(n)
	if err := c.send(ctx, http.MethodPut, path, body, o, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// CompleteJob closes a job opened for parts: queued from then on.
func (c *Client) CompleteJob(ctx context.Context, id pipeline.JobID) (*httpapi.JobView, error) {
	return c.jobCall(ctx, http.MethodPost, id, "/complete")
}

// send streams an upload's body to path with o's parameters and headers
// and reads the answer into out.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, o UploadOptions, out any) error {
	q := url.Values{}
	for k, v := range o.ExtraParameters {
		q[k] = v
	}
	if o.Results {
		q.Set("results", "true")
	}
	if o.Entity != "" {
		q.Set("entity", o.Entity)
	}
	u := c.url(path)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", o.ContentType)
	if o.Gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if o.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", o.IdempotencyKey)
	}
	return c.do(req, out)
}

// Job returns a job's status.
func (c *Client) Job(ctx context.Context, id pipeline.JobID) (*httpapi.JobView, error) {
	return c.jobCall(ctx, http.MethodGet, id, "")
}

// AbortJob aborts a job and returns it, aborted; a finished job is an
// *Error with Status 409.
func (c *Client) AbortJob(ctx context.Context, id pipeline.JobID) (*httpapi.JobView, error) {
	return c.jobCall(ctx, http.MethodPost, id, "/abort")
}

// jobCall sends method to the job's path (plus suffix) and reads the job
// it answers.
func (c *Client) jobCall(ctx context.Context, method string, id pipeline.JobID, suffix string) (*httpapi.JobView, error) {
	return call[httpapi.JobView](ctx, c, method, "/v1/jobs/"+url.PathEscape(string(id))+suffix)
}

// call sends method to path, without a body, and reads the answer.
func call[T any](ctx context.Context, c *Client, method, path string) (*T, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), nil)
	if err != nil {
		return nil, err
	}
	var v T
	if err := c.do(req, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// JobsOptions select a page of jobs.
type JobsOptions struct {
	State  pipeline.JobState
	Limit  int
	Cursor string
}

// Jobs returns a page of the tenant's jobs, newest first.
func (c *Client) Jobs(ctx context.Context, o JobsOptions) (*httpapi.JobList, error) {
	q := url.Values{}
	if o.State != "" {
		q.Set("state", string(o.State))
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	u := c.url("/v1/jobs")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	var v httpapi.JobList
	if err := c.do(req, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// Failures copies a job's failures listing (format ndjson or csv) to w as
// it streams in.
func (c *Client) Failures(ctx context.Context, id pipeline.JobID, format string, w io.Writer) error {
	u := c.url("/v1/jobs/" + url.PathEscape(string(id)) + "/failures?format=" + url.QueryEscape(format))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	return c.do(req, w)
}

// Results copies a job's results listing (format ndjson or csv; only the
// given outcomes, when some are) to w as it streams in.
func (c *Client) Results(ctx context.Context, id pipeline.JobID, outcomes []string, format string, w io.Writer) error {
	q := url.Values{"format": {format}}
	if len(outcomes) > 0 {
		q.Set("outcome", strings.Join(outcomes, ","))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/v1/jobs/"+url.PathEscape(string(id))+"/results?"+q.Encode()), nil)
	if err != nil {
		return err
	}
	return c.do(req, w)
}

// UnreachableFor bounds how long WaitJob keeps polling a server it cannot
// reach: long enough for an ingress to restart, or a rollout to replace
// every ingress, not for ever at a wrong address.
const UnreachableFor = 2 * time.Minute

// WaitJob polls a job until it is finished, calling progress after each
// poll. A 503 or 429 is followed after its Retry-After, and a server that
// cannot be reached is polled again for up to UnreachableFor.
func (c *Client) WaitJob(ctx context.Context, id pipeline.JobID, every time.Duration, progress func(*httpapi.JobView)) (*httpapi.JobView, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	var unreachable time.Time // since when every poll failed on the network
	for {
		j, err := c.Job(ctx, id)
		var apiErr *Error
		var netErr *url.Error // the request did not get an answer
		wait := time.Duration(0)
		switch {
		case errors.As(err, &apiErr) && (apiErr.Status == http.StatusServiceUnavailable || apiErr.Status == http.StatusTooManyRequests):
			wait = max(every, apiErr.RetryAfter) // the server asked us to come back later
		case errors.As(err, &netErr) && ctx.Err() == nil:
			if unreachable.IsZero() {
				unreachable = time.Now()
			}
			if time.Since(unreachable) > UnreachableFor {
				return nil, fmt.Errorf("the server was unreachable for %s: %w", UnreachableFor, err)
			}
			wait = max(every, time.Second)
		case err == nil:
			unreachable = time.Time{}
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait):
				continue
			}
		}
		if err != nil {
			return nil, err
		}
		if progress != nil {
			progress(j)
		}
		if j.State.Finished() && (j.State == pipeline.JobCompleted || j.State == pipeline.JobCompletedWithErrors || j.Progress >= 1) {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C:
		}
	}
}

func (c *Client) url(path string) string { return strings.TrimRight(c.Server, "/") + path }

// do sends req and decodes a 2xx answer's JSON into out, or copies the
// body when out is an io.Writer; any other answer is an *Error.
func (c *Client) do(req *http.Request, out any) error {
	if c.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var p struct {
			Detail string `json:"detail"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &p) != nil || p.Detail == "" {
			p.Detail = strings.TrimSpace(string(b))
		}
		e := &Error{Status: resp.StatusCode, Detail: p.Detail}
		if s, err := time.ParseDuration(resp.Header.Get("Retry-After") + "s"); err == nil {
			e.RetryAfter = s
		}
		return e
	}
	if w, ok := out.(io.Writer); ok {
		if _, err := io.Copy(w, resp.Body); err != nil {
			return fmt.Errorf("reading %s answer: %w", req.URL.Path, err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding %s answer: %w", req.URL.Path, err)
	}
	return nil
}

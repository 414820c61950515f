package httpapi

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spoolhq/spool/internal/upload"
	"github.com/spoolhq/spool/pipeline"
)

// UploadView is the JSON answer to POST /v1/jobs.
type UploadView struct {
	JobID      pipeline.JobID    `json:"job_id"`
	State      pipeline.JobState `json:"state"`
	Received   int64             `json:"received"`
	Accepted   int64             `json:"accepted"`
	Rejected   int64             `json:"rejected"`
	Rejections []Rejection       `json:"rejections"`
	StatusURL  string            `json:"status_url"`
}

// Rejection is one refused record of an upload.
type Rejection struct {
	Index int64               `json:"index"`
	ID    pipeline.CommandID  `json:"id"`
	Class pipeline.ErrorClass `json:"error_class"`
	Error string              `json:"error"`
}

// Rejections wait to be written to the job store in batches of at most
// failureFlush records or maxPendingBytes; an answer lists rejections up
// to Limits.MaxRejections and maxShownBytes. maxIDBytes bounds a rejected
// record's id as kept (a valid id is at most pipeline.MaxIDLength
// characters of up to 4 bytes).
const (
	failureFlush    = 1000
	maxPendingBytes = 1 << 20
	maxShownBytes   = 256 << 10
	maxIDBytes      = 4 * pipeline.MaxIDLength
)

// errStore marks a failure of the job store while reading: the server's
// fault, answered 503 so that the client retries.
var errStore = errors.New("job store unavailable")

// createJob streams an upload: each record is validated on its own, good
// ones are produced as they come, and the answer waits until Kafka has
// acknowledged every accepted record. Memory stays bounded: records are not
// kept once produced, and the producer blocks when its buffer is full. A
// job opened for parts (?parts=true) takes no body: its parts come by PUT.
func (s *Server) createJob(w http.ResponseWriter, r *http.Request) {
	if v := r.URL.Query().Get("parts"); v != "" {
		s.openPartsJob(w, r, v)
		return
	}
	s.withUpload(w, r, func(ctx context.Context, who Principal, in *uploadInput) {
		key, ok := idempotencyKey(r)
		if !ok {
			writeProblem(w, http.StatusBadRequest, "Idempotency-Key must be 1 to 255 printable ASCII characters")
			return
		}
		run := func(w http.ResponseWriter) { s.runUpload(ctx, w, r.Header, who, in) }
		if key == "" {
			run(w)
			return
		}
		s.idempotent(ctx, w, who.Tenant, key, in, http.StatusUnprocessableEntity,
			"this Idempotency-Key was used with a different request (body, format or parameters)", run, nil)
	})
}

// withUpload runs an upload request's body through run, once admitted
// (openUpload), and gives its slot back after.
func (s *Server) withUpload(w http.ResponseWriter, r *http.Request, run func(ctx context.Context, who Principal, in *uploadInput)) {
	in, release := s.openUpload(w, r)
	if in == nil {
		return
	}
	defer release()
	run(r.Context(), principalOf(r.Context()), in)
}

// uploadInput is an upload's body, ready to stream as records.
type uploadInput struct {
	// body is the decoded, bounded body; what is read of it goes into
	// fingerprint (with the media type and parameters: what an
	// Idempotency-Key covers) and digest (the body alone).
	body          io.Reader
	fingerprint   hash.Hash
	digest        hash.Hash
	sent          *countingReader
	records       upload.Reader
	defaultEntity string
	opts          pipeline.JobOptions
}

// openUpload admits an upload (the backlog bound, the upload slots), and
// reads its format, encoding and parameters. It answers the request itself
// and returns nil when it cannot go on; else release gives its slot back.
func (s *Server) openUpload(w http.ResponseWriter, r *http.Request) (*uploadInput, func()) {
	who := principalOf(r.Context())
	if s.cfg.Backlog != nil && s.cfg.Limits.MaxLag > 0 {
		if lag := s.cfg.Backlog(); lag > s.cfg.Limits.MaxLag {
			w.Header().Set("Retry-After", "5")
			writeProblem(w, http.StatusTooManyRequests,
				fmt.Sprintf("the processors are %d commands behind, over the bound of %d; retry later", lag, s.cfg.Limits.MaxLag))
			return nil, nil
		}
	}
	take, busy := s.uploads.take(who.Tenant, s.cfg.Limits)
	if busy != nil {
		w.Header().Set("Retry-After", "2")
		writeProblem(w, busy.Status, busy.Error())
		return nil, nil
	}
	s.cfg.Observer.Uploading(1)
	release := func() { take(); s.cfg.Observer.Uploading(-1) }
	in := s.readUpload(w, r, who)
	if in == nil {
		release()
		return nil, nil
	}
	return in, release
}

func (s *Server) readUpload(w http.ResponseWriter, r *http.Request, who Principal) *uploadInput {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	sent := &countingReader{r: r.Body}
	body := io.Reader(http.MaxBytesReader(w, readCloser{sent, r.Body}, s.cfg.Limits.MaxBodyBytes))
	if s.cfg.Limits.ReadIdleTimeout > 0 {
		body = &pacedBody{r: body, rc: http.NewResponseController(w), idle: s.cfg.Limits.ReadIdleTimeout,
			minRate: s.cfg.Limits.MinBytesPerSecond}
	}
	ratio := 0
	switch r.Header.Get("Content-Encoding") {
	case "", "identity":
	case "gzip":
		gz, err := gzip.NewReader(body)
		var bound *boundError
		switch {
		case errors.As(err, &bound):
			status, detail := readStatus(err)
			writeProblem(w, status, detail)
			return nil
		case err != nil:
			writeProblem(w, http.StatusBadRequest, "body is not valid gzip: "+err.Error())
			return nil
		}
		body, ratio = gz, s.cfg.Limits.MaxDecompressionRatio
	default:
		writeProblem(w, http.StatusUnsupportedMediaType, "Content-Encoding must be gzip or absent")
		return nil
	}
	body = &inflateBound{r: body, sent: sent, max: s.cfg.Limits.MaxDecompressedBytes, ratio: ratio}
	q := r.URL.Query()
	in := &uploadInput{fingerprint: sha256.New(), digest: sha256.New(), sent: sent, defaultEntity: q.Get("entity")}
	// The fingerprint of an Idempotency-Key covers what the upload means:
	// its format, its parameters and its (decoded) body.
	fmt.Fprintf(in.fingerprint, "%s\n%s\n", mt, q.Encode())
	in.body = io.TeeReader(body, io.MultiWriter(in.fingerprint, in.digest))
	if in.defaultEntity != "" && s.cfg.Catalog.Entities()[in.defaultEntity] == nil {
		writeProblem(w, http.StatusBadRequest, fmt.Sprintf("entity %s is not configured", pipeline.Quote(in.defaultEntity)))
		return nil
	}
	if in.defaultEntity != "" && !who.MayWrite(in.defaultEntity) {
		writeProblem(w, http.StatusForbidden, fmt.Sprintf("this API key may not write entity %s", pipeline.Quote(in.defaultEntity)))
		return nil
	}
	if v := q.Get("results"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, fmt.Sprintf("results must be true or false, not %s", pipeline.Quote(v)))
			return nil
		}
		in.opts.Results = b
	}
	var err error
	in.records, err = upload.NewReader(mt, in.body, upload.Options{
		MaxRecordBytes: s.cfg.Limits.MaxRecordBytes,
		IDColumn:       q.Get("id_column"),
		VersionColumn:  q.Get("version_column"),
		Op:             pipeline.Op(q.Get("op")),
	})
	if err != nil {
		status := http.StatusUnsupportedMediaType
		if mt == upload.CSV.MediaType {
			status = http.StatusBadRequest
		}
		writeProblem(w, status, err.Error())
		return nil
	}
	return in
}

// idempotent runs a request under a tenant's key: the first request with
// it runs (run writes its answer), the answer is kept unless it is a 5xx,
// and a later request with the key gets it again — or 409 while the first
// runs, or mismatch (with detail) when its body, format or parameters
// differ. finished, when set (a part), decides instead whether the answer
// is kept, once the body is read to its end or broke off (drainErr),
// recording what it must first; its failure turns the answer into a 503,
// which is not kept.
func (s *Server) idempotent(ctx context.Context, w http.ResponseWriter, tenant, key string, in *uploadInput,
	mismatch int, detail string, run func(http.ResponseWriter), finished func(ctx context.Context, drainErr error) (bool, error),
) {
	owned, rec, err := s.cfg.Idempotency.ClaimIdempotencyKey(ctx, tenant, key, s.cfg.IdempotencyWindow)
	if err != nil {
		s.log(ctx).Error("claiming idempotency key", "error", err)
		writeUnavailable(w, 2*time.Second, "the job store is unavailable", "")
		return
	}
	if !owned {
		s.replay(w, in.body, in.fingerprint, rec, mismatch, detail)
		return
	}
	// We own the key: run the upload into a buffer, read the body to its
	// end for the fingerprint, store the answer (not a 5xx), then send it.
	stop := s.heartbeat(ctx, "refreshing idempotency key", func(ctx context.Context) error {
		return s.cfg.Idempotency.HeartbeatIdempotencyKey(ctx, tenant, key)
	})
	answer := newCapture()
	run(answer)
	stop()
	_, drainErr := io.Copy(io.Discard, in.body)
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	keep := answer.status < 500 && drainErr == nil
	if finished != nil {
		var err error
		if keep, err = finished(fctx, drainErr); err != nil {
			s.log(ctx).Error("recording the upload", "error", err)
			answer, keep = newCapture(), false
			writeUnavailable(answer, 2*time.Second, "every record is in Kafka, but recording the upload failed; sending it again is safe", "")
		}
	}
	var stored *pipeline.IdempotentRecord
	if keep {
		stored = &pipeline.IdempotentRecord{Fingerprint: in.fingerprint.Sum(nil), Status: answer.status,
			Location: answer.Header().Get("Location"), Body: answer.body.Bytes()}
	}
	if err := s.cfg.Idempotency.FinishIdempotencyKey(fctx, tenant, key, stored); err != nil {
		s.log(ctx).Error("storing idempotent answer; a retry after the lease runs anew", "error", err)
	}
	answer.sendTo(w)
}

// runUpload creates the job, streams the records and answers.
func (s *Server) runUpload(ctx context.Context, w http.ResponseWriter, header http.Header, who Principal, in *uploadInput) {
	job := s.cfg.NewJobID()
	var traceparent string
	var status int
	if s.cfg.Tracer != nil {
		var end func(status int)
		ctx, traceparent, end = s.cfg.Tracer.StartUpload(ctx, header, job)
		defer func() { end(status) }()
	}
	if err := s.cfg.Jobs.CreateJob(ctx, job, who.Tenant, in.opts); err != nil {
		s.log(ctx).Error("creating job", "error", err)
		status = http.StatusServiceUnavailable
		writeUnavailable(w, 2*time.Second, "the job store is unavailable", "")
		return
	}
	u := &uploadRun{s: s, job: job, who: who, defaultEntity: in.defaultEntity, traceparent: traceparent}
	// The job's heartbeat: a job whose ingress dies stops beating and is
	// marked failed after postgres.UploadLease.
	res, readErr, produceErr := u.stream(ctx, in.records, func(ctx context.Context) error {
		return s.cfg.Jobs.ProgressJob(ctx, job, u.result())
	})
	// The job record must outlive a client that hung up.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	storeErr := errors.Join(s.cfg.Jobs.AddFailures(fctx, job, u.pending), s.cfg.Jobs.FinishUpload(fctx, job, res))
	if storeErr != nil {
		s.log(ctx).Error("finishing upload", "job_id", job, "error", storeErr)
	}
	status = u.answer(ctx, w, in.sent, res, readErr, produceErr, storeErr, func() {
		loc := "/v1/jobs/" + string(job)
		w.Header().Set("Location", loc)
		writeJSON(w, http.StatusAccepted, UploadView{
			JobID: job, State: pipeline.JobQueued, Received: res.Received, Accepted: res.Accepted,
			Rejected: res.Rejected, Rejections: u.shown, StatusURL: loc,
		})
	})
}

// stream reads and produces the records, beating every heartbeatEvery,
// until the body ends or breaks, then waits for Kafka's acknowledgements.
func (u *uploadRun) stream(ctx context.Context, records upload.Reader, beat func(context.Context) error) (pipeline.UploadResult, error, error) {
	stop := u.s.heartbeat(ctx, "recording upload progress", beat)
	readErr := u.read(ctx, records)
	u.acks.Wait()
	stop()
	res := u.result()
	produceErr := u.produceErr()
	res.Err = errors.Join(readErr, produceErr)
	return res, readErr, produceErr
}

// answer answers an upload that ended: a problem for what broke it, else
// success writes the answer. It returns the status.
func (u *uploadRun) answer(ctx context.Context, w http.ResponseWriter, sent *countingReader, res pipeline.UploadResult, readErr, produceErr, storeErr error, success func()) int {
	var bodyErr *upload.BodyError
	var bound *boundError
	var tooLarge *http.MaxBytesError
	job := string(u.job)
	status := http.StatusAccepted
	switch {
	case errors.As(readErr, &bound) || errors.As(readErr, &tooLarge):
		var detail string
		status, detail = readStatus(readErr)
		if status == http.StatusRequestTimeout && u.inPart {
			// A part cut off is broken (partEnd): sending it again is
			// what the client should do, and Retry-After says so.
			w.Header().Set("Retry-After", "1")
		}
		writeProblemFor(w, status, fmt.Sprintf("%s; %d records were accepted before that and will be applied", detail, res.Accepted), job)
	case errors.As(readErr, &bodyErr) && bodyErr.TooLarge:
		status = http.StatusRequestEntityTooLarge
		writeProblemFor(w, status, readErr.Error()+" (ingress.max_record_bytes)", job)
	case errors.Is(readErr, errStore):
		status = http.StatusServiceUnavailable
		writeUnavailable(w, 2*time.Second, fmt.Sprintf("%v; %d records were accepted before that and will be applied; retrying the whole upload is safe", readErr, res.Accepted), job)
	case produceErr != nil:
		status = http.StatusServiceUnavailable
		writeUnavailable(w, 5*time.Second, fmt.Sprintf("Kafka did not acknowledge the upload (%v); %d records were accepted before that and will be applied; retrying the whole upload is safe", produceErr, res.Accepted), job)
	case readErr != nil:
		status = http.StatusBadRequest
		writeProblemFor(w, status, "reading the upload: "+readErr.Error(), job)
	case storeErr != nil:
		status = http.StatusServiceUnavailable
		writeUnavailable(w, 2*time.Second, "every record is in Kafka, but recording the job failed; retrying the upload is safe", job)
	default:
		success()
	}
	u.s.cfg.Observer.Upload(status, res.Accepted, res.Rejected, sent.n)
	u.s.log(ctx).Debug("upload answered", "job_id", job, "status", status, "received", res.Received,
		"accepted", res.Accepted, "rejected", res.Rejected, "bytes", sent.n)
	return status
}

// uploadRun is the state of one streaming upload.
type uploadRun struct {
	s             *Server
	job           pipeline.JobID
	who           Principal
	defaultEntity string
	// traceparent, when the upload is traced, is carried by each record
	// (pipeline.HeaderTraceparent).
	traceparent string
	// base is the index of the upload's first record in its job: a part's
	// records are placed after the parts before it (pipeline.PartBase).
	// Rejections in the answer count from the upload's own start.
	base   int64
	inPart bool

	received, rejected atomic.Int64
	// rejMu guards shown and pending: a record Kafka refuses as too large
	// is rejected from its produce callback.
	rejMu        sync.Mutex
	shown        []Rejection
	shownBytes   int
	pending      []pipeline.Failure
	pendingBytes int

	acks     sync.WaitGroup
	accepted atomic.Int64
	errMu    sync.Mutex
	err      error
}

// maxRecords bounds the upload's records: ingress.max_records, and for a
// part the 2^32 places a part has (pipeline.PartBase).
func (u *uploadRun) maxRecords() int64 {
	if u.inPart {
		return min(u.s.cfg.Limits.MaxRecords, 1<<32-1)
	}
	return u.s.cfg.Limits.MaxRecords
}

// result is the upload's counts so far.
func (u *uploadRun) result() pipeline.UploadResult {
	return pipeline.UploadResult{Received: u.received.Load(), Accepted: u.accepted.Load(), Rejected: u.rejected.Load()}
}

func (u *uploadRun) produceErr() error {
	u.errMu.Lock()
	defer u.errMu.Unlock()
	return u.err
}

// read consumes the records until the body ends, breaks, or Kafka fails.
func (u *uploadRun) read(ctx context.Context, records upload.Reader) error {
	for {
		cmd, err := records.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		var bodyErr *upload.BodyError
		if errors.As(err, &bodyErr) {
			return err
		}
		if limit := u.maxRecords(); u.received.Load() >= limit {
			return overBound("ingress.max_records", "the upload holds more than %d records", limit)
		}
		if u.produceErr() != nil {
			return nil
		}
		u.add(ctx, cmd, err)
		if err := u.flushRejections(ctx); err != nil {
			return err
		}
	}
}

// add validates one record (decodeErr: the reader already refused it) and
// produces it, or rejects it.
func (u *uploadRun) add(ctx context.Context, cmd pipeline.Command, decodeErr error) {
	index := u.base + u.received.Add(1) - 1
	err := decodeErr
	if err == nil {
		err = u.s.cfg.Catalog.Entities().Validate(&cmd, u.defaultEntity)
		if c := pipeline.ClassOf(err); (c == pipeline.ClassUnknownColumn || c == pipeline.ClassTypeMismatch) &&
			u.s.cfg.Catalog.Refresh(ctx, cmd.Entity) {
			err = u.s.cfg.Catalog.Entities().Validate(&cmd, u.defaultEntity)
		}
	}
	if err == nil && !u.who.MayWrite(cmd.Entity) {
		err = pipeline.Errorf(pipeline.ClassForbidden, "this API key may not write entity %s", pipeline.Quote(cmd.Entity))
	}
	var rec pipeline.Record
	if err == nil {
		rec, err = pipeline.NewRecord(&cmd, u.job, u.who.Tenant, index)
		rec.Route = u.s.cfg.Catalog.Entities().Route(&cmd)
	}
	if err == nil && u.traceparent != "" {
		rec.Headers = append(rec.Headers, pipeline.Header{Key: pipeline.HeaderTraceparent, Value: []byte(u.traceparent)})
	}
	if limit := u.s.cfg.Limits.MaxKafkaRecordBytes; err == nil && limit > 0 && rec.BatchBytes() > limit {
		err = pipeline.Errorf(pipeline.ClassTooLarge,
			"record is %d bytes as a Kafka record (key, value and spool's headers), over the %d bytes that topic %s takes",
			rec.BatchBytes(), limit, u.s.cfg.Topic)
	}
	if err != nil {
		u.reject(index, cmd.ID, err)
		return
	}
	u.acks.Add(1)
	start := time.Now()
	id := cmd.ID
	u.s.cfg.Producer.Produce(ctx, u.s.cfg.Topic, &rec, func(err error) {
		defer u.acks.Done()
		u.s.cfg.Observer.Produced(time.Since(start), err)
		if pipeline.ClassOf(err) == pipeline.ClassTooLarge {
			// Kafka refused this record alone (the topic's limit was
			// lowered since ingress read it): the record's fault, not the
			// upload's.
			u.reject(index, id, err)
			return
		}
		if err != nil {
			u.errMu.Lock()
			if u.err == nil {
				u.err = err
			}
			u.errMu.Unlock()
			return
		}
		u.accepted.Add(1)
	})
}

// flushRejections records the pending rejections once there are enough of
// them, in count or bytes.
func (u *uploadRun) flushRejections(ctx context.Context) error {
	u.rejMu.Lock()
	defer u.rejMu.Unlock()
	if len(u.pending) < failureFlush && u.pendingBytes < maxPendingBytes {
		return nil
	}
	if err := u.s.cfg.Jobs.AddFailures(ctx, u.job, u.pending); err != nil {
		return fmt.Errorf("%w: recording rejections: %w", errStore, err)
	}
	u.pending, u.pendingBytes = u.pending[:0], 0
	return nil
}

// reject records a refused record. What it keeps is bounded whatever the
// record held: the id and message are cut to printable excerpts, the answer
// lists at most Limits.MaxRejections (and maxShownBytes), and the failure
// rows wait in batches of at most failureFlush (and maxPendingBytes).
func (u *uploadRun) reject(index int64, id pipeline.CommandID, err error) {
	u.rejMu.Lock()
	defer u.rejMu.Unlock()
	u.rejected.Add(1)
	class := pipeline.ClassOf(err)
	id = pipeline.CommandID(pipeline.Printable(string(id), maxIDBytes))
	msg := pipeline.BoundError(err)
	size := len(id) + len(msg)
	if len(u.shown) < u.s.cfg.Limits.MaxRejections && u.shownBytes+size <= maxShownBytes {
		u.shown = append(u.shown, Rejection{Index: index - u.base, ID: id, Class: class, Error: msg})
		u.shownBytes += size
	}
	u.pending = append(u.pending, pipeline.Failure{Index: index, ID: id, Stage: pipeline.StageIngress, Outcome: pipeline.OutcomeRejected, Class: class, Error: msg})
	u.pendingBytes += size
}

// countingReader counts the body bytes read (as sent, before gunzip).
type countingReader struct {
	r io.Reader
	n int64
	// err is the first error reading the request's body other than its
	// end: the connection broke (the body as sent, before any decoding).
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

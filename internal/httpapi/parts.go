package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// Parts is what jobs uploaded in parts need of the job store
// (postgres.Store's methods of the same names).
type Parts interface {
	// StartPart records that part n of an open job starts streaming:
	// pipeline.ErrJobNotFound, a *pipeline.JobFinishedError when the job is
	// not open for parts, pipeline.ErrPartReceived when the part was received.
	StartPart(ctx context.Context, tenant string, id pipeline.JobID, n int) error
	HeartbeatPart(ctx context.Context, id pipeline.JobID, n int) error
	// FinishPart records the part as received (r and its body's SHA-256),
	// or forgets a part whose upload failed (r nil).
	FinishPart(ctx context.Context, id pipeline.JobID, n int, r *pipeline.UploadResult, sha256 []byte) error
	// CompleteJob closes an open job: pipeline.ErrJobNotFound, a
	// *pipeline.JobFinishedError when it is not open, pipeline.ErrPartsInFlight
	// while a part streams.
	CompleteJob(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error)
}

// PartView is the JSON answer to PUT /v1/jobs/{job_id}/parts/{n}.
// Rejections are indexed from the part's first record.
type PartView struct {
	JobID      pipeline.JobID `json:"job_id"`
	Part       int            `json:"part"`
	Received   int64          `json:"received"`
	Accepted   int64          `json:"accepted"`
	Rejected   int64          `json:"rejected"`
	Rejections []Rejection    `json:"rejections"`
	StatusURL  string         `json:"status_url"`
}

// openPartsJob opens a job for parts (POST /v1/jobs?parts=true): 201 with
// the job, open; its parts come by PUT.
func (s *Server) openPartsJob(w http.ResponseWriter, r *http.Request, v string) {
	if ok, err := strconv.ParseBool(v); err != nil || !ok {
		writeProblem(w, http.StatusBadRequest, fmt.Sprintf("parts must be true to open a job for parts, not %s", pipeline.Quote(v)))
		return
	}
	opts := pipeline.JobOptions{Parts: true}
	if v := r.URL.Query().Get("results"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, fmt.Sprintf("results must be true or false, not %s", pipeline.Quote(v)))
			return
		}
		opts.Results = b
	}
	ctx := r.Context()
	tenant := tenantOf(ctx)
	id := s.cfg.NewJobID()
	if err := s.cfg.Jobs.CreateJob(ctx, id, tenant, opts); err != nil {
		s.unavailable(w, r, "opening a job for parts", err)
		return
	}
	j, err := s.cfg.Jobs.Job(ctx, tenant, id)
	if err != nil {
		s.unavailable(w, r, "reading the job", err)
		return
	}
	w.Header().Set("Location", "/v1/jobs/"+string(id))
	writeJSON(w, http.StatusCreated, viewOf(j))
}

// putPart streams part n of an open job as an upload whose records are
// placed after the parts before it. The part is its own idempotent
// request: sent again with the same bytes (format and parameters) it gets
// its first answer again, with others 409, and while the first streams 409.
func (s *Server) putPart(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 1 || n > pipeline.MaxParts {
		writeProblem(w, http.StatusBadRequest, fmt.Sprintf("the part number must be an integer from 1 to %d", pipeline.MaxParts))
		return
	}
	id := pipeline.JobID(r.PathValue("job_id"))
	s.withUpload(w, r, func(ctx context.Context, who Principal, in *uploadInput) {
		var done *pipeline.UploadResult
		run := func(w http.ResponseWriter) { done = s.runPart(ctx, w, who, id, n, in) }
		finished := func(ctx context.Context) (bool, error) {
			if done == nil {
				return false, nil // forgotten: the part may be sent again, corrected
			}
			return true, s.cfg.Jobs.FinishPart(ctx, id, n, done, in.digest.Sum(nil))
		}
		// A key no client can send (a tab is not printable): the part's own.
		key := fmt.Sprintf("\tpart/%s/%d", id, n)
		s.idempotent(ctx, w, who.Tenant, key, in, http.StatusConflict,
			fmt.Sprintf("part %d of job %s was sent before with other bytes (or another format or parameters)", n, id), run, finished)
	})
}

// runPart streams a part and answers; it returns the part's counts when
// the part is final, for FinishPart: received whole (202), or refused
// (4xx) after some of its records went to Kafka — those are applied and
// counted, as an upload's are, so the part is kept as it came and its
// answer replayed, and the rest goes in another part. A part refused
// before any record, or cut off (5xx, a lost connection), is forgotten:
// sent again — a cut-off one with the same bytes, so that what reached
// Kafka of it is redelivered and counted once — it runs anew.
func (s *Server) runPart(ctx context.Context, w http.ResponseWriter, who Principal, id pipeline.JobID, n int, in *uploadInput) *pipeline.UploadResult {
	var finished *pipeline.JobFinishedError
	switch err := s.cfg.Jobs.StartPart(ctx, who.Tenant, id, n); {
	case errors.Is(err, pipeline.ErrJobNotFound):
		writeProblem(w, http.StatusNotFound, "no job "+string(id))
		return nil
	case errors.As(err, &finished):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("job %s is %s: only a job opened for parts (POST /v1/jobs?parts=true) and not completed takes parts",
			id, finished.State))
		return nil
	case errors.Is(err, pipeline.ErrPartReceived):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("part %d of job %s was received already", n, id))
		return nil
	case err != nil:
		s.log(ctx).Error("starting a part", "job_id", id, "part", n, "error", err)
		writeUnavailable(w, 2*time.Second, "the job store is unavailable", "")
		return nil
	}
	u := &uploadRun{s: s, job: id, who: who, defaultEntity: in.defaultEntity, base: pipeline.PartBase(n), inPart: true}
	res, readErr, produceErr := u.stream(ctx, in.records, func(ctx context.Context) error {
		return s.cfg.Jobs.HeartbeatPart(ctx, id, n)
	})
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	storeErr := s.cfg.Jobs.AddFailures(fctx, id, u.pending)
	status := u.answer(ctx, w, in.sent, res, readErr, produceErr, storeErr, func() {
		loc := "/v1/jobs/" + string(id)
		w.Header().Set("Location", loc)
		writeJSON(w, http.StatusAccepted, PartView{JobID: id, Part: n, Received: res.Received, Accepted: res.Accepted,
			Rejected: res.Rejected, Rejections: u.shown, StatusURL: loc})
	})
	if status != http.StatusAccepted && (status >= 500 || res.Received == 0) {
		if err := s.cfg.Jobs.FinishPart(fctx, id, n, nil, nil); err != nil {
			s.log(ctx).Error("forgetting a failed part", "job_id", id, "part", n, "error", err)
		}
		return nil
	}
	return &res
}

// completeJob closes a job opened for parts: queued from then on.
func (s *Server) completeJob(w http.ResponseWriter, r *http.Request) {
	id := pipeline.JobID(r.PathValue("job_id"))
	j, err := s.cfg.Jobs.CompleteJob(r.Context(), tenantOf(r.Context()), id)
	var finished *pipeline.JobFinishedError
	switch {
	case errors.Is(err, pipeline.ErrJobNotFound):
		writeProblem(w, http.StatusNotFound, "no job "+string(id)+" opened for parts")
	case errors.As(err, &finished):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("job %s is %s, not open", id, finished.State))
	case errors.Is(err, pipeline.ErrPartsInFlight):
		w.Header().Set("Retry-After", "2")
		writeProblem(w, http.StatusConflict, fmt.Sprintf("a part of job %s is still being received; complete it once every part has its answer", id))
	case err != nil:
		s.unavailable(w, r, "completing the job", err)
	default:
		writeJSON(w, http.StatusOK, viewOf(j))
	}
}

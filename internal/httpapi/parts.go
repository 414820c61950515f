package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
	// HeartbeatPart records the part's counts so far.
	HeartbeatPart(ctx context.Context, id pipeline.JobID, n int, r pipeline.UploadResult) error
	// FinishPart records how the part ended (p.State done, refused or
	// broken, and its body's SHA-256 when done), or forgets it (p.State
	// empty) when none of its records reached Kafka.
	FinishPart(ctx context.Context, id pipeline.JobID, p pipeline.Part, sha256 []byte) error
	// CompleteJob closes an open job: pipeline.ErrJobNotFound, a
	// *pipeline.JobFinishedError when it is not open, pipeline.ErrPartsInFlight
	// while a part streams, a *pipeline.PartsBrokenError while parts are
	// broken.
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
		var started bool
		var status int
		var res pipeline.UploadResult
		run := func(w http.ResponseWriter) { started, status, res = s.runPart(ctx, w, who, id, n, in) }
		finished := func(ctx context.Context, drainErr error) (bool, error) {
			if !started {
				return false, nil
			}
			p := partEnd(n, status, res, drainErr, in.sent.err)
			var sum []byte
			if p.State == pipeline.PartDone {
				sum = in.digest.Sum(nil)
			}
			// Only a final part's answer is kept: a part forgotten or
			// broken runs anew when sent again.
			return p.State == pipeline.PartDone || p.State == pipeline.PartRefused, s.cfg.Jobs.FinishPart(ctx, id, p, sum)
		}
		// A key no client can send (a tab is not printable): the part's own.
		key := fmt.Sprintf("\tpart/%s/%d", id, n)
		s.idempotent(ctx, w, who.Tenant, key, in, http.StatusConflict,
			fmt.Sprintf("part %d of job %s was sent before with other bytes (or another format or parameters)", n, id), run, finished)
	})
}

// runPart streams a part and answers; started tells whether the part
// started (StartPart), status and res how its upload ended, for partEnd.
func (s *Server) runPart(ctx context.Context, w http.ResponseWriter, who Principal, id pipeline.JobID, n int, in *uploadInput) (started bool, status int, res pipeline.UploadResult) {
	var finished *pipeline.JobFinishedError
	switch err := s.cfg.Jobs.StartPart(ctx, who.Tenant, id, n); {
	case errors.Is(err, pipeline.ErrJobNotFound):
		writeProblem(w, http.StatusNotFound, "no job "+string(id))
		return false, 0, res
	case errors.As(err, &finished):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("job %s is %s: only a job opened for parts (POST /v1/jobs?parts=true) and not completed takes parts",
			id, finished.State))
		return false, 0, res
	case errors.Is(err, pipeline.ErrPartReceived):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("part %d of job %s was received already", n, id))
		return false, 0, res
	case err != nil:
		s.log(ctx).Error("starting a part", "job_id", id, "part", n, "error", err)
		writeUnavailable(w, 2*time.Second, "the job store is unavailable", "")
		return false, 0, res
	}
	u := &uploadRun{s: s, job: id, who: who, defaultEntity: in.defaultEntity, base: pipeline.PartBase(n), inPart: true}
	res, readErr, produceErr := u.stream(ctx, in.records, func(ctx context.Context) error {
		return s.cfg.Jobs.HeartbeatPart(ctx, id, n, u.result())
	})
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	storeErr := s.cfg.Jobs.AddFailures(fctx, id, u.pending)
	status = u.answer(ctx, w, in.sent, res, readErr, produceErr, storeErr, func() {
		loc := "/v1/jobs/" + string(id)
		w.Header().Set("Location", loc)
		writeJSON(w, http.StatusAccepted, PartView{JobID: id, Part: n, Received: res.Received, Accepted: res.Accepted,
			Rejected: res.Rejected, Rejections: u.shown, StatusURL: loc})
	})
	return true, status, res
}

// partEnd tells how part n ended, from its answer's status, its counts,
// whether its (decoded) body was read to the end (drainErr nil) and
// whether the connection broke (cutErr, reading the body as sent):
//   - received whole (202): done, its answer replayed to a resend;
//   - none of its records read: forgotten (no state), so that it may be
//     sent again, corrected;
//   - cut off — the connection lost, the client too slow (408), ingress,
//     Kafka or the job store failing (5xx): broken, to be sent again with
//     the same bytes before the job completes; what reached Kafka of it is
//     then redelivered and counted once;
//   - refused for what it holds (another 4xx, or a body whose encoding
//     breaks after its last record): refused, final; the records before the
//     refusal are applied and counted, as an upload's are.
func partEnd(n, status int, res pipeline.UploadResult, drainErr, cutErr error) pipeline.Part {
	p := pipeline.Part{Number: n, Received: res.Received, Accepted: res.Accepted, Rejected: res.Rejected}
	err := errors.Join(res.Err, drainErr)
	switch {
	case status == http.StatusAccepted && drainErr == nil:
		p.State = pipeline.PartDone
		return p
	case res.Received == 0:
		return p // forgotten
	case cutErr != nil || status == http.StatusRequestTimeout || status >= 500:
		p.State = pipeline.PartBroken
		if cutErr != nil {
			err = fmt.Errorf("the connection broke: %w", cutErr)
		}
	default:
		p.State = pipeline.PartRefused
	}
	if err != nil {
		p.Error = err.Error()
	}
	return p
}

// completeJob closes a job opened for parts: queued from then on.
func (s *Server) completeJob(w http.ResponseWriter, r *http.Request) {
	id := pipeline.JobID(r.PathValue("job_id"))
	j, err := s.cfg.Jobs.CompleteJob(r.Context(), tenantOf(r.Context()), id)
	var finished *pipeline.JobFinishedError
	var broken *pipeline.PartsBrokenError
	switch {
	case errors.Is(err, pipeline.ErrJobNotFound):
		writeProblem(w, http.StatusNotFound, "no job "+string(id)+" opened for parts")
	case errors.As(err, &finished):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("job %s is %s, not open", id, finished.State))
	case errors.Is(err, pipeline.ErrPartsInFlight):
		w.Header().Set("Retry-After", "2")
		writeProblem(w, http.StatusConflict, fmt.Sprintf("a part of job %s is still being received; complete it once every part has its answer", id))
	case errors.As(err, &broken):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("parts %s of job %s broke off after some of their records reached Kafka: "+
			"send each again with the same bytes (spoolctl upload --resume %s), or abort the job", partList(broken.Parts), id, id))
	case err != nil:
		s.unavailable(w, r, "completing the job", err)
	default:
		writeJSON(w, http.StatusOK, viewOf(j))
	}
}

// partList writes part numbers as "1, 4, 7".
func partList(ps []int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ", ")
}

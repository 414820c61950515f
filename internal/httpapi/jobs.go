package httpapi

import (
	"bufio"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// JobView is the JSON of GET /v1/jobs/{job_id}.
type JobView struct {
	JobID       pipeline.JobID    `json:"job_id"`
	State       pipeline.JobState `json:"state"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	CompletedAt *time.Time        `json:"completed_at"`
	Counts      CountsView        `json:"counts"`
	Progress    float64           `json:"progress"`
	Error       string            `json:"error,omitempty"`
	// Results tells whether the job keeps each command's outcome
	// (GET /v1/jobs/{id}/results).
	Results bool `json:"results"`
	// Parts lists the parts received of a job opened for parts (absent
	// for another job).
	Parts *[]PartStatus `json:"parts,omitempty"`
}

// CountsView is the counts object of a JobView: what ingress counted, then
// one count per outcome of pipeline.CountedOutcomes.
type CountsView struct {
	Received int64 `json:"received"`
	Rejected int64 `json:"rejected"`
	Accepted int64 `json:"accepted"`
	OutcomeCounts
}

// OutcomeCounts are pipeline.Counts as the API names them: the same
// fields, so that each converts to the other (and the compiler holds them
// alike).
type OutcomeCounts struct {
	Applied      int64 `json:"applied"`
	Duplicate    int64 `json:"duplicate"`
	Stale        int64 `json:"stale"`
	Conflict     int64 `json:"conflict"`
	Exists       int64 `json:"exists"`
	Missing      int64 `json:"missing"`
	Aborted      int64 `json:"aborted"`
	DeadLettered int64 `json:"dead_lettered"`
}

// Outcomes returns the view's outcome counts.
func (c CountsView) Outcomes() pipeline.Counts { return pipeline.Counts(c.OutcomeCounts) }

// PartStatus is one part of a JobView's parts: pipeline.Part as the API
// names it.
type PartStatus struct {
	Number   int    `json:"part"`
	State    string `json:"state"` // receiving, done, refused or broken (pipeline.PartDone…)
	Received int64  `json:"received"`
	Accepted int64  `json:"accepted"`
	Rejected int64  `json:"rejected"`
	// SHA256 is the hex SHA-256 of the part's decoded body, once done.
	SHA256 string `json:"sha256,omitempty"`
	// Error tells why a part refused or broken ended so.
	Error string `json:"error,omitempty"`
}

// FailureView is one line of GET /v1/jobs/{job_id}/failures.
type FailureView struct {
	Index   int64               `json:"index"`
	ID      pipeline.CommandID  `json:"id"`
	Stage   string              `json:"stage"`
	Outcome pipeline.Outcome    `json:"outcome"`
	Class   pipeline.ErrorClass `json:"error_class"`
	Error   string              `json:"error"`
}

// ResultView is one line of GET /v1/jobs/{job_id}/results.
type ResultView struct {
	Index   int64              `json:"index"`
	ID      pipeline.CommandID `json:"id"`
	Outcome pipeline.Outcome   `json:"outcome"`
}

func viewOf(j *pipeline.Job) JobView {
	v := JobView{
		JobID: j.ID, State: j.State, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt, CompletedAt: j.CompletedAt,
		Counts:   CountsView{Received: j.Received, Rejected: j.Rejected, Accepted: j.Accepted, OutcomeCounts: OutcomeCounts(j.Counts)},
		Progress: j.Progress(), Error: j.Error, Results: j.Results,
	}
	if j.InParts {
		parts := make([]PartStatus, len(j.Parts))
		for i, p := range j.Parts {
			parts[i] = PartStatus(p)
		}
		v.Parts = &parts
	}
	return v
}

// JobList is the JSON of GET /v1/jobs: a page of jobs, newest first, and
// the cursor of the next page when there is one.
type JobList struct {
	Jobs       []JobView `json:"jobs"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

// DeadLetterCounts is the JSON of GET /v1/dead-letters.
type DeadLetterCounts struct {
	Total        int64                         `json:"total"`
	ByErrorClass map[pipeline.ErrorClass]int64 `json:"by_error_class"`
}

// Page sizes of GET /v1/jobs.
const (
	defaultPage = 50
	maxPage     = 500
)

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	j, err := s.cfg.Jobs.Job(r.Context(), tenantOf(r.Context()), pipeline.JobID(r.PathValue("job_id")))
	if errors.Is(err, pipeline.ErrJobNotFound) {
		writeProblem(w, http.StatusNotFound, "no job "+r.PathValue("job_id"))
		return
	}
	if err != nil {
		s.unavailable(w, r, "reading the job", err)
		return
	}
	writeJSON(w, http.StatusOK, viewOf(j))
}

// abortJob stops a job: its commands not applied yet end aborted. A
// finished job cannot be aborted (409).
func (s *Server) abortJob(w http.ResponseWriter, r *http.Request) {
	j, err := s.cfg.Jobs.AbortJob(r.Context(), tenantOf(r.Context()), pipeline.JobID(r.PathValue("job_id")))
	var finished *pipeline.JobFinishedError
	switch {
	case errors.Is(err, pipeline.ErrJobNotFound):
		writeProblem(w, http.StatusNotFound, "no job "+r.PathValue("job_id"))
	case errors.As(err, &finished):
		writeProblem(w, http.StatusConflict, fmt.Sprintf("job %s is %s already: only a job open, receiving, queued or processing can be aborted",
			r.PathValue("job_id"), finished.State))
	case err != nil:
		s.unavailable(w, r, "aborting the job", err)
	default:
		writeJSON(w, http.StatusOK, viewOf(j))
	}
}

// unavailable answers 503 for a store that failed, logging why.
func (s *Server) unavailable(w http.ResponseWriter, r *http.Request, what string, err error) {
	s.log(r.Context()).Error(what, "error", err)
	writeUnavailable(w, 2*time.Second, what+" failed; try again", "")
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	q := pipeline.JobQuery{Limit: defaultPage}
	params := r.URL.Query()
	if v := params.Get("state"); v != "" {
		if !knownState(pipeline.JobState(v)) {
			writeProblem(w, http.StatusBadRequest, "state "+strconv.Quote(v)+" is not one of "+strings.Join(stateNames(), ", "))
			return
		}
		q.State = pipeline.JobState(v)
	}
	if v := params.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPage {
			writeProblem(w, http.StatusBadRequest, "limit must be an integer from 1 to "+strconv.Itoa(maxPage))
			return
		}
		q.Limit = n
	}
	if v := params.Get("cursor"); v != "" {
		c, err := decodeCursor(v)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, "cursor is not one this API gave out: pass next_cursor as it came")
			return
		}
		q.After = c
	}
	want := q.Limit
	q.Limit++ // one more tells whether a next page exists
	jobs, err := s.cfg.Jobs.Jobs(r.Context(), tenantOf(r.Context()), q)
	if err != nil {
		s.unavailable(w, r, "listing jobs", err)
		return
	}
	out := JobList{Jobs: make([]JobView, 0, min(len(jobs), want))}
	for i, j := range jobs {
		if i == want {
			last := jobs[want-1]
			out.NextCursor = encodeCursor(pipeline.JobCursor{CreatedAt: last.CreatedAt, ID: last.ID})
			break
		}
		v := viewOf(j)
		v.Parts = nil // the listing does not read them: GET the job for its parts
		out.Jobs = append(out.Jobs, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func knownState(s pipeline.JobState) bool { return slices.Contains(pipeline.JobStates, s) }

func stateNames() []string {
	names := make([]string, len(pipeline.JobStates))
	for i, s := range pipeline.JobStates {
		names[i] = string(s)
	}
	return names
}

// A cursor is the last job's creation time and id, opaque to clients.
func encodeCursor(c pipeline.JobCursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(c.CreatedAt.UTC().Format(time.RFC3339Nano) + " " + string(c.ID)))
}

func decodeCursor(s string) (*pipeline.JobCursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	at, id, ok := strings.Cut(string(b), " ")
	if !ok || id == "" {
		return nil, errors.New("malformed cursor")
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return nil, err
	}
	return &pipeline.JobCursor{CreatedAt: t, ID: pipeline.JobID(id)}, nil
}

// flushEvery is how many listing rows are written between flushes, so that
// a client sees a long listing arrive; each flush must be taken within
// writeTimeout, so that a client that stops reading is cut off.
const (
	flushEvery   = 1000
	writeTimeout = 30 * time.Second
)

// failureColumns are the CSV header of the failures listing.
var failureColumns = []string{"index", "id", "stage", "outcome", "error_class", "error"}

func (s *Server) listFailures(w http.ResponseWriter, r *http.Request) {
	s.streamListing(w, r, "failures", failureColumns, func(lw *listingWriter) error {
		return s.cfg.Jobs.Failures(r.Context(), tenantOf(r.Context()), pipeline.JobID(r.PathValue("job_id")), func(f pipeline.Failure) error {
			return lw.write(FailureView{Index: f.Index, ID: f.ID, Stage: f.Stage, Outcome: f.Outcome, Class: f.Class, Error: f.Error}, strconv.FormatInt(f.Index, 10), string(f.ID), f.Stage, string(f.Outcome), string(f.Class), f.Error)
		})
	})
}

// resultColumns are the CSV header of the results listing.
var resultColumns = []string{"index", "id", "outcome"}

func (s *Server) listResults(w http.ResponseWriter, r *http.Request) {
	var outcomes []pipeline.Outcome
	if v := r.URL.Query().Get("outcome"); v != "" {
		for _, o := range strings.Split(v, ",") {
			if !slices.Contains(pipeline.ResultOutcomes, pipeline.Outcome(o)) {
				names := make([]string, len(pipeline.ResultOutcomes))
				for i, k := range pipeline.ResultOutcomes {
					names[i] = string(k)
				}
				writeProblem(w, http.StatusBadRequest, fmt.Sprintf("outcome %s is not one of %s", pipeline.Quote(o), strings.Join(names, ", ")))
				return
			}
			outcomes = append(outcomes, pipeline.Outcome(o))
		}
	}
	s.streamListing(w, r, "results", resultColumns, func(lw *listingWriter) error {
		return s.cfg.Jobs.Results(r.Context(), tenantOf(r.Context()), pipeline.JobID(r.PathValue("job_id")), outcomes, func(x pipeline.Result) error {
			return lw.write(ResultView(x), strconv.FormatInt(x.Index, 10), string(x.ID), string(x.Outcome))
		})
	})
}

// streamListing answers a job's listing (what, in columns for CSV) as
// list writes it, however long: NDJSON or CSV by ?format=.
func (s *Server) streamListing(w http.ResponseWriter, r *http.Request, what string, columns []string, list func(*listingWriter) error) {
	format := r.URL.Query().Get("format")
	switch format {
	case "", "ndjson":
		format = "ndjson"
	case "csv":
	default:
		writeProblem(w, http.StatusBadRequest, "format "+strconv.Quote(format)+" is not ndjson or csv")
		return
	}
	id := r.PathValue("job_id")
	lw := newListingWriter(w, format, columns)
	err := list(lw)
	switch {
	case errors.Is(err, pipeline.ErrJobNotFound):
		writeProblem(w, http.StatusNotFound, "no job "+id)
		return
	case errors.Is(err, pipeline.ErrNoResults):
		writeProblem(w, http.StatusConflict, "job "+id+" was uploaded without results=true, so its commands' outcomes were not kept; its counts and failures are")
		return
	case err != nil && !lw.started:
		s.unavailable(w, r, "reading the "+what, err)
		return
	case err != nil:
		// The status is sent: cutting the connection is the only way to
		// tell the client that the listing is incomplete.
		if r.Context().Err() != nil {
			s.log(r.Context()).Debug("client left a listing", "listing", what, "job_id", id, "error", err)
		} else {
			s.log(r.Context()).Error("streaming a listing", "listing", what, "job_id", id, "error", err)
		}
		panic(http.ErrAbortHandler)
	}
	lw.begin() // an empty listing still gets its (CSV) header
	_ = lw.flush()
}

// listingWriter writes a listing as NDJSON or CSV. The answer starts with
// the first row, so that an error before it can still be a problem+json
// answer.
type listingWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	bw      *bufio.Writer
	format  string
	columns []string
	started bool
	csv     *csv.Writer
	enc     *json.Encoder
	n       int
}

func newListingWriter(w http.ResponseWriter, format string, columns []string) *listingWriter {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	return &listingWriter{w: w, rc: rc, bw: bufio.NewWriterSize(w, 64<<10), format: format, columns: columns}
}

// begin sends the status and, for CSV, the header row, once.
func (lw *listingWriter) begin() {
	if lw.started {
		return
	}
	lw.started = true
	ct := "application/x-ndjson"
	if lw.format == "csv" {
		ct = "text/csv; charset=utf-8"
	}
	lw.w.Header().Set("Content-Type", ct)
	lw.w.WriteHeader(http.StatusOK)
	if lw.format == "csv" {
		lw.csv = csv.NewWriter(lw.bw)
		_ = lw.csv.Write(lw.columns)
	} else {
		lw.enc = json.NewEncoder(lw.bw)
	}
}

// write writes one row: v as JSON, or its CSV fields.
func (lw *listingWriter) write(v any, fields ...string) error {
	lw.begin()
	var err error
	if lw.csv != nil {
		err = lw.csv.Write(fields)
	} else {
		err = lw.enc.Encode(v)
	}
	if lw.n++; err == nil && lw.n%flushEvery == 0 {
		err = lw.flush()
	}
	return err
}

// flush sends what is buffered and gives the client writeTimeout more.
func (lw *listingWriter) flush() error {
	if lw.csv != nil {
		lw.csv.Flush()
		if err := lw.csv.Error(); err != nil {
			return err
		}
	}
	if err := lw.bw.Flush(); err != nil {
		return err
	}
	err := lw.rc.Flush()
	_ = lw.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	return err
}

func (s *Server) deadLetters(w http.ResponseWriter, r *http.Request) {
	by, err := s.cfg.Jobs.DeadLetters(r.Context(), tenantOf(r.Context()))
	if err != nil {
		s.unavailable(w, r, "counting dead letters", err)
		return
	}
	out := DeadLetterCounts{ByErrorClass: by}
	for _, n := range by {
		out.Total += n
	}
	writeJSON(w, http.StatusOK, out)
}

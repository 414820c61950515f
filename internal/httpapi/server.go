package httpapi

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// openAPI describes every route and status served here; a test holds it to
// that.
//
//go:embed openapi.yaml
var openAPI []byte

// Jobs is what the API needs of the job store.
type Jobs interface {
	CreateJob(ctx context.Context, id pipeline.JobID, tenant string) error
	AddFailures(ctx context.Context, id pipeline.JobID, fs []pipeline.Failure) error
	FinishUpload(ctx context.Context, id pipeline.JobID, r pipeline.UploadResult) error
	Job(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error)
	Ping(ctx context.Context) error
}

// Producer is what the API needs of Kafka: an asynchronous produce whose
// callback reports the broker's acknowledgement.
type Producer interface {
	Produce(ctx context.Context, topic string, r *pipeline.Record, done func(error))
	Ping(ctx context.Context) error
}

// Config wires a Server.
type Config struct {
	Jobs Jobs
	// Idempotency keeps Idempotency-Key records for IdempotencyWindow.
	Idempotency       IdempotencyStore
	IdempotencyWindow time.Duration
	Producer          Producer
	Entities          pipeline.Entities
	Topic             string
	Keys              Keys
	Limits            Limits
	// Backlog, when set with Limits.MaxLag, turns uploads away with 429
	// while the processors are that far behind.
	Backlog  func() int64
	NewJobID func() pipeline.JobID
	Logger   *slog.Logger
}

// Limits bound an upload.
type Limits struct {
	// ReadIdleTimeout cuts off an upload that sends nothing for this long;
	// each read pushes the deadline on, so a long healthy upload lives.
	ReadIdleTimeout time.Duration
	MaxBodyBytes    int64
	MaxRecordBytes  int
	MaxRecords      int64
	MaxRejections   int
	MaxLag          int64
}

// Server serves the ingress API.
type Server struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the API handler.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	s.mux.HandleFunc("POST /v1/jobs", s.authenticate(s.createJob))
	s.mux.HandleFunc("GET /v1/jobs/{job_id}", s.authenticate(s.getJob))
	handleHealth(s.mux, Dependency{"PostgreSQL", cfg.Jobs.Ping}, Dependency{"Kafka", cfg.Producer.Ping})
	s.mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(openAPI)
	})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "no route for "+r.Method+" "+r.URL.Path)
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

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
}

// CountsView is the counts object of a JobView.
type CountsView struct {
	Received int64 `json:"received"`
	Rejected int64 `json:"rejected"`
	Accepted int64 `json:"accepted"`
	pipeline.Counts
}

func viewOf(j *pipeline.Job) JobView {
	return JobView{
		JobID: j.ID, State: j.State, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt, CompletedAt: j.CompletedAt,
		Counts:   CountsView{Received: j.Received, Rejected: j.Rejected, Accepted: j.Accepted, Counts: j.Counts},
		Progress: j.Progress(), Error: j.Error,
	}
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	j, err := s.cfg.Jobs.Job(r.Context(), tenantOf(r.Context()), pipeline.JobID(r.PathValue("job_id")))
	if errors.Is(err, pipeline.ErrJobNotFound) {
		writeProblem(w, http.StatusNotFound, "no job "+r.PathValue("job_id"))
		return
	}
	if err != nil {
		s.cfg.Logger.Error("reading job", "job_id", r.PathValue("job_id"), "error", err)
		writeUnavailable(w, 2*time.Second, "reading the job failed; try again", "")
		return
	}
	writeJSON(w, http.StatusOK, viewOf(j))
}

package httpapi

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"io/fs"
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

// uiFiles is the read-only job page served at /ui/: plain HTML, CSS and
// JavaScript on the API above, built into the binary.
//
//go:embed ui
var uiFiles embed.FS

// Jobs is what the API needs of the job store.
type Jobs interface {
	CreateJob(ctx context.Context, id pipeline.JobID, tenant string, o pipeline.JobOptions) error
	AddFailures(ctx context.Context, id pipeline.JobID, fs []pipeline.Failure) error
	ProgressJob(ctx context.Context, id pipeline.JobID, r pipeline.UploadResult) error
	FinishUpload(ctx context.Context, id pipeline.JobID, r pipeline.UploadResult) error
	Job(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error)
	// AbortJob aborts a tenant's job and returns it; a finished job is a
	// *pipeline.JobFinishedError.
	AbortJob(ctx context.Context, tenant string, id pipeline.JobID) (*pipeline.Job, error)
	Parts
	Jobs(ctx context.Context, tenant string, q pipeline.JobQuery) ([]*pipeline.Job, error)
	Failures(ctx context.Context, tenant string, id pipeline.JobID, fn func(pipeline.Failure) error) error
	// Results streams a job's commands with their outcomes in input order
	// (only those outcomes, when some are given); pipeline.ErrNoResults
	// for a job created without them.
	Results(ctx context.Context, tenant string, id pipeline.JobID, outcomes []pipeline.Outcome, fn func(pipeline.Result) error) error
	DeadLetters(ctx context.Context, tenant string) (map[pipeline.ErrorClass]int64, error)
	Ping(ctx context.Context) error
}

// Catalog is the entities uploads are checked against. Refresh reads an
// entity's table again (as often as it allows) and reports whether it
// changed: a command naming a column the catalog lacks, or a value its
// column refuses, is checked once more after it before it is rejected, as
// the table may have changed since spool read it.
type Catalog interface {
	Entities() pipeline.Entities
	Refresh(ctx context.Context, entity string) bool
}

// FixedCatalog is a Catalog that never changes.
type FixedCatalog pipeline.Entities

// Entities implements Catalog.
func (f FixedCatalog) Entities() pipeline.Entities { return pipeline.Entities(f) }

// Refresh implements Catalog: nothing changes.
func (FixedCatalog) Refresh(context.Context, string) bool { return false }

// Producer is what the API needs of Kafka: an asynchronous produce whose
// callback reports the broker's acknowledgement.
type Producer interface {
	Produce(ctx context.Context, topic string, r *pipeline.Record, done func(error))
	Ping(ctx context.Context) error
}

// Observer is told of requests and uploads, for metrics. Its methods must be
// cheap and safe for concurrent use.
type Observer interface {
	// Request: a request to route (the ServeMux pattern) was answered code,
	// d after it came in (for an upload: once its answer was written).
	Request(route string, code int, d time.Duration)
	// Upload: an upload that created a job was answered code, having read
	// bytes of body and accepted and rejected so many records.
	Upload(code int, accepted, rejected, bytes int64)
	// Produced: the broker answered for a record d after it was handed to
	// the producer: acknowledged (err nil), or refused, classified
	// (pipeline.ClassOf).
	Produced(d time.Duration, err error)
	// Uploading: an upload took (+1) or gave back (-1) its slot.
	Uploading(delta int)
}

// Tracer traces uploads. StartUpload begins an upload's span, continuing
// the trace its request carries (the W3C traceparent header), and returns
// the context the upload runs under, the traceparent its records carry to
// the processors, and the span's end, told the answer's status.
type Tracer interface {
	StartUpload(ctx context.Context, header http.Header, job pipeline.JobID) (context.Context, string, func(status int))
}

type nopObserver struct{}

func (nopObserver) Request(string, int, time.Duration) {}
func (nopObserver) Upload(int, int64, int64, int64)    {}
func (nopObserver) Produced(time.Duration, error)      {}
func (nopObserver) Uploading(int)                      {}

// Config wires a Server.
type Config struct {
	Jobs Jobs
	// Idempotency keeps Idempotency-Key records for IdempotencyWindow.
	Idempotency       IdempotencyStore
	IdempotencyWindow time.Duration
	Producer          Producer
	Catalog           Catalog
	Topic             string
	Keys              Keys
	Limits            Limits
	// Tracer, when set, traces each upload.
	Tracer Tracer
	// Backlog, when set with Limits.MaxLag, turns uploads away with 429
	// while the processors are that far behind.
	Backlog  func() int64
	NewJobID func() pipeline.JobID
	// Observer, when set, is told of requests and uploads; Metrics, when
	// set, is served at GET /metrics.
	Observer Observer
	Metrics  http.Handler
	Logger   *slog.Logger
}

// Server serves the ingress API.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	uploads uploadSlots
}

// New returns the API handler.
func New(cfg Config) *Server {
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.Catalog == nil {
		cfg.Catalog = FixedCatalog(nil)
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", cfg.Metrics)
	}
	s.mux.HandleFunc("POST /v1/jobs", s.authenticate(s.createJob))
	s.mux.HandleFunc("GET /v1/jobs", s.authenticate(s.listJobs))
	s.mux.HandleFunc("GET /v1/jobs/{job_id}", s.authenticate(s.getJob))
	s.mux.HandleFunc("GET /v1/jobs/{job_id}/failures", s.authenticate(s.listFailures))
	s.mux.HandleFunc("POST /v1/jobs/{job_id}/abort", s.authenticate(s.abortJob))
	s.mux.HandleFunc("PUT /v1/jobs/{job_id}/parts/{n}", s.authenticate(s.putPart))
	s.mux.HandleFunc("POST /v1/jobs/{job_id}/complete", s.authenticate(s.completeJob))
	s.mux.HandleFunc("GET /v1/jobs/{job_id}/results", s.authenticate(s.listResults))
	s.mux.HandleFunc("GET /v1/dead-letters", s.authenticate(s.deadLetters))
	handleHealth(s.mux, cfg.Logger, Dependency{"PostgreSQL", cfg.Jobs.Ping}, Dependency{"Kafka", cfg.Producer.Ping})
	s.mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(openAPI)
	})
	ui, _ := fs.Sub(uiFiles, "ui")
	s.mux.Handle("GET /ui/", uiHeaders(http.StripPrefix("/ui/", http.FileServerFS(ui))))
	s.mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	s.mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "no route for "+r.Method+" "+r.URL.Path)
	})
	return s
}

// uiHeaders keep the page to its own files and this origin's API.
func uiHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// ServeHTTP serves the request under a request id (the client's
// X-Request-ID when it is sane, else a new one, answered in the same
// header and carried by every log line of the request), and tells the
// observer its route and code.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Request-ID")
	if !saneRequestID(id) {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		id = hex.EncodeToString(b)
	}
	w.Header().Set("X-Request-ID", id)
	r = r.WithContext(context.WithValue(r.Context(), loggerKey{}, s.cfg.Logger.With("request_id", id)))
	sw := &statusWriter{ResponseWriter: w}
	start := time.Now()
	defer func() {
		// A handler that cut its answer off (http.ErrAbortHandler) counts
		// as aborted.
		if v := recover(); v != nil {
			s.cfg.Observer.Request(r.Pattern, codeAborted, time.Since(start))
			panic(v)
		}
		s.cfg.Observer.Request(r.Pattern, sw.code(), time.Since(start))
	}()
	s.mux.ServeHTTP(sw, r)
}

// codeAborted is the code an aborted answer is counted with: nginx's 499.
const codeAborted = 499

type loggerKey struct{}

// log is the request's logger (with its request id), or the server's.
func (s *Server) log(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return s.cfg.Logger
}

func saneRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

// statusWriter remembers the status code; Unwrap keeps the underlying
// writer's flushing and deadlines reachable (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

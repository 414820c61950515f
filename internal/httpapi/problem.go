package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/spoolhq/spool/pipeline"
)

// problem is an RFC 9457 problem detail.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	JobID  string `json:"job_id,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, detail string) {
	writeProblemFor(w, status, detail, "")
}

// writeProblemFor answers a problem. The detail may quote the request, so
// it is bounded and kept printable like every message that quotes input.
func writeProblemFor(w http.ResponseWriter, status int, detail, jobID string) {
	detail = pipeline.Printable(detail, pipeline.MaxErrorBytes)
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail, JobID: jobID})
}

func writeUnavailable(w http.ResponseWriter, retryAfter time.Duration, detail, jobID string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter.Seconds())))
	writeProblemFor(w, http.StatusServiceUnavailable, detail, jobID)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

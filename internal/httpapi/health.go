package httpapi

import (
	"context"
	"net/http"
	"time"
)

// Dependency is something readiness depends on.
type Dependency struct {
	Name string
	Ping func(context.Context) error
}

// handleHealth registers GET /healthz (the process is up) and GET /readyz
// (every dependency answers within 3 s; 503 with Retry-After naming the
// first that does not) on mux. Ingress and the processor both serve them.
func handleHealth(mux *http.ServeMux, deps ...Dependency) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		for _, d := range deps {
			if err := d.Ping(ctx); err != nil {
				writeUnavailable(w, 5*time.Second, d.Name+" unreachable: "+err.Error(), "")
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	})
}

// HealthHandler serves only /healthz and /readyz, for the processor.
func HealthHandler(deps ...Dependency) http.Handler {
	mux := http.NewServeMux()
	handleHealth(mux, deps...)
	return mux
}

package app

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/spoolhq/spool/internal/httpapi"
)

// serveOps serves the operator's endpoints on ln: /healthz, /readyz,
// /metrics and, when metrics.pprof is on, Go's profiling endpoints. They
// live on a listener of their own, never the API's, so that a profile (a
// heap dump holds request bodies) is only as reachable as that port is.
// stop closes the server and waits for it.
func serveOps(ln net.Listener, logger *slog.Logger, metrics http.Handler, pprofOn bool, deps ...httpapi.Dependency) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("/", httpapi.HealthHandler(logger, deps...))
	mux.Handle("GET /metrics", metrics)
	if pprofOn {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: mux, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ends with ErrServerClosed when stop closes it
	}()
	return func() {
		_ = srv.Close()
		<-done
	}
}

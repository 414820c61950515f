package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
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
//
// The answer names only the dependency: its error carries hosts, users and
// database names, which are for the operator, so it goes to logger instead:
// when the dependency goes down, when its error changes (at most once a
// minute) and when it is back, not once per probe.
func handleHealth(mux *http.ServeMux, logger *slog.Logger, deps ...Dependency) {
	states := newDependencyStates(logger)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		for _, d := range deps {
			err := d.Ping(ctx)
			states.observe(d.Name, err)
			if err != nil {
				writeUnavailable(w, 5*time.Second, d.Name+" is unreachable", "")
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	})
}

// HealthHandler serves only /healthz and /readyz, for the processor and
// ingress's metrics listener; logger is told when a dependency goes down
// and comes back.
func HealthHandler(logger *slog.Logger, deps ...Dependency) http.Handler {
	mux := http.NewServeMux()
	handleHealth(mux, logger, deps...)
	return mux
}

// relogEvery bounds how often a dependency that stays down is logged again
// because its error changed (an address or a port in it, say).
const relogEvery = time.Minute

// dependencyStates remembers each dependency that is down, so that a
// failing probe is logged when something changed rather than every time.
type dependencyStates struct {
	logger *slog.Logger
	now    func() time.Time
	mu     sync.Mutex
	down   map[string]downState // absent when up
}

type downState struct {
	err    string    // the error last logged
	logged time.Time // when
}

func newDependencyStates(logger *slog.Logger) *dependencyStates {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &dependencyStates{logger: logger, now: time.Now, down: map[string]downState{}}
}

func (s *dependencyStates) observe(name string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, wasDown := s.down[name]
	now := s.now()
	switch {
	case err == nil && wasDown:
		delete(s.down, name)
		s.logger.Info("readiness: dependency reachable again", "dependency", name)
	case err != nil && (!wasDown || prev.err != err.Error() && now.Sub(prev.logged) >= relogEvery):
		s.down[name] = downState{err: err.Error(), logged: now}
		s.logger.Warn("readiness: dependency unreachable", "dependency", name, "error", err)
	}
}

package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
)

// DefaultTenant is the tenant of every request when auth is disabled.
const DefaultTenant = "default"

// Keys maps the hex SHA-256 of an API key to its tenant. An empty map turns
// auth off.
type Keys map[string]string

type tenantKey struct{}

func tenantOf(ctx context.Context) string { return ctx.Value(tenantKey{}).(string) }

// authenticate resolves the bearer key to a tenant, or answers 401.
func (s *Server) authenticate(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tenant := DefaultTenant
		if len(s.cfg.Keys) > 0 {
			key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
			t, found := s.cfg.Keys[hex.EncodeToString(sum[:])]
			if !ok || !found {
				w.Header().Set("WWW-Authenticate", `Bearer realm="spool"`)
				writeProblem(w, http.StatusUnauthorized, "a valid API key is required: Authorization: Bearer <key>")
				return
			}
			tenant = t
		}
		next(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, tenant)))
	}
}

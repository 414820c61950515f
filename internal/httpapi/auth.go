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

// Keys maps the hex SHA-256 of an API key to whom it acts as. An empty map
// turns auth off.
type Keys map[string]Principal

// Principal is what an API key may do: act as its tenant, and write the
// entities it names (all when Entities is nil).
type Principal struct {
	Tenant   string
	Entities map[string]bool
}

// MayWrite reports whether the principal may write entity.
func (p Principal) MayWrite(entity string) bool { return p.Entities == nil || p.Entities[entity] }

type principalKey struct{}

func principalOf(ctx context.Context) Principal { return ctx.Value(principalKey{}).(Principal) }

func tenantOf(ctx context.Context) string { return principalOf(ctx).Tenant }

// authenticate resolves the bearer key to a tenant, or answers 401.
func (s *Server) authenticate(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p := Principal{Tenant: DefaultTenant}
		if len(s.cfg.Keys) > 0 {
			key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			sum := sha256.Sum256([]byte(strings.TrimSpace(key)))
			t, found := s.cfg.Keys[hex.EncodeToString(sum[:])]
			if !ok || !found {
				w.Header().Set("WWW-Authenticate", `Bearer realm="spool"`)
				writeProblem(w, http.StatusUnauthorized, "a valid API key is required: Authorization: Bearer <key>")
				return
			}
			p = t
		}
		next(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	}
}

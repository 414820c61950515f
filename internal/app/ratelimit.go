package app

import (
	"golang.org/x/time/rate"

	"github.com/spoolhq/spool/pipeline"
)

// NewRateLimiter paces to perSecond events with room for burst at once; the
// processor's write rate and a dead-letter replay's send rate use it.
func NewRateLimiter(perSecond float64, burst int) pipeline.Limiter {
	return rate.NewLimiter(rate.Limit(perSecond), max(1, burst))
}

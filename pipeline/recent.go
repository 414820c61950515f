package pipeline

import (
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Recent remembers, per partition, the command ids this worker has seen
// committed to the ledger, so that hot repeats are settled without asking
// the database. It only ever answers for ids whose claim committed less
// than the dedupe window ago, so it can never call a fresh command a
// duplicate; a miss just means asking the database.
type Recent struct {
	cache  *lru.Cache[Key, recentEntry]
	window time.Duration
	now    func() time.Time
}

type recentEntry struct {
	hash    PayloadHash
	origin  Origin
	claimed time.Time
}

// NewRecent returns a pre-filter of at most size ids; size 0 disables it.
func NewRecent(size int, window time.Duration) *Recent {
	if size <= 0 {
		return nil
	}
	c, err := lru.New[Key, recentEntry](size)
	if err != nil {
		panic(err) // only for size <= 0, excluded above
	}
	return &Recent{cache: c, window: window, now: time.Now}
}

// lookup returns the payload hash an id was committed with, and the
// origin of the record that claimed it.
func (r *Recent) lookup(k Key) (recentEntry, bool) {
	if r == nil {
		return recentEntry{}, false
	}
	e, ok := r.cache.Get(k)
	// Half the window leaves ample room for the time between the ledger's
	// claimed_at and our clock.
	if !ok || r.now().Sub(e.claimed) > r.window/2 {
		return recentEntry{}, false
	}
	return e, true
}

// remember records the ids a committed batch claimed: those applied or
// stale. Duplicates the database reported are left out, since their claim
// time is unknown and could be near the end of the window.
func (r *Recent) remember(msgs []*Message, outcomes []Outcome) {
	if r == nil {
		return
	}
	now := r.now()
	for i, m := range msgs {
		if outcomes[i] == OutcomeApplied || outcomes[i] == OutcomeStale {
			o, _ := m.Origin()
			r.cache.Add(Key{m.Tenant, m.Command.ID}, recentEntry{hash: m.Hash, origin: o, claimed: now})
		}
	}
}

package pipeline

import (
	"encoding/binary"
	"hash/maphash"
	"time"
)

// Recent remembers, per partition, the command ids this worker has seen
// committed to the ledger, so that hot repeats are settled without asking
// the database. It only ever answers for ids whose claim committed less
// than the dedupe window ago, so it can never call a fresh command a
// duplicate; a miss just means asking the database.
//
// It is a table of slots without pointers, an id's slot chosen by its hash:
// a newer id takes the slot of an older one, and the garbage collector has
// nothing in it to scan. (An LRU cache of strings cost the processor a
// tenth of its CPU a command, its lists and keys scanned by every
// collection, for repeats that are rare in most uploads.) A slot knows its
// id by two hashes of it with independent random seeds: two ids share both
// with odds of 2⁻¹²⁸, and no client can aim at a seed it cannot see.
type Recent struct {
	slots  []recentSlot
	seeds  [2]maphash.Seed
	window time.Duration
	now    func() time.Time
}

type recentSlot struct {
	id      [2]uint64
	claimed int64 // Unix nanoseconds; 0: an empty slot
	recentEntry
}

type recentEntry struct {
	hash PayloadHash
	// origin is the Origin.Sum of the record that claimed the id, if it
	// had an origin (the ledger keeps the same).
	origin    int64
	hasOrigin bool
}

// NewRecent returns a pre-filter of size slots; size 0 disables it.
func NewRecent(size int, window time.Duration) *Recent {
	if size <= 0 {
		return nil
	}
	return &Recent{slots: make([]recentSlot, size), seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		window: window, now: time.Now}
}

// slot returns k's slot and k's hashes.
func (r *Recent) slot(k Key) (*recentSlot, [2]uint64) {
	var id [2]uint64
	for i, seed := range r.seeds {
		var h maphash.Hash
		h.SetSeed(seed)
		var n [8]byte // the tenant's length first: ("ab", "c") is not ("a", "bc")
		binary.LittleEndian.PutUint64(n[:], uint64(len(k.Tenant)))
		h.Write(n[:])
		h.WriteString(k.Tenant)
		h.WriteString(string(k.ID))
		id[i] = h.Sum64()
	}
	return &r.slots[id[0]%uint64(len(r.slots))], id
}

// lookup returns the payload hash an id was committed with, and the
// origin of the record that claimed it.
func (r *Recent) lookup(k Key) (recentEntry, bool) {
	if r == nil {
		return recentEntry{}, false
	}
	s, id := r.slot(k)
	// Half the window leaves ample room for the time between the ledger's
	// claimed_at and our clock.
	if s.claimed == 0 || s.id != id || r.now().UnixNano()-s.claimed > int64(r.window/2) {
		return recentEntry{}, false
	}
	return s.recentEntry, true
}

// remember records the ids a committed batch claimed: those applied or
// stale. Duplicates the database reported are left out, since their claim
// time is unknown and could be near the end of the window.
func (r *Recent) remember(msgs []*Message, outcomes []Outcome) {
	if r == nil {
		return
	}
	now := r.now().UnixNano()
	for i, m := range msgs {
		if claimed(outcomes[i]) {
			s, id := r.slot(Key{m.Tenant, m.Command.ID})
			e := recentEntry{hash: m.Hash}
			if o, ok := m.Origin(); ok {
				e.origin, e.hasOrigin = o.Sum(), true
			}
			*s = recentSlot{id: id, claimed: now, recentEntry: e}
		}
	}
}

// claimed tells whether a command with this outcome claimed its id in the
// ledger: it was fresh and written (or found stale, present or absent).
func claimed(o Outcome) bool {
	switch o {
	case OutcomeApplied, OutcomeStale, OutcomeExists, OutcomeMissing:
		return true
	}
	return false
}

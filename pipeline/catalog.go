package pipeline

import (
	"maps"
	"reflect"
	"sync"
	"sync/atomic"
)

// Catalog holds the entities as last read from the database, for readers
// on every goroutine, and a version that moves each time they change: an
// entity's table can change while spool runs (a column added, dropped or
// retyped), and the catalog is read again then.
type Catalog struct {
	mu      sync.Mutex // serializes writers
	current atomic.Pointer[catalogState]
}

type catalogState struct {
	entities Entities
	version  uint64
}

// NewCatalog returns a catalog holding es, at version 1.
func NewCatalog(es Entities) *Catalog {
	c := &Catalog{}
	for _, e := range es {
		e.Generation = 1
	}
	c.current.Store(&catalogState{entities: es, version: 1})
	return c
}

// Entities returns the entities now; the map must not be changed.
func (c *Catalog) Entities() Entities { return c.current.Load().entities }

// Snapshot returns the entities now and their version, read together.
func (c *Catalog) Snapshot() (Entities, uint64) {
	st := c.current.Load()
	return st.entities, st.version
}

// Version is the catalog's version now.
func (c *Catalog) Version() uint64 { return c.current.Load().version }

// Replace sets every entity anew (a reload of the configuration). The
// entities are the catalog's from then on: not to be changed.
func (c *Catalog) Replace(es Entities) {
	c.mu.Lock()
	defer c.mu.Unlock()
	version := c.current.Load().version + 1
	for _, e := range es {
		e.Generation = version
	}
	c.current.Store(&catalogState{entities: es, version: version})
}

// Update sets one entity, read again, and reports whether it changed
// anything.
func (c *Catalog) Update(e *Entity) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.current.Load()
	if old, ok := cur.entities[e.Name]; ok && old.Same(e) {
		return false
	}
	es := maps.Clone(cur.entities)
	e.Generation = cur.version + 1
	es[e.Name] = e
	c.current.Store(&catalogState{entities: es, version: e.Generation})
	return true
}

// Same tells whether two definitions of an entity are alike, whatever
// their generations.
func (e *Entity) Same(o *Entity) bool {
	a, b := *e, *o
	a.Generation, b.Generation = 0, 0
	return reflect.DeepEqual(a, b)
}

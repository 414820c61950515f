package faults

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
)

// The two entities of the workload: customers is versioned (convergence to
// the highest version, deletes leaving tombstones), events is not (every
// command is its own row, so that a lost command shows as a missing row).
const (
	customers = "customers"
	events    = "events"
)

// Shares of the workload's commands.
const (
	repeatShare = 0.02  // a whole earlier command again, in a later upload (a client's retry)
	poisonShare = 0.005 // a negative amount the table's CHECK refuses: dead-lettered
	rejectShare = 0.003 // no key column: rejected by ingress
	deleteShare = 0.1   // of the customers commands that are not poison: versioned deletes
)

// command is one command of the workload, with what the checker needs to
// know of it.
type command struct {
	ID      string
	Entity  string
	Key     string // customer_id or event_id
	Version int64  // customers only
	Row     string // the row it writes, as the checker dumps it; none for a delete
	Delete  bool   // a customers delete
	Poison  bool
	Reject  bool
	// Repeat is the index of the earlier command this one repeats, or -1.
	Repeat int
	Line   []byte
}

// workload is N commands cut into uploads; command i is a pure function of
// the seed and i.
type workload struct {
	cmds    []command
	uploads [][]int // command indexes of each upload
}

// tables of the workload, for the run's schema.
const tables = `
CREATE TABLE customers (customer_id text PRIMARY KEY, name text NOT NULL,
	balance numeric(12,2) NOT NULL CHECK (balance >= 0), version bigint NOT NULL, cmd text NOT NULL);
CREATE TABLE events (event_id text PRIMARY KEY, customer_id text NOT NULL,
	amount numeric(12,2) NOT NULL CHECK (amount >= 0), cmd text NOT NULL);`

func newWorkload(n, uploadSize int, seed uint64) *workload {
	w := &workload{cmds: make([]command, n)}
	keys := max(1, n*3/10)
	for i := range n {
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		if i > 0 && r.Float64() < repeatShare {
			if j := r.IntN(i); !w.cmds[j].Poison && !w.cmds[j].Reject && w.cmds[j].Repeat < 0 {
				w.cmds[i] = w.cmds[j]
				w.cmds[i].Repeat = j
				continue
			}
		}
		id := fmt.Sprintf("f-%08d", i)
		c := command{ID: id, Repeat: -1}
		cents := r.IntN(1_000_000)
		p := r.Float64()
		c.Poison = p < poisonShare
		c.Reject = !c.Poison && p < poisonShare+rejectShare
		if c.Poison {
			cents = -cents - 1
		}
		money := fmt.Sprintf("%.2f", float64(cents)/100)
		var data map[string]any
		if r.IntN(2) == 0 {
			c.Entity, c.Key, c.Version = customers, fmt.Sprintf("cust-%07d", r.IntN(keys)), int64(i)+1
			name := fmt.Sprintf("Customer %s v%d", c.Key, c.Version)
			c.Row = fmt.Sprintf("%s|%s|%d|%s", name, money, c.Version, id)
			data = map[string]any{"customer_id": c.Key, "name": name, "balance": money, "cmd": id}
			if c.Delete = !c.Poison && r.Float64() < deleteShare; c.Delete {
				c.Row, data = "", map[string]any{"customer_id": c.Key}
			}
		} else {
			c.Entity, c.Key = events, "ev-"+id
			cust := fmt.Sprintf("cust-%07d", r.IntN(keys))
			c.Row = fmt.Sprintf("%s|%s|%s", cust, money, id)
			data = map[string]any{"event_id": c.Key, "customer_id": cust, "amount": money, "cmd": id}
		}
		if c.Reject {
			delete(data, map[string]string{customers: "customer_id", events: "event_id"}[c.Entity])
		}
		op := "upsert"
		if c.Delete {
			op = "delete"
		}
		line := map[string]any{"id": id, "entity": c.Entity, "op": op, "data": data}
		if c.Version > 0 {
			line["version"] = c.Version
		}
		b, err := json.Marshal(line)
		if err != nil {
			panic(err) // maps of strings always marshal
		}
		c.Line = append(b, '\n')
		w.cmds[i] = c
	}
	for start := 0; start < n; start += uploadSize {
		var idx []int
		for i := start; i < min(n, start+uploadSize); i++ {
			idx = append(idx, i)
		}
		w.uploads = append(w.uploads, idx)
	}
	rand.New(rand.NewPCG(seed, ^uint64(0))).Shuffle(len(w.uploads), func(a, b int) {
		w.uploads[a], w.uploads[b] = w.uploads[b], w.uploads[a]
	})
	return w
}

// body is upload u as NDJSON.
func (w *workload) body(u int) []byte {
	var b []byte
	for _, i := range w.uploads[u] {
		b = append(b, w.cmds[i].Line...)
	}
	return b
}

// oracle is each table's expected rows: customers at each key's highest
// version of a command that was not poison (no row where that is a
// delete), events every good command.
func (w *workload) oracle() (custs, evs map[string]string) {
	custs, evs = map[string]string{}, map[string]string{}
	best := map[string]*command{}
	for i := range w.cmds {
		c := &w.cmds[i]
		if c.Poison || c.Reject {
			continue
		}
		switch c.Entity {
		case customers:
			if b := best[c.Key]; b == nil || c.Version > b.Version {
				best[c.Key] = c
			}
		case events:
			evs[c.Key] = c.Row
		}
	}
	for k, c := range best {
		if !c.Delete {
			custs[k] = c.Row
		}
	}
	return custs, evs
}

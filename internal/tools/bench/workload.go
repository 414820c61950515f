package bench

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"

	"github.com/spoolhq/spool/pipeline"
)

// Workload generates commands deterministically: command i is a pure
// function of the seed and i, so that any stage can regenerate the same
// stream. About 5% of the commands repeat an earlier command whole (a
// client's retry), keys are drawn from 0.6·N so that most keys get several
// versions, and versions are unique but arrive out of order.
type Workload struct {
	N    int
	Seed uint64
	// Prefix starts every command id ("bench" when empty), so that two
	// workloads' ids do not meet in the ledger.
	Prefix string
}

// repeatShare is the share of commands that repeat an earlier one.
const repeatShare = 0.05

// Entity is the table the workload writes: spool's demo customers.
const Entity = "customers"

// Command returns command i.
func (w Workload) Command(i int) pipeline.Command {
	r := w.rng(i)
	if repeats(i, r) {
		return w.Command(r.IntN(i))
	}
	keys := max(1, w.N*6/10)
	k := r.IntN(keys)
	version := int64(r.Uint32())<<24 | int64(i)
	cents := r.IntN(1_000_000)
	data := map[string]json.RawMessage{
		"customer_id": quote(fmt.Sprintf("cust-%09d", k)),
		"name":        quote(fmt.Sprintf("Customer %d", k)),
		"email":       quote(fmt.Sprintf("user%d.%d@example.com", k, i%100)),
		"balance":     quote(fmt.Sprintf("%d.%02d", cents/100, cents%100)),
	}
	return pipeline.Command{
		ID:      pipeline.CommandID(fmt.Sprintf("%s-%010d", cmp.Or(w.Prefix, "bench"), i)),
		Entity:  Entity,
		Op:      pipeline.OpUpsert,
		Version: &version,
		Data:    data,
	}
}

// rng is command i's generator.
func (w Workload) rng(i int) *rand.Rand { return rand.New(rand.NewPCG(w.Seed, uint64(i))) }

// repeats draws from command i's generator whether it repeats an earlier
// command.
func repeats(i int, r *rand.Rand) bool { return i > 0 && r.Float64() < repeatShare }

// Repeats is how many commands repeat an earlier one: the duplicates a
// drain must count, every other command being applied or stale.
func (w Workload) Repeats() int64 {
	var n int64
	for i := range w.N {
		if repeats(i, w.rng(i)) {
			n++
		}
	}
	return n
}

func quote(s string) json.RawMessage { return json.RawMessage(strconv.Quote(s)) }

// WriteNDJSON writes the workload as an upload body.
func (w Workload) WriteNDJSON(out io.Writer) error {
	b := bufio.NewWriterSize(out, 256<<10)
	for i := range w.N {
		if err := w.writeLine(b, i); err != nil {
			return err
		}
	}
	return b.Flush()
}

// writeLine writes command i as one NDJSON line.
func (w Workload) writeLine(out io.Writer, i int) error {
	c := w.Command(i)
	b, err := json.Marshal(&c)
	if err != nil {
		return err
	}
	_, err = out.Write(append(b, '\n'))
	return err
}

// Final is the oracle: each key's row as the version guard leaves it, the
// highest version's columns.
func (w Workload) Final() map[string]pipeline.Command {
	final := make(map[string]pipeline.Command, w.N*6/10)
	for i := range w.N {
		c := w.Command(i)
		k := string(c.Data["customer_id"])
		if prev, ok := final[k]; !ok || *prev.Version < *c.Version {
			final[k] = c
		}
	}
	return final
}

// AverageBytes samples the size of one NDJSON line.
func (w Workload) AverageBytes() int {
	const sample = 1000
	var n int
	for i := range sample {
		c := w.Command(i)
		b, _ := json.Marshal(&c)
		n += len(b) + 1
	}
	return n / sample
}

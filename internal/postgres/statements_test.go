package postgres

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/spoolhq/spool/pipeline"
)

// TestStatementCacheIsBounded: the column set of a group is the client's
// choice, so many distinct sets must not grow the cache past its bound,
// and a hit must return the statement built on the miss.
func TestStatementCacheIsBounded(t *testing.T) {
	t.Parallel()
	const bound = 16
	e := &pipeline.Entity{Name: "wide", Schema: "public", Table: "wide", Key: []string{"id"},
		Columns: map[string]pipeline.Column{"id": {Name: "id", Type: "text", CastType: "text"}}}
	const width = 8 // 2^8 column sets
	for i := range width {
		c := fmt.Sprintf("c%d", i)
		e.Columns[c] = pipeline.Column{Name: c, Type: "text", CastType: "text"}
	}
	s := newStore(nil, pipeline.Entities{e.Name: e}, "g", slog.New(slog.NewTextHandler(io.Discard, nil)), bound)
	group := func(set int) (*pipeline.Group, []string) {
		g := &pipeline.Group{Entity: e, Op: pipeline.OpUpsert}
		for i := range width {
			if set&(1<<i) != 0 {
				g.Columns = append(g.Columns, fmt.Sprintf("c%d", i))
			}
		}
		return g, append([]string{"id"}, g.Columns...)
	}
	for set := range 1 << width {
		s.groupSQL(group(set))
		require.LessOrEqual(t, s.sqlCache.Len(), bound)
	}
	require.Equal(t, bound, s.sqlCache.Len())

	g, cols := group(1<<width - 1)
	first := s.groupSQL(g, cols)
	require.Contains(t, first, `"c7"`)
	require.Equal(t, first, s.groupSQL(g, cols), "a hit returns the statement the miss built")
	require.True(t, s.sqlCache.Contains(e.Name+"\x00"+string(pipeline.OpUpsert)+"\x00c0\x00c1\x00c2\x00c3\x00c4\x00c5\x00c6\x00c7"))
}

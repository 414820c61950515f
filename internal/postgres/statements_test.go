package postgres

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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
	s := newStore(nil, pipeline.NewCatalog(pipeline.Entities{e.Name: e}), "g", slog.New(slog.NewTextHandler(io.Discard, nil)), bound)
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
	require.True(t, s.sqlCache.Contains(e.Name+"\x001\x00"+string(pipeline.OpUpsert)+"\x00c0\x00c1\x00c2\x00c3\x00c4\x00c5\x00c6\x00c7"))
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ with what the code builds")

// TestStatementShapes shows every shape of statement built at run time,
// as golden files (testdata/*.sql; go test -run TestStatementShapes
// -update rewrites them): upserts, inserts and updates with columns to
// set and with the key alone, deletes, the repair and the lock a batch of
// several statements takes first, for a versioned entity whose keys round
// trip, a versioned one with a composite key that does not (so the
// statement joins its input), and an unversioned one.
func TestStatementShapes(t *testing.T) {
	t.Parallel()
	col := func(name, typ, cast string) pipeline.Column {
		return pipeline.Column{Name: name, Type: typ, CastType: cast}
	}
	customers := &pipeline.Entity{Name: "customers", Schema: "public", Table: "customers", Key: []string{"customer_id"},
		VersionColumn: "version", KeysRoundTrip: true, Columns: map[string]pipeline.Column{
			"customer_id": col("customer_id", "text", "text"), "name": col("name", "character varying(40)", "character varying(40)"),
			"balance": col("balance", "numeric(18,2)", "numeric(18,2)"), "version": col("version", "bigint", "bigint")}}
	events := &pipeline.Entity{Name: "events", Schema: "Sales Data", Table: "Events", Key: []string{"tenant", "event_id"},
		VersionColumn: "rev", Columns: map[string]pipeline.Column{
			"tenant": col("tenant", "text", "text"), "event_id": col("event_id", "uuid", "uuid"),
			"payload": col("payload", "jsonb", "jsonb"), "at": col("at", `"Sales Data".stamp`, "timestamp(3) with time zone"),
			"rev": col("rev", "integer", "integer")}}
	counters := &pipeline.Entity{Name: "counters", Schema: "public", Table: "counters", Key: []string{"id"},
		Columns: map[string]pipeline.Column{"id": col("id", "bigint", "bigint"), "n": col("n", "bigint", "bigint")}}
	s := newStore(nil, pipeline.NewCatalog(pipeline.Entities{customers.Name: customers, events.Name: events, counters.Name: counters}), "g",
		slog.New(slog.NewTextHandler(io.Discard, nil)), sqlCacheSize)

	shapes := []struct {
		name    string
		entity  *pipeline.Entity
		op      pipeline.Op
		columns []string
	}{
		{"customers_upsert", customers, pipeline.OpUpsert, []string{"balance", "name"}},
		{"customers_upsert_key_only", customers, pipeline.OpUpsert, nil},
		{"customers_delete", customers, pipeline.OpDelete, nil},
		{"events_upsert", events, pipeline.OpUpsert, []string{"at", "payload"}},
		{"events_delete", events, pipeline.OpDelete, nil},
		{"counters_upsert", counters, pipeline.OpUpsert, []string{"n"}},
		{"counters_upsert_key_only", counters, pipeline.OpUpsert, nil},
		{"counters_delete", counters, pipeline.OpDelete, nil},
		{"customers_insert", customers, pipeline.OpInsert, []string{"balance", "name"}},
		{"customers_update", customers, pipeline.OpUpdate, []string{"balance", "name"}},
		{"customers_update_key_only", customers, pipeline.OpUpdate, nil},
		{"events_insert", events, pipeline.OpInsert, []string{"at", "payload"}},
		{"events_update", events, pipeline.OpUpdate, []string{"at", "payload"}},
		{"counters_insert", counters, pipeline.OpInsert, []string{"n"}},
		{"counters_update", counters, pipeline.OpUpdate, []string{"n"}},
		{"counters_update_key_only", counters, pipeline.OpUpdate, nil},
	}
	for _, sh := range shapes {
		g := &pipeline.Group{Entity: sh.entity, Op: sh.op, Columns: sh.columns}
		golden(t, sh.name, s.groupSQL(g, append(append([]string{}, sh.entity.Key...), sh.columns...)))
	}
	golden(t, "customers_repair", s.repairSQL(customers, false))
	golden(t, "events_repair", s.repairSQL(events, false))
	golden(t, "customers_repair_gated", s.repairSQL(customers, true))
	golden(t, "events_repair_gated", s.repairSQL(events, true))
	golden(t, "customers_lock", s.lockSQL(customers))
	golden(t, "events_lock", s.lockSQL(events))
}

// golden compares sql with testdata/name.sql, or writes it there with
// -update.
func golden(t *testing.T, name, sql string) {
	t.Helper()
	path := filepath.Join("testdata", name+".sql")
	// Tabs of Go's indentation are the statement's own; one per line ends it.
	sql = strings.TrimSpace(sql) + "\n"
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(sql), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test ./internal/postgres -run TestStatementShapes -update to create it")
	require.Equal(t, string(want), sql, "%s: the statement changed; if on purpose, run with -update and review the diff", path)
}

// TestTypeNames: a type enters a statement only as format_type prints
// one; anything else would be text spool did not write.
func TestTypeNames(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"text", "character varying(40)", "numeric(18,2)", "timestamp(3) with time zone",
		"integer[]", `"My Type"`, `public."we""ird"`, `"Sales Data".stamp`, "double precision"} {
		require.True(t, typeName(ok), ok)
	}
	for _, bad := range []string{"", "text; DROP TABLE x", "text--", `"unclosed`, "int/**/", "text'", "a\nb"} {
		require.False(t, typeName(bad), bad)
	}
}

package pipeline

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func testEntities() Entities {
	return Entities{
		"customers": {
			Name: "customers", Schema: "public", Table: "customers",
			Key: []string{"customer_id"}, VersionColumn: "version",
			Columns: map[string]Column{
				"customer_id": {Name: "customer_id", Type: "text", Kind: KindText, NotNull: true},
				"name":        {Name: "name", Type: "text", Kind: KindText},
				"balance":     {Name: "balance", Type: "numeric(18,2)", Kind: KindNumeric},
				"visits":      {Name: "visits", Type: "integer", Kind: KindInteger},
				"vip":         {Name: "vip", Type: "boolean", Kind: KindBoolean},
				"attrs":       {Name: "attrs", Type: "jsonb", Kind: KindJSON},
				"version":     {Name: "version", Type: "bigint", Kind: KindInteger, NotNull: true},
			},
		},
		"lines": {
			Name: "lines", Schema: "public", Table: "order_lines",
			Key: []string{"order_id", "line"},
			Columns: map[string]Column{
				"order_id": {Name: "order_id", Type: "text", Kind: KindText, NotNull: true},
				"line":     {Name: "line", Type: "integer", Kind: KindInteger, NotNull: true},
				"qty":      {Name: "qty", Type: "integer", Kind: KindInteger},
			},
		},
	}
}

// TestDecodeCommandCopiesData: a decoded command's data outlive the line
// it came from, which an upload's reader reuses for the next line.
func TestDecodeCommandCopiesData(t *testing.T) {
	t.Parallel()
	line := []byte(`{"id":"c-1","entity":"customers","data":{"customer_id":"cust-1"}}`)
	cmd, err := DecodeCommand(line)
	require.NoError(t, err)
	clear(line)
	require.JSONEq(t, `"cust-1"`, string(cmd.Data["customer_id"]))
}

func TestDecodeCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, line, wantErr string
	}{
		{"valid", `{"id":"c-1","entity":"customers","op":"upsert","version":7,"data":{"customer_id":"a"}}`, ""},
		{"unknown field", `{"id":"c-1","verison":7,"data":{}}`, `unknown field "verison"`},
		{"fractional version", `{"id":"c-1","version":7.5,"data":{}}`, `field "version" must be an integer`},
		{"string id", `{"id":5,"data":{}}`, `field "id" must be a string`},
		{"not an object", `[1,2]`, "expected a JSON object"},
		{"trailing data", `{"id":"c-1","data":{}} {}`, "trailing data"},
		{"broken", `{"id":`, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeCommand([]byte(tt.line))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.Equal(t, ClassInvalidCommand, ClassOf(err))
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	es := testEntities()
	tests := []struct {
		name      string
		line      string
		dflt      string
		wantClass ErrorClass
		wantErr   string
	}{
		{"valid", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","balance":"10.50","visits":3,"vip":true,"attrs":{"x":1}}}`, "", "", ""},
		{"default entity", `{"id":"c-1","version":1,"data":{"customer_id":"a"}}`, "customers", "", ""},
		{"composite key", `{"id":"c-1","entity":"lines","data":{"order_id":"o","line":2,"qty":"5"}}`, "", "", ""},
		{"missing id", `{"entity":"customers","version":1,"data":{"customer_id":"a"}}`, "", ClassInvalidCommand, "id is missing"},
		{"long id", `{"id":"` + strings.Repeat("x", 129) + `","entity":"customers","version":1,"data":{"customer_id":"a"}}`, "", ClassInvalidCommand, "129 characters"},
		{"control char in id", `{"id":"a\r\nb","entity":"customers","version":1,"data":{"customer_id":"a"}}`, "", ClassInvalidCommand, "non-printable"},
		{"no entity", `{"id":"c-1","data":{}}`, "", ClassUnknownEntity, "entity is missing"},
		{"unknown entity", `{"id":"c-1","entity":"orders","data":{}}`, "", ClassUnknownEntity, `"orders" is not configured`},
		{"bad op", `{"id":"c-1","entity":"customers","op":"merge","version":1,"data":{"customer_id":"a"}}`, "", ClassInvalidCommand, `op "merge"`},
		{"missing version", `{"id":"c-1","entity":"customers","data":{"customer_id":"a"}}`, "", ClassMissingKey, "version is required"},
		{"missing key", `{"id":"c-1","entity":"customers","version":1,"data":{"name":"x"}}`, "", ClassMissingKey, `key column "customer_id"`},
		{"missing composite key part", `{"id":"c-1","entity":"lines","data":{"order_id":"o"}}`, "", ClassMissingKey, `key column "line"`},
		{"null key", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":null}}`, "", ClassMissingKey, `key column "customer_id"`},
		{"unknown column", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","nmae":"x"}}`, "", ClassUnknownColumn, `column "nmae" does not exist in public.customers`},
		{"version in data", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","version":3}}`, "", ClassInvalidCommand, "version column"},
		{"not numeric", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","balance":"ten"}}`, "", ClassTypeMismatch, `column "balance" has type numeric(18,2); got "ten"`},
		{"not integer", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","visits":1.5}}`, "", ClassTypeMismatch, `column "visits" has type integer`},
		{"not boolean", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","vip":"maybe"}}`, "", ClassTypeMismatch, `column "vip"`},
		{"object into text", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a","name":{"first":"x"}}}`, "", ClassTypeMismatch, "an object or array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd, err := DecodeCommand([]byte(tt.line))
			require.NoError(t, err)
			err = es.Validate(&cmd, tt.dflt)
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.NotEmpty(t, cmd.Entity)
				require.Equal(t, OpUpsert, cmd.Op)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.Equal(t, tt.wantClass, ClassOf(err))
			require.True(t, IsPermanent(err))
		})
	}
}

func TestColumnValue(t *testing.T) {
	t.Parallel()
	str := func(s string) *string { return &s }
	tests := []struct {
		kind ColumnKind
		in   string
		want *string
	}{
		{KindText, `"Ada"`, str("Ada")},
		{KindText, `42`, str("42")},
		{KindText, `null`, nil},
		{KindInteger, `"007"`, str("7")},
		{KindInteger, `12345678901234567890`, str("12345678901234567890")},
		{KindNumeric, `"10.50"`, str("10.50")},
		{KindNumeric, `1e3`, str("1e3")},
		{KindNumeric, `-0.5E-3`, str("-0.5E-3")},
		{KindNumeric, `" +1. "`, str(" +1. ")},
		{KindNumeric, `".5"`, str(".5")},
		{KindNumeric, `"NaN"`, str("NaN")},
		{KindBoolean, `"TRUE"`, str("true")},
		{KindJSON, `{"a": [1, 2]}`, str(`{"a": [1, 2]}`)},
		{KindJSON, `"x"`, str(`"x"`)},
		{KindOther, `"2026-01-02T03:04:05Z"`, str("2026-01-02T03:04:05Z")},
	}
	for _, tt := range tests {
		got, null, err := Column{Name: "c", Kind: tt.kind}.Value(json.RawMessage(tt.in))
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want == nil, null, tt.in)
		if tt.want != nil {
			require.Equal(t, *tt.want, got, tt.in)
		}
	}
}

// TestRoute: a command's route is its entity and its key's texts as the
// key columns take them, whatever else the command holds, so that every
// spelling of one integer key goes one way; a command Validate refuses has
// none.
func TestRoute(t *testing.T) {
	t.Parallel()
	es := testEntities()
	route := func(line string) []byte {
		var c Command
		require.NoError(t, json.Unmarshal([]byte(line), &c), line)
		return es.Route(&c)
	}
	a := route(`{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"cust-1","name":"Ada"}}`)
	require.Equal(t, "customers\x00cust-1", string(a))
	require.Equal(t, a, route(`{"id":"c-2","entity":"customers","op":"delete","version":9,"data":{"customer_id":"cust-1"}}`))
	require.NotEqual(t, a, route(`{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"cust-2","name":"Ada"}}`))

	line := route(`{"id":"l-1","entity":"lines","data":{"order_id":"o-1","line":7,"qty":2}}`)
	require.Equal(t, "lines\x00o-1\x007", string(line))
	require.Equal(t, line, route(`{"id":"l-2","entity":"lines","data":{"order_id":"o-1","line":"007"}}`))
	require.NotEqual(t, route(`{"id":"l-3","entity":"lines","data":{"order_id":"o-1","line":77}}`),
		route(`{"id":"l-4","entity":"lines","data":{"order_id":"o-17","line":7}}`), "the separator keeps the key's parts apart")

	require.Nil(t, route(`{"id":"x-1","entity":"orders","data":{"order_id":"o-1"}}`), "unknown entity")
	require.Nil(t, route(`{"id":"x-2","entity":"lines","data":{"order_id":"o-1"}}`), "a key column missing")
	require.Nil(t, route(`{"id":"x-3","entity":"lines","data":{"order_id":"o-1","line":"seven"}}`), "a key that does not fit")
}

func TestColumnValueRefusesWhatPostgreSQLRefuses(t *testing.T) {
	t.Parallel()
	for _, in := range []string{`"1/3"`, `"0x10"`, `"1_000"`, `"."`, `"e3"`, `"1e"`, `"1e+"`, `"--1"`, `"1.2.3"`, `"1 2"`, `""`, `"0x1p-2"`} {
		_, _, err := Column{Name: "c", Type: "numeric", Kind: KindNumeric}.Value(json.RawMessage(in))
		require.ErrorContains(t, err, `column "c" has type numeric; got`, in)
		require.Equal(t, ClassTypeMismatch, ClassOf(err), in)
	}
}

// TestColumnValueRefusesOverLongText: character varying(n) and
// character(n) take at most n characters, counted as characters, not
// bytes; PostgreSQL drops spaces past n and refuses anything else.
func TestColumnValueRefusesOverLongText(t *testing.T) {
	t.Parallel()
	c := Column{Name: "code", Type: "character varying(5)", Kind: KindText, MaxChars: 5}
	for _, in := range []string{`"abcde"`, `"ééééé"`, `"abc  "`, `"abcde   "`, `12345`, `"a\u00e9cde"`} {
		_, _, err := c.Value(json.RawMessage(in))
		require.NoError(t, err, in)
		require.NoError(t, c.check(json.RawMessage(in)), in)
	}
	for _, in := range []string{`"abcdef"`, `"ééééé é"`, `123456`, `"a\u00e9cdef"`, `"abcde  x"`} {
		_, _, err := c.Value(json.RawMessage(in))
		require.ErrorContains(t, err, `column "code" is character varying(5), at most 5 characters; got `, in)
		require.Equal(t, ClassTypeMismatch, ClassOf(err), in)
		require.Error(t, c.check(json.RawMessage(in)), in)
	}
}

func TestNewRecordIsCanonical(t *testing.T) {
	t.Parallel()
	a, err := DecodeCommand([]byte(`{"data":{"name":"x","customer_id":"a"},"id":"c-1","entity":"customers","version":2}`))
	require.NoError(t, err)
	b, err := DecodeCommand([]byte(`{"id":"c-1","entity":"customers","version":2,"data":{"customer_id":"a", "name":"x"}}`))
	require.NoError(t, err)
	require.NoError(t, testEntities().Validate(&a, ""))
	require.NoError(t, testEntities().Validate(&b, ""))
	ra, err := NewRecord(&a, "job-1", "t1", 0)
	require.NoError(t, err)
	rb, err := NewRecord(&b, "job-2", "t1", 9)
	require.NoError(t, err)
	require.Equal(t, string(ra.Value), string(rb.Value), "the same command must encode to the same bytes, or repeats look like conflicts")
	require.Equal(t, `{"id":"c-1","entity":"customers","op":"upsert","version":2,"data":{"customer_id":"a","name":"x"}}`, string(ra.Value))
	require.Equal(t, "c-1", string(ra.Key))

	m := DecodeRecord(rb, testEntities())
	require.NoError(t, m.Err)
	require.Equal(t, JobID("job-2"), m.JobID)
	require.Equal(t, "t1", m.Tenant)
	require.Equal(t, int64(9), m.Index)
	require.Equal(t, hashPayload(ra.Value), m.Hash)
}

func TestDecodeRecordKeepsBadRecords(t *testing.T) {
	t.Parallel()
	es := testEntities()
	for name, r := range map[string]Record{
		"garbage":        {Key: []byte("x"), Value: []byte("not json")},
		"key differs":    {Key: []byte("other"), Value: []byte(`{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a"}}`)},
		"unknown entity": {Key: []byte("c-1"), Value: []byte(`{"id":"c-1","entity":"nope","data":{}}`)},
		"bad index":      {Key: []byte("c-1"), Value: []byte(`{}`), Headers: []Header{{Key: HeaderIndex, Value: []byte("x")}}},
	} {
		m := DecodeRecord(r, es)
		require.Error(t, m.Err, name)
		require.True(t, IsPermanent(m.Err), name)
	}
}

func msg(t *testing.T, offset int64, tenant, line string) *Message {
	t.Helper()
	cmd, err := DecodeCommand([]byte(line))
	require.NoError(t, err)
	require.NoError(t, testEntities().Validate(&cmd, ""))
	rec, err := NewRecord(&cmd, "job", tenant, offset)
	require.NoError(t, err)
	rec.Offset = offset
	m := DecodeRecord(rec, testEntities())
	require.NoError(t, m.Err)
	return &m
}

func TestDedupeWithinBatch(t *testing.T) {
	t.Parallel()
	a := msg(t, 0, "t1", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a"}}`)
	again := msg(t, 1, "t1", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a"}}`)
	changed := msg(t, 2, "t1", `{"id":"c-1","entity":"customers","version":2,"data":{"customer_id":"a"}}`)
	otherTenant := msg(t, 3, "t2", `{"id":"c-1","entity":"customers","version":1,"data":{"customer_id":"a"}}`)
	bad := &Message{Err: Errorf(ClassInvalidCommand, "bad")}
	b := &Batch{Messages: []*Message{a, again, changed, otherTenant, bad}}
	d := b.Dedupe()
	require.Equal(t, []*Message{a, otherTenant}, d.Candidates)
	require.Equal(t, []Outcome{"", OutcomeDuplicate, OutcomeConflict, "", OutcomeDeadLettered}, d.Outcomes)
}

func TestPlanCollapsesPerRow(t *testing.T) {
	t.Parallel()
	es := testEntities()
	v3 := msg(t, 0, "t", `{"id":"1","entity":"customers","version":3,"data":{"customer_id":"a","name":"x"}}`)
	v5 := msg(t, 1, "t", `{"id":"2","entity":"customers","version":5,"data":{"customer_id":"a","name":"y"}}`)
	v4 := msg(t, 2, "t", `{"id":"3","entity":"customers","version":4,"data":{"customer_id":"a","name":"z"}}`)
	v5again := msg(t, 3, "t", `{"id":"4","entity":"customers","version":5,"data":{"customer_id":"a","name":"w"}}`)
	other := msg(t, 4, "t", `{"id":"5","entity":"customers","version":1,"data":{"customer_id":"b","name":"q"}}`)
	del := msg(t, 5, "t", `{"id":"6","entity":"customers","op":"delete","version":9,"data":{"customer_id":"c"}}`)
	l1 := msg(t, 6, "t", `{"id":"7","entity":"lines","data":{"order_id":"o","line":"01","qty":1}}`)
	l2 := msg(t, 7, "t", `{"id":"8","entity":"lines","data":{"order_id":"o","line":1,"qty":2}}`)

	groups, superseded, err := Plan([]*Message{v3, v5, v4, v5again, other, del, l1, l2}, es)
	require.NoError(t, err)
	require.Equal(t, map[*Message]Outcome{v3: OutcomeStale, v4: OutcomeStale, v5again: OutcomeStale, l1: OutcomeApplied}, superseded)
	require.Len(t, groups, 3)
	require.Equal(t, OpDelete, groups[0].Op)
	require.Equal(t, []*Message{del}, groups[0].Messages)
	require.Equal(t, []string{"name"}, groups[1].Columns)
	require.Equal(t, []*Message{v5, other}, groups[1].Messages)
	require.Equal(t, "lines", groups[2].Entity.Name)
	require.Equal(t, []*Message{l2}, groups[2].Messages, "without versions the last in offset order wins; integer keys compare canonically")
	key, err := groups[2].Entity.KeyOf(l1.Command.Data)
	require.NoError(t, err)
	require.Equal(t, `["o","1"]`, key)
	parts, err := groups[2].Entity.ParseKey(key)
	require.NoError(t, err)
	require.Equal(t, []string{"o", "1"}, parts)
}

func TestRecentSettlesHotRepeats(t *testing.T) {
	t.Parallel()
	r := NewRecent(10, 168*time.Hour)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return now }
	a := msg(t, 0, "t", `{"id":"a","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	dupFromDB := msg(t, 1, "t", `{"id":"d","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	r.remember([]*Message{a, dupFromDB}, []Outcome{OutcomeApplied, OutcomeDuplicate})

	again := msg(t, 2, "t", `{"id":"a","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	changed := msg(t, 3, "t", `{"id":"a","entity":"customers","version":2,"data":{"customer_id":"k"}}`)
	otherTenant := msg(t, 4, "u", `{"id":"a","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	dAgain := msg(t, 5, "t", `{"id":"d","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	b := &Batch{Messages: []*Message{again, changed, otherTenant, dAgain}, Recent: r}
	d := b.Dedupe()
	require.Equal(t, []*Message{otherTenant, dAgain}, d.Candidates, "unknown ids still go to the database")
	require.Equal(t, []Outcome{OutcomeDuplicate, OutcomeConflict, "", ""}, d.Outcomes)

	// Near the end of the window the cache steps aside: the ledger may
	// forget the id before the cache would.
	now = now.Add(100 * time.Hour)
	d = (&Batch{Messages: []*Message{again}, Recent: r}).Dedupe()
	require.Len(t, d.Candidates, 1)

	var off *Recent
	require.Nil(t, NewRecent(0, time.Hour))
	require.NotPanics(t, func() { off.remember([]*Message{a}, []Outcome{OutcomeApplied}) })
}

// TestRecentSlotHoldsTheNewestID: ids that share a slot displace each
// other, and an id the slot no longer holds goes to the database, however
// its tenant and id split the same bytes.
func TestRecentSlotHoldsTheNewestID(t *testing.T) {
	t.Parallel()
	r := NewRecent(1, time.Hour) // one slot for every id
	a := msg(t, 0, "ab", `{"id":"c","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	b := msg(t, 1, "a", `{"id":"bc","entity":"customers","version":1,"data":{"customer_id":"k"}}`)
	r.remember([]*Message{a}, []Outcome{OutcomeApplied})
	_, ok := r.lookup(Key{"ab", "c"})
	require.True(t, ok)
	_, ok = r.lookup(Key{"a", "bc"})
	require.False(t, ok, "another tenant and id with the same bytes")
	r.remember([]*Message{b}, []Outcome{OutcomeStale})
	_, ok = r.lookup(Key{"ab", "c"})
	require.False(t, ok, "displaced by a newer id")
	e, ok := r.lookup(Key{"a", "bc"})
	require.True(t, ok)
	require.Equal(t, b.Hash, e.hash)
	o, _ := b.Origin()
	require.True(t, e.hasOrigin)
	require.Equal(t, o.Sum(), e.origin)
}

func TestPlanKeepsSequentialEffectWithoutVersions(t *testing.T) {
	t.Parallel()
	es := testEntities()
	qty := msg(t, 0, "t", `{"id":"1","entity":"lines","data":{"order_id":"o","line":1,"qty":1}}`)
	del := msg(t, 1, "t", `{"id":"2","entity":"lines","op":"delete","data":{"order_id":"o","line":1}}`)
	again := msg(t, 2, "t", `{"id":"3","entity":"lines","data":{"order_id":"o","line":1,"qty":5}}`)
	other := msg(t, 3, "t", `{"id":"4","entity":"lines","data":{"order_id":"p","line":1}}`)
	more := msg(t, 4, "t", `{"id":"5","entity":"lines","data":{"order_id":"p","line":1,"qty":7}}`)

	groups, superseded, err := Plan([]*Message{qty, del, again, other, more}, es)
	require.NoError(t, err)
	require.Equal(t, map[*Message]Outcome{qty: OutcomeApplied, other: OutcomeApplied}, superseded)
	require.Len(t, groups, 3)
	// Generation 0: the delete of o/1, and p/1's two upserts merged.
	require.Equal(t, 0, groups[0].Generation)
	require.Equal(t, OpDelete, groups[0].Op)
	require.Equal(t, []*Message{del}, groups[0].Messages)
	require.Equal(t, 0, groups[1].Generation)
	require.Equal(t, []*Message{more}, groups[1].Messages)
	require.Equal(t, []string{"qty"}, groups[1].Columns)
	// Generation 1: the upsert that follows the delete, written after it.
	require.Equal(t, 1, groups[2].Generation)
	require.Equal(t, []*Message{again}, groups[2].Messages)
	require.JSONEq(t, `5`, string(field(groups[2].Rows[0], "qty")))
	require.Len(t, other.Command.Data, 2, "merging must not mutate the commands")
	require.JSONEq(t, `7`, string(field(groups[1].Rows[0], "qty")))
}

func field(fs Fields, name string) json.RawMessage {
	v, _ := fs.Get(name)
	return v
}

// TestDedupeRedelivered: a record Kafka delivered twice (one job, one
// index) is redelivered, not a duplicate, whether its copy is in the same
// batch or the Recent pre-filter knows its claim; the same command at
// another place, or a replay, is not.
func TestDedupeRedelivered(t *testing.T) {
	t.Parallel()
	r := NewRecent(10, 168*time.Hour)
	line := `{"id":"a","entity":"customers","version":1,"data":{"customer_id":"k"}}`
	a := msg(t, 0, "t", line)
	copyOfA := msg(t, 0, "t", line)
	copyOfA.Record.Offset = 7
	elsewhere := msg(t, 3, "t", line)
	b := &Batch{Messages: []*Message{a, copyOfA, elsewhere}, Recent: r}
	d := b.Dedupe()
	require.Equal(t, []*Message{a}, d.Candidates)
	require.Equal(t, []Outcome{"", OutcomeRedelivered, OutcomeDuplicate}, d.Outcomes)
	require.Equal(t, map[*Message][]*Message{a: {elsewhere}}, d.Repeats, "settled against the ledger should it know a")

	r.remember([]*Message{a}, []Outcome{OutcomeApplied})
	replay := msg(t, 0, "t", line)
	replay.ReplayOf = "spool.commands.dlq:0:0"
	d = (&Batch{Messages: []*Message{copyOfA, elsewhere, replay}, Recent: r}).Dedupe()
	require.Empty(t, d.Candidates)
	require.Equal(t, []Outcome{OutcomeRedelivered, OutcomeDuplicate, OutcomeDuplicate}, d.Outcomes)
	var c Counts
	c.Add(OutcomeRedelivered)
	require.Zero(t, c.Done(), "a redelivered record counts nowhere")
}

// BenchmarkDecodeRecord decodes and validates a record as ingress writes
// it, which the processor does for every record it reads.
func BenchmarkDecodeRecord(b *testing.B) {
	cmd, err := DecodeCommand([]byte(`{"id":"cmd-000123456","entity":"customers","version":1764000000123,` +
		`"data":{"customer_id":"cust-0004711","name":"Customer 4711","balance":"1234.56","visits":17,"vip":false}}`))
	require.NoError(b, err)
	es := testEntities()
	require.NoError(b, es.Validate(&cmd, ""))
	r, err := NewRecord(&cmd, "job-1", "default", 42)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if m := DecodeRecord(r, es); m.Err != nil {
			b.Fatal(m.Err)
		}
	}
}

// BenchmarkIngressRecord decodes, validates and encodes an uploaded line,
// which ingress does for every command it accepts.
func BenchmarkIngressRecord(b *testing.B) {
	line := []byte(`{"id":"cmd-000123456","entity":"customers","version":1764000000123,` +
		`"data":{"customer_id":"cust-0004711","name":"Customer 4711","balance":"1234.56","visits":17,"vip":false}}`)
	es := testEntities()
	b.ReportAllocs()
	for b.Loop() {
		cmd, err := DecodeCommand(line)
		if err == nil {
			err = es.Validate(&cmd, "")
		}
		var rec Record
		if err == nil {
			rec, err = NewRecord(&cmd, "job-1", "default", 42)
			rec.Route = es.Route(&cmd)
		}
		if err != nil || rec.Route == nil {
			b.Fatal(err)
		}
	}
}

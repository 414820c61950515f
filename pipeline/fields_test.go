package pipeline

import (
	"encoding/json"
	"math/big"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// requireSameAsCommand checks that decodeCommandValue reads value as
// DecodeCommand does: the same error, or the same fields with the same data
// (the processor's decoding takes the names it knows from its entities).
func requireSameAsCommand(t *testing.T, value []byte) {
	t.Helper()
	cmd, cerr := DecodeCommand(value)
	w, werr := decodeCommandValue(value, testEntities())
	if cerr != nil {
		require.EqualError(t, werr, cerr.Error())
		return
	}
	require.NoError(t, werr)
	require.Equal(t, DecodedCommand{ID: cmd.ID, Entity: cmd.Entity, Op: cmd.Op, Version: cmd.Version}, DecodedCommand{ID: w.ID, Entity: w.Entity, Op: w.Op, Version: w.Version})
	require.Len(t, w.Data, len(cmd.Data), "each name once")
	if len(cmd.Data) > 0 {
		got := map[string]json.RawMessage{}
		for _, f := range w.Data {
			got[f.Name] = f.Value
		}
		require.Equal(t, cmd.Data, got)
	}
}

var fieldsSeeds = []string{
	`{"id":"c-1","data":{"a":"x","b":1,"c":true,"d":null,"e":{"f":[1,{"g":"}"}]},"h":[],"i":-1.5e3}}`,
	`{"id":"c-1","data":{}}`,
	`{"id":"c-1","data":null}`,
	`{"id":"c-1"}`,
	` { "id" : "c-1" , "data" : { "a" : "x" , "b" : [ 1 , 2 ] , "c" : 3 } } `,
	`{"id":"c-1","data":{"a":1,"a":2,"b":3}}`,
	`{"id":"c-1","data":{"a":1},"data":{"b":2,"a":3}}`,
	`{"id":"c-1","data":{"a":1},"data":null}`,
	`{"id":"c-1","data":{"\u0061":1,"a\"b":"q\"\\","\n":2}}`,
	`{"id":"c-1","data":{"a":"é\u00e9","b":"tab\there"}}`,
	`{"id":"c-1","data":"x"}`,
	`{"id":"c-1","data":[1]}`,
	`{"id":"c-1","data":7}`,
	`{"version":"x","data":[1]}`,
	`{"data":[1],"version":"x"}`,
	`{"data":{"a":1},"extra":1}`,
	`{"data":{"a":}}`,
	`{"DATA":{"a":1}}`,
	`{"data":{"balance":"12.50","name":"Ann"},"entity":"customers","id":"c-1","op":"upsert","version":42}`,
	` {"id":"c-1","entity":"customers","op":"delete","version":-7,"data":{"customer_id":"k"}}` + "\n",
	"\u00a0{\"id\":\"c-1\"}",
	`{"id":"c-1","version":1.0}`,
	`{"id":"c-1","version":1e3}`,
	`{"id":"c-1","version":null}`,
	`{"id":"c-1","version":9223372036854775808}`,
	`{"id":"c-1","version":"1"}`,
	`{"id":"c-1","id":"c-2"}`,
	`{"id":"c-1","version":1,"version":2}`,
	`{"ID":"c-1","Entity":"customers"}`,
	`{"id":"c\u002d1","entity":"cust\"omers"}`,
	`{"id":7}`,
	`{"id":"c-1","op":null,"entity":null}`,
	`{"id":"c-1"} {"id":"c-2"}`,
	`["id","c-1"]`,
}

func TestDecodeWriteReadsAsDecodeCommand(t *testing.T) {
	t.Parallel()
	for _, s := range fieldsSeeds {
		t.Run(s, func(t *testing.T) {
			t.Parallel()
			requireSameAsCommand(t, []byte(s))
		})
	}
}

func FuzzDecodeWrite(f *testing.F) {
	for _, s := range fieldsSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) { requireSameAsCommand(t, value) })
}

func FuzzPlainString(f *testing.F) {
	for _, s := range []string{`"abc"`, `"a\"b"`, `"\u00e9"`, `"é"`, `""`, `"a"b"`, "\"a\x01\"", "\"\xff\"", `"`, `x"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		plain, ok := plainString(v)
		if !ok {
			return
		}
		var s string
		require.NoError(t, json.Unmarshal(v, &s))
		require.Equal(t, s, plain)
	})
}

// FuzzDecodeCommand holds DecodeCommand, which decodes the plain shape
// itself, to encoding/json: the same command or the same refusal.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range fieldsSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		got, gerr := DecodeCommand(line)
		var want Command
		if werr := decodeCommand(line, &want); werr != nil {
			require.EqualError(t, gerr, werr.Error())
			return
		}
		require.NoError(t, gerr)
		require.Equal(t, want, got)
	})
}

// FuzzEncodeCommand holds encodeCommand to json.Marshal, byte for byte:
// a command's recorded value is what its repeats are compared with.
func FuzzEncodeCommand(f *testing.F) {
	f.Add("c-1", "customers", "upsert", int64(7), true, "name", []byte(`"Ann"`))
	f.Add("c-<1>", "", "", int64(0), false, "a&b", []byte(`{"x": [1, "y z"]}`))
	f.Add("c\u2028", "e\"", "o\\", int64(-1), true, "k\x01", []byte("\"\u2029\""))
	f.Add("c-1", "customers", "", int64(1), true, "é", []byte(`"\u00e9<"`))
	f.Add("c-1", "customers", "", int64(1), true, "n", []byte(`nul`))
	f.Add("\xff", "customers", "", int64(1), true, "n", []byte(`1`))
	f.Fuzz(func(t *testing.T, id, entity, op string, version int64, versioned bool, key string, value []byte) {
		cmd := Command{ID: CommandID(id), Entity: entity, Op: Op(op),
			Data: map[string]json.RawMessage{key: value, "balance": json.RawMessage(`"12.50"`), "z": json.RawMessage(`null`)}}
		if versioned {
			cmd.Version = &version
		}
		got, gerr := encodeCommand(&cmd)
		want, werr := json.Marshal(&cmd)
		if werr != nil {
			require.Error(t, gerr)
			return
		}
		require.NoError(t, gerr)
		require.Equal(t, string(want), string(got))
		cmd.Data = nil
		got, _ = encodeCommand(&cmd)
		want, _ = json.Marshal(&cmd)
		require.Equal(t, string(want), string(got))
	})
}

// FuzzColumnCheck holds validation's check, which skips making the text, to
// Value's decision: for every kind, the same value is taken or refused alike.
func FuzzColumnCheck(f *testing.F) {
	for _, s := range []string{`"Ada"`, `42`, `null`, `"007"`, `"10.50"`, `1e3`, `" +1. "`, `"NaN"`, `true`, `"true"`, `{}`, `[1]`,
		`"1/3"`, `"a\"b"`, "\"\xff\"", ` 1 `, `"1e"`, `-0.5E-3`, `""`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		for kind := KindText; kind <= KindOther; kind++ {
			c := Column{Name: "c", Type: "t", Kind: kind, NotNull: kind == KindInteger}
			_, _, want := c.Value(v)
			got := c.check(v)
			if (want == nil) != (got == nil) || (want != nil && want.Error() != got.Error()) {
				t.Fatalf("kind %d, %q: Value says %v, check says %v", kind, v, want, got)
			}
		}
	})
}

// FuzzCanonicalInteger holds the integer text spool writes without big.Int
// to big.Int's: what canonicalInteger passes, big.Int parses and prints
// byte for byte the same.
func FuzzCanonicalInteger(f *testing.F) {
	for _, s := range []string{`0`, `-0`, `007`, `-12`, `123456789012345678901234567890`, ` 1`, `1 `, `+1`, `-`, ``, `1e3`, `٣`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		if !canonicalInteger(s) {
			return
		}
		n, ok := new(big.Int).SetString(string(s), 10)
		if !ok || n.String() != string(s) {
			t.Fatalf("%q passes as canonical; big.Int reads %v (ok %v)", s, n, ok)
		}
	})
}

// FuzzKey holds KeyOf, which writes plain keys itself, to json.Marshal of
// the key's texts, and ParseKey, which splits plain keys itself, to
// json.Unmarshal: the same key, the same parts.
func FuzzKey(f *testing.F) {
	for _, s := range []string{`"a"`, `"a<b"`, `"é"`, `7`, `"\u2028"`, `"a\"b"`, "\"\xff\"", `"a&b"`, `","`} {
		f.Add([]byte(s), []byte(`"x"`))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		e := &Entity{Name: "e", Key: []string{"a", "b"}, Columns: map[string]Column{
			"a": {Name: "a", Type: "text", Kind: KindText}, "b": {Name: "b", Type: "text", Kind: KindText}}}
		var data Fields
		data.set("a", a)
		data.set("b", b)
		key, err := e.KeyOf(data)
		if err != nil {
			return
		}
		ta, _, _ := e.Columns["a"].Value(a)
		tb, _, _ := e.Columns["b"].Value(b)
		want, err := json.Marshal([]string{ta, tb})
		require.NoError(t, err)
		require.Equal(t, string(want), key)
		var viaJSON []string
		require.NoError(t, json.Unmarshal([]byte(key), &viaJSON))
		parts, err := e.ParseKey(key)
		require.NoError(t, err)
		require.Equal(t, viaJSON, parts)
		// PostgreSQL's json_build_array(…)::text puts a space after commas.
		spaced := strings.Replace(key, `","`, `", "`, 1)
		viaJSON = nil
		if json.Unmarshal([]byte(spaced), &viaJSON) == nil && len(viaJSON) == 2 {
			parts, err := e.ParseKey(spaced)
			require.NoError(t, err)
			require.Equal(t, viaJSON, parts)
		}
	})
}

package pipeline

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

var validSeeds = []string{
	``, ` `, "\t\n\r ", `0`, `-0`, `-`, `01`, `-01`, `1.`, `.1`, `1.5`, `-0.0e-0`, `1e5`, `1E+5`, `1e`, `1e+`, `1.e5`,
	`+1`, `0x1`, `1 2`, `Infinity`, `NaN`, `1_000`,
	`true`, `false`, `null`, `tru`, `truex`, `nul`, `True`, `null,`,
	`""`, `"`, `"\"`, `"\\"`, `"\/"`, `"\b\f\n\r\t"`, `"\a"`, `"\x41"`, `"\u00"`, `"\u00e9"`, `"\u00E9"`, `"\u00g9"`,
	`"\ud800"`, `"\udc00\ud800"`, `"\ud83d\ude00"`, "\"\x01\"", "\"\x1f\"", "\"\x7f\"", "\"\t\"", "\"é\"",
	"\"\xff\"", "\"\xc3\"", "\"\xed\xa0\x80\"", "\"\xef\xbf\xbd\"", "\xff", "\"a\"\xff",
	`{}`, `[]`, `{ }`, `[ ]`, `{`, `[`, `}`, `]`, `[}`, `{]`, `[1,]`, `[,1]`, `[1 2]`, `{"a":1,}`, `{,}`,
	`{"a"}`, `{"a":}`, `{"a" : 1 , "b" : [ 1 , { } ] }`, `{1:2}`, `{'a':1}`, `{"a":1}}`, `[[]]]`, `[[]`,
	`{"a":1}x`, `{"a":1} `, " \n[1]\r\n", "\u00a0[1]", "\ufeff[1]", "[1]\x00", `{"a":{"b":[{"c":null}]}}`,
	`{"id":"c-1","data":{"a":"x","b":1,"c":true,"d":null,"e":{"f":[1,{"g":"}"}]},"h":[],"i":-1.5e3}}`,
}

// deepSeeds are at and past encoding/json's depth limit, and past the
// levels validJSON holds without allocating. They are too long for the
// fuzzer to mutate (and minimize) at speed.
var deepSeeds = []string{
	strings.Repeat("[", maxNestingDepth) + strings.Repeat("]", maxNestingDepth),
	strings.Repeat("[", maxNestingDepth+1) + strings.Repeat("]", maxNestingDepth+1),
	strings.Repeat(`{"a":`, maxNestingDepth) + "1" + strings.Repeat("}", maxNestingDepth),
	strings.Repeat(`{"a":`, maxNestingDepth+1) + "1" + strings.Repeat("}", maxNestingDepth+1),
	strings.Repeat("[", maxNestingDepth+1),
	strings.Repeat("[{\"a\":", 70) + "[]" + strings.Repeat("}]", 70),
}

// wantValid is the verdict validJSON stands in for.
func wantValid(b []byte) bool { return utf8.Valid(b) && json.Valid(b) }

func TestValidJSON(t *testing.T) {
	t.Parallel()
	for _, s := range append(validSeeds, deepSeeds...) {
		require.Equal(t, wantValid([]byte(s)), validJSON([]byte(s)), "%.80q", s)
	}
}

// FuzzValid holds validJSON to encoding/json's verdict on any bytes.
func FuzzValid(f *testing.F) {
	for _, s := range append(validSeeds, fieldsSeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), wantValid(b); got != want {
			t.Fatalf("validJSON(%q) = %t, encoding/json says %t", b, got, want)
		}
	})
}

func TestValidJSONAllocations(t *testing.T) {
	b := []byte(strings.Repeat("[{\"a\":", 32) + `"é\u00e9"` + strings.Repeat("}]", 32))
	require.True(t, validJSON(b))
	require.Zero(t, testing.AllocsPerRun(100, func() { validJSON(b) }))
}

// BenchmarkValidJSON checks the record ingress writes, beside the pre-pass
// validJSON replaced.
func BenchmarkValidJSON(b *testing.B) {
	v := []byte(`{"data":{"balance":"1234.56","customer_id":"cust-0004711","name":"Customer 4711","vip":false,"visits":17},` +
		`"entity":"customers","id":"cmd-000123456","version":1764000000123}`)
	b.Run("validJSON", func(b *testing.B) {
		for b.Loop() {
			if !validJSON(v) {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			if !wantValid(v) {
				b.Fatal("invalid")
			}
		}
	})
}

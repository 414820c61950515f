package app_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHostileInput sends each kind of hostile record between two good ones,
// over real HTTP: the bad one is refused alone with an error that names the
// problem, the good ones are applied, nothing panics and ingress stays up.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	s := newStack(t, map[string]any{"ingress.max_record_bytes": 64 << 10})
	s.startProcessor(t, nil)
	good := func(id string) string {
		return fmt.Sprintf(`{"id":%q,"entity":"customers","version":1,"data":{"customer_id":%q,"name":"ok"}}`, id, "k-"+id)
	}
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	for _, tc := range []struct {
		name, contentType, bad, wantErr string
	}{
		{"deeply nested JSON", "application/x-ndjson",
			`{"id":"deep","entity":"customers","version":1,"data":{"customer_id":"d","name":` + deep + `}}`, "depth"},
		{"huge record", "application/x-ndjson",
			`{"id":"huge","entity":"customers","version":1,"data":{"customer_id":"h","name":"` + strings.Repeat("x", 100<<10) + `"}}`, "bytes"},
		{"invalid UTF-8 in a value", "application/x-ndjson",
			"{\"id\":\"utf\",\"entity\":\"customers\",\"version\":1,\"data\":{\"customer_id\":\"u\",\"name\":\"\xff\xfe\"}}", "UTF-8"},
		{"header injection in an id", "application/x-ndjson",
			`{"id":"evil\r\nX-Injected: 1","entity":"customers","version":1,"data":{"customer_id":"e"}}`, "id"},
		{"SQL in a value", "application/x-ndjson",
			`{"id":"sql","entity":"customers","version":1,"data":{"customer_id":"s'); DROP TABLE customers; --","name":"x"}}`, ""},
		{"unknown column with a quote", "application/x-ndjson",
			`{"id":"col","entity":"customers","version":1,"data":{"customer_id":"c","na\"me":"x"}}`, "column"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := strings.NewReplacer(" ", "-", "'", "").Replace(tc.name)
			body := good(prefix+"-before") + "\n" + tc.bad + "\n" + good(prefix+"-after") + "\n"
			resp, m := s.post(t, "/v1/jobs", tc.contentType, "", strings.NewReader(body), false)
			require.Equal(t, http.StatusAccepted, resp.StatusCode, "%v", m)
			if tc.wantErr == "" {
				require.EqualValues(t, 3, m["accepted"], "%v", m)
				return
			}
			require.EqualValues(t, 2, m["accepted"], "%v", m)
			require.EqualValues(t, 1, m["rejected"], "%v", m)
			rej := m["rejections"].([]any)[0].(map[string]any)
			require.EqualValues(t, 1, rej["index"])
			require.Contains(t, rej["error"], tc.wantErr)
		})
	}

	// CSV with ragged rows: each short or long row is refused alone.
	csv := "id,customer_id,name,version\nr1,kr1,a,1\nr2,kr2\nr3,kr3,c,1,extra\nr4,kr4,d,1\nr5,kr5,\xff,1\n"
	resp, m := s.post(t, "/v1/jobs?entity=customers&version_column=version", "text/csv", "", strings.NewReader(csv), false)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%v", m)
	require.EqualValues(t, 2, m["accepted"], "%v", m)
	require.EqualValues(t, 3, m["rejected"], "%v", m)
	require.Contains(t, fmt.Sprint(m["rejections"]), `CSV column "name" is not valid UTF-8`)

	// Everything good arrived, nothing bad did, and the SQL stayed data.
	ctx := context.Background()
	var n int
	require.Eventually(t, func() bool {
		return s.db.Pool.QueryRow(ctx, `SELECT count(*) FROM customers`).Scan(&n) == nil && n == 15
	}, 60e9, 100e6, "rows: %d", n)
	var sqlKey string
	require.NoError(t, s.db.Pool.QueryRow(ctx, `SELECT customer_id FROM customers WHERE customer_id LIKE 's%DROP%'`).Scan(&sqlKey))
	require.Equal(t, "s'); DROP TABLE customers; --", sqlKey)
	health, err := http.Get(s.server + "/healthz")
	require.NoError(t, err)
	health.Body.Close()
	require.Equal(t, http.StatusOK, health.StatusCode)
}

package kafka

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

// TestFromKgoCopies: fetched records are copied out of franz-go's buffers
// whole, a null key or value staying null, so that the buffers can go.
func TestFromKgoCopies(t *testing.T) {
	t.Parallel()
	fetched := []byte("c-1{\"id\":\"c-1\"}job-1")
	at := time.Unix(1700000000, 0)
	krecs := []*kgo.Record{
		{Topic: "t", Partition: 3, Offset: 7, Timestamp: at, Key: fetched[:3], Value: fetched[3:15],
			Headers: []kgo.RecordHeader{{Key: pipeline.HeaderJobID, Value: fetched[15:]}, {Key: "other", Value: nil}}},
		{Topic: "t", Partition: 3, Offset: 8, Timestamp: at},
	}
	recs := fromKgo(krecs)
	require.Equal(t, []pipeline.Record{
		{Topic: "t", Partition: 3, Offset: 7, Timestamp: at, Key: []byte("c-1"), Value: []byte(`{"id":"c-1"}`),
			Headers: []pipeline.Header{{Key: pipeline.HeaderJobID, Value: []byte("job-1")}, {Key: "other"}}},
		{Topic: "t", Partition: 3, Offset: 8, Timestamp: at, Headers: []pipeline.Header{}},
	}, recs)
	require.Nil(t, recs[1].Key)
	require.Nil(t, recs[1].Value)
	require.Nil(t, recs[0].Headers[1].Value)
	clear(fetched) // franz-go reuses its buffers
	require.Equal(t, `{"id":"c-1"}`, string(recs[0].Value))
	require.Equal(t, "job-1", string(recs[0].Headers[0].Value))
}

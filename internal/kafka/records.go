package kafka

import (
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spoolhq/spool/pipeline"
)

func toKgo(r *pipeline.Record, topic string) *kgo.Record {
	hs := make([]kgo.RecordHeader, len(r.Headers))
	for i, h := range r.Headers {
		hs[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
	}
	return &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Headers: hs}
}

func fromKgo(r *kgo.Record) pipeline.Record {
	hs := make([]pipeline.Header, len(r.Headers))
	for i, h := range r.Headers {
		hs[i] = pipeline.Header{Key: h.Key, Value: h.Value}
	}
	return pipeline.Record{
		Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
		Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp,
	}
}

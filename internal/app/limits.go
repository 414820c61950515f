package app

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/pipeline"
)

// describeTimeout bounds reading a topic's config at start-up: a broker
// that does not answer it leaves the fallback, not a hung start.
const describeTimeout = 10 * time.Second

// recordLimit is the largest record (pipeline.Record.BatchBytes) a producer
// may send to topic: the topic's max.message.bytes as the brokers report it,
// no more than kafka.MaxBatchBytes. When the brokers do not say (no
// DescribeConfigs permission, say), it is kafka.DefaultMaxMessageBytes, and a
// log line says so. The producer's batch limit is set to it, so the two
// agree.
func recordLimit(ctx context.Context, cluster kafka.Cluster, topic string, logger *slog.Logger) int {
	ctx, cancel := context.WithTimeout(ctx, describeTimeout)
	defer cancel()
	limits, err := kafka.MaxMessageBytes(ctx, cluster, topic)
	if err != nil {
		logger.Warn("reading the topic's max.message.bytes; assuming Kafka's old default",
			"topic", topic, "assumed", kafka.DefaultMaxMessageBytes, "error", err)
		return kafka.DefaultMaxMessageBytes
	}
	return min(limits[topic], kafka.MaxBatchBytes)
}

// largestRecord is the largest Kafka record ingress can make of a record of
// ingress.max_record_bytes: a value that long (canonical re-encoding aside,
// which a run-time check covers), the longest command id, and spool's
// headers with the longest tenant configured.
func largestRecord(c *config.Config, defaultTenant string) pipeline.Record {
	tenant := defaultTenant
	for _, k := range c.Auth.Keys {
		if len(k.Tenant) > len(tenant) {
			tenant = k.Tenant
		}
	}
	return pipeline.Record{
		Key:   make([]byte, 4*pipeline.MaxIDLength),
		Value: make([]byte, c.Ingress.MaxRecordBytes),
		Headers: []pipeline.Header{
			{Key: pipeline.HeaderJobID, Value: make([]byte, len("01936f3c-0000-7000-8000-000000000000"))},
			{Key: pipeline.HeaderTenant, Value: []byte(tenant)},
			{Key: pipeline.HeaderIndex, Value: []byte(strings.Repeat("9", 19))},
		},
	}
}

// checkRecordLimit tells, once at start-up, when ingress.max_record_bytes
// lets through records the commands topic cannot take. Ingress keeps
// running: such records are rejected alone, by index, with the limit named
// (the effective limit is the topic's), never a 503 for the upload.
func checkRecordLimit(c *config.Config, limit int, defaultTenant string, logger *slog.Logger) {
	r := largestRecord(c, defaultTenant)
	if size := r.BatchBytes(); size > limit {
		logger.Warn("ingress.max_record_bytes is more than the commands topic takes with spool's key and headers: "+
			"larger records are rejected by index; raise the topic's max.message.bytes or lower ingress.max_record_bytes",
			"ingress.max_record_bytes", c.Ingress.MaxRecordBytes, "largest_kafka_record", size,
			"topic", c.Kafka.Topic, "topic_limit", limit,
			"effective_max_record_bytes", c.Ingress.MaxRecordBytes-(size-limit))
	}
}

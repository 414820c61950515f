package pipeline

// RecordBatchOverhead is what a Kafka record batch (message format v2)
// costs besides its records: the 61-byte batch header a broker counts
// against max.message.bytes, and the length prefix of the batch in a
// produce request, which franz-go also counts against its batch limit (4
// bytes in older request versions, a varint in newer ones: 4 is the most).
const RecordBatchOverhead = 61 + 4

// BatchBytes is the size of r alone in a Kafka record batch as the broker
// and the producer measure it against their limits (max.message.bytes,
// franz-go's ProducerBatchMaxBytes): the batch overhead, the record's
// length, attributes, timestamp and offset deltas (zero for a batch's first
// record, one byte each), key, value and headers, each with its varint
// length. It is never less than either measures, and at most 4 bytes more
// (internal/kafka's TestBatchBytesPinsTheLimits). A record a limit refuses
// alone can never be produced.
func (r *Record) BatchBytes() int {
	n := 1 + 1 + 1 + // attributes, timestamp delta, offset delta
		varintLen(len(r.Key)) + len(r.Key) +
		varintLen(len(r.Value)) + len(r.Value) +
		varintLen(len(r.Headers))
	for _, h := range r.Headers {
		n += varintLen(len(h.Key)) + len(h.Key) + varintLen(len(h.Value)) + len(h.Value)
	}
	return RecordBatchOverhead + varintLen(n) + n
}

// varintLen is the length of n as a Kafka (zig-zag) varint.
func varintLen(n int) int {
	u := uint64(n) << 1 // zig-zag of a non-negative n
	l := 1
	for u >= 0x80 {
		u >>= 7
		l++
	}
	return l
}

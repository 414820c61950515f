package pipeline

import "context"

// Tracer follows batches for distributed tracing. StartBatch begins the
// span of a batch of records on partition, linked to the uploads they came
// from (each upload's W3C traceparent, HeaderTraceparent), and returns the
// context the batch is written under and the span's end, told the batch's
// error.
type Tracer interface {
	StartBatch(ctx context.Context, partition int32, records int, traceparents []string) (context.Context, func(error))
}

// traceparents lists the distinct upload trace contexts of msgs, in order
// of first appearance.
func traceparents(msgs []*Message) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range msgs {
		for _, h := range m.Record.Headers {
			if h.Key == HeaderTraceparent && !seen[string(h.Value)] {
				seen[string(h.Value)] = true
				out = append(out, string(h.Value))
			}
		}
	}
	return out
}

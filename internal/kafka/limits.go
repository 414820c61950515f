package kafka

import (
	"context"
	"fmt"
	"strconv"

	"github.com/twmb/franz-go/pkg/kadm"
)

// DefaultMaxMessageBytes is what spool assumes of a topic whose
// max.message.bytes it cannot read: franz-go's default batch limit, which
// is Kafka's historical default max.message.bytes and below the current one
// (1,048,588), so that a record it lets through fits either.
const DefaultMaxMessageBytes = 1_000_012

// MaxBatchBytes caps the producer's batch limit whatever a topic allows:
// franz-go refuses a batch limit above its request limit (100 MiB), and a
// record this large would not fit the upload producer's buffer anyway.
const MaxBatchBytes = 32 << 20

// MaxMessageBytes reads each topic's max.message.bytes from the brokers
// (the topic's own setting, else the broker's message.max.bytes). A topic
// that does not exist or whose config cannot be read is an error: the caller
// decides what to fall back to.
func MaxMessageBytes(ctx context.Context, cluster Cluster, topics ...string) (map[string]int, error) {
	cl, err := cluster.newClient()
	if err != nil {
		return nil, fmt.Errorf("creating kafka admin client: %w", err)
	}
	defer cl.Close()
	rcs, err := kadm.NewClient(cl).DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		return nil, classify(fmt.Errorf("describing topic configs: %w", err))
	}
	out := make(map[string]int, len(topics))
	for _, t := range topics {
		rc, err := rcs.On(t, nil)
		if err == nil {
			err = rc.Err
		}
		if err != nil {
			return nil, classify(fmt.Errorf("describing topic %s: %w", t, err))
		}
		for _, c := range rc.Configs {
			if c.Key != "max.message.bytes" {
				continue
			}
			n, err := strconv.Atoi(c.MaybeValue())
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("reading max.message.bytes of topic %s: %q is not a positive integer", t, c.MaybeValue())
			}
			out[t] = n
		}
		if _, ok := out[t]; !ok {
			return nil, fmt.Errorf("reading max.message.bytes of topic %s: the broker did not say", t)
		}
	}
	return out, nil
}

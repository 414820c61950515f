package kafkatest

import (
	"testing"

	"github.com/spoolhq/spool/internal/broker"
)

// NewCluster starts a broker on a free loopback port.
func NewCluster(t testing.TB) *broker.Broker {
	t.Helper()
	b, err := broker.Start(broker.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

package broker

import (
	"fmt"
	"net"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Config configures an embedded broker.
type Config struct {
	// Addr is host:port to listen on; port 0 picks a free one.
	Addr string
	// DataDir persists topics, offsets and groups; empty keeps all in memory.
	DataDir string
	// Partitions is the default for auto-created topics.
	Partitions int
	// SyncWrites fsyncs every produce before acknowledging it.
	SyncWrites bool
}

// Broker is a running embedded broker.
type Broker struct {
	c *kfake.Cluster
}

// Start listens on cfg.Addr and serves the Kafka protocol.
func Start(cfg Config) (*Broker, error) {
	// Listen here rather than in kfake, which binds 127.0.0.1 only, so that
	// any host works and port 0 resolves before kfake advertises it.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.Addr, err)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(ln.Addr().(*net.TCPAddr).Port),
		kfake.ListenFn(func(string, string) (net.Listener, error) { return ln, nil }),
		kfake.ClusterID("spool-dev"),
	}
	if cfg.Partitions > 0 {
		opts = append(opts, kfake.DefaultNumPartitions(cfg.Partitions))
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if cfg.SyncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("starting embedded broker: %w", err)
	}
	return &Broker{c: c}, nil
}

// Addr is the address clients connect to.
func (b *Broker) Addr() string { return b.c.ListenAddrs()[0] }

// Cluster exposes kfake's controls (fault injection) to tests.
func (b *Broker) Cluster() *kfake.Cluster { return b.c }

// Close stops the broker, persisting its state when it has a data dir.
func (b *Broker) Close() { b.c.Close() }

package broker

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Config configures an embedded broker.
type Config struct {
	// Addr is host:port to listen on; port 0 picks a free one.
	Addr string
	// Advertise is host:port the broker tells clients to connect to, as
	// Kafka's advertised.listeners: the address of a proxy or NAT in front
	// of it. Empty: the address it listens on.
	Advertise string
	// DataDir persists topics, offsets and groups; empty keeps all in memory.
	DataDir string
	// Partitions is the default for auto-created topics.
	Partitions int
	// SyncWrites fsyncs every produce before acknowledging it.
	SyncWrites bool
	// TLS, when set, is the listener's: clients must speak TLS.
	TLS *tls.Config
	// Users, when any, turn SASL on: each connection must authenticate as
	// one of them. They are superusers (ACLs do not apply).
	Users []User
}

// User is a SASL user of the broker.
type User struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism, Name, Password string
}

// ParseUser reads MECHANISM:NAME:PASSWORD.
func ParseUser(s string) (User, error) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[1] == "" {
		return User{}, fmt.Errorf("a SASL user is MECHANISM:NAME:PASSWORD; %q is not (the rest is not shown)", parts[0])
	}
	u := User{Mechanism: strings.ToUpper(parts[0]), Name: parts[1], Password: parts[2]}
	switch u.Mechanism {
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		return u, nil
	}
	return User{}, fmt.Errorf("SASL mechanism %q of user %s: the embedded broker speaks PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512", parts[0], u.Name)
}

// Broker is a running embedded broker.
type Broker struct {
	c  *kfake.Cluster
	ln net.Listener
}

// GroupSessionTimeout and GroupHeartbeatInterval are the embedded
// broker's defaults for KIP-848 groups: processor.session_timeout's
// default and the processors' heartbeat.
const (
	GroupSessionTimeout    = 10 * time.Second
	GroupHeartbeatInterval = time.Second
)

// Start listens on cfg.Addr and serves the Kafka protocol.
func Start(cfg Config) (*Broker, error) {
	// Listen here rather than in kfake, which binds 127.0.0.1 only, so that
	// any host works and port 0 resolves before kfake advertises it.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.Addr, err)
	}
	served := ln
	if cfg.Advertise != "" {
		addr, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("advertised address %s: %w", cfg.Advertise, err)
		}
		// kfake advertises its listener's address.
		served = advertised{Listener: ln, addr: addr}
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(ln.Addr().(*net.TCPAddr).Port),
		kfake.ListenFn(func(string, string) (net.Listener, error) { return served, nil }),
		kfake.ClusterID("spool-dev"),
		// The processors set their group's session timeout as a group
		// config; the embedded broker keeps group configs in memory only
		// and forgets them when it is killed, where Kafka keeps them. Its
		// own defaults are spool's, so that a group it forgot falls back
		// to the same timeout rather than Kafka's 45 s.
		kfake.BrokerConfigs(map[string]string{
			"group.consumer.session.timeout.ms":    strconv.FormatInt(GroupSessionTimeout.Milliseconds(), 10),
			"group.consumer.heartbeat.interval.ms": strconv.FormatInt(GroupHeartbeatInterval.Milliseconds(), 10),
		}),
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
	if cfg.TLS != nil {
		opts = append(opts, kfake.TLS(cfg.TLS))
	}
	if len(cfg.Users) > 0 {
		opts = append(opts, kfake.EnableSASL())
		for _, u := range cfg.Users {
			opts = append(opts, kfake.Superuser(u.Mechanism, u.Name, u.Password))
		}
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("starting embedded broker: %w", err)
	}
	return &Broker{c: c, ln: ln}, nil
}

// advertised is a listener that names another address as its own.
type advertised struct {
	net.Listener
	addr net.Addr
}

func (a advertised) Addr() net.Addr { return a.addr }

// Addr is the address clients connect to: the advertised one, if any.
func (b *Broker) Addr() string { return b.c.ListenAddrs()[0] }

// ListenAddr is the address the broker listens on.
func (b *Broker) ListenAddr() string { return b.ln.Addr().String() }

// Cluster exposes kfake's controls (fault injection) to tests.
func (b *Broker) Cluster() *kfake.Cluster { return b.c }

// Close stops the broker, persisting its state when it has a data dir.
func (b *Broker) Close() { b.c.Close() }

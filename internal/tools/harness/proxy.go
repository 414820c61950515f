package harness

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// KafkaProxy stands between Kafka clients and a plaintext broker that
// advertises the proxy's address (spoolctl broker --advertise), so that
// every connection of every client passes through it. It tells a
// connection's client by the client.id of its first request, and can cut a
// client off as a network partition would: its connections go silent —
// what either side sends is dropped, nothing is refused or closed — and new
// ones it opens are held the same way, until the client is restored, when
// the connections cut are closed (their streams lost bytes) and new ones
// are forwarded again.
type KafkaProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   map[string]bool
	conns map[*proxied]struct{}
	wg    sync.WaitGroup
}

// proxied is one client connection and, unless it was held, its
// connection to the broker.
type proxied struct {
	client         string
	down, up       net.Conn // the client's; the broker's (nil when held), set before it is shared
	silent         atomic.Bool
	closeDown, cup sync.Once
}

// NewKafkaProxy listens on a free local port and forwards to target.
func NewKafkaProxy(target string) (*KafkaProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &KafkaProxy{ln: ln, target: target, cut: map[string]bool{}, conns: map[*proxied]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients, and the broker's advertisement, name.
func (p *KafkaProxy) Addr() string { return p.ln.Addr().String() }

// Cut silences clientID's connections, and those it opens, until Restore.
// It returns how many connections it silenced.
func (p *KafkaProxy) Cut(clientID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut[clientID] = true
	n := 0
	for c := range p.conns {
		if c.client == clientID {
			c.silent.Store(true)
			n++
		}
	}
	return n
}

// Restore ends clientID's cut: the connections it silenced are closed.
func (p *KafkaProxy) Restore(clientID string) {
	p.mu.Lock()
	delete(p.cut, clientID)
	var closing []*proxied
	for c := range p.conns {
		if c.client == clientID && c.silent.Load() {
			closing = append(closing, c)
		}
	}
	p.mu.Unlock()
	for _, c := range closing {
		c.close()
	}
}

// Close stops listening and closes every connection.
func (p *KafkaProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	all := make([]*proxied, 0, len(p.conns))
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	for _, c := range all {
		c.close()
	}
	p.wg.Wait()
}

func (p *KafkaProxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(down)
		}()
	}
}

// firstRequestWait bounds the wait for a connection's first request.
const firstRequestWait = 10 * time.Second

// maxFirstRequest bounds the first request read to learn its client.id
// (ApiVersions or a SASL handshake: small).
const maxFirstRequest = 1 << 20

func (p *KafkaProxy) serve(down net.Conn) {
	// The broker first: while it is down, the client's connection is
	// reset at once, as a refused one would be.
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		if tcp, ok := down.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		down.Close()
		return
	}
	// A client that sends nothing must not keep Close waiting.
	_ = down.SetReadDeadline(time.Now().Add(firstRequestWait))
	first, client, err := readFirstRequest(down)
	_ = down.SetReadDeadline(time.Time{})
	if err != nil {
		down.Close()
		up.Close()
		return
	}
	c := &proxied{client: client, down: down}
	p.mu.Lock()
	held := p.cut[client]
	if held {
		up.Close()
	} else {
		c.up = up
	}
	c.silent.Store(held)
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		c.close()
	}()
	if held {
		// Read and drop until Restore closes it.
		_, _ = io.Copy(io.Discard, down)
		return
	}
	if !c.silent.Load() { // cut since it was registered: drop it too
		if _, err := up.Write(first); err != nil {
			return
		}
	}
	done := make(chan struct{}, 2)
	go func() { c.pump(up, down); done <- struct{}{} }()
	go func() { c.pump(down, up); done <- struct{}{} }()
	<-done
	c.close()
	<-done
}

// pump copies from src to dst until either fails, dropping what it reads
// while the connection is silent.
func (c *proxied) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (c *proxied) close() {
	c.closeDown.Do(func() { c.down.Close() })
	c.cup.Do(func() {
		if c.up != nil {
			c.up.Close()
		}
	})
}

// readFirstRequest reads one request (a length, then the message) and
// returns it whole with the client.id of its header: api key, version and
// correlation id, then client_id as a nullable string, in every header
// version.
func readFirstRequest(r io.Reader) ([]byte, string, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, "", err
	}
	n := binary.BigEndian.Uint32(size[:])
	if n < 10 || n > maxFirstRequest {
		return nil, "", fmt.Errorf("a first request of %d bytes", n)
	}
	msg := make([]byte, 4+n)
	copy(msg, size[:])
	if _, err := io.ReadFull(r, msg[4:]); err != nil {
		return nil, "", err
	}
	l := int16(binary.BigEndian.Uint16(msg[12:14]))
	if l < 0 {
		return msg, "", nil
	}
	if 14+int(l) > len(msg) {
		return nil, "", errors.New("a client.id longer than its request")
	}
	return msg, string(msg[14 : 14+int(l)]), nil
}

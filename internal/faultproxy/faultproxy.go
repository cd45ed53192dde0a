// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a server: it can stop forwarding bytes in one
// direction without closing anything (a stalled peer, a full window) and cut
// every connection abruptly (a dead network, a reset).
//
// It imports only the standard library.
package faultproxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction is one of the two byte streams of a proxied connection.
type Direction int

const (
	// ClientToServer is the stream from the connecting client to the target.
	ClientToServer Direction = iota
	// ServerToClient is the stream from the target back to the client.
	ServerToClient
)

func (d Direction) String() string {
	switch d {
	case ClientToServer:
		return "client->server"
	case ServerToClient:
		return "server->client"
	}
	return "unknown direction"
}

// dialTimeout bounds the proxy's connect to the target.
const dialTimeout = 5 * time.Second

// bufSize is how much one direction of one connection reads at a time: while
// a direction is stalled, at most this much is held in the proxy and the
// rest waits in kernel buffers.
const bufSize = 32 * 1024

// Proxy forwards every TCP connection accepted on Addr to a target address.
// Stall, Resume and CutAll apply to every connection; Stall and Resume also
// to connections accepted later.
//
// A Proxy is safe for concurrent use. Close stops it and waits for all of
// its goroutines.
type Proxy struct {
	ln     net.Listener
	target string
	ctx    context.Context // cancelled by Close: ends dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every pump

	delays [2]atomic.Int64 // per direction: latency added to every chunk forwarded (ns)

	mu     sync.Mutex // guards following
	gates  [2]chan struct{}
	conns  map[*pair]struct{}
	closed bool
}

// New starts a proxy listening on 127.0.0.1 on a free port that forwards to
// target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, ctx: ctx, cancel: cancel, conns: make(map[*pair]struct{})}
	for d := range p.gates {
		p.gates[d] = openGate()
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// openGate returns a closed channel: a receive from it never waits.
func openGate() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// Addr returns the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding bytes in direction d, on current and future
// connections, without closing anything. Bytes sent meanwhile wait in the
// proxy (at most one read buffer per connection) and in kernel socket
// buffers; once those are full the sender's writes block.
func (p *Proxy) Stall(d Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gates[d]:
		p.gates[d] = make(chan struct{})
	default: // already stalled
	}
}

// Resume forwards bytes in direction d again, starting with those that
// queued up while it was stalled.
func (p *Proxy) Resume(d Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gates[d]: // not stalled
	default:
		close(p.gates[d])
	}
}

// Slow adds latency in direction d: every chunk read is held for delay
// before it is forwarded (0 restores full speed). It applies to current and
// future connections; bytes keep their order.
func (p *Proxy) Slow(d Direction, delay time.Duration) {
	p.delays[d].Store(int64(delay))
}

func (p *Proxy) gate(d Direction) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gates[d]
}

// CutAll closes every current connection on both sides abruptly: with
// SO_LINGER 0, so the peers see a reset rather than an orderly end. New
// connections are still accepted.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	conns := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close(true)
	}
}

// Conns returns how many proxied connections are open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, cuts every connection and waits for the proxy's
// goroutines to exit. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a transient accept error
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

// serve connects client to the target and runs the two pumps.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		abort(client)
		return
	}
	c := &pair{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.close(true)
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()

	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); p.pump(c, ClientToServer, client, server) }()
	go func() { defer pumps.Done(); p.pump(c, ServerToClient, server, client) }()
	pumps.Wait()

	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// pump copies src to dst while direction d is not stalled. When either end
// fails or closes, it closes the whole pair.
func (p *Proxy) pump(c *pair, d Direction, src, dst net.Conn) {
	defer c.close(false)
	buf := make([]byte, bufSize)
	for {
		if !c.wait(p.gate(d)) {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if delay := time.Duration(p.delays[d].Load()); delay > 0 {
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-c.done:
					t.Stop()
					return
				}
			}
			// A stall that began while Read waited holds these bytes too.
			if !c.wait(p.gate(d)) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pair is one proxied connection.
type pair struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{} // closed by close
}

// wait waits until gate opens, and reports false if the pair closed first.
func (c *pair) wait(gate <-chan struct{}) bool {
	select {
	case <-gate:
		return true
	case <-c.done:
		return false
	}
}

// close closes both ends, abruptly if rst is set.
func (c *pair) close(rst bool) {
	c.once.Do(func() {
		close(c.done)
		if rst {
			abort(c.client)
			abort(c.server)
			return
		}
		c.client.Close()
		c.server.Close()
	})
}

// abort closes conn so that its peer sees a reset.
func abort(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

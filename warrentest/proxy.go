package warrentest

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/warrenmq/warren/internal/faultproxy"
)

// Proxy is a TCP proxy in front of a [Broker]: the clients of a test dial
// [Proxy.URL] instead of the broker's URL, and the test cuts or black-holes
// their traffic without touching the broker or any other client. Its
// methods are safe for concurrent use.
type Proxy struct {
	p   *faultproxy.Proxy
	url string
}

// NewProxy starts a proxy to the broker on a free loopback port. The caller
// must call [Proxy.Close]; tests normally use [Broker.Proxy], which does.
func (b *Broker) NewProxy() (*Proxy, error) {
	u, err := url.Parse(b.URL())
	if err != nil {
		return nil, fmt.Errorf("warrentest: the broker's URL: %w", err)
	}
	p, err := faultproxy.New(b.Addr())
	if err != nil {
		return nil, fmt.Errorf("warrentest: starting a proxy: %w", err)
	}
	u.Host = p.Addr()
	return &Proxy{p: p, url: u.String()}, nil
}

// Proxy starts a proxy to the broker for the test tb (see [Broker.NewProxy])
// and closes it when tb ends. It fails tb if the proxy cannot start.
func (b *Broker) Proxy(tb testing.TB) *Proxy {
	tb.Helper()
	p, err := b.NewProxy()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// URL returns the broker's AMQP URL with the proxy's address in place of
// the broker's: credentials and virtual host are the broker's.
func (p *Proxy) URL() string { return p.url }

// Cut closes every connection through the proxy at once, with a TCP reset
// on both sides, as a network failure would: the client sees its
// connection fail without a connection.close, and the broker drops the
// connection. The proxy keeps accepting connections, so a client that
// reconnects gets through (unless the proxy is black-holed).
func (p *Proxy) Cut() { p.p.CutAll() }

// BlackHole stops forwarding bytes in both directions, on open connections
// and on those made later, without closing anything: the client's writes
// go nowhere and nothing, heartbeats included, comes back, as when a
// network drops packets. A client notices only through its heartbeat
// timeout or an operation's ctx. [Proxy.Restore] forwards again.
func (p *Proxy) BlackHole() {
	p.p.Stall(faultproxy.ClientToServer)
	p.p.Stall(faultproxy.ServerToClient)
}

// Restore ends a [Proxy.BlackHole]: bytes flow again, starting with those
// that waited in the proxy and in socket buffers, unless the broker or the
// client gave up on the connection meanwhile.
func (p *Proxy) Restore() {
	p.p.Resume(faultproxy.ClientToServer)
	p.p.Resume(faultproxy.ServerToClient)
}

// Close stops the proxy: it stops listening, cuts every connection and
// waits for its goroutines. It is idempotent.
func (p *Proxy) Close() error { return p.p.Close() }

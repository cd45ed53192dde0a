package integration

import (
	"encoding/binary"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// closeOkDropper is a TCP proxy between a client and the broker that
// reproduces, deterministically, a RabbitMQ behaviour seen in the
// simultaneous-close race: when the client's channel.close crosses the
// broker's own channel.close, the broker's channel.close-ok for the client's
// close is sometimes never sent (RabbitMQ 3.10 sends it from the closing
// channel's writer process, which is shut down as soon as the client's
// close-ok for the broker's close arrives).
//
// The proxy holds each channel.close the broker sends for holdClose before
// passing it on, so that a client closing the channel at once sends its own
// channel.close first (the crossing), and it drops a channel.close-ok the
// broker sends on a channel it had already closed itself since the channel
// was opened (the stray answer to the crossing close). Client-to-server bytes
// pass unchanged.
type closeOkDropper struct {
	ln        net.Listener
	target    string
	holdClose time.Duration
	dropped   atomic.Int64 // stray close-oks left out
	wg        sync.WaitGroup

	mu    sync.Mutex // guards conns
	conns []net.Conn
}

const (
	amqpFrameMethod     = 1
	amqpFrameEnd        = 0xCE
	amqpClassChannel    = 20
	amqpChannelOpenOK   = 11
	amqpChannelClose    = 40
	amqpChannelCloseOK  = 41
	amqpFrameHeaderSize = 7
)

func newCloseOkDropper(t *testing.T, target string, holdClose time.Duration) *closeOkDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &closeOkDropper{ln: ln, target: target, holdClose: holdClose}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// url returns brokerURL pointed at the proxy.
func (p *closeOkDropper) url(t *testing.T, brokerURL string) string {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("proxy: parsing broker URL: %v", err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

func (p *closeOkDropper) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *closeOkDropper) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *closeOkDropper) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		p.track(client)
		p.track(server)
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			defer server.Close()
			defer client.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := client.Read(buf)
				if n > 0 {
					if _, werr := server.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go p.serverToClient(server, client)
	}
}

// serverToClient forwards whole frames from the broker, holding broker
// channel.close frames and leaving out stray channel.close-ok frames.
func (p *closeOkDropper) serverToClient(server, client net.Conn) {
	defer p.wg.Done()
	defer client.Close()
	defer server.Close()
	closedByBroker := make(map[uint16]bool)
	var pending []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		pending = append(pending, buf[:n]...)
		for len(pending) >= amqpFrameHeaderSize {
			size := int(binary.BigEndian.Uint32(pending[3:7]))
			total := amqpFrameHeaderSize + size + 1
			if len(pending) < total {
				break
			}
			frame := pending[:total]
			pending = pending[total:]
			if frame[total-1] != amqpFrameEnd {
				return // not AMQP framing: give up on this connection
			}
			forward := true
			if frame[0] == amqpFrameMethod && size >= 4 {
				ch := binary.BigEndian.Uint16(frame[1:3])
				class := binary.BigEndian.Uint16(frame[7:9])
				method := binary.BigEndian.Uint16(frame[9:11])
				if ch != 0 && class == amqpClassChannel {
					switch method {
					case amqpChannelOpenOK:
						closedByBroker[ch] = false
					case amqpChannelClose:
						closedByBroker[ch] = true
						time.Sleep(p.holdClose)
					case amqpChannelCloseOK:
						if closedByBroker[ch] {
							forward = false
							p.dropped.Add(1)
						}
					}
				}
			}
			if forward {
				if _, werr := client.Write(frame); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

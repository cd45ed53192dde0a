// Package fakebroker is a scripted AMQP 0-9-1 broker for tests: a loopback
// TCP server that performs the connection handshake itself and then runs a
// per-test script, so that a test can put on the wire exactly what a real
// RabbitMQ cannot be made to send (crossing closes, a chosen reply code,
// silence, malformed frames).
//
// A script reads like the protocol conversation:
//
//	b := fakebroker.Start(t, fakebroker.Config{}, func(c *fakebroker.Conn) {
//		open := c.Expect(fakebroker.ChannelOpen)
//		c.Send(open.Channel, fakebroker.ChannelOpenOK, new(fakebroker.Args).LongStr(""))
//		c.Expect(fakebroker.QueueDeclare)
//		c.CloseChannel(open.Channel, 406, "PRECONDITION_FAILED - no")
//		c.Expect(fakebroker.ChannelCloseOK)
//		c.Serve()
//	})
//	client, err := warren.Dial(ctx, b.URL())
//
// The codec (codec.go) encodes and decodes only what scripts need. The
// package imports only the standard library.
package fakebroker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Config is what the broker offers in connection.tune, and the credentials
// it accepts. Zero fields take the defaults shown.
type Config struct {
	ChannelMax uint16 // 2047, RabbitMQ's default
	FrameMax   uint32 // 131072
	Heartbeat  uint16 // seconds; 0 offers none (the client's proposal wins)
	User       string // "guest"
	Password   string // "guest"
	// RabbitMQ, when set, makes the broker report itself as RabbitMQ of
	// this version ("4.3.6") in connection.start; otherwise as product
	// "fakebroker" version "0.0.0".
	RabbitMQ string
}

func (c Config) withDefaults() Config {
	if c.ChannelMax == 0 {
		c.ChannelMax = 2047
	}
	if c.FrameMax == 0 {
		c.FrameMax = 131072
	}
	if c.User == "" {
		c.User = "guest"
	}
	if c.Password == "" {
		c.Password = "guest"
	}
	return c
}

// Broker accepts connections on a loopback port and runs the script on each
// after the handshake. Close (registered with t.Cleanup by Start) stops it
// and waits for every goroutine.
type Broker struct {
	t      testing.TB
	cfg    Config
	script func(*Conn)
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every connection's script
	quit   chan struct{}  // closed by Close

	mu     sync.Mutex // guards following
	conns  map[net.Conn]struct{}
	closed bool
}

// Start starts a broker that runs script on every connection it accepts
// (most tests dial once). It fails the test if it cannot listen.
func Start(t testing.TB, cfg Config, script func(*Conn)) *Broker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakebroker: listen: %v", err)
	}
	b := &Broker{t: t, cfg: cfg.withDefaults(), script: script, ln: ln,
		quit: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(b.Close)
	return b
}

// Addr returns the broker's host:port.
func (b *Broker) Addr() string { return b.ln.Addr().String() }

// URL returns an amqp:// URL for the broker with its credentials.
func (b *Broker) URL() string {
	return "amqp://" + b.cfg.User + ":" + b.cfg.Password + "@" + b.Addr() + "/"
}

// scriptGrace is how long Close lets scripts finish on their own.
const scriptGrace = 5 * time.Second

// Close stops accepting connections and waits for the scripts to return.
// A script is expected to end by itself once its client has gone (a read
// fails, or Serve sees connection.close); one still running after a grace
// period fails the test, and its connection is closed to end it. Close is
// idempotent.
func (b *Broker) Close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.quit)
	}
	b.mu.Unlock()
	_ = b.ln.Close()
	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(scriptGrace):
	}
	b.t.Errorf("fakebroker: a script was still running %v after the test ended; closing its connection", scriptGrace)
	b.mu.Lock()
	for nc := range b.conns {
		_ = nc.Close()
	}
	b.mu.Unlock()
	<-done
}

func (b *Broker) accept() {
	defer b.wg.Done()
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			_ = nc.Close()
			return
		}
		b.conns[nc] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go b.serve(nc)
	}
}

func (b *Broker) serve(nc net.Conn) {
	defer b.wg.Done()
	defer func() {
		_ = nc.Close()
		b.mu.Lock()
		delete(b.conns, nc)
		b.mu.Unlock()
	}()
	c := &Conn{t: b.t, cfg: b.cfg, nc: nc, r: bufio.NewReader(nc), quit: b.quit, confirms: map[uint16]*uint64{}}
	if err := c.handshake(); err != nil {
		c.t.Errorf("fakebroker: handshake: %v", err)
		return
	}
	b.script(c)
}

// Conn is the broker's side of one client connection, handed to the
// script. It is used by the script's goroutine only.
//
// Expect and the Send methods end the script (runtime.Goexit, after
// closing the socket) when they fail; Expect also fails the test. Next,
// ReadFrame and SendRaw return errors instead, for scripts that must not
// judge (fuzzing, malformed-input tests).
type Conn struct {
	t   testing.TB
	cfg Config
	nc  net.Conn
	r   *bufio.Reader

	// What the client answered in connection.tune-ok.
	TunedChannelMax uint16
	TunedFrameMax   uint32
	TunedHeartbeat  uint16

	quit     <-chan struct{}
	confirms map[uint16]*uint64 // channel → last delivery tag, for channels in confirm mode
}

// Quit returns a channel closed when the broker is being closed (the test
// has ended): a script waiting for the test on a channel of its own must
// also select on it.
func (c *Conn) Quit() <-chan struct{} { return c.quit }

// Method is a method read from the client, with its content (header and
// body) when the method carries one.
type Method struct {
	Channel uint16
	ID      MethodID
	Args    []byte

	Header []byte // content header payload: class, weight, body size, property flags, properties
	Body   []byte
	Tag    uint64 // basic.publish on a confirm channel: the delivery tag the broker acks
}

// Reader returns a reader over the method's arguments.
func (m *Method) Reader() *ArgReader { return NewArgReader(m.Args) }

// Props returns the property flags and properties of the content header:
// what a basic.return must echo.
func (m *Method) Props() []byte {
	if len(m.Header) < 12 {
		return nil
	}
	return m.Header[12:]
}

// Headers decodes the headers table of the content's properties (nil if
// the message has none).
func (m *Method) Headers() (map[string]any, error) {
	r := NewArgReader(m.Props())
	flags := r.Short()
	if flags&(1<<15) != 0 { // content-type
		r.ShortStr()
	}
	if flags&(1<<14) != 0 { // content-encoding
		r.ShortStr()
	}
	var h map[string]any
	if flags&(1<<13) != 0 {
		h = r.Table()
	}
	return h, r.Err()
}

func (m *Method) String() string { return fmt.Sprintf("%v on channel %d", m.ID, m.Channel) }

// handshake runs the server side of connection establishment.
func (c *Conn) handshake() error {
	hdr := make([]byte, len(ProtocolHeader))
	if _, err := io.ReadFull(c.r, hdr); err != nil {
		return fmt.Errorf("protocol header: %w", err)
	}
	if string(hdr) != ProtocolHeader {
		_, _ = c.nc.Write([]byte(ProtocolHeader))
		return fmt.Errorf("protocol header %q, want %q", hdr, ProtocolHeader)
	}
	product, version := "fakebroker", "0.0.0"
	if c.cfg.RabbitMQ != "" {
		product, version = "RabbitMQ", c.cfg.RabbitMQ
	}
	props := map[string]any{
		"product": product,
		"version": version,
		"capabilities": map[string]any{
			"publisher_confirms":     true,
			"basic.nack":             true,
			"consumer_cancel_notify": true,
			"connection.blocked":     true,
		},
	}
	if err := c.send(MethodFrame(0, ConnectionStart,
		new(Args).Octet(0).Octet(9).Table(props).LongStr("PLAIN AMQPLAIN").LongStr("en_US").Bytes())); err != nil {
		return err
	}
	m, err := c.expect(0, ConnectionStartOK)
	if err != nil {
		return err
	}
	r := m.Reader()
	r.Table() // client properties
	mech, resp := r.ShortStr(), r.LongStr()
	if r.Err() != nil {
		return fmt.Errorf("connection.start-ok: %w", r.Err())
	}
	if mech != "PLAIN" || resp != "\x00"+c.cfg.User+"\x00"+c.cfg.Password {
		_ = c.send(MethodFrame(0, ConnectionClose, closeArgs(403, "ACCESS_REFUSED - login refused", 0)))
		return fmt.Errorf("login refused: mechanism %q", mech)
	}
	if err := c.send(MethodFrame(0, ConnectionTune,
		new(Args).Short(c.cfg.ChannelMax).Long(c.cfg.FrameMax).Short(c.cfg.Heartbeat).Bytes())); err != nil {
		return err
	}
	if m, err = c.expect(0, ConnectionTuneOK); err != nil {
		return err
	}
	r = m.Reader()
	c.TunedChannelMax, c.TunedFrameMax, c.TunedHeartbeat = r.Short(), r.Long(), r.Short()
	if _, err = c.expect(0, ConnectionOpen); err != nil {
		return err
	}
	return c.send(MethodFrame(0, ConnectionOpenOK, new(Args).ShortStr("").Bytes()))
}

func closeArgs(code uint16, text string, failing MethodID) []byte {
	return new(Args).Short(code).ShortStr(text).Short(failing.Class()).Short(failing.Method()).Bytes()
}

// ---------------------------------------------------------------------------
// Reading.

// maxFrame bounds the frames the broker reads (the client's are bounded by
// the negotiated frame_max; this only protects the test).
const maxFrame = 1 << 20

// ReadFrame reads the next frame as it is, heartbeats included.
func (c *Conn) ReadFrame() (Frame, error) { return ReadFrame(c.r, maxFrame) }

// Next reads the next method, skipping heartbeats, with its content if it
// carries one.
func (c *Conn) Next() (*Method, error) {
	var f Frame
	for {
		var err error
		if f, err = c.ReadFrame(); err != nil {
			return nil, err
		}
		if f.Type != FrameHeartbeat {
			break
		}
	}
	if f.Type != FrameMethod || len(f.Payload) < 4 {
		return nil, fmt.Errorf("fakebroker: frame of type %d on channel %d where a method was expected", f.Type, f.Channel)
	}
	r := NewArgReader(f.Payload)
	m := &Method{Channel: f.Channel, ID: ID(r.Short(), r.Short()), Args: r.Rest()}
	if m.ID.hasContent() {
		if err := c.readContent(m); err != nil {
			return nil, err
		}
	}
	c.track(m)
	return m, nil
}

// readContent reads the header and body frames that follow m.
func (c *Conn) readContent(m *Method) error {
	f, err := c.ReadFrame()
	if err != nil {
		return err
	}
	if f.Type != FrameHeader || f.Channel != m.Channel || len(f.Payload) < 14 {
		return fmt.Errorf("fakebroker: %v not followed by a content header", m)
	}
	m.Header = f.Payload
	size := NewArgReader(f.Payload[4:12]).LongLong()
	m.Body = []byte{}
	for uint64(len(m.Body)) < size {
		if f, err = c.ReadFrame(); err != nil {
			return err
		}
		if f.Type != FrameBody || f.Channel != m.Channel {
			return fmt.Errorf("fakebroker: body of %v interrupted by a frame of type %d", m, f.Type)
		}
		m.Body = append(m.Body, f.Payload...)
	}
	return nil
}

// track follows confirm mode per channel, to number publishes as the
// broker's delivery tags.
func (c *Conn) track(m *Method) {
	switch m.ID {
	case ChannelOpen, ChannelCloseOK:
		delete(c.confirms, m.Channel)
	case ConfirmSelect:
		if c.confirms[m.Channel] == nil {
			c.confirms[m.Channel] = new(uint64)
		}
	case BasicPublish:
		if n := c.confirms[m.Channel]; n != nil {
			*n++
			m.Tag = *n
		}
	}
}

// expect reads the next method and checks that it is id on channel ch
// (any channel if ch is negative).
func (c *Conn) expect(ch int, id MethodID) (*Method, error) {
	m, err := c.Next()
	if err != nil {
		return nil, fmt.Errorf("expecting %v: %w", id, err)
	}
	if m.ID != id || (ch >= 0 && int(m.Channel) != ch) {
		return m, fmt.Errorf("got %v, want %v", m, id)
	}
	return m, nil
}

// Expect reads the next method and checks that it is id (on any channel).
// Otherwise it fails the test and ends the script.
func (c *Conn) Expect(id MethodID) *Method {
	c.t.Helper()
	return c.ExpectOn(-1, id)
}

// ExpectOn is Expect for channel ch only (ch < 0: any channel).
func (c *Conn) ExpectOn(ch int, id MethodID) *Method {
	c.t.Helper()
	m, err := c.expect(ch, id)
	if err != nil {
		c.t.Errorf("fakebroker: %v", err)
		c.Abort()
	}
	return m
}

// Abort closes the connection and ends the script.
func (c *Conn) Abort() {
	_ = c.nc.Close()
	runtime.Goexit()
}

// Close closes the connection (the client sees end of file); the script
// goes on and may still read what was already buffered.
func (c *Conn) Close() { _ = c.nc.Close() }

// ---------------------------------------------------------------------------
// Writing.

func (c *Conn) send(f Frame) error {
	_, err := c.nc.Write(f.Encode())
	return err
}

// SendRaw writes b as it is.
func (c *Conn) SendRaw(b []byte) error {
	_, err := c.nc.Write(b)
	return err
}

// SendFrame writes f; on failure it ends the script.
func (c *Conn) SendFrame(f Frame) {
	if err := c.send(f); err != nil {
		c.t.Logf("fakebroker: send: %v (script ended)", err)
		c.Abort()
	}
}

// Send writes method id on channel ch with args (nil for none).
func (c *Conn) Send(ch uint16, id MethodID, args *Args) {
	c.SendFrame(MethodFrame(ch, id, args.Bytes()))
}

// OpenOK answers channel.open on ch.
func (c *Conn) OpenOK(ch uint16) { c.Send(ch, ChannelOpenOK, new(Args).LongStr("")) }

// CloseChannel sends channel.close on ch.
func (c *Conn) CloseChannel(ch uint16, code uint16, text string) {
	c.SendFrame(MethodFrame(ch, ChannelClose, closeArgs(code, text, 0)))
}

// CloseConnection sends connection.close.
func (c *Conn) CloseConnection(code uint16, text string) {
	c.SendFrame(MethodFrame(0, ConnectionClose, closeArgs(code, text, 0)))
}

// Ack sends basic.ack.
func (c *Conn) Ack(ch uint16, tag uint64, multiple bool) {
	c.Send(ch, BasicAck, new(Args).LongLong(tag).Bits(multiple))
}

// Nack sends basic.nack.
func (c *Conn) Nack(ch uint16, tag uint64, multiple bool) {
	c.Send(ch, BasicNack, new(Args).LongLong(tag).Bits(multiple, false))
}

// Return sends basic.return for the publish p, echoing its properties and
// body as RabbitMQ does.
func (c *Conn) Return(p *Method, code uint16, text string) {
	r := p.Reader()
	r.Short() // reserved
	exchange, key := r.ShortStr(), r.ShortStr()
	c.Send(p.Channel, BasicReturn, new(Args).Short(code).ShortStr(text).ShortStr(exchange).ShortStr(key))
	c.SendFrame(HeaderFrame(p.Channel, BasicPublish.Class(), uint64(len(p.Body)), p.Props()))
	if len(p.Body) > 0 {
		c.SendFrame(Frame{Type: FrameBody, Channel: p.Channel, Payload: p.Body})
	}
}

// DeclareOK answers queue.declare with name and zero counts.
func (c *Conn) DeclareOK(ch uint16, name string) {
	c.Send(ch, QueueDeclareOK, new(Args).ShortStr(name).Long(0).Long(0))
}

// Flow sends channel.flow.
func (c *Conn) Flow(ch uint16, active bool) { c.Send(ch, ChannelFlow, new(Args).Bits(active)) }

// Blocked sends connection.blocked.
func (c *Conn) Blocked(reason string) { c.Send(0, ConnectionBlocked, new(Args).ShortStr(reason)) }

// Unblocked sends connection.unblocked.
func (c *Conn) Unblocked() { c.Send(0, ConnectionUnblocked, nil) }

// ---------------------------------------------------------------------------
// Generic behaviour.

// ErrClosedByClient is returned by Serve when the client closed the
// connection with connection.close (which Serve answered).
var ErrClosedByClient = errors.New("fakebroker: connection closed by the client")

// Serve answers the client like a broker that agrees to everything, until
// the client closes the connection (connection.close, answered with
// close-ok: ErrClosedByClient) or the socket ends (the read error): it
// opens and closes channels, selects confirm and tx modes, declares queues,
// answers qos, and acks every publish on a confirm channel. Anything else
// is read and ignored.
func (c *Conn) Serve() error {
	for {
		m, err := c.Next()
		if err != nil {
			return err
		}
		if err := c.Answer(m); err != nil {
			return err
		}
	}
}

// Answer does what Serve does with one method: it writes the agreeable
// reply, if any, and returns ErrClosedByClient for connection.close (after
// answering it) and connection.close-ok.
func (c *Conn) Answer(m *Method) error {
	var reply Frame
	switch m.ID {
	case ChannelOpen:
		reply = MethodFrame(m.Channel, ChannelOpenOK, new(Args).LongStr("").Bytes())
	case ChannelClose:
		reply = MethodFrame(m.Channel, ChannelCloseOK, nil)
	case ConnectionClose:
		_ = c.send(MethodFrame(0, ConnectionCloseOK, nil))
		return ErrClosedByClient
	case ConnectionCloseOK:
		return ErrClosedByClient
	case ConfirmSelect:
		if m.Reader().Bit() { // nowait
			return nil
		}
		reply = MethodFrame(m.Channel, ConfirmSelectOK, nil)
	case TxSelect:
		reply = MethodFrame(m.Channel, TxSelectOK, nil)
	case TxCommit:
		reply = MethodFrame(m.Channel, TxCommitOK, nil)
	case TxRollback:
		reply = MethodFrame(m.Channel, TxRollbackOK, nil)
	case BasicQos:
		reply = MethodFrame(m.Channel, BasicQosOK, nil)
	case QueueDeclare:
		r := m.Reader()
		r.Short()
		name := r.ShortStr()
		for range 4 { // passive, durable, exclusive, auto-delete
			r.Bit()
		}
		if nowait := r.Bit(); nowait {
			return nil
		}
		if name == "" {
			name = "amq.gen-fake"
		}
		reply = MethodFrame(m.Channel, QueueDeclareOK, new(Args).ShortStr(name).Long(0).Long(0).Bytes())
	case BasicPublish:
		if m.Tag == 0 {
			return nil
		}
		reply = MethodFrame(m.Channel, BasicAck, new(Args).LongLong(m.Tag).Bits(false).Bytes())
	default:
		return nil
	}
	return c.send(reply)
}

// Drain reads and discards everything until the socket ends, answering
// nothing (a broker gone silent that keeps its socket open). It returns the
// read error.
func (c *Conn) Drain() error {
	_, err := io.Copy(io.Discard, c.r)
	return err
}

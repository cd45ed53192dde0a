// Package wire holds warren's view of the bytes under amqp091-go.
//
// Conn wraps the net.Conn that amqp091-go reads from and writes to. It
// walks the headers of AMQP frames in both directions (it never copies a
// payload on the fast path) and enforces two rules of AMQP 0-9-1 section
// 2.3.7 that amqp091-go v1.16 can break under races:
//
//  1. After a peer has sent channel.close-ok for a channel, it sends nothing
//     more on that channel until channel.open. amqp091-go sends RPC frames
//     (including channel.close) without the lock its reader takes to answer
//     the broker's channel.close, so an RPC racing an asynchronous channel
//     error can go out after the close-ok; RabbitMQ then closes the whole
//     connection with 504 CHANNEL_ERROR "expected 'channel.open'". Conn drops
//     such frames: the RPC then fails with the channel's close cause.
//
//  2. A channel.close that crossed the broker's channel.close is answered by
//     a channel.close-ok after amqp091-go has already released the channel
//     id. If the id were reused first, amqp091-go would hand that stray
//     close-ok to the new channel. Conn tracks every channel.close in flight
//     so the client can hold back channel opens until each is answered.
package wire

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
)

const (
	frameMethod = 1
	frameEnd    = 0xCE

	classConnection = 10
	classChannel    = 20
	methodOpen      = 10
	methodClose     = 40 // channel.close
	methodCloseO    = 41 // channel.close-ok
	methodConnClose = 50 // connection.close

	protocolHeaderLen = 8 // "AMQP\x00\x00\x09\x01", the first bytes the client writes
	frameHeaderLen    = 7
	methodIDLen       = 4
)

// Conn is a net.Conn that keeps amqp091-go within the channel rules above.
// Read must be called from one goroutine at a time (amqp091-go's reader);
// the other methods are safe for concurrent use.
type Conn struct {
	net.Conn

	open     [65536 / 64]atomic.Uint64 // bit per channel: open as far as the broker is concerned
	awaiting [65536 / 64]atomic.Uint64 // bit per channel: the broker sent channel.close, no close-ok yet

	mu       sync.Mutex // guards following
	closing  map[uint16]*pendingClose
	dead     bool // Read failed: nothing more will be dispatched
	pendingN atomic.Int32

	// inbound walker, touched only inside Read
	in      walker
	reads   uint64
	onClose CloseFunc

	// Trace, if set before the connection is used, sees every method
	// frame in either direction ("in", "out", or "drop" for an outbound
	// frame left out). For tests and debugging.
	Trace func(dir string, ch, class, method uint16)

	// outbound walker, guarded by wmu
	wmu      sync.Mutex
	preamble int    // protocol header bytes still to pass unexamined
	held     []byte // an incomplete frame start kept back from the last Write
	wrem     int    // bytes of the current outbound frame still to pass or drop
	wdrop    bool   // the current outbound frame is dropped
	dropped  atomic.Uint64
}

// pendingClose is a channel.close we sent that has no close-ok yet.
type pendingClose struct {
	okAt uint64 // Read call in which the close-ok was read; 0 = not yet
	done chan struct{}
}

// walker follows frame boundaries in a byte stream.
type walker struct {
	hdr     [frameHeaderLen + methodIDLen]byte
	hdrN    int
	rem     int    // payload and end-octet bytes left in the current frame
	capture []byte // arguments of a close method being collected, or nil
	closeOK bool   // the current frame is a channel.close-ok
	broken  bool
}

// maxCloseArgs bounds what is kept of a close method's arguments: reply
// code, reply text (a short string) and the failing class and method ids.
const maxCloseArgs = 2 + 1 + 255 + 2 + 2

// CloseFunc receives the reply code and text of a channel.close (channel
// id > 0) or connection.close (id 0) as it is read, before amqp091-go
// handles it. It runs on amqp091-go's reader goroutine and must not block.
type CloseFunc func(id uint16, code uint16, text string)

// New wraps c. onClose, if not nil, is told about every inbound
// channel.close and connection.close: amqp091-go can lose their reply code
// and text when a close races its own.
func New(c net.Conn, onClose CloseFunc) *Conn {
	return &Conn{Conn: c, closing: make(map[uint16]*pendingClose), preamble: protocolHeaderLen, onClose: onClose}
}

// Dropped returns how many outbound frames Conn has dropped because their
// channel was already closed.
func (c *Conn) Dropped() uint64 { return c.dropped.Load() }

// PendingClose returns a channel that is closed once a channel.close we
// sent has been answered and the answer handed on by amqp091-go's reader,
// or nil when no channel.close is waiting for its close-ok.
func (c *Conn) PendingClose() (id uint16, done <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, p := range c.closing {
		return k, p.done
	}
	return 0, nil
}

// ForgetClose gives up waiting for channel id's close-ok.
func (c *Conn) ForgetClose(id uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.closing[id]; ok {
		close(p.done)
		delete(c.closing, id)
		c.pendingN.Store(int32(len(c.closing)))
	}
}

func (c *Conn) isOpen(ch uint16) bool { return bit(&c.open, ch) }

func (c *Conn) setOpen(ch uint16, open bool) { setBit(&c.open, ch, open) }

func bit(set *[65536 / 64]atomic.Uint64, ch uint16) bool {
	return set[ch/64].Load()&(1<<(ch%64)) != 0
}

func setBit(set *[65536 / 64]atomic.Uint64, ch uint16, on bool) {
	if on {
		set[ch/64].Or(1 << (ch % 64))
	} else {
		set[ch/64].And(^uint64(1 << (ch % 64)))
	}
}

// Read reads from the underlying connection and walks what it read.
func (c *Conn) Read(p []byte) (int, error) {
	c.reads++
	if c.pendingN.Load() > 0 {
		c.settle()
	}
	n, err := c.Conn.Read(p)
	if n > 0 && !c.in.broken {
		c.walkIn(p[:n])
	}
	if err != nil {
		c.mu.Lock()
		c.dead = true
		for id, pc := range c.closing {
			close(pc.done)
			delete(c.closing, id)
		}
		c.pendingN.Store(0)
		c.mu.Unlock()
	}
	return n, err
}

// settle releases close-oks read by earlier Read calls: amqp091-go's reader
// asks for more bytes only after dispatching every whole frame it holds.
func (c *Conn) settle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, pc := range c.closing {
		if pc.okAt != 0 && pc.okAt < c.reads {
			close(pc.done)
			delete(c.closing, id)
		}
	}
	c.pendingN.Store(int32(len(c.closing)))
}

func (c *Conn) walkIn(b []byte) {
	w := &c.in
	for len(b) > 0 {
		if w.rem > 0 {
			k := min(w.rem, len(b))
			if w.rem == k && b[k-1] != frameEnd {
				w.broken = true // amqp091-go fails the connection
				return
			}
			if w.capture != nil {
				w.capture = append(w.capture, b[:min(k, cap(w.capture)-len(w.capture))]...)
				if w.rem == k {
					c.closeArgs(binary.BigEndian.Uint16(w.hdr[1:3]), w.capture)
					w.capture = nil
				}
			}
			if w.closeOK && w.rem == k {
				// Only a whole frame is handed on by amqp091-go.
				w.closeOK = false
				c.sawCloseOK(binary.BigEndian.Uint16(w.hdr[1:3]))
			}
			w.rem -= k
			b = b[k:]
			continue
		}
		// Collect the header and, for method frames, the method id.
		need := frameHeaderLen
		if w.hdrN >= frameHeaderLen && w.hdr[0] == frameMethod {
			need = frameHeaderLen + methodIDLen
		}
		k := copy(w.hdr[w.hdrN:need], b)
		w.hdrN += k
		b = b[k:]
		if w.hdrN < need {
			continue
		}
		if need == frameHeaderLen && w.hdr[0] == frameMethod && binary.BigEndian.Uint32(w.hdr[3:7]) >= methodIDLen {
			continue // go round for the method id
		}
		size := int(binary.BigEndian.Uint32(w.hdr[3:7]))
		ch := binary.BigEndian.Uint16(w.hdr[1:3])
		if need > frameHeaderLen {
			class := binary.BigEndian.Uint16(w.hdr[7:9])
			method := binary.BigEndian.Uint16(w.hdr[9:11])
			if c.Trace != nil {
				c.Trace("in", ch, class, method)
			}
			switch {
			case ch != 0 && class == classChannel && method == methodClose:
				setBit(&c.awaiting, ch, true) // amqp091-go will answer it
				w.capture = make([]byte, 0, maxCloseArgs)
			case ch != 0 && class == classChannel && method == methodCloseO:
				w.closeOK = true
			case ch == 0 && class == classConnection && method == methodConnClose:
				w.capture = make([]byte, 0, maxCloseArgs)
			}
		}
		w.rem = size + 1 - (w.hdrN - frameHeaderLen)
		w.hdrN = 0
	}
}

// closeArgs decodes reply-code and reply-text of a close method.
func (c *Conn) closeArgs(ch uint16, args []byte) {
	if c.onClose == nil || len(args) < 3 {
		return
	}
	code := binary.BigEndian.Uint16(args[0:2])
	n := int(args[2])
	text := args[3:]
	if n < len(text) {
		text = text[:n]
	}
	c.onClose(ch, code, string(text))
}

// sawCloseOK handles an inbound channel.close-ok: the broker has finished
// with the channel.
func (c *Conn) sawCloseOK(ch uint16) {
	c.setOpen(ch, false)
	if c.pendingN.Load() == 0 {
		return
	}
	c.mu.Lock()
	if pc, ok := c.closing[ch]; ok && pc.okAt == 0 {
		pc.okAt = c.reads
	}
	c.mu.Unlock()
}

// Write writes p, leaving out frames for channels the client has already
// closed. It reports len(p) when it succeeds, dropped frames included.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()

	buf := p
	if len(c.held) > 0 {
		buf = append(c.held, p...)
		c.held = nil
	}
	var (
		out  []byte // built only when something is dropped or held back
		from int    // buf[from:i] is still to be emitted
		i    int
	)
	cut := func(a, b int) { // leave buf[a:b] out
		if out == nil {
			out = make([]byte, 0, len(buf))
		}
		out = append(out, buf[from:a]...)
		from = b
	}
	if c.preamble > 0 {
		i = min(c.preamble, len(buf))
		c.preamble -= i
	}
	for i < len(buf) {
		if c.wrem > 0 {
			k := min(c.wrem, len(buf)-i)
			if c.wdrop {
				cut(i, i+k)
			}
			i += k
			c.wrem -= k
			continue
		}
		rest := buf[i:]
		if len(rest) < frameHeaderLen || (rest[0] == frameMethod && len(rest) < frameHeaderLen+methodIDLen &&
			binary.BigEndian.Uint32(rest[3:7]) >= methodIDLen) {
			// An incomplete frame start: keep it back until the next
			// Write completes it (amqp091-go always finishes a frame).
			c.held = append([]byte(nil), rest...)
			cut(i, len(buf))
			break
		}
		c.wrem = frameHeaderLen + int(binary.BigEndian.Uint32(rest[3:7])) + 1
		c.wdrop = !c.passOut(rest)
		if c.Trace != nil && rest[0] == frameMethod && len(rest) >= frameHeaderLen+methodIDLen {
			dir := "out"
			if c.wdrop {
				dir = "drop"
			}
			c.Trace(dir, binary.BigEndian.Uint16(rest[1:3]), binary.BigEndian.Uint16(rest[7:9]), binary.BigEndian.Uint16(rest[9:11]))
		}
		if c.wdrop {
			c.dropped.Add(1)
		}
	}
	if out == nil {
		if _, err := c.Conn.Write(buf); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	out = append(out, buf[from:]...)
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// passOut decides whether the outbound frame starting at f goes out, and
// tracks channel state. f holds at least the header, and the method id for
// method frames with one.
func (c *Conn) passOut(f []byte) bool {
	ch := binary.BigEndian.Uint16(f[1:3])
	if ch == 0 {
		return true
	}
	var class, method uint16
	if f[0] == frameMethod && len(f) >= frameHeaderLen+methodIDLen {
		class = binary.BigEndian.Uint16(f[7:9])
		method = binary.BigEndian.Uint16(f[9:11])
	}
	isChannel := class == classChannel
	if isChannel && method == methodCloseO && bit(&c.awaiting, ch) {
		// The answer to the broker's channel.close always goes out,
		// even when our own close crossed it and its close-ok came first.
		setBit(&c.awaiting, ch, false)
		c.setOpen(ch, false)
		return true
	}
	if !c.isOpen(ch) {
		if isChannel && method == methodOpen {
			c.setOpen(ch, true)
			return true
		}
		return false
	}
	if isChannel {
		switch method {
		case methodClose:
			if bit(&c.awaiting, ch) {
				// The broker's channel.close has been read and amqp091-go
				// is about to answer it; ours would cross it for nothing.
				return false
			}
			c.mu.Lock()
			if !c.dead {
				if _, ok := c.closing[ch]; !ok {
					c.closing[ch] = &pendingClose{done: make(chan struct{})}
					c.pendingN.Store(int32(len(c.closing)))
				}
			}
			c.mu.Unlock()
		case methodCloseO:
			c.setOpen(ch, false)
		}
	}
	return true
}

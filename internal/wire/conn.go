// Package wire holds warren's view of the bytes under amqp091-go.
//
// Conn wraps the net.Conn that amqp091-go reads from and writes to. It
// walks the headers of AMQP frames in both directions (it never copies a
// payload on the fast path) and enforces rules of AMQP 0-9-1 section 2.3.7
// that amqp091-go v1.16 can break under races:
//
//  1. After a peer has sent channel.close-ok for a channel, it sends nothing
//     more on that channel until channel.open. amqp091-go sends RPC frames
//     (including channel.close) without the lock its reader takes to answer
//     the broker's channel.close, so an RPC racing an asynchronous channel
//     error can go out after the close-ok; RabbitMQ then closes the whole
//     connection with 504 CHANNEL_ERROR "expected 'channel.open'". Conn drops
//     such frames: the RPC then fails with the channel's close cause.
//
//  2. A channel.close is pointless once the broker's own channel.close for
//     the channel has been read: amqp091-go is about to answer it. Conn
//     drops ours, so the two closes cross less often.
//
//  3. A channel.close that did cross the broker's is sometimes answered by
//     a channel.close-ok after amqp091-go has already released the channel
//     id (RabbitMQ 3.10 sometimes answers, sometimes not). If the id has
//     been reused, amqp091-go would hand that stray close-ok to the new
//     channel and its reader would stall. Conn drops every inbound
//     close-ok that answers no channel.close of ours still open to an
//     answer: none sent since the channel was last opened, or one that the
//     broker's own channel.close has overtaken.
//
// Conn also reports the reply code and text of every inbound channel.close
// and connection.close, which amqp091-go can lose when a close races its
// own; and, when asked (SetConfirmHooks), every publisher confirm
// (basic.ack, basic.nack) and the arrival of every basic.return, as they are
// read, so that confirms are tracked without amqp091-go's listeners.
package wire

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	frameMethod    = 1
	frameHeader    = 2
	frameBody      = 3
	frameHeartbeat = 8
	frameEnd       = 0xCE

	classConnection = 10
	classChannel    = 20
	methodOpen      = 10 // channel.open
	methodClose     = 40 // channel.close
	methodCloseO    = 41 // channel.close-ok
	methodFlow      = 20 // channel.flow
	methodFlowOK    = 21 // channel.flow-ok
	methodConnClose = 50 // connection.close

	classBasic   = 60
	methodReturn = 50  // basic.return
	methodAck    = 80  // basic.ack
	methodNack   = 120 // basic.nack

	protocolHeaderLen = 8 // "AMQP\x00\x00\x09\x01", the first bytes the client writes
	frameHeaderLen    = 7
	methodIDLen       = 4
	frameStartLen     = frameHeaderLen + methodIDLen
)

// maxCloseArgs bounds what is kept of a close method's arguments: reply
// code, reply text (a short string) and the failing class and method ids.
const maxCloseArgs = 2 + 1 + 255 + 2 + 2

// CloseFunc receives the reply code and text of a channel.close (channel
// id > 0) or connection.close (id 0) once the frame has been read, before
// amqp091-go handles it. It runs on amqp091-go's reader goroutine and must
// not block.
type CloseFunc func(id uint16, code uint16, text string)

// ConfirmFunc receives a publisher confirm read on channel id: basic.ack
// (ack true) or basic.nack for delivery tag tag, and with multiple every
// earlier tag. It runs on amqp091-go's reader goroutine, before amqp091-go
// has parsed the frames read with it, and must not block. Returning false
// drops the frame: amqp091-go never sees it (warren publishes without
// amqp091-go, which keeps no record of the publish a confirm answers).
type ConfirmFunc func(id uint16, tag uint64, multiple, ack bool) bool

// ReturnFunc is told that a basic.return has been read on channel id,
// before amqp091-go delivers the returned message. It runs on amqp091-go's
// reader goroutine and must not block.
type ReturnFunc func(id uint16)

// FlowFunc receives a channel.flow read on channel id (active false: stop
// publishing). It runs on amqp091-go's reader goroutine and must not block.
type FlowFunc func(id uint16, active bool)

// confirmArgsLen is the arguments of basic.ack and basic.nack: delivery tag
// and one octet of bits (multiple, and requeue for nack).
const confirmArgsLen = 8 + 1

// holdMax is the most of a frame start Read keeps back: a method frame's
// header and id, and for a confirm its arguments (which decide whether the
// frame is passed on).
const holdMax = frameStartLen + confirmArgsLen

type bits [65536 / 64]atomic.Uint64

func (b *bits) get(ch uint16) bool { return b[ch/64].Load()&(1<<(ch%64)) != 0 }

func (b *bits) set(ch uint16, on bool) {
	if on {
		b[ch/64].Or(1 << (ch % 64))
	} else {
		b[ch/64].And(^uint64(1 << (ch % 64)))
	}
}

// Conn is a net.Conn that keeps amqp091-go within the channel rules above.
// Read must be called from one goroutine at a time (amqp091-go's reader);
// Write may be called concurrently with Read.
type Conn struct {
	net.Conn

	open      bits // the broker considers the channel open: opened, not yet closed by a close-ok either way
	awaiting  bits // the broker sent channel.close and our close-ok has not gone out
	closeSent bits // we sent channel.close since the channel was opened and no close-ok answered it

	onClose   CloseFunc
	onConfirm ConfirmFunc
	onReturn  ReturnFunc
	onFlow    FlowFunc
	onDropped ReturnFunc // a returned message whose content amqp091-go will drop
	onFlowOK  func(id uint16)

	// Trace, if set before the connection is used, sees every method
	// frame: "in", "out", "drop" (outbound left out) or "drop-in" (a stray
	// inbound close-ok). For tests and debugging.
	Trace func(dir string, ch, class, method uint16)

	droppedOut atomic.Uint64
	droppedIn  atomic.Uint64

	// inbound state, touched only inside Read
	inHeld     []byte // an incomplete frame start kept back from amqp091-go (in inBuf)
	inBuf      [holdMax]byte
	inReady    []byte        // walked bytes not yet handed on (tiny reads only)
	inErr      error         // a read error to report after inReady
	inRem      int           // bytes of the current inbound frame still to pass or drop
	inLen      int           // all bytes of the current inbound frame, header to frame end
	args       argWalker     // the current inbound method frame's arguments
	inDrop     bool          // the current inbound frame is dropped
	inCh       uint16        // channel of the current inbound frame
	taken      uint64        // frames a hook took from amqp091-go (confirms)
	handed     uint64        // Reads that handed amqp091-go something
	handedSeen uint64        // handed when quiet last looked
	quietSince time.Time     // when quiet first saw handed unchanged
	capture    []byte        // a close, flow or returned-content header frame being collected, or nil
	capKind    int           // what the frame being captured is: capClose, capFlow or capHeader
	ackBuf     [holdMax]byte // small captures without allocating
	// retContent follows the content of returned messages by channel: -1
	// while the content header is awaited, else the body bytes to come.
	retContent map[uint16]int64
	closeOK    bool // the current inbound frame is a close-ok that is passed on
	broken     bool // the stream is not valid framing: Read fails with ErrMalformed

	// outbound state, guarded by wmu
	wmu      sync.Mutex
	preamble int           // protocol header bytes still to pass unexamined
	held     []byte        // an incomplete frame start kept back from the last Write
	wrem     int           // bytes of the current outbound frame still to pass or drop
	wdrop    bool          // the current outbound frame is dropped
	written  atomic.Uint64 // bytes handed to the socket, for progress checks
	flowOKs  []uint16      // channels whose flow-ok the current Write carries
	corks    int           // Cork calls not yet matched by Uncork
	corked   []byte        // bytes held back while corked
	wcond    sync.Cond     // WriteContent waits on it (L is &wmu) for a frame boundary
	waiters  int           // WriteContent calls waiting on wcond
	wfail    error         // set once a write failed or the stream was given up
	scratch  []byte        // WriteContent's buffer between writes
	vectored bool          // the socket takes a vector of buffers in one system call (see writeLarge)
	opens    []uint32      // channel.opens written per channel id (see OpenGen), grown as ids appear
}

// maxCorked bounds the bytes held back while corked; beyond it writes go
// through, so a long burst costs no more memory than this.
const maxCorked = 256 << 10

// Cork holds back what is written until the matching Uncork, which writes
// it with one system call: a burst of publishes costs one write instead of
// one each. Writes never wait while corked (up to maxCorked). The caller
// must not wait for a reply while corked: its request would not be sent.
func (c *Conn) Cork() {
	c.wmu.Lock()
	c.corks++
	c.wmu.Unlock()
}

// Uncork ends a Cork; the last one writes what was held back.
func (c *Conn) Uncork() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.corks--
	if c.corks > 0 || len(c.corked) == 0 {
		return nil
	}
	n, err := c.Conn.Write(c.corked)
	c.written.Add(uint64(n))
	c.corked = c.corked[:0]
	if err != nil {
		c.failWriter()
	}
	return err
}

// Written returns how many bytes have been handed to the socket; a write
// that makes no progress leaves it unchanged.
func (c *Conn) Written() uint64 { return c.written.Load() }

// emit writes b, or holds it back while corked. wmu is held.
func (c *Conn) emit(b []byte) error {
	if c.corks > 0 && len(c.corked)+len(b) <= maxCorked {
		c.corked = append(c.corked, b...)
		return nil
	}
	if len(c.corked) > 0 {
		b = append(c.corked, b...)
		c.corked = c.corked[:0]
	}
	n, err := c.Conn.Write(b)
	c.written.Add(uint64(n))
	return err
}

// ErrMalformed is returned by Read once the broker's bytes are not AMQP
// framing: a frame whose end octet is not 0xCE, or a method frame whose
// arguments do not end where its size field says.
var ErrMalformed = errors.New("malformed AMQP frame from the broker")

// New wraps c. onClose, if not nil, is told about every inbound
// channel.close and connection.close.
func New(c net.Conn, onClose CloseFunc) *Conn {
	w := &Conn{Conn: c, preamble: protocolHeaderLen, onClose: onClose}
	w.wcond.L = &w.wmu
	// net.Buffers writes a vector in one system call on these; on others
	// (TLS) it writes piece by piece.
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
		w.vectored = true
	}
	return w
}

// Close closes the underlying connection and ends every WriteContent
// waiting for a frame boundary.
func (c *Conn) Close() error {
	err := c.Conn.Close() // first: a Write stuck on the socket lets go of wmu
	c.wmu.Lock()
	if c.wfail == nil {
		c.wfail = ErrWriterFailed
	}
	c.wcond.Broadcast()
	c.wmu.Unlock()
	return err
}

const (
	capClose = iota
	capFlow
	capHeader // the content header of a returned message (its body size)
)

// SetFlowHook asks for every channel.flow read to be reported (flow), and
// every channel.flow-ok once it has been written (flowOK): publishing may
// resume only then, or a publish could interleave with amqp091-go's
// flow-ok, which it writes without the channel's lock. It must be called
// before the connection is used.
func (c *Conn) SetFlowHook(flow FlowFunc, flowOK func(id uint16)) {
	c.onFlow, c.onFlowOK = flow, flowOK
}

// SetConfirmHooks asks for publisher confirms and returns to be reported:
// ret when a basic.return is read, dropped when its content is then cut
// short by another method on its channel (amqp091-go drops such a return
// instead of delivering it). It must be called before the connection is
// used.
func (c *Conn) SetConfirmHooks(confirm ConfirmFunc, ret, dropped ReturnFunc) {
	c.onConfirm, c.onReturn, c.onDropped = confirm, ret, dropped
}

// followReturn tracks the content of a returned message on the frame that
// starts at f: its header and body complete it; a method cuts it short.
func (c *Conn) followReturn(f []byte) {
	want, ok := c.retContent[c.inCh]
	if !ok {
		return
	}
	switch {
	case f[0] == frameHeader && want == -1:
		c.capture = c.ackBuf[:0]
		c.capKind = capHeader
	case f[0] == frameBody && want > 0:
		if want -= int64(binary.BigEndian.Uint32(f[3:7])); want > 0 {
			c.retContent[c.inCh] = want
		} else {
			delete(c.retContent, c.inCh)
		}
	case f[0] == frameMethod:
		delete(c.retContent, c.inCh)
		if c.onDropped != nil {
			c.onDropped(c.inCh)
		}
	}
}

// Dropped returns how many outbound frames Conn left out because their
// channel was closed or closing.
func (c *Conn) Dropped() uint64 { return c.droppedOut.Load() }

// DroppedInbound returns how many stray inbound channel.close-ok frames
// Conn kept from amqp091-go.
func (c *Conn) DroppedInbound() uint64 { return c.droppedIn.Load() }

// Read reads from the underlying connection and hands on everything but
// stray close-oks. A frame start too short to judge is kept back until the
// rest arrives; amqp091-go needs the whole frame anyway.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.inReady) > 0 {
		n := copy(p, c.inReady)
		c.inReady = c.inReady[n:]
		return n, nil
	}
	if len(p) < 2*holdMax {
		// Too small to hold a kept-back frame start and progress:
		// go through a buffer of our own (bufio never reads this small).
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		k := copy(p, buf[:n])
		c.inReady = buf[k:n]
		if len(c.inReady) > 0 && err != nil {
			c.inErr = err
			err = nil
		}
		return k, err
	}
	if c.inErr != nil {
		return 0, c.inErr
	}
	for {
		n := copy(p, c.inHeld)
		c.inHeld = nil
		m, err := c.Conn.Read(p[n:])
		n += m
		taken := c.taken
		if n > 0 {
			n = c.walkIn(p[:n])
		}
		if n == 0 && c.inErr != nil {
			return 0, c.inErr
		}
		if n > 0 || err != nil {
			c.handed++
			return n, err
		}
		if c.taken != taken && (c.inRem == 0 || c.inDrop) && c.quiet() {
			// All this read held was frames a hook took (confirms), and
			// amqp091-go has been handed nothing for beatEvery.
			// amqp091-go renews its read deadline (three heartbeat
			// intervals, at least 3 s) only when it reads a frame, and
			// the broker sends no heartbeat while it sends confirms: a
			// stream of nothing but confirms would time the connection
			// out. It gets a heartbeat instead, between two of its
			// frames.
			c.handed++
			return copy(p, heartbeatFrame[:]), nil
		}
	}
}

// beatEvery is how long amqp091-go may be handed nothing while confirms are
// read before it is handed a heartbeat. The longest it goes without a frame
// is then beatEvery plus one heartbeat interval of the broker's (the gap
// before the confirms began), under its read deadline of three intervals.
const beatEvery = 500 * time.Millisecond

// quiet reports, for a read that handed amqp091-go nothing, whether it has
// been handed nothing for beatEvery (counted from the first such read after
// one that handed something, or from the last heartbeat given it).
func (c *Conn) quiet() bool {
	now := time.Now()
	if c.handed != c.handedSeen {
		c.handedSeen = c.handed
		c.quietSince = now
		return false
	}
	if now.Sub(c.quietSince) < beatEvery {
		return false
	}
	c.quietSince = now
	return true
}

// heartbeatFrame is a heartbeat frame, which amqp091-go reads and ignores.
var heartbeatFrame = [...]byte{frameHeartbeat, 0, 0, 0, 0, 0, 0, frameEnd}

// walkIn walks the frames in b, compacts out dropped frames, keeps back an
// incomplete frame start, and returns how many bytes of b to hand on.
//
// A frame that lies whole in b is judged at once: content headers and
// bodies (and heartbeats) are skipped by their size, only their frame-end
// octet looked at, unless the content of a returned message is being
// followed; a method frame's arguments are walked in one pass. Bytes move
// only once something before them has been dropped. A frame split across
// reads is walked chunk by chunk (inRem).
func (c *Conn) walkIn(b []byte) int {
	out := 0 // b[:out] is what amqp091-go gets
	i := 0
	for i < len(b) {
		if c.inRem > 0 {
			k := min(c.inRem, len(b)-i)
			if c.args.on && !c.argsFit(b[i:i+k]) || c.inRem == k && b[i+k-1] != frameEnd {
				// Not AMQP framing. amqp091-go does not read a method
				// frame's size, so it may parse these bytes as some
				// other, valid-looking frame that Conn never judged (a
				// confirm with a huge tag, say): the frame is withheld
				// and the connection fails instead.
				return c.malformed(out)
			}
			if c.capture != nil {
				c.capture = append(c.capture, b[i:i+min(k, cap(c.capture)-len(c.capture))]...)
			}
			if !c.inDrop {
				if out != i {
					copy(b[out:], b[i:i+k])
				}
				out += k
			}
			i += k
			c.inRem -= k
			if c.inRem == 0 {
				c.frameDoneIn()
			}
			continue
		}
		rest := b[i:]
		if len(rest) < frameHeaderLen {
			c.inHeld = c.inBuf[:copy(c.inBuf[:], rest)] // len(rest) < holdMax
			return out
		}
		size := uint64(binary.BigEndian.Uint32(rest[3:7]))
		if rest[0] != frameMethod {
			if len(c.retContent) == 0 && size+frameHeaderLen+1 <= uint64(len(rest)) {
				// Content (or a heartbeat), whole, of no returned message:
				// skipped by length.
				whole := frameHeaderLen + int(size) + 1
				if rest[whole-1] != frameEnd {
					return c.malformed(out)
				}
				if out != i {
					copy(b[out:], rest[:whole])
				}
				out += whole
				i += whole
				continue
			}
		} else {
			if size < methodIDLen {
				return c.malformed(out) // amqp091-go would read the id from the next frame
			}
			if c.needMore(rest) {
				c.inHeld = c.inBuf[:copy(c.inBuf[:], rest)] // len(rest) < holdMax
				return out
			}
		}
		c.startIn(rest)
		if whole := c.inRem; whole <= len(rest) {
			// The whole frame is here: judged in one step.
			if c.args.on && !c.args.fitWhole(rest[frameStartLen:whole-1]) || rest[whole-1] != frameEnd {
				return c.malformed(out) // see above
			}
			if c.capture != nil {
				c.capture = append(c.capture, rest[:min(whole, cap(c.capture)-len(c.capture))]...)
			}
			if !c.inDrop {
				if out != i {
					copy(b[out:], rest[:whole])
				}
				out += whole
			}
			i += whole
			c.inRem = 0
			c.frameDoneIn()
		}
	}
	return out
}

// malformed fails the inbound stream: Read hands on out bytes, then fails
// with ErrMalformed.
func (c *Conn) malformed(out int) int {
	c.broken = true
	c.inErr = ErrMalformed
	return out
}

// argsFit walks chunk, the next bytes of the current inbound frame, through
// the method's arguments and reports whether they still agree with the
// frame's size: no byte after the arguments and before the frame end, and
// no frame end before the arguments are complete. Only method frames of
// methods amqp091-go knows are walked (c.args.on; the caller checks).
func (c *Conn) argsFit(chunk []byte) bool {
	off := c.inLen - c.inRem // frame offset of chunk[0]
	lo := max(off, frameStartLen) - off
	hi := min(off+len(chunk), c.inLen-1) - off // the frame-end octet is no argument
	if lo < hi && (c.args.done() || c.args.feed(chunk[lo:hi]) < hi-lo) {
		return false // bytes the arguments do not account for
	}
	return off+len(chunk) < c.inLen || c.args.done()
}

// needMore reports whether the frame starting rest (at least a frame
// header) must be kept back until more of it arrives: a method frame's id,
// and a confirm's arguments, are needed before it can be passed on.
func (c *Conn) needMore(rest []byte) bool {
	if rest[0] != frameMethod {
		return false
	}
	size := int(binary.BigEndian.Uint32(rest[3:7]))
	if size < methodIDLen {
		return false
	}
	if len(rest) < frameStartLen {
		return true
	}
	if c.onConfirm == nil || binary.BigEndian.Uint16(rest[7:9]) != classBasic {
		return false
	}
	if m := binary.BigEndian.Uint16(rest[9:11]); m != methodAck && m != methodNack {
		return false
	}
	return len(rest) < min(frameHeaderLen+size, holdMax)
}

// startIn looks at the start of an inbound frame (header, and method id for
// method frames).
func (c *Conn) startIn(f []byte) {
	c.inCh = binary.BigEndian.Uint16(f[1:3])
	c.inRem = frameHeaderLen + int(binary.BigEndian.Uint32(f[3:7])) + 1
	c.inLen = c.inRem
	c.inDrop = false
	c.args.on = false
	c.closeOK = false
	if c.retContent != nil && c.inCh != 0 {
		c.followReturn(f)
	}
	if f[0] != frameMethod || len(f) < frameStartLen || binary.BigEndian.Uint32(f[3:7]) < methodIDLen {
		return
	}
	ch := c.inCh
	class := binary.BigEndian.Uint16(f[7:9])
	method := binary.BigEndian.Uint16(f[9:11])
	c.args.start(uint32(class)<<16 | uint32(method))
	switch {
	case ch != 0 && class == classChannel && method == methodClose:
		c.awaiting.set(ch, true) // amqp091-go will answer it
		// The broker is closing the channel itself: a close of ours that
		// crossed it gets, at most, a stray close-ok, even one that comes
		// before amqp091-go has answered.
		c.closeSent.set(ch, false)
		c.capture = make([]byte, 0, frameStartLen+maxCloseArgs)
		c.capKind = capClose
	case ch != 0 && class == classChannel && method == methodFlow && c.onFlow != nil:
		c.capture = c.ackBuf[:0]
		c.capKind = capFlow
	case ch != 0 && class == classChannel && method == methodCloseO:
		if c.closeSent.get(ch) {
			c.closeOK = true
		} else {
			// No channel.close of ours is waiting for this: it answers a
			// close from before the channel was reopened, or crossed.
			c.inDrop = true
			c.droppedIn.Add(1)
		}
	case ch == 0 && class == classConnection && method == methodConnClose:
		c.capture = make([]byte, 0, frameStartLen+maxCloseArgs)
		c.capKind = capClose
	case ch != 0 && class == classBasic && (method == methodAck || method == methodNack) && c.onConfirm != nil:
		// needMore kept the frame back until its arguments were here. A
		// confirm of any other size is malformed (argsFit fails the
		// connection): it is never acted on.
		if len(f) >= holdMax && binary.BigEndian.Uint32(f[3:7]) == methodIDLen+confirmArgsLen {
			tag := binary.BigEndian.Uint64(f[frameStartLen : frameStartLen+8])
			if !c.onConfirm(ch, tag, f[frameStartLen+8]&1 != 0, method == methodAck) {
				c.inDrop = true // taken by the hook: not a stray, not counted
				c.taken++
			}
		}
	case ch != 0 && class == classBasic && method == methodReturn && c.onReturn != nil:
		if c.retContent == nil {
			c.retContent = make(map[uint16]int64)
		}
		c.retContent[ch] = -1 // its content header comes next
		c.onReturn(ch)
	}
	if c.Trace != nil {
		dir := "in"
		if c.inDrop {
			dir = "drop-in"
		}
		c.Trace(dir, ch, class, method)
	}
}

// frameDoneIn runs once the last byte of an inbound frame has been read.
func (c *Conn) frameDoneIn() {
	if c.capture != nil {
		switch c.capKind {
		case capHeader:
			if args := c.capture[min(len(c.capture), frameHeaderLen):]; len(args) >= 12 {
				if size := int64(binary.BigEndian.Uint64(args[4:12])); size > 0 {
					c.retContent[c.inCh] = size
				} else {
					delete(c.retContent, c.inCh) // complete: amqp091-go delivers it
				}
			}
		case capFlow:
			if args := c.capture[min(len(c.capture), frameStartLen):]; len(args) >= 1 {
				c.onFlow(c.inCh, args[0]&1 != 0)
			}
		default:
			c.closeArgs(c.inCh, c.capture)
		}
		c.capture = nil
	}
	if c.closeOK {
		c.closeOK = false
		c.closeSent.set(c.inCh, false)
		c.open.set(c.inCh, false)
	}
}

// closeArgs decodes reply-code and reply-text of a close method from the
// captured frame bytes.
func (c *Conn) closeArgs(ch uint16, frame []byte) {
	args := frame[min(len(frame), frameStartLen):]
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
		if len(rest) < frameHeaderLen || (rest[0] == frameMethod && len(rest) < frameStartLen &&
			binary.BigEndian.Uint32(rest[3:7]) >= methodIDLen) {
			// An incomplete frame start: keep it back until the next
			// Write completes it (amqp091-go always finishes a frame).
			c.held = append([]byte(nil), rest...)
			cut(i, len(buf))
			break
		}
		c.wrem = frameHeaderLen + int(binary.BigEndian.Uint32(rest[3:7])) + 1
		c.wdrop = !c.passOut(rest)
		if !c.wdrop && c.onFlowOK != nil && rest[0] == frameMethod && len(rest) >= frameStartLen &&
			binary.BigEndian.Uint16(rest[7:9]) == classChannel && binary.BigEndian.Uint16(rest[9:11]) == methodFlowOK {
			c.flowOKs = append(c.flowOKs, binary.BigEndian.Uint16(rest[1:3]))
		}
		if c.wdrop {
			c.droppedOut.Add(1)
		}
		if c.Trace != nil && rest[0] == frameMethod && binary.BigEndian.Uint32(rest[3:7]) >= methodIDLen {
			dir := "out"
			if c.wdrop {
				dir = "drop"
			}
			c.Trace(dir, binary.BigEndian.Uint16(rest[1:3]), binary.BigEndian.Uint16(rest[7:9]), binary.BigEndian.Uint16(rest[9:11]))
		}
	}
	if out == nil {
		out = buf
	} else {
		out = append(out, buf[from:]...)
	}
	if len(out) > 0 {
		if err := c.emit(out); err != nil {
			c.flowOKs = c.flowOKs[:0]
			c.failWriter()
			return 0, err
		}
	}
	c.frameBoundary()
	for _, ch := range c.flowOKs {
		c.onFlowOK(ch) // written (or held in a cork that goes out before any later write)
	}
	c.flowOKs = c.flowOKs[:0]
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
	if f[0] == frameMethod && binary.BigEndian.Uint32(f[3:7]) >= methodIDLen {
		class = binary.BigEndian.Uint16(f[7:9])
		method = binary.BigEndian.Uint16(f[9:11])
	}
	isChannel := class == classChannel
	if isChannel && method == methodCloseO && c.awaiting.get(ch) {
		// The answer to the broker's channel.close always goes out, even
		// when our own close crossed it and its close-ok came first. From
		// here on amqp091-go has finished with the channel: a close-ok
		// that still arrives for a close of ours that crossed is a stray.
		// (amqp091-go writes this before it releases the id, so the id
		// cannot have been reused yet.)
		c.awaiting.set(ch, false)
		c.open.set(ch, false)
		c.closeSent.set(ch, false)
		return true
	}
	if isChannel && method == methodOpen {
		c.countOpen(ch) // even on an id still open: a new opening either way
	}
	if !c.open.get(ch) {
		if isChannel && method == methodOpen {
			c.open.set(ch, true)
			c.closeSent.set(ch, false)
			return true
		}
		return false
	}
	if isChannel {
		switch method {
		case methodClose:
			if c.awaiting.get(ch) {
				// The broker's channel.close has been read and amqp091-go
				// is about to answer it; ours would cross it for nothing.
				return false
			}
			c.closeSent.set(ch, true)
		case methodCloseO:
			c.open.set(ch, false)
		}
	}
	return true
}

package wire

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
)

// ErrChannelClosed is returned by WriteContent when the channel is not open
// on the wire: never opened, closed, or closing (a channel.close has been
// sent or read for it). Nothing was written.
var ErrChannelClosed = errors.New("wire: the channel is closed or closing")

// ErrWriterFailed is returned by WriteContent once a write on the
// connection has failed or the connection has been closed: the stream may
// end inside a frame, so nothing more can be written.
var ErrWriterFailed = errors.New("wire: the connection's writer has failed")

// copyMax is the largest body WriteContent copies into its own buffer, to
// hand the socket one contiguous write. A larger one is written from the
// caller's slice (one writev on a TCP connection).
const copyMax = 64 << 10

// WriteContent writes a content-carrying method on channel ch: head, whole
// frames encoded by the caller (the method frame, then the content header
// frame), and body, split into body frames of at most maxBody bytes
// (maxBody <= 0: one frame). All the frames go out together, after any
// frame another writer (amqp091-go) has partly written, so nothing comes
// between them: not another channel's frame, not a frame of this channel
// written without its lock. Corked, they join the bytes held back.
//
// The frames are not walked: the caller vouches for head, and the channel
// state rules of the package doc are applied here instead. If ch is not
// open, or a channel.close has been sent or read for it, or gen (if not 0)
// is not the OpenGen of the opening the caller means (the id has been
// closed and opened again since), nothing is written and WriteContent
// returns ErrChannelClosed. A failed write closes the
// underlying connection (a partly written frame cannot be taken back, and
// amqp091-go's reader must see the end) and is returned; every later call
// returns ErrWriterFailed.
//
// head is not retained.
func (c *Conn) WriteContent(ch uint16, gen uint32, head, body []byte, maxBody int) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for c.midFrame() && c.wfail == nil {
		c.waiters++
		c.wcond.Wait()
		c.waiters--
	}
	if c.wfail != nil {
		return ErrWriterFailed
	}
	if ch == 0 || !c.open.get(ch) || c.awaiting.get(ch) || c.closeSent.get(ch) ||
		gen != 0 && (int(ch) >= len(c.opens) || c.opens[ch] != gen) {
		return ErrChannelClosed
	}
	if c.Trace != nil && len(head) >= frameStartLen {
		c.Trace("out", ch, binary.BigEndian.Uint16(head[7:9]), binary.BigEndian.Uint16(head[9:11]))
	}
	if maxBody <= 0 {
		maxBody = max(len(body), 1)
	}
	frames := (len(body) + maxBody - 1) / maxBody
	size := len(head) + len(body) + (frameHeaderLen+1)*frames
	var err error
	switch {
	case c.corks > 0 && len(c.corked)+size <= maxCorked:
		c.corked = appendContent(c.corked, ch, head, body, maxBody)
		return nil
	case len(body) <= copyMax:
		// Bytes held back go first, in the same write.
		b := c.corked
		if len(b) == 0 {
			b = c.scratch[:0]
		}
		b = appendContent(b, ch, head, body, maxBody)
		var n int
		n, err = c.Conn.Write(b)
		c.written.Add(uint64(n))
		if len(c.corked) > 0 {
			c.corked = b[:0]
		} else if cap(b) <= 2*copyMax {
			c.scratch = b[:0] // kept for the next write; a rare big one is let go
		}
	case !c.vectored:
		err = c.writeFramed(ch, head, body, maxBody)
	default:
		err = c.writeLarge(ch, head, body, maxBody, frames)
	}
	if err != nil {
		c.failWriter()
	}
	return err
}

// OpenGen returns how many channel.open frames have been written for
// channel id: taken right after an open, it names that opening, for
// WriteContent to tell it from a later one on the same id.
func (c *Conn) OpenGen(id uint16) uint32 {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if int(id) < len(c.opens) {
		return c.opens[id]
	}
	return 0
}

// countOpen counts a channel.open written for id. wmu is held.
func (c *Conn) countOpen(id uint16) {
	if int(id) >= len(c.opens) {
		c.opens = append(c.opens, make([]uint32, int(id)+1-len(c.opens))...)
	}
	c.opens[id]++
	if c.opens[id] == 0 {
		c.opens[id] = 1 // 0 means "any opening"
	}
}

// midFrame reports whether the last Write ended inside a frame: its rest is
// still to come from the same writer. wmu is held.
func (c *Conn) midFrame() bool { return c.wrem > 0 || len(c.held) > 0 || c.preamble > 0 }

// frameBoundary wakes WriteContent callers waiting for a frame boundary.
// wmu is held.
func (c *Conn) frameBoundary() {
	if c.waiters > 0 && !c.midFrame() {
		c.wcond.Broadcast()
	}
}

// failWriter records that the stream can take no more: it closes the
// socket and wakes every waiting WriteContent. wmu is held.
func (c *Conn) failWriter() {
	if c.wfail == nil {
		c.wfail = ErrWriterFailed
		_ = c.Conn.Close()
	}
	c.wcond.Broadcast()
}

// appendFrameHeader appends the header of a frame of type typ on channel
// ch with a payload of size bytes.
func appendFrameHeader(b []byte, typ byte, ch uint16, size int) []byte {
	return append(b, typ, byte(ch>>8), byte(ch), byte(size>>24), byte(size>>16), byte(size>>8), byte(size))
}

// appendContent appends head and body, as body frames of at most maxBody
// bytes, to b.
func appendContent(b []byte, ch uint16, head, body []byte, maxBody int) []byte {
	b = append(b, head...)
	for i := 0; i < len(body); i += maxBody {
		chunk := body[i:min(i+maxBody, len(body))]
		b = appendFrameHeader(b, frameBody, ch, len(chunk))
		b = append(b, chunk...)
		b = append(b, frameEnd)
	}
	return b
}

// iovec is a write vector kept for writeLarge: keep holds the backing
// array, w is what net.Buffers.WriteTo consumes.
type iovec struct{ keep, w net.Buffers }

var iovPool = sync.Pool{New: func() any { return new(iovec) }}

// writeFramed writes head and a large body in writes of about copyMax
// bytes, each a run of whole frames copied into the scratch buffer: for a
// connection that cannot take a vector of buffers in one system call (TLS),
// where writeLarge's vector would cost a write, and a TLS record, per
// piece. wmu is held.
func (c *Conn) writeFramed(ch uint16, head, body []byte, maxBody int) error {
	b := append(c.scratch[:0], c.corked...)
	b = append(b, head...)
	c.corked = c.corked[:0]
	write := func(p []byte) error {
		n, err := c.Conn.Write(p)
		c.written.Add(uint64(n))
		return err
	}
	for i := 0; i < len(body); i += maxBody {
		chunk := body[i:min(i+maxBody, len(body))]
		b = appendFrameHeader(b, frameBody, ch, len(chunk))
		if len(chunk) > copyMax {
			// A frame too big to copy goes from body itself.
			if err := write(b); err != nil {
				return err
			}
			if err := write(chunk); err != nil {
				return err
			}
			b = b[:0]
		} else {
			b = append(b, chunk...)
		}
		b = append(b, frameEnd)
		if len(b) >= copyMax {
			if err := write(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	if len(b) > 0 {
		if err := write(b); err != nil {
			return err
		}
	}
	if cap(b) <= 4*copyMax {
		c.scratch = b[:0]
	}
	return nil
}

// writeLarge writes head and a large body without copying the body: the
// held-back bytes, head, and every frame header and end go from the
// scratch buffer, the body chunks from body itself (one writev on a TCP
// connection). wmu is held. The scratch buffer is sized before anything
// is put in it, so the pieces sliced from it stay valid; the vector is
// pooled between calls (without its references to body): no allocation
// once both have grown.
func (c *Conn) writeLarge(ch uint16, head, body []byte, maxBody, frames int) error {
	need := len(c.corked) + len(head) + (frameHeaderLen+1)*frames
	b := c.scratch[:0]
	if cap(b) < need {
		b = make([]byte, 0, need)
	}
	b = append(b, c.corked...)
	b = append(b, head...)
	v := iovPool.Get().(*iovec)
	iov := v.keep[:0]
	from := 0
	for i := 0; i < len(body); i += maxBody {
		if i > 0 {
			b = append(b, frameEnd)
		}
		b = appendFrameHeader(b, frameBody, ch, min(maxBody, len(body)-i))
		iov = append(iov, b[from:len(b):len(b)], body[i:min(i+maxBody, len(body))])
		from = len(b)
	}
	b = append(b, frameEnd)
	iov = append(iov, b[from:])
	c.corked = c.corked[:0]
	v.w = iov // WriteTo consumes v.w; iov keeps the vector
	n, err := v.w.WriteTo(c.Conn)
	c.written.Add(uint64(n))
	clear(iov) // body is not retained
	v.keep, v.w = iov[:0], nil
	iovPool.Put(v)
	if cap(b) <= 2*copyMax {
		c.scratch = b[:0]
	}
	return err
}

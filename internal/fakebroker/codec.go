package fakebroker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"time"
)

// Frame types and the frame-end octet (AMQP 0-9-1 section 4.2.3).
const (
	FrameMethod    byte = 1
	FrameHeader    byte = 2
	FrameBody      byte = 3
	FrameHeartbeat byte = 8
	FrameEnd       byte = 0xCE
)

// ProtocolHeader is what an AMQP 0-9-1 client sends first.
const ProtocolHeader = "AMQP\x00\x00\x09\x01"

// Frame is one AMQP frame: type, channel and payload. Encode adds the size
// and the frame-end octet.
type Frame struct {
	Type    byte
	Channel uint16
	Payload []byte
}

// Encode returns the frame's wire form.
func (f Frame) Encode() []byte {
	b := make([]byte, 0, 8+len(f.Payload))
	b = append(b, f.Type)
	b = binary.BigEndian.AppendUint16(b, f.Channel)
	b = binary.BigEndian.AppendUint32(b, uint32(len(f.Payload)))
	b = append(b, f.Payload...)
	return append(b, FrameEnd)
}

// ErrFrameEnd is returned by ReadFrame when a frame does not end in 0xCE.
var ErrFrameEnd = errors.New("fakebroker: bad frame-end octet")

// ReadFrame reads one frame whose payload is at most max bytes.
func ReadFrame(r io.Reader, max uint32) (Frame, error) {
	var h [7]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	f := Frame{Type: h[0], Channel: binary.BigEndian.Uint16(h[1:3])}
	size := binary.BigEndian.Uint32(h[3:7])
	if size > max {
		return Frame{}, fmt.Errorf("fakebroker: frame of %d bytes exceeds %d", size, max)
	}
	f.Payload = make([]byte, size+1)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return Frame{}, err
	}
	if f.Payload[size] != FrameEnd {
		return Frame{}, ErrFrameEnd
	}
	f.Payload = f.Payload[:size]
	return f, nil
}

// MethodID names a method by class and method id: class<<16 | method.
type MethodID uint32

// ID returns the MethodID of class and method.
func ID(class, method uint16) MethodID { return MethodID(uint32(class)<<16 | uint32(method)) }

// Class returns the class id.
func (m MethodID) Class() uint16 { return uint16(m >> 16) }

// Method returns the method id within the class.
func (m MethodID) Method() uint16 { return uint16(m) }

// The methods the fake broker knows by name.
const (
	ConnectionStart     = MethodID(10<<16 | 10)
	ConnectionStartOK   = MethodID(10<<16 | 11)
	ConnectionTune      = MethodID(10<<16 | 30)
	ConnectionTuneOK    = MethodID(10<<16 | 31)
	ConnectionOpen      = MethodID(10<<16 | 40)
	ConnectionOpenOK    = MethodID(10<<16 | 41)
	ConnectionClose     = MethodID(10<<16 | 50)
	ConnectionCloseOK   = MethodID(10<<16 | 51)
	ConnectionBlocked   = MethodID(10<<16 | 60)
	ConnectionUnblocked = MethodID(10<<16 | 61)
	ChannelOpen         = MethodID(20<<16 | 10)
	ChannelOpenOK       = MethodID(20<<16 | 11)
	ChannelFlow         = MethodID(20<<16 | 20)
	ChannelFlowOK       = MethodID(20<<16 | 21)
	ChannelClose        = MethodID(20<<16 | 40)
	ChannelCloseOK      = MethodID(20<<16 | 41)
	QueueDeclare        = MethodID(50<<16 | 10)
	QueueDeclareOK      = MethodID(50<<16 | 11)
	BasicQos            = MethodID(60<<16 | 10)
	BasicQosOK          = MethodID(60<<16 | 11)
	BasicPublish        = MethodID(60<<16 | 40)
	BasicReturn         = MethodID(60<<16 | 50)
	BasicDeliver        = MethodID(60<<16 | 60)
	BasicAck            = MethodID(60<<16 | 80)
	BasicNack           = MethodID(60<<16 | 120)
	ConfirmSelect       = MethodID(85<<16 | 10)
	ConfirmSelectOK     = MethodID(85<<16 | 11)
	TxSelect            = MethodID(90<<16 | 10)
	TxSelectOK          = MethodID(90<<16 | 11)
	TxCommit            = MethodID(90<<16 | 20)
	TxCommitOK          = MethodID(90<<16 | 21)
	TxRollback          = MethodID(90<<16 | 30)
	TxRollbackOK        = MethodID(90<<16 | 31)
)

var methodNames = map[MethodID]string{
	ConnectionStart: "connection.start", ConnectionStartOK: "connection.start-ok",
	ConnectionTune: "connection.tune", ConnectionTuneOK: "connection.tune-ok",
	ConnectionOpen: "connection.open", ConnectionOpenOK: "connection.open-ok",
	ConnectionClose: "connection.close", ConnectionCloseOK: "connection.close-ok",
	ConnectionBlocked: "connection.blocked", ConnectionUnblocked: "connection.unblocked",
	ChannelOpen: "channel.open", ChannelOpenOK: "channel.open-ok",
	ChannelFlow: "channel.flow", ChannelFlowOK: "channel.flow-ok",
	ChannelClose: "channel.close", ChannelCloseOK: "channel.close-ok",
	QueueDeclare: "queue.declare", QueueDeclareOK: "queue.declare-ok",
	BasicQos: "basic.qos", BasicQosOK: "basic.qos-ok",
	BasicPublish: "basic.publish", BasicReturn: "basic.return", BasicDeliver: "basic.deliver",
	BasicAck: "basic.ack", BasicNack: "basic.nack",
	ConfirmSelect: "confirm.select", ConfirmSelectOK: "confirm.select-ok",
	TxSelect: "tx.select", TxSelectOK: "tx.select-ok",
	TxCommit: "tx.commit", TxCommitOK: "tx.commit-ok",
	TxRollback: "tx.rollback", TxRollbackOK: "tx.rollback-ok",
}

// String returns the method's name, e.g. "channel.close", or its ids.
func (m MethodID) String() string {
	if n, ok := methodNames[m]; ok {
		return n
	}
	return fmt.Sprintf("method %d.%d", m.Class(), m.Method())
}

// hasContent reports whether the method is followed by a content header and
// body (section 2.2.4: the methods of class basic that carry a message).
func (m MethodID) hasContent() bool {
	switch m {
	case BasicPublish, BasicReturn, BasicDeliver, ID(60, 71): // 71: basic.get-ok
		return true
	}
	return false
}

// MethodFrame returns the frame of method id with the encoded arguments.
func MethodFrame(ch uint16, id MethodID, args []byte) Frame {
	p := make([]byte, 4, 4+len(args))
	binary.BigEndian.PutUint16(p[0:2], id.Class())
	binary.BigEndian.PutUint16(p[2:4], id.Method())
	return Frame{Type: FrameMethod, Channel: ch, Payload: append(p, args...)}
}

// HeaderFrame returns a content header frame for a body of bodySize bytes:
// class, weight 0, body size, then props (property flags and properties, as
// Method.Props returns them).
func HeaderFrame(ch uint16, class uint16, bodySize uint64, props []byte) Frame {
	p := binary.BigEndian.AppendUint16(nil, class)
	p = binary.BigEndian.AppendUint16(p, 0)
	p = binary.BigEndian.AppendUint64(p, bodySize)
	if len(props) == 0 {
		props = []byte{0, 0} // no property flags
	}
	return Frame{Type: FrameHeader, Channel: ch, Payload: append(p, props...)}
}

// ---------------------------------------------------------------------------
// Encoding arguments.

// Args builds method arguments in order. The zero value is ready to use.
type Args struct{ b []byte }

// Octet appends one octet.
func (a *Args) Octet(v byte) *Args { a.b = append(a.b, v); return a }

// Short appends a 16-bit integer.
func (a *Args) Short(v uint16) *Args { a.b = binary.BigEndian.AppendUint16(a.b, v); return a }

// Long appends a 32-bit integer.
func (a *Args) Long(v uint32) *Args { a.b = binary.BigEndian.AppendUint32(a.b, v); return a }

// LongLong appends a 64-bit integer.
func (a *Args) LongLong(v uint64) *Args { a.b = binary.BigEndian.AppendUint64(a.b, v); return a }

// ShortStr appends a short string; longer than 255 bytes is truncated.
func (a *Args) ShortStr(s string) *Args {
	s = s[:min(len(s), 255)]
	a.b = append(append(a.b, byte(len(s))), s...)
	return a
}

// LongStr appends a long string.
func (a *Args) LongStr(s string) *Args {
	a.b = append(binary.BigEndian.AppendUint32(a.b, uint32(len(s))), s...)
	return a
}

// Bits appends consecutive bit arguments packed into octets, first bit in
// the lowest position.
func (a *Args) Bits(bits ...bool) *Args {
	for i := 0; i < len(bits); i += 8 {
		var o byte
		for j := i; j < min(i+8, len(bits)); j++ {
			if bits[j] {
				o |= 1 << (j - i)
			}
		}
		a.b = append(a.b, o)
	}
	return a
}

// Table appends a field table. Values may be bool, string, int64, int32,
// []byte or a nested map[string]any; keys are written in sorted order.
func (a *Args) Table(t map[string]any) *Args {
	var body []byte
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		body = append(append(body, byte(len(k))), k...)
		switch v := t[k].(type) {
		case bool:
			o := byte(0)
			if v {
				o = 1
			}
			body = append(body, 't', o)
		case string:
			body = append(binary.BigEndian.AppendUint32(append(body, 'S'), uint32(len(v))), v...)
		case []byte:
			body = append(binary.BigEndian.AppendUint32(append(body, 'x'), uint32(len(v))), v...)
		case int64:
			body = binary.BigEndian.AppendUint64(append(body, 'l'), uint64(v))
		case int32:
			body = binary.BigEndian.AppendUint32(append(body, 'I'), uint32(v))
		case map[string]any:
			body = append(body, 'F')
			body = append(body, (&Args{}).Table(v).b...)
		default:
			panic(fmt.Sprintf("fakebroker: Args.Table: unsupported value %T for %q", v, k))
		}
	}
	a.b = append(binary.BigEndian.AppendUint32(a.b, uint32(len(body))), body...)
	return a
}

// Bytes returns the encoded arguments.
func (a *Args) Bytes() []byte {
	if a == nil {
		return nil
	}
	return a.b
}

// ---------------------------------------------------------------------------
// Decoding arguments.

// ErrShort is returned when arguments end before a field does.
var ErrShort = errors.New("fakebroker: arguments too short")

// ArgReader reads method arguments (or properties) in order. The first
// error sticks: later reads return zero values, and Err reports it.
type ArgReader struct {
	b    []byte
	bits byte // octet of the bits being read
	nbit int  // bits of it already read; 0 or 8: read a new octet
	err  error
}

// NewArgReader reads b.
func NewArgReader(b []byte) *ArgReader { return &ArgReader{b: b} }

// Err returns the first error.
func (r *ArgReader) Err() error { return r.err }

// Rest returns what has not been read.
func (r *ArgReader) Rest() []byte { return r.b }

func (r *ArgReader) take(n int) []byte {
	r.nbit = 0
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.err = ErrShort
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// Octet reads one octet.
func (r *ArgReader) Octet() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

// Short reads a 16-bit integer.
func (r *ArgReader) Short() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

// Long reads a 32-bit integer.
func (r *ArgReader) Long() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

// LongLong reads a 64-bit integer.
func (r *ArgReader) LongLong() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// ShortStr reads a short string.
func (r *ArgReader) ShortStr() string { return string(r.take(int(r.Octet()))) }

// LongStr reads a long string.
func (r *ArgReader) LongStr() string {
	n := r.Long()
	if n > math.MaxInt32 {
		r.err = ErrShort
		return ""
	}
	return string(r.take(int(n)))
}

// Bit reads the next bit argument; consecutive bits share octets.
func (r *ArgReader) Bit() bool {
	if r.nbit == 0 || r.nbit == 8 {
		r.bits = r.Octet()
		r.nbit = 0
	}
	v := r.bits&(1<<r.nbit) != 0
	r.nbit++
	return v
}

// Table reads a field table into a map. Integers keep their wire width
// (int8, uint8, int16, uint16, int32, uint32, int64), as amqp091-go decodes them.
func (r *ArgReader) Table() map[string]any {
	body := NewArgReader(r.take(int(r.Long())))
	t := map[string]any{}
	for r.err == nil && body.err == nil && len(body.b) > 0 {
		k := body.ShortStr()
		t[k] = body.field()
	}
	if r.err == nil {
		r.err = body.err
	}
	return t
}

func (r *ArgReader) field() any {
	switch r.Octet() {
	case 't':
		return r.Octet() != 0
	case 'b':
		return int8(r.Octet())
	case 'B':
		return r.Octet()
	case 's':
		return int16(r.Short())
	case 'u':
		return r.Short()
	case 'I':
		return int32(r.Long())
	case 'i':
		return r.Long()
	case 'l':
		return int64(r.LongLong())
	case 'f':
		return math.Float32frombits(r.Long())
	case 'd':
		return math.Float64frombits(r.LongLong())
	case 'D':
		scale := r.Octet()
		return [2]int64{int64(scale), int64(int32(r.Long()))}
	case 'S':
		return r.LongStr()
	case 'x':
		return []byte(r.LongStr())
	case 'T':
		return time.Unix(int64(r.LongLong()), 0)
	case 'F':
		return r.Table()
	case 'A':
		arr := NewArgReader(r.take(int(r.Long())))
		var out []any
		for arr.err == nil && len(arr.b) > 0 {
			out = append(out, arr.field())
		}
		if r.err == nil {
			r.err = arr.err
		}
		return out
	case 'V':
		return nil
	}
	if r.err == nil {
		r.err = errors.New("fakebroker: unknown field type in table")
	}
	return nil
}

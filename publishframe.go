package warren

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"
	"unicode/utf8"
)

// warren writes basic.publish itself: the method and content header frames
// are encoded here, into a buffer on the publishing goroutine's stack, and
// internal/wire writes them with the body frames in one piece (see
// wire.Conn.WriteContent). The bytes are the ones amqp091-go v1.17 writes
// for the same publish (publishframe_test.go compares them), except that a
// Go int outside int32 goes as an int64 (see checkTable), and a mandatory
// publish carries its stamp (see StampHeader).

// headRoom is the stack buffer a publish's frames are encoded into; a
// larger header (big headers tables) grows it on the heap.
const headRoom = 512

// Frame and method constants of the frames encodePublish writes.
const (
	frameHeaderLen  = 7
	frameMethodType = 1
	frameHeaderType = 2
	frameEndOctet   = 0xCE
	classBasic      = 60
	methodPublish   = 40
)

// Property flags of the content header, in amqp091-go's order.
const (
	flagContentType     = 0x8000
	flagContentEncoding = 0x4000
	flagHeaders         = 0x2000
	flagDeliveryMode    = 0x1000
	flagPriority        = 0x0800
	flagCorrelationID   = 0x0400
	flagReplyTo         = 0x0200
	flagExpiration      = 0x0100
	flagMessageID       = 0x0080
	flagTimestamp       = 0x0040
	flagType            = 0x0020
	flagUserID          = 0x0010
	flagAppID           = 0x0008
)

// encodePublish appends to dst the method frame (basic.publish) and the
// content header frame of m on channel id, and checks m on the way as
// checkPublishing does, with the content header against the connection's
// maxPayload (0: no limit). With stamp (a mandatory publish on a confirm
// channel) the headers carry StampHeader, an int64 whose eight bytes start
// at stampAt, to be filled in with the delivery tag (putStamp).
//
// An invalid m is reported with checkPublishing's error; nothing is
// written anywhere but dst.
func encodePublish(dst []byte, op string, id uint16, m *Message, stamp bool, maxPayload int) (head []byte, stampAt int, err error) {
	p := &m.Publishing
	b := dst
	// The method frame.
	b = append(b, frameMethodType, byte(id>>8), byte(id), 0, 0, 0, 0,
		0, classBasic, 0, methodPublish, 0, 0)
	ok := true
	b, ok = appendShortstr(b, m.Exchange, ok)
	b, ok = appendShortstr(b, m.Key, ok)
	var bits byte
	if m.Mandatory {
		bits = 1
	}
	b = append(b, bits)
	putSize(b[len(dst):], len(b)-len(dst)-7)
	b = append(b, frameEndOctet)

	// The content header frame.
	h := len(b)
	b = append(b, frameHeaderType, byte(id>>8), byte(id), 0, 0, 0, 0,
		0, classBasic, 0, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(len(p.Body)))
	flagsAt := len(b)
	b = append(b, 0, 0)
	var flags uint16
	if p.ContentType != "" {
		flags |= flagContentType
		b, ok = appendShortstr(b, p.ContentType, ok)
	}
	if p.ContentEncoding != "" {
		flags |= flagContentEncoding
		b, ok = appendShortstr(b, p.ContentEncoding, ok)
	}
	stampAt = -1
	noRoom := false // no room for the stamp in the headers table
	if len(p.Headers) > 0 || stamp {
		flags |= flagHeaders
		at := len(b)
		b = append(b, 0, 0, 0, 0)
		if len(p.Headers) > 0 {
			if _, _, ferr := scanTable(p.Headers, 0); ferr != nil {
				ok = false
			} else {
				b = appendEntriesFlat(b, p.Headers, stamp)
			}
			if stamp && len(p.Headers) >= maxTableEntries {
				_, own := p.Headers[StampHeader] // replaced by the stamp
				noRoom = !own
			}
		}
		if stamp {
			b = append(b, byte(len(StampHeader)))
			b = append(b, StampHeader...)
			b = append(b, 'l')
			stampAt = len(b)
			b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
		}
		binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	}
	if p.DeliveryMode > 0 {
		flags |= flagDeliveryMode
		ok = ok && p.DeliveryMode <= Persistent
		b = append(b, p.DeliveryMode)
	}
	if p.Priority > 0 {
		flags |= flagPriority
		b = append(b, p.Priority)
	}
	if p.CorrelationId != "" {
		flags |= flagCorrelationID
		b, ok = appendShortstr(b, p.CorrelationId, ok)
	}
	if p.ReplyTo != "" {
		flags |= flagReplyTo
		b, ok = appendShortstr(b, p.ReplyTo, ok)
	}
	if p.Expiration != "" {
		flags |= flagExpiration
		ok = ok && validExpiration(p.Expiration)
		b, ok = appendShortstr(b, p.Expiration, ok)
	}
	if p.MessageId != "" {
		flags |= flagMessageID
		b, ok = appendShortstr(b, p.MessageId, ok)
	}
	if !p.Timestamp.IsZero() {
		flags |= flagTimestamp
		sec := p.Timestamp.Unix()
		ok = ok && sec >= 0
		b = binary.BigEndian.AppendUint64(b, uint64(sec))
	}
	if p.Type != "" {
		flags |= flagType
		b, ok = appendShortstr(b, p.Type, ok)
	}
	if p.UserId != "" {
		flags |= flagUserID
		b, ok = appendShortstr(b, p.UserId, ok)
	}
	if p.AppId != "" {
		flags |= flagAppID
		b, ok = appendShortstr(b, p.AppId, ok)
	}
	if !ok {
		_, _, err = checkPublishing(op, m.Exchange, m.Key, p)
		if err == nil {
			err = fmt.Errorf("%w: %s: the message cannot be encoded", ErrInvalidArgument, op)
		}
		return dst, -1, err
	}
	if noRoom {
		return dst, -1, fmt.Errorf("%w: %s: headers: %d entries and the stamp of a mandatory publish (%s) make a table of %d; amqp091-go consumers read at most %d and would lose their connection", ErrInvalidArgument, op, len(p.Headers), StampHeader, len(p.Headers)+1, maxTableEntries)
	}
	binary.BigEndian.PutUint16(b[flagsAt:], flags)
	payload := len(b) - h - 7
	if maxPayload > 0 && payload > maxPayload {
		return dst, -1, fmt.Errorf("%w: %s: the content header frame would be %d bytes; the connection's frame_max allows %d (RabbitMQ would close the connection)", ErrInvalidArgument, op, payload, maxPayload)
	}
	putSize(b[h:], payload)
	b = append(b, frameEndOctet)
	if stampAt >= 0 {
		stampAt -= len(dst)
	}
	return b[len(dst):len(b):len(b)], stampAt, nil
}

// putStamp writes tag into an encoded publish's stamp (see encodePublish).
func putStamp(head []byte, stampAt int, tag uint64) {
	binary.BigEndian.PutUint64(head[stampAt:], tag)
}

// putSize writes a frame's payload size into its header, which f starts.
func putSize(f []byte, size int) {
	binary.BigEndian.PutUint32(f[3:7], uint32(size))
}

// appendShortstr appends s as a short string; ok turns false (and stays
// so) if s is not one: over 255 bytes, or not UTF-8.
func appendShortstr(b []byte, s string, ok bool) ([]byte, bool) {
	if len(s) > maxShortstr || !utf8.ValidString(s) {
		return b, false
	}
	b = append(b, byte(len(s)))
	return append(b, s...), ok
}

// tableScratch holds buffers nested tables and arrays are encoded into
// before they are copied into a publish's frames: encoding them recurses,
// and Go's escape analysis moves any buffer handed to a recursive function,
// the publish's stack buffer among them, to the heap. A flat headers table
// (scalars only, the common case) needs none.
var tableScratch = sync.Pool{New: func() any { return new([]byte) }}

// appendEntriesFlat appends the entries of t, a table checked by
// scanTable, without the table's length; with skipStamp, not StampHeader
// (a mandatory publish's stamp takes its place). It does not recurse:
// nested values go by way of appendNestedVia.
func appendEntriesFlat(b []byte, t Table, skipStamp bool) []byte {
	for k, v := range t {
		if skipStamp && k == StampHeader {
			continue
		}
		b = append(b, byte(len(k)))
		b = append(b, k...)
		if nb, ok := appendScalar(b, v); ok {
			b = nb
		} else {
			b = appendNestedVia(b, v)
		}
	}
	return b
}

// appendNestedVia appends v, a table or an array, to b by way of a pooled
// buffer.
func appendNestedVia(b []byte, v any) []byte {
	sp := tableScratch.Get().(*[]byte)
	e := appendField((*sp)[:0], v)
	b = append(b, e...)
	if cap(e) <= 64<<10 {
		*sp = e
		tableScratch.Put(sp)
	}
	return b
}

// appendEntries is appendEntriesFlat for nested tables (it recurses).
func appendEntries(b []byte, t Table) []byte {
	for k, v := range t {
		b = append(b, byte(len(k)))
		b = append(b, k...)
		b = appendField(b, v)
	}
	return b
}

// appendTable appends a field table checked by scanTable.
func appendTable(b []byte, t Table) []byte {
	at := len(b)
	b = appendEntries(append(b, 0, 0, 0, 0), t)
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	return b
}

// appendField appends one field value (type octet and value) as amqp091-go
// writes it, except that an int outside int32 goes as an int64. v has been
// checked by scanField: its type is one appendScalar takes, a Table or an
// []any.
func appendField(b []byte, v any) []byte {
	if nb, ok := appendScalar(b, v); ok {
		return nb
	}
	switch v := v.(type) {
	case Table:
		return appendTable(append(b, 'F'), v)
	case []any:
		b = append(b, 'A', 0, 0, 0, 0)
		at := len(b)
		for _, f := range v {
			b = appendField(b, f)
		}
		binary.BigEndian.PutUint32(b[at-4:], uint32(len(b)-at))
		return b
	}
	panic(fmt.Sprintf("warren: internal error: appendField of an unchecked %T", v))
}

// appendScalar appends v if it is not a table or an array; ok is false
// (and b unchanged) if it is one, or of a type scanField refuses.
func appendScalar(b []byte, v any) (_ []byte, ok bool) {
	switch v := v.(type) {
	case nil:
		return append(b, 'V'), true
	case bool:
		if v {
			return append(b, 't', 1), true
		}
		return append(b, 't', 0), true
	case uint8:
		return append(b, 'B', v), true
	case int8:
		return append(b, 'b', byte(v)), true
	case int16:
		return binary.BigEndian.AppendUint16(append(b, 's'), uint16(v)), true
	case uint16:
		return binary.BigEndian.AppendUint16(append(b, 'u'), v), true
	case int32:
		return binary.BigEndian.AppendUint32(append(b, 'I'), uint32(v)), true
	case uint32:
		return binary.BigEndian.AppendUint32(append(b, 'i'), v), true
	case int:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return binary.BigEndian.AppendUint64(append(b, 'l'), uint64(v)), true
		}
		return binary.BigEndian.AppendUint32(append(b, 'I'), uint32(v)), true
	case int64:
		return binary.BigEndian.AppendUint64(append(b, 'l'), uint64(v)), true
	case float32:
		return binary.BigEndian.AppendUint32(append(b, 'f'), math.Float32bits(v)), true
	case float64:
		return binary.BigEndian.AppendUint64(append(b, 'd'), math.Float64bits(v)), true
	case Decimal:
		return binary.BigEndian.AppendUint32(append(b, 'D', v.Scale), uint32(v.Value)), true
	case string:
		b = binary.BigEndian.AppendUint32(append(b, 'S'), uint32(len(v)))
		return append(b, v...), true
	case []byte:
		b = binary.BigEndian.AppendUint32(append(b, 'x'), uint32(len(v)))
		return append(b, v...), true
	case time.Time:
		return binary.BigEndian.AppendUint64(append(b, 'T'), uint64(v.Unix())), true
	}
	return b, false
}

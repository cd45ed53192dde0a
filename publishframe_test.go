package warren

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	fb "github.com/warrenmq/warren/internal/fakebroker"
	"github.com/warrenmq/warren/internal/wire"
)

// The bytes warren writes for a publish (encodePublish, then
// wire.Conn.WriteContent) are compared here with the bytes amqp091-go v1.17
// writes for the same Channel.Publish, captured from a real amqp091-go
// Connection talking to a scripted server over a net.Pipe. Tables with more
// than one key are encoded in Go's random map order by both, so they are
// compared decoded; everything else byte for byte.

// encodeChannel is the channel the publishes are written on: amqp091-go's
// first channel.
const encodeChannel = 1

// encodeStampTag is the delivery tag put into a mandatory publish's stamp.
const encodeStampTag = 0x0102030405060708

// captureConn is a net.Conn that keeps what is written to it.
type captureConn struct {
	net.Conn
	mu  sync.Mutex
	out []byte
}

func (c *captureConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.out = append(c.out, p...)
	c.mu.Unlock()
	return len(p), nil
}

func (c *captureConn) Close() error { return nil }

func (c *captureConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.out
	c.out = nil
	return out
}

// chanOpenFrame is channel.open on channel ch.
func chanOpenFrame(ch uint16) []byte {
	return fb.MethodFrame(ch, fb.ChannelOpen, []byte{0}).Encode()
}

// maxPayloadOf is the largest frame payload of frame_max frameMax (0: no
// limit), as session.maxPayload computes it.
func maxPayloadOf(frameMax int) int {
	if frameMax <= 0 {
		return 0
	}
	return frameMax - frameOverhead
}

// warrenPublish encodes m as warren does and writes it with WriteContent on
// an open channel of a wire.Conn over a captureConn; it returns the bytes
// written (a mandatory publish's stamp filled in with encodeStampTag), or
// encodePublish's error.
func warrenPublish(t testing.TB, frameMax int, m *Message, stamp bool) ([]byte, error) {
	t.Helper()
	var buf [headRoom]byte
	head, stampAt, err := encodePublish(buf[:0], "basic.publish", encodeChannel, m, stamp, maxPayloadOf(frameMax))
	if err != nil {
		return nil, err
	}
	if stamp != (stampAt >= 0) {
		t.Fatalf("encodePublish(stamp %v): stampAt %d", stamp, stampAt)
	}
	cc := &captureConn{}
	w := wire.New(cc, nil)
	for _, b := range [][]byte{[]byte(fb.ProtocolHeader), chanOpenFrame(encodeChannel)} {
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	cc.take()
	if stampAt >= 0 {
		putStamp(head, stampAt, encodeStampTag)
	}
	if err := w.WriteContent(encodeChannel, 0, head, m.Body, maxPayloadOf(frameMax)); err != nil {
		t.Fatalf("WriteContent: %v", err)
	}
	return cc.take(), nil
}

// amqpRef is an amqp091-go Connection, with one channel open, whose
// server side hands on every frame the client writes after the handshake.
type amqpRef struct {
	conn   *amqp.Connection
	ch     *amqp.Channel
	frames chan fb.Frame
	done   chan struct{} // the server goroutine has returned
}

// newAmqpRef connects amqp091-go to a scripted server offering frame_max
// frameMax (0: no limit) over a net.Pipe. Close it when done.
func newAmqpRef(t testing.TB, frameMax uint32) *amqpRef {
	t.Helper()
	cli, srv := net.Pipe()
	r := &amqpRef{frames: make(chan fb.Frame, 1024), done: make(chan struct{})}
	go r.serve(srv, frameMax)
	conn, err := amqp.Open(cli, amqp.Config{
		SASL:      []amqp.Authentication{&amqp.PlainAuth{Username: "guest", Password: "guest"}},
		Vhost:     "/",
		FrameSize: int(frameMax),
		Locale:    "en_US",
	})
	if err != nil {
		_ = cli.Close()
		<-r.done
		t.Fatalf("amqp.Open: %v", err)
	}
	r.conn = conn
	if r.ch, err = conn.Channel(); err != nil {
		r.close()
		t.Fatalf("Channel: %v", err)
	}
	if got := conn.Config.FrameSize; got != int(frameMax) {
		r.close()
		t.Fatalf("amqp091-go negotiated frame_max %d, want %d", got, frameMax)
	}
	return r
}

func (r *amqpRef) close() {
	_ = r.conn.Close()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		panic("amqpRef: the server did not end")
	}
}

// serve is the server: the handshake, channel.open, then every frame is
// handed on until connection.close.
func (r *amqpRef) serve(nc net.Conn, frameMax uint32) {
	defer close(r.done)
	defer nc.Close()
	rd := bufio.NewReader(nc)
	send := func(ch uint16, id fb.MethodID, args []byte) bool {
		_, err := nc.Write(fb.MethodFrame(ch, id, args).Encode())
		return err == nil
	}
	next := func() (fb.Frame, bool) {
		f, err := fb.ReadFrame(rd, 4<<20)
		return f, err == nil
	}
	hdr := make([]byte, len(fb.ProtocolHeader))
	if _, err := io.ReadFull(rd, hdr); err != nil {
		return
	}
	props := map[string]any{"product": "encode-test", "capabilities": map[string]any{"publisher_confirms": true}}
	if !send(0, fb.ConnectionStart, new(fb.Args).Octet(0).Octet(9).Table(props).LongStr("PLAIN").LongStr("en_US").Bytes()) {
		return
	}
	steps := []struct {
		want  fb.MethodID
		reply fb.MethodID
		args  []byte
	}{
		{fb.ConnectionStartOK, fb.ConnectionTune, new(fb.Args).Short(2047).Long(frameMax).Short(0).Bytes()},
		{fb.ConnectionTuneOK, 0, nil},
		{fb.ConnectionOpen, fb.ConnectionOpenOK, new(fb.Args).ShortStr("").Bytes()},
		{fb.ChannelOpen, fb.ChannelOpenOK, new(fb.Args).LongStr("").Bytes()},
	}
	for _, s := range steps {
		f, ok := next()
		if !ok || f.Type != fb.FrameMethod || len(f.Payload) < 4 ||
			fb.ID(binary.BigEndian.Uint16(f.Payload), binary.BigEndian.Uint16(f.Payload[2:])) != s.want {
			return
		}
		if s.reply != 0 && !send(f.Channel, s.reply, s.args) {
			return
		}
	}
	for {
		f, ok := next()
		if !ok {
			return
		}
		if f.Type == fb.FrameMethod && len(f.Payload) >= 4 &&
			fb.ID(binary.BigEndian.Uint16(f.Payload), binary.BigEndian.Uint16(f.Payload[2:])) == fb.ConnectionClose {
			send(0, fb.ConnectionCloseOK, nil)
			return
		}
		r.frames <- f
	}
}

// publish publishes m with amqp091-go and returns the frames it wrote.
func (r *amqpRef) publish(t testing.TB, m *Message) []byte {
	t.Helper()
	if err := r.ch.Publish(m.Exchange, m.Key, m.Mandatory, false, m.Publishing); err != nil {
		t.Fatalf("amqp091-go Publish: %v", err)
	}
	var out []byte
	take := func() fb.Frame {
		select {
		case f := <-r.frames:
			out = append(out, f.Encode()...)
			return f
		case <-time.After(10 * time.Second):
			t.Fatal("amqp091-go wrote no frame within 10 s")
			panic("unreachable")
		}
	}
	take() // basic.publish
	h := take()
	if h.Type != fb.FrameHeader || len(h.Payload) < 12 {
		t.Fatalf("amqp091-go wrote a frame of type %d after basic.publish", h.Type)
	}
	for size := binary.BigEndian.Uint64(h.Payload[4:12]); size > 0; {
		size -= uint64(len(take().Payload))
	}
	return out
}

// refs holds one amqpRef per frame_max for a test.
type refs struct {
	t  testing.TB
	by map[uint32]*amqpRef
}

func newRefs(t testing.TB) *refs {
	r := &refs{t: t, by: map[uint32]*amqpRef{}}
	t.Cleanup(func() {
		for _, a := range r.by {
			a.close()
		}
	})
	return r
}

func (r *refs) publish(frameMax int, m *Message) []byte { return r.publishIn(r.t, frameMax, m) }

// publishIn is publish, failing t (a fuzz target's, say) rather than the
// refs' owner.
func (r *refs) publishIn(t testing.TB, frameMax int, m *Message) []byte {
	a := r.by[uint32(frameMax)]
	if a == nil {
		a = newAmqpRef(t, uint32(frameMax))
		r.by[uint32(frameMax)] = a
	}
	return a.publish(t, m)
}

// ---------------------------------------------------------------------------
// A decoder of publishes, written from the AMQP 0-9-1 spec independently of
// both encoders. Field values decode to the Go types amqp091-go's reader
// produces (an 'I' is an int32, an 'l' an int64).

// decodedPublish is a publish read back from its frames.
type decodedPublish struct {
	Exchange, Key string
	Mandatory     bool
	Publishing    Publishing
	BodyFrames    []int // payload size of each body frame
	HeaderPayload int   // payload size of the content header frame
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("%d bytes wanted, %d left", n, len(d.b))
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) shortstr() string { return string(d.take(int(d.u8()))) }

func (d *decoder) table(depth int) Table {
	n := d.u32()
	inner := &decoder{b: d.take(int(n))}
	t := Table{}
	for len(inner.b) > 0 && inner.err == nil {
		k := inner.shortstr()
		if _, dup := t[k]; dup {
			inner.fail("key %q twice", k)
		}
		t[k] = inner.field(depth + 1)
	}
	if inner.err != nil {
		d.fail("table: %v", inner.err)
	}
	return t
}

func (d *decoder) field(depth int) any {
	if depth > 64 {
		d.fail("nested too deep")
		return nil
	}
	switch typ := d.u8(); typ {
	case 't':
		switch v := d.u8(); v {
		case 0, 1:
			return v == 1
		default:
			d.fail("bool %d", v)
		}
	case 'b':
		return int8(d.u8())
	case 'B':
		return d.u8()
	case 's':
		return int16(d.u16())
	case 'u':
		return d.u16()
	case 'I':
		return int32(d.u32())
	case 'i':
		return d.u32()
	case 'l':
		return int64(d.u64())
	case 'f':
		return math.Float32frombits(d.u32())
	case 'd':
		return math.Float64frombits(d.u64())
	case 'D':
		s := d.u8()
		return Decimal{Scale: s, Value: int32(d.u32())}
	case 'S':
		return string(d.take(int(d.u32())))
	case 'x':
		return append([]byte{}, d.take(int(d.u32()))...)
	case 'T':
		return time.Unix(int64(d.u64()), 0).UTC()
	case 'F':
		return d.table(depth)
	case 'A':
		inner := &decoder{b: d.take(int(d.u32()))}
		a := []any{}
		for len(inner.b) > 0 && inner.err == nil {
			a = append(a, inner.field(depth+1))
		}
		if inner.err != nil {
			d.fail("array: %v", inner.err)
		}
		return a
	case 'V':
		return nil
	default:
		d.fail("field type %q", typ)
	}
	return nil
}

// decodePublish reads one publish on channel ch from b, which must hold
// exactly its frames: a basic.publish, its content header, and body frames
// that carry exactly the body size, none over maxPayload (0: no limit).
func decodePublish(b []byte, ch uint16, maxPayload int) (*decodedPublish, error) {
	var frames []fb.Frame
	rd := bytes.NewReader(b)
	for rd.Len() > 0 {
		f, err := fb.ReadFrame(rd, math.MaxUint32)
		if err != nil {
			return nil, fmt.Errorf("frame %d: %w", len(frames), err)
		}
		if f.Channel != ch {
			return nil, fmt.Errorf("frame %d on channel %d, want %d", len(frames), f.Channel, ch)
		}
		if maxPayload > 0 && len(f.Payload) > maxPayload {
			return nil, fmt.Errorf("frame %d: payload %d bytes, frame_max allows %d", len(frames), len(f.Payload), maxPayload)
		}
		frames = append(frames, f)
	}
	if len(frames) < 2 || frames[0].Type != fb.FrameMethod || frames[1].Type != fb.FrameHeader {
		return nil, fmt.Errorf("%d frames, not a method frame and a content header", len(frames))
	}
	p := &decodedPublish{}
	d := &decoder{b: frames[0].Payload}
	if c, m := d.u16(), d.u16(); c != 60 || m != 40 {
		return nil, fmt.Errorf("method %d.%d, not basic.publish", c, m)
	}
	if r := d.u16(); r != 0 {
		return nil, fmt.Errorf("reserved short %d", r)
	}
	p.Exchange, p.Key = d.shortstr(), d.shortstr()
	bits := d.u8()
	p.Mandatory = bits&1 != 0
	if bits&^1 != 0 {
		return nil, fmt.Errorf("basic.publish bits %#x (immediate is never set)", bits)
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d bytes after basic.publish's arguments", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}

	p.HeaderPayload = len(frames[1].Payload)
	d = &decoder{b: frames[1].Payload}
	if c, w := d.u16(), d.u16(); c != 60 || w != 0 {
		return nil, fmt.Errorf("content header class %d weight %d", c, w)
	}
	size := d.u64()
	flags := d.u16()
	if flags&0x7 != 0 {
		return nil, fmt.Errorf("property flags %#x: reserved bits or a continuation", flags)
	}
	pub := &p.Publishing
	for bit := uint16(0x8000); bit > 0x4; bit >>= 1 {
		if flags&bit == 0 {
			continue
		}
		switch bit {
		case flagContentType:
			pub.ContentType = d.shortstr()
		case flagContentEncoding:
			pub.ContentEncoding = d.shortstr()
		case flagHeaders:
			pub.Headers = d.table(0)
		case flagDeliveryMode:
			pub.DeliveryMode = d.u8()
		case flagPriority:
			pub.Priority = d.u8()
		case flagCorrelationID:
			pub.CorrelationId = d.shortstr()
		case flagReplyTo:
			pub.ReplyTo = d.shortstr()
		case flagExpiration:
			pub.Expiration = d.shortstr()
		case flagMessageID:
			pub.MessageId = d.shortstr()
		case flagTimestamp:
			pub.Timestamp = time.Unix(int64(d.u64()), 0).UTC()
		case flagType:
			pub.Type = d.shortstr()
		case flagUserID:
			pub.UserId = d.shortstr()
		case flagAppID:
			pub.AppId = d.shortstr()
		}
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d bytes after the properties", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("content header: %w", d.err)
	}
	pub.Body = []byte{}
	for i, f := range frames[2:] {
		if f.Type != fb.FrameBody {
			return nil, fmt.Errorf("frame %d of type %d inside the body", i+2, f.Type)
		}
		if len(f.Payload) == 0 {
			return nil, fmt.Errorf("body frame %d is empty", i)
		}
		pub.Body = append(pub.Body, f.Payload...)
		p.BodyFrames = append(p.BodyFrames, len(f.Payload))
	}
	if uint64(len(pub.Body)) != size {
		return nil, fmt.Errorf("body frames carry %d bytes, the content header says %d", len(pub.Body), size)
	}
	for i, n := range p.BodyFrames {
		if maxPayload > 0 && i < len(p.BodyFrames)-1 && n != maxPayload {
			return nil, fmt.Errorf("body frame %d of %d bytes before the last: not split at %d", i, n, maxPayload)
		}
	}
	if maxPayload <= 0 && len(p.BodyFrames) > 1 {
		return nil, fmt.Errorf("%d body frames without a frame_max", len(p.BodyFrames))
	}
	return p, nil
}

// normField is v as decodePublish reads it back from warren's encoding.
func normField(v any) any {
	switch v := v.(type) {
	case int:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return int64(v)
		}
		return int32(v)
	case []byte:
		return append([]byte{}, v...)
	case time.Time:
		return time.Unix(v.Unix(), 0).UTC()
	case Table:
		out := Table{}
		for k, f := range v {
			out[k] = normField(f)
		}
		return out
	case []any:
		out := []any{}
		for _, f := range v {
			out = append(out, normField(f))
		}
		return out
	}
	return v
}

// wantDecoded is what decodePublish must read back from warren's bytes
// for m: stamped with tag if stamp.
func wantDecoded(m *Message, stamp bool, tag uint64) decodedPublish {
	want := decodedPublish{Exchange: m.Exchange, Key: m.Key, Mandatory: m.Mandatory, Publishing: m.Publishing}
	p := &want.Publishing
	p.Body = append([]byte{}, m.Body...)
	if !p.Timestamp.IsZero() {
		p.Timestamp = time.Unix(p.Timestamp.Unix(), 0).UTC()
	}
	if len(m.Headers) > 0 || stamp {
		h := Table{}
		if len(m.Headers) > 0 {
			h = normField(m.Headers).(Table)
		}
		if stamp {
			h[StampHeader] = int64(tag)
		}
		p.Headers = h
	} else {
		p.Headers = nil
	}
	return want
}

// sameMessage compares the message a decoded publish carries with want's,
// frame sizes aside.
func sameMessage(got, want *decodedPublish) string {
	g, w := *got, *want
	g.BodyFrames, g.HeaderPayload, w.BodyFrames, w.HeaderPayload = nil, 0, nil, 0
	return sameDecoded(&g, &w)
}

// sameDecoded compares two decoded publishes, frame sizes included.
func sameDecoded(got, want *decodedPublish) string {
	if reflect.DeepEqual(got, want) {
		return ""
	}
	g, w := *got, *want
	if len(g.Publishing.Body) > 64 || len(w.Publishing.Body) > 64 {
		if !bytes.Equal(g.Publishing.Body, w.Publishing.Body) {
			return fmt.Sprintf("bodies differ (%d and %d bytes)", len(g.Publishing.Body), len(w.Publishing.Body))
		}
		g.Publishing.Body, w.Publishing.Body = nil, nil
	}
	return fmt.Sprintf("\n got %#v\nwant %#v", g, w)
}

// ---------------------------------------------------------------------------
// Comparisons.

// checkEncoding encodes m with warren (stamped if stamp) and with
// amqp091-go (which has no stamp: ref gets m with the stamp added as the
// tracker would have), and compares: byte for byte when exact, decoded
// otherwise; and warren's bytes decoded against m.
func checkEncoding(t *testing.T, r *refs, frameMax int, m *Message, stamp, exact bool) {
	t.Helper()
	got, err := warrenPublish(t, frameMax, m, stamp)
	if err != nil {
		t.Fatalf("encodePublish: %v", err)
	}
	dec, err := decodePublish(got, encodeChannel, maxPayloadOf(frameMax))
	if err != nil {
		t.Fatalf("decoding warren's bytes: %v", err)
	}
	want := wantDecoded(m, stamp, encodeStampTag)
	if d := sameMessage(dec, &want); d != "" {
		t.Fatalf("warren's bytes decode to another message: %s", d)
	}
	if dec.HeaderPayload > maxPayloadOf(frameMax) && frameMax > 0 {
		t.Fatalf("content header payload %d over %d", dec.HeaderPayload, maxPayloadOf(frameMax))
	}

	ref := *m
	if stamp {
		ref.Headers = maps.Clone(m.Headers)
		if ref.Headers == nil {
			ref.Headers = Table{}
		}
		ref.Headers[StampHeader] = int64(encodeStampTag)
	}
	amqpBytes := r.publishIn(t, frameMax, &ref)
	if exact {
		if !bytes.Equal(got, amqpBytes) {
			t.Fatalf("warren wrote other bytes than amqp091-go:\nwarren    %x\namqp091-go %x", clipBytes(got), clipBytes(amqpBytes))
		}
		return
	}
	adec, err := decodePublish(amqpBytes, encodeChannel, maxPayloadOf(frameMax))
	if err != nil {
		t.Fatalf("decoding amqp091-go's bytes: %v", err)
	}
	if d := sameDecoded(dec, adec); d != "" {
		t.Fatalf("warren's and amqp091-go's bytes decode differently: %s", d)
	}
	if len(got) != len(amqpBytes) {
		t.Fatalf("warren wrote %d bytes, amqp091-go %d", len(got), len(amqpBytes))
	}
}

func clipBytes(b []byte) []byte { return b[:min(len(b), 600)] }

// tablesOneKey reports whether every table in t, at any depth, has at most
// one key: then map order cannot change the bytes.
func tablesOneKey(v any) bool {
	switch v := v.(type) {
	case Table:
		if len(v) > 1 {
			return false
		}
		for _, f := range v {
			if !tablesOneKey(f) {
				return false
			}
		}
	case []any:
		for _, f := range v {
			if !tablesOneKey(f) {
				return false
			}
		}
	}
	return true
}

// fieldValues are values of every field type amqp091-go writes, with
// edges.
func fieldValues() []struct {
	name string
	v    any
} {
	deep := any(int32(7))
	for range 10 {
		deep = Table{"d": []any{deep}}
	}
	return []struct {
		name string
		v    any
	}{
		{"bool true", true}, {"bool false", false},
		{"int8", int8(-5)}, {"int8 min", int8(math.MinInt8)},
		{"uint8", uint8(200)},
		{"int16", int16(-300)}, {"uint16", uint16(60000)},
		{"int32", int32(-70000)}, {"int32 max", int32(math.MaxInt32)},
		{"uint32", uint32(4000000000)},
		{"int64", int64(-1 << 40)}, {"int64 max", int64(math.MaxInt64)},
		{"int", 12345}, {"int min32", math.MinInt32}, {"int max32", math.MaxInt32}, {"int 0", 0},
		{"float32", float32(1.5)}, {"float32 -0", float32(math.Copysign(0, -1))},
		{"float64", -2.25}, {"float64 max", math.MaxFloat64},
		{"Decimal", Decimal{Scale: 2, Value: -12345}},
		{"string", "héllo"}, {"empty string", ""},
		{"bytes", []byte{0, 1, 2, 0xff}}, {"empty bytes", []byte{}}, {"nil bytes", []byte(nil)},
		{"time", time.Unix(1700000000, 123456789)}, {"time epoch", time.Unix(0, 0)},
		{"nil", nil},
		{"table", Table{"n": int32(1)}}, {"empty table", Table{}},
		{"array", []any{int32(1), "s", nil, true, []byte("x"), Decimal{Scale: 1, Value: 5}, 3.5, time.Unix(5, 0),
			[]any{}, []any{int8(1), []any{"deep"}}, Table{"k": uint16(9)}, int64(-1), uint8(7)}},
		{"empty array", []any{}},
		{"nested", deep},
	}
}

func TestPublishEncodingMatchesAmqp091(t *testing.T) {
	r := newRefs(t)
	ts := time.Unix(1700000000, 0)
	str := strings.Repeat("s", maxShortstr)
	props := []struct {
		name string
		p    Publishing
	}{
		{"none", Publishing{}},
		{"ContentType", Publishing{ContentType: "text/plain"}},
		{"ContentEncoding", Publishing{ContentEncoding: "gzip"}},
		{"Headers", Publishing{Headers: Table{"a": "b"}}},
		{"DeliveryMode transient", Publishing{DeliveryMode: Transient}},
		{"DeliveryMode persistent", Publishing{DeliveryMode: Persistent}},
		{"Priority", Publishing{Priority: 9}},
		{"Priority 255", Publishing{Priority: 255}},
		{"CorrelationId", Publishing{CorrelationId: "corr"}},
		{"ReplyTo", Publishing{ReplyTo: "amq.rabbitmq.reply-to"}},
		{"Expiration", Publishing{Expiration: "60000"}},
		{"Expiration 0", Publishing{Expiration: "0"}},
		{"MessageId", Publishing{MessageId: "id-1"}},
		{"Timestamp", Publishing{Timestamp: ts}},
		{"Timestamp epoch", Publishing{Timestamp: time.Unix(0, 0)}},
		{"Timestamp fraction", Publishing{Timestamp: time.Unix(1700000000, 999999999)}},
		{"Type", Publishing{Type: "t"}},
		{"UserId", Publishing{UserId: "guest"}},
		{"AppId", Publishing{AppId: "app"}},
		{"all", Publishing{ContentType: "application/json", ContentEncoding: "utf-8", Headers: Table{"x": int32(1)},
			DeliveryMode: Persistent, Priority: 5, CorrelationId: "c", ReplyTo: "r", Expiration: "1000",
			MessageId: "m", Timestamp: ts, Type: "ty", UserId: "u", AppId: "ap", Body: []byte("body")}},
		{"all at 255 bytes", Publishing{ContentType: str, ContentEncoding: str, Headers: Table{str: str},
			DeliveryMode: Transient, Priority: 1, CorrelationId: str, ReplyTo: str, Expiration: "1",
			MessageId: str, Timestamp: ts, Type: str, UserId: str, AppId: str}},
		{"unicode", Publishing{ContentType: "tëxt/日本", AppId: "ü"}},
	}
	for _, frameMax := range []int{4096, 131072} {
		for _, pc := range props {
			for _, dest := range []struct{ ex, key string }{{"", "q"}, {"amq.topic", strings.Repeat("k", 255)}, {"", ""}} {
				t.Run(fmt.Sprintf("%d/%s/%q", frameMax, pc.name, dest.ex), func(t *testing.T) {
					m := &Message{Exchange: dest.ex, Key: dest.key, Publishing: pc.p}
					checkEncoding(t, r, frameMax, m, false, true)
				})
			}
		}
	}
}

func TestPublishEncodingHeaderTypesMatchAmqp091(t *testing.T) {
	r := newRefs(t)
	vals := fieldValues()
	for _, v := range vals {
		t.Run(v.name, func(t *testing.T) {
			m := &Message{Key: "q", Publishing: Publishing{Headers: Table{"k": v.v}}}
			checkEncoding(t, r, 131072, m, false, tablesOneKey(v.v))
		})
	}
	t.Run("all types in one table", func(t *testing.T) {
		h := Table{}
		for _, v := range vals {
			h[v.name] = v.v
		}
		for range 5 { // several map orders
			checkEncoding(t, r, 131072, &Message{Key: "q", Publishing: Publishing{Headers: h, ContentType: "x"}}, false, false)
		}
	})
	t.Run("all types in an array", func(t *testing.T) {
		var a []any
		for _, v := range vals {
			if tablesOneKey(v.v) {
				a = append(a, v.v)
			}
		}
		checkEncoding(t, r, 131072, &Message{Key: "q", Publishing: Publishing{Headers: Table{"a": a}}}, false, true)
	})
}

func TestPublishEncodingBodiesMatchAmqp091(t *testing.T) {
	r := newRefs(t)
	for _, frameMax := range []int{4096, 131072, 0} {
		mp := maxPayloadOf(frameMax)
		sizes := []int{0, 1, 64 << 10, 64<<10 + 1, 1 << 20}
		if mp > 0 {
			sizes = append(sizes, mp-1, mp, mp+1, 2*mp, 3*mp+5)
		}
		for _, n := range sizes {
			t.Run(fmt.Sprintf("frame_max %d/body %d", frameMax, n), func(t *testing.T) {
				body := make([]byte, n)
				for i := range body {
					body[i] = byte(i*7 + i>>8)
				}
				m := &Message{Key: "q", Publishing: Publishing{ContentType: "application/octet-stream", Body: body}}
				checkEncoding(t, r, frameMax, m, false, true)
			})
		}
	}
}

func TestPublishEncodingMandatoryStamp(t *testing.T) {
	r := newRefs(t)
	for _, tc := range []struct {
		name    string
		headers Table
		exact   bool
	}{
		{"no headers", nil, true},
		{"empty headers", Table{}, true},
		{"the caller's own stamp is replaced", Table{StampHeader: "mine"}, true},
		{"the caller's own int64 stamp is replaced", Table{StampHeader: int64(5)}, true},
		{"other headers", Table{"a": "b", "n": int32(3)}, false},
		{"other headers and the caller's stamp", Table{"a": "b", StampHeader: true}, false},
	} {
		for _, frameMax := range []int{4096, 131072} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, frameMax), func(t *testing.T) {
				m := &Message{Key: "q", Mandatory: true, Publishing: Publishing{Headers: tc.headers, Body: []byte("b")}}
				before := maps.Clone(tc.headers)
				ref := *m
				// The stamp replaces the caller's: what amqp091-go is
				// given is the headers without it (checkEncoding adds it).
				ref.Headers = maps.Clone(tc.headers)
				delete(ref.Headers, StampHeader)
				got, err := warrenPublish(t, frameMax, m, true)
				if err != nil {
					t.Fatal(err)
				}
				dec, err := decodePublish(got, encodeChannel, maxPayloadOf(frameMax))
				if err != nil {
					t.Fatal(err)
				}
				want := wantDecoded(&ref, true, encodeStampTag)
				if d := sameMessage(dec, &want); d != "" {
					t.Fatalf("stamped publish decodes wrong: %s", d)
				}
				if dec.Publishing.Headers[StampHeader] != int64(encodeStampTag) {
					t.Fatalf("stamp %#v", dec.Publishing.Headers[StampHeader])
				}
				checkEncoding(t, r, frameMax, &ref, true, tc.exact)
				if !reflect.DeepEqual(tc.headers, before) {
					t.Fatalf("the caller's headers changed: %v, were %v", tc.headers, before)
				}
			})
		}
	}
	t.Run("without stamp a mandatory publish keeps the caller's header", func(t *testing.T) {
		// RPC's requests are mandatory and not stamped.
		m := &Message{Key: "q", Mandatory: true, Publishing: Publishing{Headers: Table{StampHeader: "mine"}}}
		checkEncoding(t, r, 131072, m, false, true)
	})
	t.Run("stamp rewritten in place", func(t *testing.T) {
		var buf [headRoom]byte
		m := &Message{Key: "q", Mandatory: true}
		head, at, err := encodePublish(buf[:0], "basic.publish", 1, m, true, 0)
		if err != nil || at < 0 {
			t.Fatal(at, err)
		}
		for _, tag := range []uint64{1, 1 << 40, math.MaxUint64} {
			putStamp(head, at, tag)
			dec, err := decodePublish(head, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := dec.Publishing.Headers[StampHeader]; got != int64(tag) {
				t.Fatalf("stamp %v, want %v", got, int64(tag))
			}
		}
	})
}

// A Go int outside int32 goes as an int64: amqp091-go would truncate it to
// an 'I' (warren's documented difference); every other byte is the same.
func TestPublishEncodingWideIntGoesAsInt64(t *testing.T) {
	r := newRefs(t)
	for _, v := range []int{1 << 40, -1 << 40, math.MaxInt32 + 1, math.MinInt32 - 1, math.MaxInt64, math.MinInt64} {
		for _, h := range []Table{{"k": v}, {"t": Table{"k": v}}, {"a": []any{int8(1), v}}} {
			m := &Message{Key: "q", Publishing: Publishing{Headers: h}}
			got, err := warrenPublish(t, 131072, m, false)
			if err != nil {
				t.Fatal(err)
			}
			wide := &Message{Key: "q", Publishing: Publishing{Headers: normField(h).(Table)}}
			if a := r.publish(131072, wide); !bytes.Equal(got, a) {
				t.Fatalf("%v: warren's bytes are not amqp091-go's for the int64:\n%x\n%x", h, got, a)
			}
			if a := r.publish(131072, m); bytes.Equal(got, a) {
				t.Fatalf("%v: amqp091-go wrote the wide int as warren does: the documented difference is gone", h)
			}
			dec, err := decodePublish(got, encodeChannel, 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := wantDecoded(m, false, 0); sameMessage(dec, &want) != "" {
				t.Fatalf("decoded %v, want %v", dec.Publishing.Headers, want.Publishing.Headers)
			}
		}
	}
}

// The content header must fit one frame, with the stamp: a header of
// exactly frame_max-8 bytes is taken, one byte more is refused, and
// nothing is written.
func TestPublishEncodingContentHeaderAtFrameMax(t *testing.T) {
	for _, frameMax := range []int{4096, 131072} {
		for _, stamp := range []bool{false, true} {
			mp := maxPayloadOf(frameMax)
			// Find the header-table string length whose content header is
			// exactly mp bytes.
			mk := func(n int) *Message {
				return &Message{Key: "q", Mandatory: stamp, Publishing: Publishing{ContentType: "c", Headers: Table{"big": strings.Repeat("x", n)}}}
			}
			var buf [headRoom]byte
			head, _, err := encodePublish(buf[:0], "basic.publish", 1, mk(0), stamp, 0)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := decodePublish(head, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			n := mp - dec.HeaderPayload
			if _, err := warrenPublish(t, frameMax, mk(n), stamp); err != nil {
				t.Fatalf("frame_max %d stamp %v: a content header of exactly %d bytes refused: %v", frameMax, stamp, mp, err)
			}
			_, _, err = encodePublish(buf[:0], "basic.publish", 1, mk(n+1), stamp, mp)
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "frame_max") {
				t.Fatalf("frame_max %d stamp %v: a content header of %d bytes: %v, want a frame_max refusal", frameMax, stamp, mp+1, err)
			}
			if stamp {
				// Fits without the stamp, not with it.
				if _, _, err := encodePublish(buf[:0], "basic.publish", 1, mk(n+1), false, mp); err != nil {
					t.Fatalf("without the stamp: %v", err)
				}
			}
		}
	}
}

// Whatever checkPublishing refuses, encodePublish refuses with the same
// error, and writes nothing into dst.
func TestPublishEncodingRefusesAsCheckPublishing(t *testing.T) {
	bad := []Message{
		{Exchange: strings.Repeat("e", 256)},
		{Key: "\xff"},
		{Publishing: Publishing{ContentType: strings.Repeat("c", 256)}},
		{Publishing: Publishing{ContentEncoding: "\xc3"}},
		{Publishing: Publishing{CorrelationId: strings.Repeat("c", 300)}},
		{Publishing: Publishing{ReplyTo: "\xff"}},
		{Publishing: Publishing{Expiration: "-1"}},
		{Publishing: Publishing{Expiration: "1.5"}},
		{Publishing: Publishing{Expiration: "315360000001"}},
		{Publishing: Publishing{MessageId: "\xff"}},
		{Publishing: Publishing{Type: "\xff"}},
		{Publishing: Publishing{UserId: "\xff"}},
		{Publishing: Publishing{AppId: strings.Repeat("a", 256)}},
		{Publishing: Publishing{DeliveryMode: 3}},
		{Publishing: Publishing{Timestamp: time.Unix(-1, 0)}},
		{Publishing: Publishing{Headers: Table{"k": uint64(1)}}},
		{Publishing: Publishing{Headers: Table{"k": math.NaN()}}},
		{Publishing: Publishing{Headers: Table{"k": float32(math.Inf(1))}}},
		{Publishing: Publishing{Headers: Table{"k": map[string]any{}}}},
		{Publishing: Publishing{Headers: Table{"\xff": 1}}},
		{Publishing: Publishing{Headers: Table{"k": time.Unix(-5, 0)}}},
		{Publishing: Publishing{Headers: Table{"k": []any{1, uint(2)}}}},
		{Mandatory: true, Publishing: Publishing{Headers: Table{StampHeader: math.NaN()}}},
	}
	for i := range bad {
		m := &bad[i]
		_, _, want := checkPublishing("basic.publish", m.Exchange, m.Key, &m.Publishing)
		if want == nil {
			t.Fatalf("case %d: checkPublishing takes it", i)
		}
		for _, stamp := range []bool{false, true} {
			dst := make([]byte, 3, 64)
			head, at, err := encodePublish(dst, "basic.publish", 1, m, stamp, 0)
			if err == nil || err.Error() != want.Error() || !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("case %d: encodePublish: %v, want %v", i, err, want)
			}
			if len(head) != 3 || at != -1 {
				t.Fatalf("case %d: refused, yet head %d bytes, stampAt %d", i, len(head), at)
			}
		}
	}
}

// A publish must stay allocation free: the frames are encoded on the
// caller's stack (headers included, through the pooled scratch).
func TestPublishEncodingAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers: allocation counts are not exact")
	}
	m := &Message{Key: "q", Mandatory: true, Publishing: Publishing{ContentType: "text/plain",
		Headers: Table{"a": "b", "t": Table{"n": []any{int32(1), "x"}}, "w": 1 << 40}, Body: make([]byte, 100)}}
	cc := &captureConn{}
	w := wire.New(cc, nil)
	_, _ = w.Write([]byte(fb.ProtocolHeader))
	_, _ = w.Write(chanOpenFrame(1))
	n := testing.AllocsPerRun(200, func() {
		var buf [headRoom]byte
		head, at, err := encodePublish(buf[:0], "basic.publish", 1, m, true, 131064)
		if err != nil {
			t.Fatal(err)
		}
		putStamp(head, at, 7)
		if err := w.WriteContent(1, 0, head, m.Body, 131064); err != nil {
			t.Fatal(err)
		}
		cc.out = cc.out[:0]
	})
	if n != 0 {
		t.Fatalf("encoding and writing a publish: %v allocations, want 0", n)
	}
}

// The stamp is one more entry of the headers table: a caller's table of
// maxTableEntries (what amqp091-go consumers read at most) leaves no room
// for it, unless it holds StampHeader itself (the stamp replaces it).
func TestPublishEncodingStampCountsAsATableEntry(t *testing.T) {
	full := Table{}
	for i := range maxTableEntries {
		full[fmt.Sprint(i)] = nil
	}
	var buf [headRoom]byte
	if _, _, err := encodePublish(buf[:0], "basic.publish", 1, &Message{Key: "q", Publishing: Publishing{Headers: full}}, false, 0); err != nil {
		t.Fatalf("%d headers without the stamp: %v", len(full), err)
	}
	m := &Message{Key: "q", Mandatory: true, Publishing: Publishing{Headers: full}}
	head, _, err := encodePublish(buf[:0], "basic.publish", 1, m, true, 0)
	if !errors.Is(err, ErrInvalidArgument) {
		n := -1
		if err == nil {
			if dec, derr := decodePublish(head, 1, 0); derr == nil {
				n = len(dec.Publishing.Headers)
			}
		}
		t.Fatalf("%d headers and the stamp: %v (a table of %d entries sent), want ErrInvalidArgument: amqp091-go consumers read at most %d", len(full), err, n, maxTableEntries)
	}

	// With StampHeader among them, the stamp takes its place.
	own := maps.Clone(full)
	delete(own, "0")
	own[StampHeader] = "mine"
	m = &Message{Key: "q", Mandatory: true, Publishing: Publishing{Headers: own}}
	head, _, err = encodePublish(buf[:0], "basic.publish", 1, m, true, 0)
	if err != nil {
		t.Fatalf("%d headers holding the stamp's own: %v", len(own), err)
	}
	if dec, err := decodePublish(head, 1, 0); err != nil || len(dec.Publishing.Headers) != maxTableEntries {
		t.Fatalf("decoded: %v", err)
	}
	// One fewer: room for the stamp.
	less := maps.Clone(full)
	delete(less, "0")
	m = &Message{Key: "q", Mandatory: true, Publishing: Publishing{Headers: less}}
	if _, _, err := encodePublish(buf[:0], "basic.publish", 1, m, true, 0); err != nil {
		t.Fatalf("%d headers and the stamp: %v", len(less), err)
	}
}

package warren

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"testing"
	"time"
)

// FuzzPublishEncoding builds a publish from the fuzzer's bytes (properties
// and headers of every type, valid or not, a body, frame_max, mandatory and
// stamp) and checks encodePublish against checkPublishing, a decoder and
// amqp091-go v1.17:
//
//   - it never panics;
//   - when checkPublishing refuses the message, encodePublish refuses it
//     with the same error (the same text when no two invalid values can
//     race in map order) and leaves dst as it was;
//   - when checkPublishing takes it, encodePublish takes it too, or refuses
//     a content header that really is over frame_max;
//   - what it takes, written by WriteContent, decodes to exactly the
//     message (stamped), in frames within frame_max, split as amqp091-go
//     splits;
//   - and is what amqp091-go writes for the same message (its ints
//     widened as warren documents, the stamp as a header): byte for byte
//     when every table has at most one key, decoded otherwise.
//
// The seeds are in testdata/fuzz/FuzzPublishEncoding, named for what they
// reach. To fuzz (-timeout 0: go test's default 10 m timeout would otherwise end
// a 10 m run):
//
//	go test -run '^$' -fuzz FuzzPublishEncoding -fuzztime 10m -parallel 1 -timeout 0 .
func FuzzPublishEncoding(f *testing.F) {
	r := &refs{t: f, by: map[uint32]*amqpRef{}}
	f.Cleanup(func() {
		for _, a := range r.by {
			a.close()
		}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &fuzzGen{b: data}
		m, frameMax, stamp := g.message()
		checkFuzzedPublish(t, r, m, frameMax, stamp)
	})
}

func checkFuzzedPublish(t *testing.T, r *refs, m *Message, frameMax int, stamp bool) {
	mp := maxPayloadOf(frameMax)
	_, _, cerr := checkPublishing("basic.publish", m.Exchange, m.Key, &m.Publishing)
	var buf [headRoom]byte
	dst := append(buf[:0], "pre"...)
	head, at, err := encodePublish(dst, "basic.publish", encodeChannel, m, stamp, mp)
	if err != nil {
		if len(head) != len(dst) || at != -1 {
			t.Fatalf("refused (%v), yet head %d bytes (dst %d), stampAt %d", err, len(head), len(dst), at)
		}
		if !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("refusal does not wrap ErrInvalidArgument: %v", err)
		}
		if cerr != nil {
			if tablesOneKey(m.Headers) && err.Error() != cerr.Error() {
				t.Fatalf("encodePublish: %v\ncheckPublishing: %v", err, cerr)
			}
			return
		}
		// Taken by checkPublishing: only frame_max, or a headers table
		// with no room left for the stamp, may refuse it.
		if _, own := m.Headers[StampHeader]; stamp && !own && len(m.Headers) >= maxTableEntries {
			if !strings.Contains(err.Error(), "stamp") {
				t.Fatalf("no room for the stamp, refused for another reason: %v", err)
			}
			return
		}
		if !strings.Contains(err.Error(), "frame_max") {
			t.Fatalf("checkPublishing takes it, encodePublish refuses: %v", err)
		}
		whole, _, err2 := encodePublish(nil, "basic.publish", encodeChannel, m, stamp, 0)
		if err2 != nil {
			t.Fatalf("without a frame_max: %v", err2)
		}
		if n := headerPayloadOf(whole); n <= mp {
			t.Fatalf("refused for frame_max %d with a content header of %d bytes: %v", frameMax, n, err)
		}
		return
	}
	if cerr != nil {
		t.Fatalf("encodePublish takes what checkPublishing refuses: %v", cerr)
	}
	if string(head) == "pre" || (stamp != (at >= 0)) {
		t.Fatalf("head %q stampAt %d", head[:min(len(head), 16)], at)
	}
	got, err := warrenPublish(t, frameMax, m, stamp)
	if err != nil {
		t.Fatalf("second encoding refused: %v", err)
	}
	dec, err := decodePublish(got, encodeChannel, mp)
	if err != nil {
		t.Fatalf("decoding warren's bytes: %v", err)
	}
	want := wantDecoded(m, stamp, encodeStampTag)
	if d := sameMessage(dec, &want); d != "" {
		t.Fatalf("warren's bytes decode to another message: %s", d)
	}
	if n := len(dec.Publishing.Headers); n > maxTableEntries {
		t.Fatalf("a headers table of %d entries sent: amqp091-go consumers read at most %d", n, maxTableEntries)
	}

	// amqp091-go, given what warren means: wide ints as int64, the stamp
	// as a header in place of the caller's.
	ref := *m
	if len(m.Headers) > 0 {
		ref.Headers = normField(m.Headers).(Table)
	}
	if stamp {
		ref.Headers = maps.Clone(ref.Headers)
		if ref.Headers == nil {
			ref.Headers = Table{}
		}
		ref.Headers[StampHeader] = int64(encodeStampTag)
	}
	amqpBytes := r.publishIn(t, frameMax, &ref)
	if tablesOneKey(ref.Headers) {
		if string(got) != string(amqpBytes) {
			t.Fatalf("warren wrote other bytes than amqp091-go:\nwarren    %x\namqp091-go %x", clipBytes(got), clipBytes(amqpBytes))
		}
		return
	}
	adec, err := decodePublish(amqpBytes, encodeChannel, mp)
	if err != nil {
		t.Fatalf("decoding amqp091-go's bytes: %v", err)
	}
	if d := sameDecoded(dec, adec); d != "" {
		t.Fatalf("warren's and amqp091-go's bytes decode differently: %s", d)
	}
}

// headerPayloadOf returns the payload size of the content header frame in
// head, an encoded method frame and content header.
func headerPayloadOf(head []byte) int {
	at := 8 + int(binary.BigEndian.Uint32(head[3:7]))
	return int(binary.BigEndian.Uint32(head[at+3 : at+7]))
}

// fuzzGen turns the fuzzer's bytes into a message; past the end it reads
// zeros.
type fuzzGen struct {
	b []byte
	n int // table and array entries made so far: bounds the work per input
}

func (g *fuzzGen) u8() byte {
	if len(g.b) == 0 {
		return 0
	}
	v := g.b[0]
	g.b = g.b[1:]
	return v
}

func (g *fuzzGen) u16() uint16 { return uint16(g.u8())<<8 | uint16(g.u8()) }
func (g *fuzzGen) u32() uint32 { return uint32(g.u16())<<16 | uint32(g.u16()) }
func (g *fuzzGen) u64() uint64 { return uint64(g.u32())<<32 | uint64(g.u32()) }

// str is a string of the fuzzer's bytes, or (length code 255) a long one.
func (g *fuzzGen) str() string {
	n := int(g.u8())
	switch n {
	case 255:
		return strings.Repeat("L", 250+int(g.u8()%16)) // around the 255 limit
	case 254:
		return "\xff\xfe" // not UTF-8
	}
	n %= 24
	s := g.b[:min(n, len(g.b))]
	g.b = g.b[len(s):]
	return string(s)
}

// expiration is mostly a valid TTL, sometimes anything.
func (g *fuzzGen) expiration() string {
	switch g.u8() % 4 {
	case 0:
		return "60000"
	case 1:
		return "315360000000"
	case 2:
		return "315360000001"
	}
	return g.str()
}

func (g *fuzzGen) table(depth int) Table {
	t := Table{}
	for n := int(g.u8() % 4); n > 0 && g.n < 200; n-- {
		g.n++
		t[g.str()] = g.value(depth + 1)
	}
	return t
}

func (g *fuzzGen) value(depth int) any {
	switch k := g.u8() % 28; k {
	case 0:
		return nil
	case 1:
		return g.u8()&1 != 0
	case 2:
		return int8(g.u8())
	case 3:
		return g.u8()
	case 4:
		return int16(g.u16())
	case 5:
		return g.u16()
	case 6:
		return int32(g.u32())
	case 7:
		return g.u32()
	case 8:
		return int64(g.u64())
	case 9:
		return int(int64(g.u64())) // wide or not
	case 10:
		return int(int32(g.u32()))
	case 11:
		return math.Float32frombits(g.u32()) // NaN and ±Inf among them
	case 12:
		return math.Float64frombits(g.u64())
	case 13:
		return Decimal{Scale: g.u8(), Value: int32(g.u32())}
	case 14:
		return g.str()
	case 15:
		return []byte(g.str())
	case 16:
		return time.Unix(int64(g.u64())>>int(g.u8()%64), int64(g.u32()%1e9)) // before 1970 sometimes
	case 17, 18:
		if depth > 40 {
			return nil
		}
		return g.table(depth)
	case 19, 20:
		if depth > 40 {
			return nil
		}
		var a []any
		for n := int(g.u8() % 5); n > 0 && g.n < 200; n-- {
			g.n++
			a = append(a, g.value(depth+1))
		}
		if g.u8()&1 == 0 && a == nil {
			a = []any{}
		}
		return a
	case 21:
		// Deep nesting around the limit of 32.
		v := g.value(depth + 1)
		for range 28 + int(g.u8()%8) {
			if g.u8()&1 == 0 {
				v = []any{v}
			} else {
				v = Table{"d": v}
			}
		}
		return v
	case 22:
		return uint64(g.u8())
	case 23:
		return uint(g.u8())
	case 24:
		return map[string]any{"k": 1}
	case 25:
		return struct{}{}
	case 26:
		if g.u8() == 0 {
			return make([]any, maxTableEntries+1) // too many entries
		}
		return []byte(nil)
	default:
		return time.Time{}
	}
}

// message builds the publish: which properties are set, their values,
// headers, body size (around frame_max's edges), frame_max, mandatory and
// stamp.
func (g *fuzzGen) message() (m *Message, frameMax int, stamp bool) {
	frameMax = [...]int{4096, 131072, 0, 5000, 4096}[g.u8()%5]
	mode := g.u8()
	m = &Message{Mandatory: mode&1 != 0}
	stamp = mode&2 != 0
	set := g.u16()
	if set&(1<<0) != 0 {
		m.Exchange = g.str()
	}
	if set&(1<<1) != 0 {
		m.Key = g.str()
	}
	p := &m.Publishing
	strs := []*string{&p.ContentType, &p.ContentEncoding, &p.CorrelationId, &p.ReplyTo, &p.MessageId, &p.Type, &p.UserId, &p.AppId}
	for i, s := range strs {
		if set&(1<<(2+i)) != 0 {
			*s = g.str()
		}
	}
	if set&(1<<10) != 0 {
		p.Expiration = g.expiration()
	}
	if set&(1<<11) != 0 {
		p.DeliveryMode = g.u8() % 4
	}
	if set&(1<<12) != 0 {
		p.Priority = g.u8()
	}
	if set&(1<<13) != 0 {
		p.Timestamp = time.Unix(int64(g.u64())>>int(g.u8()%64), int64(g.u32()%1e9))
	}
	if set&(1<<14) != 0 {
		p.Headers = g.table(0)
		if g.u8()%4 == 0 {
			p.Headers[StampHeader] = g.value(1)
		}
		if g.u8() == 0xfe {
			// A table full to what amqp091-go consumers read.
			for i, n := len(p.Headers), maxTableEntries-int(g.u8()%2); i < n; i++ {
				p.Headers[fmt.Sprint("f", i)] = nil
			}
		}
		if g.u8()%8 == 0 {
			// A header near frame_max.
			p.Headers["pad"] = strings.Repeat("p", max(0, maxPayloadOf(frameMax)-200+int(g.u8())))
		}
	}
	mp := maxPayloadOf(frameMax)
	if mp == 0 {
		mp = 131064
	}
	var size int
	switch c := g.u8(); {
	case c < 200:
		size = int(c)
	case c < 240:
		size = mp + int(c) - 220 // around one frame
	case c < 250:
		size = (2+int(c)%3)*mp + int(g.u8()) - 128 // several frames
	default:
		size = 64<<10 + int(g.u8()) - 128 // around the writev path
	}
	size = max(size, 0)
	p.Body = make([]byte, size)
	for i := range p.Body {
		p.Body[i] = byte(i*31 + i>>8)
	}
	if set&(1<<15) != 0 && size == 0 {
		p.Body = nil
	}
	return m, frameMax, stamp
}

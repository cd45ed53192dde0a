package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
)

// memConn is an in-memory net.Conn for the fuzz targets: Reads return the
// queued chunks one by one, Writes are recorded. The deterministic tests run
// Conn over net.Pipe; fuzzing uses this to get many more executions per
// second through the same Conn code.
type memConn struct {
	net.Conn
	reads [][]byte
	out   []byte
}

func (m *memConn) Read(p []byte) (int, error) {
	if len(m.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(p, m.reads[0])
	if n < len(m.reads[0]) {
		m.reads[0] = m.reads[0][n:]
	} else {
		m.reads = m.reads[1:]
	}
	return n, nil
}

func (m *memConn) Write(p []byte) (int, error) {
	m.out = append(m.out, p...)
	return len(p), nil
}

// memRig is a Conn over a memConn that records onClose events.
type memRig struct {
	t      *testing.T
	mc     *memConn
	c      *Conn
	closes []closeEvent
}

func newMemRig(t *testing.T) *memRig {
	r := &memRig{t: t, mc: &memConn{}}
	r.c = New(r.mc, func(id, code uint16, text string) { r.closes = append(r.closes, closeEvent{id, code, text}) })
	return r
}

// deliver reads chunk through Conn in one Read call.
func (r *memRig) deliver(chunk []byte) {
	r.t.Helper()
	r.mc.reads = append(r.mc.reads[:0], chunk)
	buf := make([]byte, len(chunk)+16)
	if n, err := r.c.Read(buf); n != len(chunk) || err != nil || !bytes.Equal(buf[:n], chunk) {
		r.t.Fatalf("Read = %d, %v; want %d, nil, unchanged", n, err, len(chunk))
	}
}

func (r *memRig) write(chunks ...[]byte) {
	r.t.Helper()
	for _, p := range chunks {
		if n, err := r.c.Write(p); n != len(p) || err != nil {
			r.t.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", len(p), n, err, len(p))
		}
	}
}

// ---------------------------------------------------------------------------
// Reference models. They follow the rules in conn.go's package comment and
// the AMQP framing, written independently of Conn's incremental walkers.

// refInbound returns what Conn must report for an inbound byte stream: the
// channel.close events (id > 0) of complete frames, in order, and the channels
// whose channel.close method id has been read. Like amqp091-go, it stops at
// the first frame whose end octet is not 0xCE.
func refInbound(data []byte) (events []closeEvent, awaiting []uint16, broken bool) {
	for p := 0; ; {
		rest := data[p:]
		if len(rest) < frameHeaderLen {
			return
		}
		typ, ch := rest[0], binary.BigEndian.Uint16(rest[1:3])
		size := uint64(binary.BigEndian.Uint32(rest[3:7]))
		hasID := typ == frameMethod && size >= methodIDLen
		var class, method uint16
		if hasID {
			if len(rest) < frameHeaderLen+methodIDLen {
				return
			}
			class, method = binary.BigEndian.Uint16(rest[7:9]), binary.BigEndian.Uint16(rest[9:11])
		}
		isChClose := hasID && ch != 0 && class == classChannel && method == methodClose
		if isChClose {
			awaiting = append(awaiting, ch)
		}
		end := uint64(frameHeaderLen) + size // index of the end octet
		if end >= uint64(len(rest)) {
			return
		}
		if rest[end] != frameEnd {
			broken = true
			return
		}
		if isChClose {
			// Conn keeps at most maxCloseArgs bytes of the arguments (and
			// the end octet, when they are shorter).
			args := rest[frameHeaderLen+methodIDLen : end+1]
			args = args[:min(len(args), maxCloseArgs)]
			if len(args) >= 3 {
				text := args[3:]
				text = text[:min(len(text), int(args[2]))]
				events = append(events, closeEvent{ch, binary.BigEndian.Uint16(args[0:2]), string(text)})
			}
		}
		p += int(end) + 1
	}
}

// model is the channel-state machine Conn implements, fed whole frames.
type model struct {
	open, awaiting map[uint16]bool
	closing        map[uint16]int // pending close → Read call its close-ok came in (0: not yet)
	reads          int
	dropped        uint64
	out            []byte
	events         []closeEvent
}

func newModel() *model {
	return &model{open: map[uint16]bool{}, awaiting: map[uint16]bool{}, closing: map[uint16]int{}}
}

// decide says whether an outbound frame passes, and updates the state.
func (m *model) decide(ch uint16, hasID bool, class, method uint16) bool {
	if ch == 0 {
		return true
	}
	isCh := hasID && class == classChannel
	if isCh && method == methodCloseO && m.awaiting[ch] {
		m.awaiting[ch], m.open[ch] = false, false
		return true
	}
	if !m.open[ch] {
		if isCh && method == methodOpen {
			m.open[ch] = true
			return true
		}
		return false
	}
	if isCh {
		switch method {
		case methodClose:
			if m.awaiting[ch] {
				return false
			}
			if _, ok := m.closing[ch]; !ok {
				m.closing[ch] = 0
			}
		case methodCloseO:
			m.open[ch] = false
		}
	}
	return true
}

// outFrame feeds one whole, well-formed outbound frame.
func (m *model) outFrame(f []byte) {
	ch := binary.BigEndian.Uint16(f[1:3])
	hasID := f[0] == frameMethod && binary.BigEndian.Uint32(f[3:7]) >= methodIDLen
	var class, method uint16
	if hasID {
		class, method = binary.BigEndian.Uint16(f[7:9]), binary.BigEndian.Uint16(f[9:11])
	}
	if m.decide(ch, hasID, class, method) {
		m.out = append(m.out, f...)
	} else {
		m.dropped++
	}
}

// inRead feeds one Read call carrying exactly one whole inbound frame.
func (m *model) inRead(f []byte) []uint16 {
	m.reads++
	var settled []uint16
	for ch, at := range m.closing {
		if at != 0 && at < m.reads {
			delete(m.closing, ch)
			settled = append(settled, ch)
		}
	}
	ev, aw, _ := refInbound(f)
	m.events = append(m.events, ev...)
	for _, ch := range aw {
		m.awaiting[ch] = true
	}
	if f[0] == frameMethod && binary.BigEndian.Uint32(f[3:7]) >= methodIDLen {
		ch := binary.BigEndian.Uint16(f[1:3])
		if ch != 0 && binary.BigEndian.Uint16(f[7:9]) == classChannel && binary.BigEndian.Uint16(f[9:11]) == methodCloseO {
			m.open[ch] = false
			if at, ok := m.closing[ch]; ok && at == 0 {
				m.closing[ch] = m.reads
			}
		}
	}
	return settled
}

// refOutbound runs an arbitrary outbound byte stream (no inbound traffic)
// through the model. ok is false when the stream holds a method frame too
// short for a method id followed by enough bytes that Conn reads a method id
// from beyond the frame: amqp091-go never writes such frames, and Conn's
// decision on them depends on how the stream is chunked.
func refOutbound(data []byte) (out []byte, dropped uint64, ok bool) {
	m := newModel()
	i := min(protocolHeaderLen, len(data))
	out = append(out, data[:i]...)
	for i < len(data) {
		rest := data[i:]
		if len(rest) < frameHeaderLen {
			break // held back
		}
		typ, ch := rest[0], binary.BigEndian.Uint16(rest[1:3])
		size := uint64(binary.BigEndian.Uint32(rest[3:7]))
		hasID := typ == frameMethod && size >= methodIDLen
		if hasID && len(rest) < frameHeaderLen+methodIDLen {
			break // held back
		}
		if typ == frameMethod && !hasID && ch != 0 && len(rest) >= frameHeaderLen+methodIDLen {
			return nil, 0, false
		}
		var class, method uint16
		if hasID {
			class, method = binary.BigEndian.Uint16(rest[7:9]), binary.BigEndian.Uint16(rest[9:11])
		}
		n := min(uint64(len(rest)), frameHeaderLen+size+1)
		if m.decide(ch, hasID, class, method) {
			out = append(out, rest[:n]...)
		} else {
			dropped++
		}
		i += int(n)
	}
	return out, dropped, true
}

// cutsFrom turns two fuzz numbers into at most two cut points in (0, n).
func cutsFrom(n int, a, b uint16) []int {
	var cuts []int
	for _, c := range []uint16{a, b} {
		if n > 1 {
			k := 1 + int(c)%(n-1)
			if !slices.Contains(cuts, k) {
				cuts = append(cuts, k)
			}
		}
	}
	slices.Sort(cuts)
	return cuts
}

func chunks(data []byte, cuts []int) [][]byte {
	var out [][]byte
	prev := 0
	for _, c := range cuts {
		out = append(out, data[prev:c])
		prev = c
	}
	return append(out, data[prev:])
}

func awaitingSet(c *Conn) []uint16 {
	var ids []uint16
	for w := range c.awaiting {
		if c.awaiting[w].Load() == 0 {
			continue
		}
		for b := range 64 {
			if ch := uint16(w*64 + b); bit(&c.awaiting, ch) {
				ids = append(ids, ch)
			}
		}
	}
	return ids
}

func channelEvents(ev []closeEvent) []closeEvent {
	return slices.DeleteFunc(slices.Clone(ev), func(e closeEvent) bool { return e.id == 0 })
}

// ---------------------------------------------------------------------------
// Seeds.

func inboundSeeds() [][]byte {
	bad := heartbeat()
	bad[len(bad)-1] = 0
	return [][]byte{
		nil,
		heartbeat(),
		delivery(1, 1, pattern(128)),
		cat(delivery(1, 1, pattern(10)), chanClose(5, 406, "PRECONDITION_FAILED"), chanCloseOK(5)),
		cat(connClose(320, "CONNECTION_FORCED"), heartbeat()),
		chanClose(300, 404, strings.Repeat("z", 255)),
		cat(bad, chanClose(5, 1, "after bad end")),
		cat(rawFrame(frameMethod, 2, nil), rawFrame(frameMethod, 2, []byte{0, 20, 0}), chanClose(2, 2, "x")),
		methodFrame(2, 20, 40, []byte{1}),
		methodFrame(2, 20, 40, cat(u16(1), []byte{250}, []byte("short"))),
		[]byte("AMQP\x00\x00\x09\x01"),
		{1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 20, 0, 40},
	}
}

func outboundSeeds() [][]byte {
	h := []byte(protoHeader)
	return [][]byte{
		nil,
		h,
		cat(h, connStartOK(), connTuneOK(), connOpen(), chanOpen(1), publish(1, pattern(128))),
		cat(h, chanOpen(3), chanCloseOK(3), publish(3, pattern(300)), basicQos(3, 1), chanOpen(3), basicAck(3, 1)),
		cat(h, publish(9, pattern(5)), chanClose(9, 200, ""), heartbeat()),
		cat(h, chanOpen(1), chanClose(1, 200, "bye"), chanCloseOK(1), chanCloseOK(1)),
		cat(h, rawFrame(frameMethod, 1, nil), chanOpen(1)),
		cat(h, []byte{3, 0, 1, 0xff, 0xff, 0xff, 0xf0}, pattern(100)),
		cat(h, chanOpen(1), []byte{1, 0, 1, 0, 0}),
	}
}

// ---------------------------------------------------------------------------
// Fuzz targets.

// FuzzConnInbound reads arbitrary bytes through Conn, once whole and once
// split in up to three Reads. It must not panic; both runs must agree with
// each other, and the channel.close events and awaiting marks must match the
// reference walk. (connection.close reporting, id 0, is pinned by the
// TestOnClose* tests rather than here.)
func FuzzConnInbound(f *testing.F) {
	for i, s := range inboundSeeds() {
		f.Add(s, uint16(i*7), uint16(i*13+5))
	}
	f.Fuzz(func(t *testing.T, data []byte, a, b uint16) {
		run := func(parts [][]byte) *memRig {
			r := newMemRig(t)
			for _, p := range parts {
				if len(p) > 0 {
					r.deliver(p)
				}
			}
			return r
		}
		whole := run([][]byte{data})
		split := run(chunks(data, cutsFrom(len(data), a, b)))

		we, se := whole.closes, split.closes
		if !slices.Equal(we, se) {
			t.Fatalf("onClose differs with chunking: whole %v, split %v", we, se)
		}
		for _, e := range we {
			if len(e.text) > 255 {
				t.Fatalf("reply text of %d bytes", len(e.text))
			}
		}
		refEv, refAw, refBroken := refInbound(data)
		if got := channelEvents(we); !slices.Equal(got, refEv) {
			t.Fatalf("channel.close events %v, want %v", got, refEv)
		}
		slices.Sort(refAw)
		refAw = slices.Compact(refAw)
		if got := awaitingSet(whole.c); !slices.Equal(got, refAw) {
			t.Fatalf("awaiting close-ok: %v, want %v", got, refAw)
		}
		if got := awaitingSet(split.c); !slices.Equal(got, refAw) {
			t.Fatalf("awaiting close-ok (split): %v, want %v", got, refAw)
		}
		if whole.c.in.broken != refBroken || split.c.in.broken != refBroken {
			t.Fatalf("broken: whole %v split %v, want %v", whole.c.in.broken, split.c.in.broken, refBroken)
		}
	})
}

// FuzzConnOutbound writes arbitrary bytes through Conn, once whole and once
// split in up to three Writes. Every Write must return (len(p), nil), nothing
// may panic, and the broker must receive what the reference model lets
// through.
func FuzzConnOutbound(f *testing.F) {
	for i, s := range outboundSeeds() {
		f.Add(s, uint16(i*11), uint16(i*3+1))
	}
	f.Fuzz(func(t *testing.T, data []byte, a, b uint16) {
		run := func(parts [][]byte) ([]byte, uint64) {
			r := newMemRig(t)
			r.write(parts...)
			return r.mc.out, r.c.Dropped()
		}
		wholeOut, wholeD := run([][]byte{data})
		splitOut, splitD := run(chunks(data, cutsFrom(len(data), a, b)))
		for _, out := range [][]byte{wholeOut, splitOut} {
			if len(out) > len(data) {
				t.Fatalf("broker received %d bytes from %d written", len(out), len(data))
			}
		}
		want, wantD, ok := refOutbound(data)
		if !ok {
			return
		}
		if !bytes.Equal(wholeOut, want) || wholeD != wantD {
			t.Fatalf("one write: Dropped %d want %d; %s", wholeD, wantD, diff(wholeOut, want))
		}
		if !bytes.Equal(splitOut, want) || splitD != wantD {
			t.Fatalf("split write: Dropped %d want %d; %s", splitD, wantD, diff(splitOut, want))
		}
	})
}

// FuzzConnModel runs a program of outbound frames (whole, split, or two per
// Write) and inbound frames (one per Read) against Conn and the model, and
// compares after every step: pending closes and their done channels,
// Dropped, and at the end the bytes the broker received and the
// channel.close events.
func FuzzConnModel(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 0, 3, 1, 0, 0, 2, 1, 0, 0, 1, 1, 0, 2, 0, 1, 9, 0, 2, 1, 0, 2, 1, 1, 0, 2, 3, 1, 0, 0, 7, 1, 0})
	f.Add([]byte{0, 0, 3, 0, 3, 3, 3, 0, 0, 2, 3, 0, 1, 3, 3, 5, 1, 4, 3, 7, 1, 5, 3, 33, 0, 0, 3, 0, 3, 5, 3, 10})
	f.Add([]byte{0, 0, 4, 0, 2, 0, 4, 40, 0, 1, 4, 0, 0, 2, 4, 0, 2, 1, 4, 0, 2, 3, 4, 0, 0, 7, 4, 0})
	f.Add([]byte{0, 0, 5, 0, 0, 1, 5, 0, 2, 1, 5, 0, 2, 3, 5, 0, 0, 0, 5, 0, 0, 1, 5, 0, 2, 1, 5, 0, 2, 4, 5, 0})
	chans := []uint16{0, 1, 2, 63, 64, 65535}
	outFrame := func(kind, x byte, ch uint16) []byte {
		switch kind % 8 {
		case 0:
			return chanOpen(ch)
		case 1:
			return chanClose(ch, 200, "bye")
		case 2:
			return chanCloseOK(ch)
		case 3:
			return basicPublishMethod(ch, "", "q")
		case 4:
			return contentHeader(ch, 60, uint64(x))
		case 5:
			return bodyFrame(ch, pattern(int(x)%50))
		case 6:
			return heartbeat()
		default:
			return basicQos(ch, uint16(x))
		}
	}
	inFrame := func(kind, x byte, ch uint16) []byte {
		switch kind % 6 {
		case 0:
			return chanClose(ch, 300+uint16(x), strings.Repeat("e", int(x)))
		case 1:
			return chanCloseOK(ch)
		case 2:
			return delivery(ch, uint64(x), pattern(int(x)%40))
		case 3:
			return heartbeat()
		case 4:
			return chanOpenOK(ch)
		default:
			return basicAck(ch, uint64(x))
		}
	}
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 400 {
			prog = prog[:400]
		}
		r := newMemRig(t)
		m := newModel()
		r.write([]byte(protoHeader))
		m.out = append(m.out, protoHeader...)
		dones := map[uint16]<-chan struct{}{}
		for step := 0; len(prog) >= 4; step++ {
			op, kind, chi, x := prog[0], prog[1], prog[2], prog[3]
			prog = prog[4:]
			ch := chans[int(chi)%len(chans)]
			switch op % 4 {
			case 0: // one frame, one Write
				fr := outFrame(kind, x, ch)
				r.write(fr)
				m.outFrame(fr)
			case 1: // one frame split over two Writes
				fr := outFrame(kind, x, ch)
				k := int(x) % len(fr)
				r.write(fr[:k], fr[k:])
				m.outFrame(fr)
			case 2: // one inbound frame, one Read
				fr := inFrame(kind, x, ch)
				r.deliver(fr)
				for _, id := range m.inRead(fr) {
					if d := dones[id]; d == nil || !isClosed(d) {
						t.Fatalf("step %d: pending close of %d settled in the model but its done is not closed", step, id)
					}
					delete(dones, id)
				}
			case 3: // two frames in one Write
				f1, f2 := outFrame(kind, x, ch), outFrame(kind>>3, x, chans[int(chi>>3)%len(chans)])
				r.write(cat(f1, f2))
				m.outFrame(f1)
				m.outFrame(f2)
			}
			// Compare pending closes.
			var want []uint16
			for id := range m.closing {
				want = append(want, id)
			}
			slices.Sort(want)
			if got := pendingIDs(r.c); !slices.Equal(got, want) {
				t.Fatalf("step %d (op %d kind %d ch %d): pending closes %v, want %v", step, op%4, kind, ch, got, want)
			}
			r.c.mu.Lock()
			for id, pc := range r.c.closing {
				if d, ok := dones[id]; ok && d != (<-chan struct{})(pc.done) {
					t.Errorf("step %d: pending close of %d got a new done channel", step, id)
				}
				dones[id] = pc.done
				if isClosed(pc.done) {
					t.Errorf("step %d: pending close of %d is still listed but done is closed", step, id)
				}
			}
			r.c.mu.Unlock()
			if t.Failed() {
				t.FailNow()
			}
			if d := r.c.Dropped(); d != m.dropped {
				t.Fatalf("step %d: Dropped() = %d, want %d", step, d, m.dropped)
			}
			if id, d := r.c.PendingClose(); (d == nil) != (len(m.closing) == 0) {
				t.Fatalf("step %d: PendingClose = %d, %v with model pending %v", step, id, d, m.closing)
			}
		}
		if got := r.mc.out; !bytes.Equal(got, m.out) {
			t.Fatalf("broker received: %s", diff(got, m.out))
		}
		if got := channelEvents(r.closes); !slices.Equal(got, m.events) {
			t.Fatalf("channel.close events %v, want %v", got, m.events)
		}
	})
}

package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// The fuzz targets run Conn over memConn (conn_test.go): the deterministic
// tests use net.Pipe as well, fuzzing uses only the in-memory conn to get
// many more executions per second through the same Conn code.

// ---------------------------------------------------------------------------
// Reference models. They follow the rules in conn.go's package comment and
// the AMQP framing, written independently of Conn's incremental walkers: they
// look at whole frames, or at whole frame starts, never at Read boundaries.

// judgeLen is how many bytes of a frame Conn needs to judge it: header and
// method id for a method frame that has one, the header for the rest.
func judgeLen(f []byte) int {
	if f[0] == frameMethod && binary.BigEndian.Uint32(f[3:7]) >= methodIDLen {
		return frameHeaderLen + methodIDLen
	}
	return frameHeaderLen
}

// methodOf returns the class and method id of a frame, if it has them.
func methodOf(f []byte) (class, method uint16, ok bool) {
	if len(f) < frameHeaderLen+methodIDLen || f[0] != frameMethod || binary.BigEndian.Uint32(f[3:7]) < methodIDLen {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(f[7:9]), binary.BigEndian.Uint16(f[9:11]), true
}

// refArgsEnd parses the arguments of the method frame starting f, whose
// end octet is at index end (perhaps beyond f), the way amqp091-go reads
// them. It reports false when they and the frame disagree within f: bytes
// left between the arguments and the end octet, or an end octet before the
// arguments are complete; then n is the index where they part. Frames that
// are not method frames of a method amqp091-go knows always agree.
func refArgsEnd(f []byte, end uint64) (n int, ok bool) {
	class, method, hasID := methodOf(f)
	sig, known := methodArgs[uint32(class)<<16|uint32(method)]
	if !hasID || !known {
		return 0, true
	}
	limit := min(end, uint64(len(f))) // the argument bytes that are here
	p := uint64(frameStartLen)
	for _, field := range []byte(sig) {
		var size uint64
		switch field {
		case 's', 'S':
			prefix := uint64(1)
			if field == 'S' {
				prefix = 4
			}
			if p+prefix > limit {
				return int(limit), end >= uint64(len(f)) // runs past what is here
			}
			for _, b := range f[p : p+prefix] {
				size = size<<8 | uint64(b)
			}
			size += prefix
		default:
			size = uint64(field - '0')
		}
		if p+size > limit {
			return int(limit), end >= uint64(len(f))
		}
		p += size
	}
	if p < limit {
		return int(p), false // bytes after the arguments
	}
	return int(p), true
}

// closeEventOf decodes a complete channel.close or connection.close frame
// the way Conn reports it: from at most maxCloseArgs bytes of the arguments
// (the end octet included when they are shorter).
func closeEventOf(f []byte) (closeEvent, bool) {
	args := f[frameHeaderLen+methodIDLen:]
	args = args[:min(len(args), maxCloseArgs)]
	if len(args) < 3 {
		return closeEvent{}, false
	}
	text := args[3:]
	text = text[:min(len(text), int(args[2]))]
	return closeEvent{binary.BigEndian.Uint16(f[1:3]), binary.BigEndian.Uint16(args[0:2]), string(text)}, true
}

// refIn is what Conn must do with an inbound byte stream read to its end
// when no channel.close of ours is outstanding (so every channel close-ok
// is a stray).
type refIn struct {
	events   []closeEvent // channel.close and connection.close, complete frames
	awaiting []uint16     // channels whose channel.close method id was read
	dropped  uint64       // stray close-oks whose start was read
	want     []byte       // what amqp091-go is handed, up to a bad frame
	broken   bool         // a frame's end octet is not 0xCE
	tail     []byte       // broken: the stream from the bad frame on
	tailMin  int          // broken: how much of tail at least is handed on
}

func refInbound(data []byte) (r refIn) {
	for p := 0; ; {
		rest := data[p:]
		if len(rest) < frameHeaderLen || len(rest) < judgeLen(rest) {
			return // kept back, never handed on
		}
		ch := binary.BigEndian.Uint16(rest[1:3])
		size := uint64(binary.BigEndian.Uint32(rest[3:7]))
		if rest[0] == frameMethod && size < methodIDLen {
			r.broken = true // amqp091-go would take the id from the next frame
			return
		}
		class, method, hasID := methodOf(rest)
		isChClose := hasID && ch != 0 && class == classChannel && method == methodClose
		isConnClose := hasID && ch == 0 && class == classConnection && method == methodConnClose
		stray := hasID && ch != 0 && class == classChannel && method == methodCloseO
		if isChClose {
			r.awaiting = append(r.awaiting, ch)
		}
		if stray {
			r.dropped++
		}
		end := uint64(frameHeaderLen) + size // index of the end octet
		if argsEnd, ok := refArgsEnd(rest, end); !ok {
			// The arguments end before the frame does, or the frame
			// before them: Read fails with ErrMalformed, and amqp091-go
			// was handed at most the frame up to where they part.
			r.broken, r.tail, r.tailMin = true, rest[:argsEnd], 0
			if stray {
				r.tail = nil
			}
			return
		}
		if end >= uint64(len(rest)) {
			if !stray {
				r.want = append(r.want, rest...)
			}
			return
		}
		if rest[end] != frameEnd {
			// Conn gives up here: Read fails with ErrMalformed. Of the
			// bad frame, amqp091-go may have been handed what earlier
			// Reads carried (never its last byte); nothing after it.
			r.broken, r.tail, r.tailMin = true, rest[:end], 0
			if stray {
				r.tail = nil // its first part was left out: nothing of it is handed on
			}
			return
		}
		f := rest[:end+1]
		if isChClose || isConnClose {
			if ev, ok := closeEventOf(f); ok {
				r.events = append(r.events, ev)
			}
		}
		if !stray {
			r.want = append(r.want, f...)
		}
		p += int(end) + 1
	}
}

// checkRefIn compares what a Conn handed on and reported with refInbound.
func checkRefIn(t *testing.T, what string, ref refIn, r *memRig) {
	t.Helper()
	got := r.in
	if !bytes.HasPrefix(got, ref.want) {
		t.Fatalf("%s: amqp091-go was handed the wrong bytes: %s", what, diff(got, ref.want))
	}
	if extra := got[len(ref.want):]; !ref.broken && len(extra) > 0 {
		t.Fatalf("%s: %d bytes too many handed on: %s", what, len(extra), diff(got, ref.want))
	} else if ref.broken && !bytes.HasPrefix(ref.tail, extra) {
		t.Fatalf("%s: at the bad frame: handed on % x, want at most a prefix of % x", what, extra, ref.tail)
	}
	if !slices.Equal(r.closes, ref.events) {
		t.Fatalf("%s: onClose saw %v, want %v", what, r.closes, ref.events)
	}
	aw := slices.Clone(ref.awaiting)
	slices.Sort(aw)
	aw = slices.Compact(aw)
	if got := awaitingSet(r.c); !slices.Equal(got, aw) {
		t.Fatalf("%s: awaiting close-ok: %v, want %v", what, got, aw)
	}
	if d := r.c.DroppedInbound(); d != ref.dropped {
		t.Fatalf("%s: DroppedInbound() = %d, want %d", what, d, ref.dropped)
	}
	if r.c.broken != ref.broken {
		t.Fatalf("%s: broken %v, want %v", what, r.c.broken, ref.broken)
	}
}

// model is the channel-state machine Conn implements, fed whole outbound
// frames and inbound frames whose starts and ends become readable.
type model struct {
	open, awaiting, closeSent map[uint16]bool

	dropped   uint64
	droppedIn uint64
	out       []byte // what the broker must receive
	events    []closeEvent

	// inbound
	in        []modelIn // frames the broker sent, in order
	inData    []byte    // their bytes
	delivered int       // bytes of inData Conn has read
	next      int       // first frame not yet complete
}

type modelIn struct {
	off    int
	b      []byte
	judged bool
	pass   bool
}

func newModel() *model {
	return &model{open: map[uint16]bool{}, awaiting: map[uint16]bool{}, closeSent: map[uint16]bool{}}
}

// decide says whether an outbound frame passes, and updates the state.
func (m *model) decide(ch uint16, hasID bool, class, method uint16) bool {
	if ch == 0 {
		return true
	}
	isCh := hasID && class == classChannel
	if isCh && method == methodCloseO && m.awaiting[ch] {
		// The answer to the broker's close: always out; from here on a
		// close-ok for a crossed close of ours is a stray.
		m.awaiting[ch], m.open[ch], m.closeSent[ch] = false, false, false
		return true
	}
	if !m.open[ch] {
		if isCh && method == methodOpen {
			m.open[ch], m.closeSent[ch] = true, false
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
			m.closeSent[ch] = true
		case methodCloseO:
			m.open[ch] = false
		}
	}
	return true
}

// outFrame feeds one whole, well-formed outbound frame.
func (m *model) outFrame(f []byte) {
	class, method, hasID := methodOf(f)
	if m.decide(binary.BigEndian.Uint16(f[1:3]), hasID, class, method) {
		m.out = append(m.out, f...)
	} else {
		m.dropped++
	}
}

// queueIn adds well-formed inbound frames the broker sends.
func (m *model) queueIn(b []byte) {
	for _, f := range splitFrames(b) {
		m.in = append(m.in, modelIn{off: len(m.inData), b: f})
		m.inData = append(m.inData, f...)
	}
}

func (m *model) pending() int { return len(m.inData) - m.delivered }

// deliver makes n more inbound bytes readable, and judges and completes
// frames as their starts and ends come in.
func (m *model) deliver(n int) {
	m.delivered += n
	for m.next < len(m.in) {
		f := &m.in[m.next]
		if !f.judged {
			if f.off+judgeLen(f.b) > m.delivered {
				return
			}
			f.judged = true
			f.pass = m.judgeIn(f.b)
		}
		if f.off+len(f.b) > m.delivered {
			return
		}
		m.completeIn(f)
		m.next++
	}
}

// judgeIn decides on an inbound frame once its start has been read.
func (m *model) judgeIn(f []byte) bool {
	ch := binary.BigEndian.Uint16(f[1:3])
	class, method, ok := methodOf(f)
	if !ok || ch == 0 || class != classChannel {
		return true
	}
	switch method {
	case methodClose:
		// amqp091-go will answer it, and a close of ours that crossed it
		// can get at most a stray close-ok from here on, even one read
		// before the answer goes out.
		m.awaiting[ch], m.closeSent[ch] = true, false
	case methodCloseO:
		if !m.closeSent[ch] {
			m.droppedIn++
			return false
		}
	}
	return true
}

// completeIn acts on an inbound frame once its last byte has been read.
func (m *model) completeIn(f *modelIn) {
	ch := binary.BigEndian.Uint16(f.b[1:3])
	class, method, _ := methodOf(f.b)
	switch {
	case ch != 0 && class == classChannel && method == methodClose,
		ch == 0 && class == classConnection && method == methodConnClose:
		if ev, ok := closeEventOf(f.b); ok {
			m.events = append(m.events, ev)
		}
	case ch != 0 && class == classChannel && method == methodCloseO && f.pass:
		m.closeSent[ch], m.open[ch] = false, false
	}
}

// handedOn is what amqp091-go must have been handed so far: the readable
// bytes of every frame judged to pass.
func (m *model) handedOn() []byte {
	var b []byte
	for _, f := range m.in {
		if !f.judged {
			break
		}
		if f.pass {
			b = append(b, m.inData[f.off:min(f.off+len(f.b), m.delivered)]...)
		}
	}
	return b
}

// refOutbound runs an arbitrary outbound byte stream (no inbound traffic)
// through the model.
func refOutbound(data []byte) (out []byte, dropped uint64) {
	m := newModel()
	i := min(protocolHeaderLen, len(data))
	out = append(out, data[:i]...)
	for i < len(data) {
		rest := data[i:]
		if len(rest) < frameHeaderLen || len(rest) < judgeLen(rest) {
			break // held back
		}
		ch := binary.BigEndian.Uint16(rest[1:3])
		size := uint64(binary.BigEndian.Uint32(rest[3:7]))
		class, method, hasID := methodOf(rest)
		n := min(uint64(len(rest)), frameHeaderLen+size+1)
		if m.decide(ch, hasID, class, method) {
			out = append(out, rest[:n]...)
		} else {
			dropped++
		}
		i += int(n)
	}
	return out, dropped
}

// cutsFrom turns fuzz numbers into cut points in (0, n), sorted.
func cutsFrom(n int, nums ...uint16) []int {
	var cuts []int
	for _, c := range nums {
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
			if ch := uint16(w*64 + b); c.awaiting.get(ch) {
				ids = append(ids, ch)
			}
		}
	}
	return ids
}

// ---------------------------------------------------------------------------
// Seeds.

func inboundSeeds() [][]byte {
	bad := heartbeat()
	bad[len(bad)-1] = 0
	badOK := chanCloseOK(3)
	badOK[len(badOK)-1] = 1
	return [][]byte{
		nil,
		heartbeat(),
		delivery(1, 1, pattern(128)),
		cat(delivery(1, 1, pattern(10)), chanClose(5, 406, "PRECONDITION_FAILED"), chanCloseOK(5)),
		cat(connClose(320, "CONNECTION_FORCED"), heartbeat()),
		chanClose(300, 404, strings.Repeat("z", 255)),
		cat(bad, chanClose(5, 1, "after bad end")),
		cat(heartbeat(), badOK, heartbeat()),
		cat(rawFrame(frameMethod, 2, nil), rawFrame(frameMethod, 2, []byte{0, 20, 0}), chanClose(2, 2, "x")),
		methodFrame(2, 20, 40, []byte{1}),
		methodFrame(2, 20, 40, cat(u16(1), []byte{250}, []byte("short"))),
		[]byte("AMQP\x00\x00\x09\x01"),
		{1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 20, 0, 40},
		cat(chanCloseOK(7), chanCloseOK(0), chanOpenOK(7), chanCloseOK(7)[:9]),
		cat(delivery(1, 1, pattern(3)), chanClose(2, 1, "x")[:10]),
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
		cat(h, chanOpen(1), rawFrame(frameMethod, 1, []byte{0, 20}), chanCloseOK(1), basicQos(1, 1)),
		cat(h, []byte{3, 0, 1, 0xff, 0xff, 0xff, 0xf0}, pattern(100)),
		cat(h, chanOpen(1), []byte{1, 0, 1, 0, 0}),
	}
}

// ---------------------------------------------------------------------------
// Fuzz targets.

// readSizeTable maps fuzz numbers to Read buffer sizes: bufio's, the
// smallest Read serves directly, and tiny ones through Conn's own buffer.
var readSizeTable = []int{4096, 22, 1, 7, 11, 21, 23, 100, 3, 4096}

// FuzzConnInbound reads arbitrary bytes through Conn (no outbound traffic,
// so every channel close-ok is a stray), whole, split in up to four Reads,
// and with Read buffers of several sizes. It must not panic or return
// (0, nil); what amqp091-go is handed, the close events, the awaiting marks,
// DroppedInbound and the broken flag must match the reference walk.
func FuzzConnInbound(f *testing.F) {
	for i, s := range inboundSeeds() {
		f.Add(s, uint16(i*7), uint16(i*13+5), uint16(i), uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, a, b, c uint16, sz uint8) {
		ref := refInbound(data)
		run := func(what string, parts [][]byte, sizes ...int) {
			r := newMemRig(t, sizes...)
			for _, p := range parts {
				r.feed(p)
			}
			r.mc.eof = true
			for range 2 {
				if n, err := r.read(); n != 0 || (err != io.EOF && !(ref.broken && errors.Is(err, ErrMalformed))) {
					t.Fatalf("%s: Read at the end = %d, %v; want 0, EOF (or ErrMalformed after a bad frame)", what, n, err)
				}
			}
			checkRefIn(t, what, ref, r)
		}
		run("whole", [][]byte{data})
		cuts := cutsFrom(len(data), a, b, c)
		run("split", chunks(data, cuts))
		run("split, read sizes", chunks(data, cuts), readSizeTable[int(sz)%len(readSizeTable)], 1+int(sz)%40)
		run("byte-sized reads", [][]byte{data}, 1)
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
		want, wantD := refOutbound(data)
		if !bytes.Equal(wholeOut, want) || wholeD != wantD {
			t.Fatalf("one write: Dropped %d want %d; %s", wholeD, wantD, diff(wholeOut, want))
		}
		if !bytes.Equal(splitOut, want) || splitD != wantD {
			t.Fatalf("split write: Dropped %d want %d; %s", splitD, wantD, diff(splitOut, want))
		}
	})
}

// FuzzConnModel runs a program of outbound writes and inbound reads against
// Conn and the model. Outbound frames go out whole, split over two Writes
// (with inbound reads between the halves), or two per Write. Inbound frames
// are queued and delivered in chunks of any size (often ending right at or
// just before a frame's judging point or end), read with buffers of any
// size. After every step the broker's bytes, what amqp091-go was handed,
// Dropped, DroppedInbound and the close events must match the model, which
// decides independently which inbound frames amqp091-go sees.
//
// A program is a list of two-byte steps: op<<5 | kind<<2 | channel index,
// then an argument x. Every byte means something, so that random programs
// often go through a channel's whole life (open, close, crossing close,
// answer, reopen, close-oks in pieces).
func FuzzConnModel(f *testing.F) {
	const (
		opOut       = iota // one frame, one Write
		opOutSplit         // one frame over two Writes
		opOutTwo           // two frames, one Write
		opQueue            // the broker sends frames (not read yet)
		opRead             // a chunk of what the broker sent is read
		opQueueRead        // the broker sends frames and everything is read
		opReadAll          // everything the broker sent is read
		opOutAround        // one frame over two Writes, everything sent read between them
	)
	const ( // outbound kinds
		oOpen = iota
		oClose
		oCloseOK
		oPublish
		oHeader
		oBody
		oHeartbeat
		oQos
	)
	const ( // inbound kinds
		iClose = iota
		iCloseOK
		iDelivery
		iHeartbeat
		iOpenOK
		iAck
		iConnClose
		iCloseOK2
	)
	const ( // read chunk modes (x%4 for opRead)
		toJudge = iota
		toBeforeJudge
		toBeforeEnd
	)
	step := func(op, kind, chi int, x byte) []byte { return []byte{byte(op<<5 | kind<<2 | chi), x} }
	prog := func(steps ...[]byte) []byte { return slices.Concat(steps...) }
	f.Add(prog( // crossing close, id reused, stray close-ok and open-ok read in pieces
		step(opOut, oOpen, 0, 0), step(opOut, oClose, 0, 0), step(opQueueRead, iClose, 0, 5),
		step(opOut, oCloseOK, 0, 0), step(opOut, oOpen, 0, 0), step(opQueue, iCloseOK, 0, 0),
		step(opQueue, iOpenOK, 0, 0), step(opRead, 2, 0, toBeforeJudge), step(opRead, 3, 0, toJudge),
		step(opReadAll, 0, 0, 0), step(opOut, oClose, 0, 0), step(opQueueRead, iCloseOK, 0, 0),
		step(opOut, oPublish, 0, 0), step(opQueueRead, iCloseOK, 0, 0)))
	f.Add(prog( // clean close, close-ok judged but incomplete while frames go out
		step(opOut, oOpen, 1, 0), step(opOut, oClose, 1, 0), step(opQueue, iCloseOK, 1, 0),
		step(opRead, 1, 1, toJudge), step(opOut, oQos, 1, 3), step(opRead, 2, 1, toBeforeEnd),
		step(opOut, oQos, 1, 4), step(opReadAll, 0, 0, 0), step(opOut, oQos, 1, 5),
		step(opQueueRead, iCloseOK, 1, 0)))
	f.Add(prog( // close-ok read behind the broker's close, before the answer
		step(opOut, oOpen, 0, 0), step(opOut, oClose, 0, 0), step(opQueue, iClose, 0, 4),
		step(opQueue, iCloseOK, 0, 0), step(opReadAll, 0, 0, 0), step(opOut, oCloseOK, 0, 0),
		step(opOut, oOpen, 0, 0), step(opQueue, iOpenOK, 0, 0), step(opReadAll, 2, 0, 0)))
	f.Add(prog( // outbound close split around the broker's close
		step(opOut, oOpen, 0, 0), step(opQueue, iClose, 0, 2), step(opOutAround, oClose, 0, 5),
		step(opOut, oCloseOK, 0, 0), step(opQueueRead, iCloseOK, 0, 0)))
	f.Add(prog( // our close-ok without the broker's close, then reopen
		step(opOut, oOpen, 1, 0), step(opOut, oClose, 1, 0), step(opOut, oCloseOK, 1, 0),
		step(opOut, oOpen, 1, 0), step(opQueueRead, iCloseOK, 1, 0), step(opOutTwo, oPublish, 1, 1)))
	f.Add(prog(step(opOut, oOpen, 3, 0), step(opOutTwo, oClose|oHeader<<3, 3, 40), step(opQueueRead, iConnClose, 2, 7),
		step(opQueueRead, iDelivery, 3, 200), step(opOutSplit, oBody, 3, 9)))
	chans := []uint16{1, 2, 0, 65535}
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
	inFrames := func(kind, x byte, ch uint16) []byte {
		switch kind % 8 {
		case 0:
			return chanClose(ch, 300+uint16(x), strings.Repeat("e", int(x)%64))
		case 1, 7:
			return chanCloseOK(ch)
		case 2:
			return delivery(ch, uint64(x), pattern(int(x)%40))
		case 3:
			return heartbeat()
		case 4:
			return chanOpenOK(ch)
		case 5:
			return basicAck(ch, uint64(x))
		default:
			return connClose(300+uint16(x), "conn "+strings.Repeat("c", int(x)%8))
		}
	}
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 300 {
			prog = prog[:300]
		}
		r := newMemRig(t)
		m := newModel()
		r.write([]byte(protoHeader))
		m.out = append(m.out, protoHeader...)
		deliver := func(n int, size int) {
			if n <= 0 {
				return
			}
			r.sizes, r.nread = []int{size}, 0
			r.feed(m.inData[m.delivered : m.delivered+n])
			m.deliver(n)
		}
		for step := 0; len(prog) >= 2; step++ {
			op, kind, chi, x := int(prog[0]>>5), int(prog[0]>>2)&7, int(prog[0]&3), prog[1]
			prog = prog[2:]
			ch := chans[chi]
			size := readSizeTable[(kind+int(x))%len(readSizeTable)]
			switch op {
			case opOut:
				fr := outFrame(byte(kind), x, ch)
				r.write(fr)
				m.outFrame(fr)
			case opOutSplit:
				fr := outFrame(byte(kind), x, ch)
				k := int(x) % len(fr)
				r.write(fr[:k], fr[k:])
				m.outFrame(fr)
			case opOutTwo:
				f1, f2 := outFrame(byte(kind), x, ch), outFrame(x&7, x>>3, chans[(chi+int(x>>6))%len(chans)])
				r.write(cat(f1, f2))
				m.outFrame(f1)
				m.outFrame(f2)
			case opQueue:
				m.queueIn(inFrames(byte(kind), x, ch))
			case opRead:
				if m.pending() == 0 {
					break
				}
				n := 1 + int(x>>2)%m.pending()
				if m.next < len(m.in) {
					// Read up to a point that matters for the frame being
					// read: its judging point, just before it, or just
					// before its end.
					fr := m.in[m.next]
					switch x % 4 {
					case toJudge:
						n = fr.off + judgeLen(fr.b) - m.delivered
					case toBeforeJudge:
						n = fr.off + judgeLen(fr.b) - 1 - m.delivered
					case toBeforeEnd:
						n = fr.off + len(fr.b) - 1 - m.delivered
					}
				}
				deliver(n, size)
			case opQueueRead:
				m.queueIn(inFrames(byte(kind), x, ch))
				deliver(m.pending(), size)
			case opReadAll:
				deliver(m.pending(), size)
			case opOutAround:
				fr := outFrame(byte(kind), x, ch)
				k := int(x) % len(fr)
				r.write(fr[:k])
				if k >= judgeLen(fr) {
					m.outFrame(fr) // judged on the first Write
				}
				deliver(m.pending(), size)
				r.write(fr[k:])
				if k < judgeLen(fr) {
					m.outFrame(fr)
				}
			}
			if got, want := r.in, m.handedOn(); !bytes.Equal(got, want) {
				t.Fatalf("step %d (op %d kind %d ch %d x %d): amqp091-go was handed the wrong bytes: %s", step, op, kind, ch, x, diff(got, want))
			}
			if got := r.mc.out; !bytes.Equal(got, m.out) {
				t.Fatalf("step %d (op %d kind %d ch %d x %d): broker received: %s", step, op, kind, ch, x, diff(got, m.out))
			}
			if d := r.c.Dropped(); d != m.dropped {
				t.Fatalf("step %d: Dropped() = %d, want %d", step, d, m.dropped)
			}
			if d := r.c.DroppedInbound(); d != m.droppedIn {
				t.Fatalf("step %d: DroppedInbound() = %d, want %d", step, d, m.droppedIn)
			}
			if !slices.Equal(r.closes, m.events) {
				t.Fatalf("step %d: close events %v, want %v", step, r.closes, m.events)
			}
		}
		deliver(m.pending(), 4096)
		if got, want := r.in, m.handedOn(); !bytes.Equal(got, want) || m.next != len(m.in) {
			t.Fatalf("at the end: amqp091-go was handed the wrong bytes: %s", diff(got, want))
		}
		if r.c.broken {
			t.Fatal("walker lost frame sync")
		}
		r.mc.eof = true
		if n, err := r.read(); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
		}
	})
}

package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// Leak check.
//
// warren keeps test-only dependencies (goleak) out of the root module's
// go.mod (see integration/main_test.go), so this package checks for leaked
// goroutines itself: after all tests, no goroutine may still be running code
// from this package (test helpers or Conn).

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitNoLeaks(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "wire: leaked goroutines after all tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitNoLeaks polls until no goroutine other than the caller runs code of
// this package, and returns the offending stacks if some still do.
func waitNoLeaks(wait time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for i, g := range strings.Split(string(buf), "\n\n") {
			if i == 0 { // the calling goroutine comes first
				continue
			}
			if strings.Contains(g, reflect.TypeFor[Conn]().PkgPath()+".") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Frame encoding.

const protoHeader = "AMQP\x00\x00\x09\x01"

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func shortstr(s string) []byte {
	if len(s) > 255 {
		panic("shortstr too long")
	}
	return append([]byte{byte(len(s))}, s...)
}

func cat(parts ...[]byte) []byte {
	out := []byte{}
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// rawFrame encodes type(1) channel(2) size(4) payload frame-end.
func rawFrame(typ byte, ch uint16, payload []byte) []byte {
	f := make([]byte, 0, frameHeaderLen+len(payload)+1)
	f = append(f, typ)
	f = binary.BigEndian.AppendUint16(f, ch)
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	f = append(f, payload...)
	return append(f, frameEnd)
}

func methodFrame(ch, class, method uint16, args []byte) []byte {
	return rawFrame(frameMethod, ch, cat(u16(class), u16(method), args))
}

// contentHeader encodes a basic content header with delivery-mode 2.
func contentHeader(ch uint16, class uint16, bodySize uint64) []byte {
	return rawFrame(2, ch, cat(u16(class), u16(0), u64(bodySize), u16(0x1000), []byte{2}))
}

func bodyFrame(ch uint16, data []byte) []byte { return rawFrame(3, ch, data) }

func heartbeat() []byte { return rawFrame(8, 0, nil) }

func closeArgs(code uint16, text string, class, method uint16) []byte {
	return cat(u16(code), shortstr(text), u16(class), u16(method))
}

func chanOpen(ch uint16) []byte   { return methodFrame(ch, 20, 10, shortstr("")) }
func chanOpenOK(ch uint16) []byte { return methodFrame(ch, 20, 11, u32(0)) }
func chanClose(ch uint16, code uint16, text string) []byte {
	return methodFrame(ch, 20, 40, closeArgs(code, text, 60, 40))
}
func chanCloseOK(ch uint16) []byte { return methodFrame(ch, 20, 41, nil) }
func connClose(code uint16, text string) []byte {
	return methodFrame(0, 10, 50, closeArgs(code, text, 0, 0))
}
func connCloseOK() []byte { return methodFrame(0, 10, 51, nil) }
func connStartOK() []byte {
	return methodFrame(0, 10, 11, cat(u32(0), shortstr("PLAIN"), u32(12), []byte("\x00guest\x00guest"), shortstr("en_US")))
}
func connTuneOK() []byte { return methodFrame(0, 10, 31, cat(u16(2047), u32(131072), u16(60))) }
func connOpen() []byte   { return methodFrame(0, 10, 40, cat(shortstr("/"), shortstr(""), []byte{0})) }
func basicQos(ch uint16, prefetch uint16) []byte {
	return methodFrame(ch, 60, 10, cat(u32(0), u16(prefetch), []byte{0}))
}
func basicAck(ch uint16, tag uint64) []byte { return methodFrame(ch, 60, 80, cat(u64(tag), []byte{0})) }
func basicPublishMethod(ch uint16, exchange, key string) []byte {
	return methodFrame(ch, 60, 40, cat(u16(0), shortstr(exchange), shortstr(key), []byte{0}))
}
func basicDeliverMethod(ch uint16, tag uint64) []byte {
	return methodFrame(ch, 60, 60, cat(shortstr("ctag-1"), u64(tag), []byte{0}, shortstr(""), shortstr("q")))
}

// publishFrames returns the frames of one basic.publish: method, header and
// body frames of at most maxPayload bytes each.
func publishFrames(ch uint16, body []byte, maxPayload int) [][]byte {
	fs := [][]byte{basicPublishMethod(ch, "", "q"), contentHeader(ch, 60, uint64(len(body)))}
	for len(body) > 0 {
		n := min(maxPayload, len(body))
		fs = append(fs, bodyFrame(ch, body[:n]))
		body = body[n:]
	}
	return fs
}

func publish(ch uint16, body []byte) []byte { return cat(publishFrames(ch, body, 131064)...) }

func delivery(ch uint16, tag uint64, body []byte) []byte {
	return cat(basicDeliverMethod(ch, tag), contentHeader(ch, 60, uint64(len(body))), bodyFrame(ch, body))
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// piece is one outbound unit (a frame or the protocol header) and whether
// Conn must let it through.
type piece struct {
	b    []byte
	drop bool
}

func pass(fs ...[]byte) []piece {
	ps := make([]piece, len(fs))
	for i, f := range fs {
		ps[i] = piece{b: f}
	}
	return ps
}

func drop(fs ...[]byte) []piece {
	ps := make([]piece, len(fs))
	for i, f := range fs {
		ps[i] = piece{b: f, drop: true}
	}
	return ps
}

func script(groups ...[]piece) []piece { return slices.Concat(groups...) }

// assemble returns what the client writes, what the broker must receive and
// how many frames Conn must drop.
func assemble(ps []piece) (in, want []byte, drops uint64) {
	for _, p := range ps {
		in = append(in, p.b...)
		if p.drop {
			drops++
		} else {
			want = append(want, p.b...)
		}
	}
	return in, want, drops
}

// ---------------------------------------------------------------------------
// Test rig: a Conn over one end of a net.Pipe; the other end is the broker.

type closeEvent struct {
	id, code uint16
	text     string
}

func (e closeEvent) String() string { return fmt.Sprintf("{%d %d %q}", e.id, e.code, e.text) }

// enterConn tells the test when a Read reaches the underlying connection,
// that is after Conn.Read has done its bookkeeping (settling closes).
type enterConn struct {
	net.Conn
	entered chan struct{}
}

func (e *enterConn) Read(p []byte) (int, error) {
	select {
	case e.entered <- struct{}{}:
	default:
	}
	return e.Conn.Read(p)
}

const testTimeout = 10 * time.Second

type rig struct {
	t    testing.TB
	c    *Conn
	raw  *enterConn // the client end, wrapped by c
	peer net.Conn   // the broker end

	mu     sync.Mutex
	out    []byte       // what the broker received
	closes []closeEvent // what onClose saw

	sinkDone chan struct{}
	stop     sync.Once
}

func newRig(t testing.TB) *rig {
	t.Helper()
	a, b := net.Pipe()
	r := &rig{t: t, raw: &enterConn{Conn: a, entered: make(chan struct{}, 1)}, peer: b, sinkDone: make(chan struct{})}
	r.c = New(r.raw, func(id, code uint16, text string) {
		r.mu.Lock()
		r.closes = append(r.closes, closeEvent{id, code, text})
		r.mu.Unlock()
	})
	dl := time.Now().Add(testTimeout)
	_ = a.SetDeadline(dl)
	_ = b.SetDeadline(dl)
	go r.sink()
	t.Cleanup(r.shutdown)
	return r
}

func (r *rig) sink() {
	defer close(r.sinkDone)
	buf := make([]byte, 64<<10)
	for {
		n, err := r.peer.Read(buf)
		r.mu.Lock()
		r.out = append(r.out, buf[:n]...)
		r.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (r *rig) shutdown() {
	r.stop.Do(func() {
		_ = r.raw.Conn.Close()
		_ = r.peer.Close()
		select {
		case <-r.sinkDone:
		case <-time.After(testTimeout):
			r.t.Errorf("sink goroutine did not stop")
		}
	})
}

// marker is written straight onto the pipe, past Conn, to know when the
// sink has everything written before it.
var marker = []byte("\x00<<warren wire test sync marker 7f3a9c>>\x00")

// take returns and forgets everything the broker has received so far.
func (r *rig) take() []byte {
	r.t.Helper()
	if _, err := r.raw.Conn.Write(marker); err != nil {
		r.t.Fatalf("writing sync marker: %v", err)
	}
	deadline := time.Now().Add(testTimeout)
	for {
		r.mu.Lock()
		if bytes.HasSuffix(r.out, marker) {
			got := bytes.Clone(r.out[:len(r.out)-len(marker)])
			r.out = r.out[:0]
			r.mu.Unlock()
			return got
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			r.t.Fatalf("sink never saw the sync marker")
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// finish closes the client end and returns everything the broker received
// since the last take.
func (r *rig) finish() []byte {
	r.t.Helper()
	r.shutdown()
	r.mu.Lock()
	defer r.mu.Unlock()
	got := bytes.Clone(r.out)
	r.out = r.out[:0]
	return got
}

func (r *rig) events() []closeEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.closes)
}

// write calls c.Write once per chunk and requires (len(p), nil) each time.
func (r *rig) write(chunks ...[]byte) {
	r.t.Helper()
	for _, p := range chunks {
		n, err := r.c.Write(p)
		if n != len(p) || err != nil {
			r.t.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", len(p), n, err, len(p))
		}
	}
}

func (r *rig) writeStr(s string) { r.t.Helper(); r.write([]byte(s)) }

// peerSend makes the broker write b; the returned func waits for it.
func (r *rig) peerSend(b []byte) func() error {
	errc := make(chan error, 1)
	go func() {
		_, err := r.peer.Write(b)
		errc <- err
	}()
	return func() error {
		select {
		case err := <-errc:
			return err
		case <-time.After(testTimeout):
			return errors.New("broker write timed out")
		}
	}
}

// deliver makes the broker send chunk and reads it through c in exactly one
// Read call (net.Pipe hands one Write to one Read when the buffer is large
// enough).
func (r *rig) deliver(chunk []byte) {
	r.t.Helper()
	if len(chunk) == 0 {
		r.t.Fatalf("deliver: empty chunk")
	}
	wait := r.peerSend(chunk)
	buf := make([]byte, len(chunk)+64)
	n, err := r.c.Read(buf)
	if err != nil || n != len(chunk) || !bytes.Equal(buf[:n], chunk) {
		r.t.Fatalf("Read = %d, %v; want %d bytes, nil, unchanged", n, err, len(chunk))
	}
	if err := wait(); err != nil {
		r.t.Fatalf("broker write: %v", err)
	}
}

type readResult struct {
	n   int
	err error
}

// startRead starts a Read in another goroutine and returns once that Read
// has reached the underlying connection (Conn's bookkeeping is done).
func (r *rig) startRead() <-chan readResult {
	r.t.Helper()
	select {
	case <-r.raw.entered:
	default:
	}
	res := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 64<<10)
		n, err := r.c.Read(buf)
		res <- readResult{n, err}
	}()
	select {
	case <-r.raw.entered:
	case <-time.After(testTimeout):
		r.t.Fatalf("Read never reached the underlying conn")
	}
	return res
}

func waitRead(t testing.TB, res <-chan readResult) readResult {
	t.Helper()
	select {
	case rr := <-res:
		return rr
	case <-time.After(testTimeout):
		t.Fatalf("Read did not return")
		return readResult{}
	}
}

// finishRead lets a Read started with startRead return by sending a
// heartbeat.
func (r *rig) finishRead(res <-chan readResult) {
	r.t.Helper()
	wait := r.peerSend(heartbeat())
	rr := waitRead(r.t, res)
	if rr.err != nil || rr.n != len(heartbeat()) {
		r.t.Fatalf("Read = %d, %v; want %d, nil", rr.n, rr.err, len(heartbeat()))
	}
	if err := wait(); err != nil {
		r.t.Fatal(err)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func pendingIDs(c *Conn) []uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []uint16
	for id := range c.closing {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// diff describes where got and want first differ.
func diff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(0, i-8)
	return fmt.Sprintf("len got %d want %d; first difference at byte %d:\n got[%d:]  % x\n want[%d:] % x",
		len(got), len(want), i, lo, got[lo:min(len(got), i+16)], lo, want[lo:min(len(want), i+16)])
}

// runChunked writes in cut at the given points (each a separate Write) on a
// fresh rig and returns what the broker received and Conn.Dropped.
func runChunked(t testing.TB, in []byte, cuts []int) ([]byte, uint64) {
	t.Helper()
	r := newRig(t)
	prev := 0
	for _, c := range cuts {
		r.write(in[prev:c])
		prev = c
	}
	r.write(in[prev:])
	d := r.c.Dropped()
	return r.finish(), d
}

func randomCuts(rng *rand.Rand, n int, maxChunk int) []int {
	var cuts []int
	for p := 0; ; {
		p += 1 + rng.IntN(maxChunk)
		if p >= n {
			return cuts
		}
		cuts = append(cuts, p)
	}
}

// checkAllChunkings writes the script whole, frame by frame, split in two at
// every byte, byte by byte, and in random chunks, and checks the broker
// receives exactly the frames that must pass.
func checkAllChunkings(t *testing.T, ps []piece) {
	in, want, drops := assemble(ps)
	check := func(t *testing.T, what string, cuts []int) {
		t.Helper()
		got, d := runChunked(t, in, cuts)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s (cuts %v): broker received wrong bytes: %s", what, cuts, diff(got, want))
		}
		if d != drops {
			t.Fatalf("%s (cuts %v): Dropped() = %d, want %d", what, cuts, d, drops)
		}
	}
	t.Run("one-write", func(t *testing.T) { check(t, "one write", nil) })
	t.Run("frame-per-write", func(t *testing.T) {
		var cuts []int
		p := 0
		for _, pc := range ps[:len(ps)-1] {
			p += len(pc.b)
			cuts = append(cuts, p)
		}
		check(t, "frame per write", cuts)
	})
	t.Run("every-split", func(t *testing.T) {
		for k := 1; k < len(in); k++ {
			check(t, fmt.Sprintf("split at %d", k), []int{k})
		}
	})
	t.Run("byte-by-byte", func(t *testing.T) {
		cuts := make([]int, 0, len(in))
		for k := 1; k < len(in); k++ {
			cuts = append(cuts, k)
		}
		check(t, "byte by byte", cuts)
	})
	t.Run("random", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range 300 {
			check(t, fmt.Sprintf("random chunking %d", i), randomCuts(rng, len(in), 1+rng.IntN(40)))
		}
	})
}

// ---------------------------------------------------------------------------
// Outbound: pass-through.

func passThroughScript() []piece {
	return script(
		pass([]byte(protoHeader)),
		pass(connStartOK(), connTuneOK(), connOpen(), heartbeat()),
		pass(chanOpen(1), chanOpen(2)),
		pass(basicQos(1, 10)),
		pass(publishFrames(1, pattern(128), 131064)...),
		pass(publishFrames(2, pattern(700), 256)...), // several body frames
		pass(publishFrames(1, nil, 131064)...),       // no body frame at all
		pass(heartbeat()),
		pass(basicAck(1, 1)),
		pass(chanClose(1, 200, "Goodbye")),
		pass(chanCloseOK(2)), // client answering a close it has not seen: still goes out
		pass(chanOpen(2)),
		pass(publishFrames(2, pattern(5), 131064)...),
		pass(connClose(200, "bye"), connCloseOK()),
	)
}

func TestOutboundPassThrough(t *testing.T) {
	checkAllChunkings(t, passThroughScript())
}

func TestOutboundPassThroughWriteResult(t *testing.T) {
	// Write returns len(p), nil also for writes that are held back
	// entirely (an incomplete frame start) or consist of the preamble.
	r := newRig(t)
	r.write([]byte(protoHeader[:3]), []byte(protoHeader[3:]))
	f := chanOpen(1)
	r.write(f[:1], f[1:5], f[5:10], f[10:11], f[11:])
	r.write([]byte{}, publish(1, pattern(128)), []byte{})
	if got, want := r.take(), cat([]byte(protoHeader), chanOpen(1), publish(1, pattern(128))); !bytes.Equal(got, want) {
		t.Fatalf("broker received wrong bytes: %s", diff(got, want))
	}
	if d := r.c.Dropped(); d != 0 {
		t.Fatalf("Dropped() = %d, want 0", d)
	}
}

func TestOutboundHeldFrameStartNotSentEarly(t *testing.T) {
	// A frame start too short to decide on stays with Conn until the next
	// Write completes it; then header and rest go out together.
	r := newRig(t)
	r.writeStr(protoHeader)
	r.write(chanOpen(1))
	r.take()
	pub := publish(1, pattern(16))
	for _, k := range []int{1, 6, 7, 10} {
		r.write(pub[:k])
		if got := r.take(); len(got) != 0 {
			t.Fatalf("after writing %d bytes of a method frame the broker got % x; want nothing yet", k, got)
		}
		r.write(pub[k:])
		if got := r.take(); !bytes.Equal(got, pub) {
			t.Fatalf("split %d: %s", k, diff(got, pub))
		}
	}
	// A method frame whose header and method id are complete goes out at once.
	r.write(pub[:11])
	if got := r.take(); !bytes.Equal(got, pub[:11]) {
		t.Fatalf("after 11 bytes: %s", diff(got, pub[:11]))
	}
	r.write(pub[11:])
	if got := r.take(); !bytes.Equal(got, pub[11:]) {
		t.Fatalf("rest: %s", diff(got, pub[11:]))
	}
	// A non-method frame needs only its 7-byte header.
	hb := heartbeat()
	r.write(hb[:7])
	if got := r.take(); !bytes.Equal(got, hb[:7]) {
		t.Fatalf("heartbeat header: %s", diff(got, hb[:7]))
	}
	r.write(hb[7:])
	if got := r.take(); !bytes.Equal(got, hb[7:]) {
		t.Fatalf("heartbeat end: %s", diff(got, hb[7:]))
	}
}

// ---------------------------------------------------------------------------
// Outbound: dropping.

func dropAfterCloseOKScript() []piece {
	return script(
		pass([]byte(protoHeader)),
		pass(connStartOK(), connTuneOK(), connOpen()),
		pass(chanOpen(1), chanOpen(3)),
		pass(publishFrames(3, pattern(128), 131064)...),
		pass(chanCloseOK(3)), // client's close-ok: nothing more on 3
		drop(publishFrames(3, pattern(128), 131064)...),
		drop(basicQos(3, 1)),
		pass(heartbeat()),
		pass(publishFrames(1, pattern(32), 131064)...),
		drop(publishFrames(3, pattern(900), 100)...), // body in many frames
		drop(basicAck(3, 7)),
		drop(chanClose(3, 200, "")),
		drop(chanCloseOK(3)),
		pass(chanOpen(3)), // reopened: frames pass again
		pass(publishFrames(3, pattern(64), 131064)...),
		pass(basicAck(3, 1)),
		drop(publishFrames(7, pattern(10), 131064)...), // never opened
		drop(chanCloseOK(7)),
		pass(connClose(200, "bye")),
	)
}

func TestOutboundDropAfterCloseOK(t *testing.T) {
	checkAllChunkings(t, dropAfterCloseOKScript())
}

func TestOutboundDropsBodySplitAcrossWrites(t *testing.T) {
	r := newRig(t)
	r.writeStr(protoHeader)
	r.write(chanOpen(4), chanCloseOK(4))
	r.take()
	body := bodyFrame(4, pattern(5000))
	r.write(basicPublishMethod(4, "x", "k"), contentHeader(4, 60, 5000))
	for i := 0; i < len(body); i += 333 {
		r.write(body[i:min(len(body), i+333)])
		if got := r.take(); len(got) != 0 {
			t.Fatalf("dropped body leaked %d bytes to the broker", len(got))
		}
	}
	if d := r.c.Dropped(); d != 3 {
		t.Fatalf("Dropped() = %d, want 3 (method, header, body)", d)
	}
	// A frame on another channel right after the dropped body passes whole.
	r.write(heartbeat())
	if got := r.take(); !bytes.Equal(got, heartbeat()) {
		t.Fatalf("after dropped body: %s", diff(got, heartbeat()))
	}
}

func TestOutboundNeverOpenedDropped(t *testing.T) {
	r := newRig(t)
	r.writeStr(protoHeader)
	frames := [][]byte{basicQos(9, 1), basicPublishMethod(9, "", "q"), contentHeader(9, 60, 1), bodyFrame(9, []byte{1}),
		chanClose(9, 200, ""), chanCloseOK(9), chanOpenOK(9)}
	for _, f := range frames {
		r.write(f)
	}
	if got := r.take(); !bytes.Equal(got, []byte(protoHeader)) {
		t.Fatalf("frames on a never-opened channel reached the broker: %s", diff(got, []byte(protoHeader)))
	}
	if d := r.c.Dropped(); d != uint64(len(frames)) {
		t.Fatalf("Dropped() = %d, want %d", d, len(frames))
	}
	if id, done := r.c.PendingClose(); done != nil {
		t.Fatalf("a dropped channel.close registered a pending close for %d", id)
	}
}

func TestOutboundChannelZeroNeverDropped(t *testing.T) {
	r := newRig(t)
	r.writeStr(protoHeader)
	// Channel-class methods on channel 0 are nonsense, but channel 0 is the
	// connection's: Conn never drops or tracks it.
	fs := [][]byte{
		chanCloseOK(0), chanClose(0, 200, ""), basicQos(0, 1), heartbeat(), connStartOK(),
		contentHeader(0, 60, 1), bodyFrame(0, []byte{1}), connClose(320, "x"), connCloseOK(), heartbeat(),
	}
	r.write(fs...)
	if got, want := r.take(), cat(append([][]byte{[]byte(protoHeader)}, fs...)...); !bytes.Equal(got, want) {
		t.Fatalf("%s", diff(got, want))
	}
	if d := r.c.Dropped(); d != 0 {
		t.Fatalf("Dropped() = %d, want 0", d)
	}
	if id, done := r.c.PendingClose(); done != nil {
		t.Fatalf("channel.close on channel 0 registered a pending close for %d", id)
	}
}

func TestOutboundChannelBitsIndependent(t *testing.T) {
	// Channel state is a bit per id in 64-bit words; neighbours and word
	// boundaries must not bleed into each other.
	ids := []uint16{1, 62, 63, 64, 65, 127, 128, 4095, 65534, 65535}
	for _, open := range ids {
		r := newRig(t)
		r.writeStr(protoHeader)
		r.write(chanOpen(open))
		var want []byte
		want = append(want, protoHeader...)
		want = append(want, chanOpen(open)...)
		drops := uint64(0)
		for _, id := range ids {
			f := basicQos(id, 1)
			r.write(f)
			if id == open {
				want = append(want, f...)
			} else {
				drops++
			}
		}
		if got := r.take(); !bytes.Equal(got, want) {
			t.Fatalf("only %d open: %s", open, diff(got, want))
		}
		if d := r.c.Dropped(); d != drops {
			t.Fatalf("only %d open: Dropped() = %d, want %d", open, d, drops)
		}
		r.shutdown()
	}
}

func TestTrace(t *testing.T) {
	r := newRig(t)
	var tr []string
	r.c.Trace = func(dir string, ch, class, method uint16) {
		tr = append(tr, fmt.Sprintf("%s %d %d.%d", dir, ch, class, method))
	}
	r.writeStr(protoHeader)
	r.write(chanOpen(1), heartbeat(), chanCloseOK(1))
	r.write(publish(1, pattern(3)))
	r.deliver(cat(chanOpenOK(2), delivery(2, 1, pattern(3))))
	want := []string{"out 1 20.10", "out 1 20.41", "drop 1 60.40", "in 2 20.11", "in 2 60.60"}
	if !slices.Equal(tr, want) {
		t.Fatalf("trace = %q\nwant    %q", tr, want)
	}
}

// ---------------------------------------------------------------------------
// Inbound channel.close and the outbound close / close-ok.

func TestInboundCloseDropsOutboundClose(t *testing.T) {
	r := newRig(t)
	r.writeStr(protoHeader)
	r.write(chanOpen(5), chanOpen(6))
	r.take()

	r.deliver(chanClose(5, 406, "PRECONDITION_FAILED - inequivalent arg"))
	r.write(chanClose(5, 200, "Goodbye")) // crosses for nothing: dropped
	if got := r.take(); len(got) != 0 {
		t.Fatalf("channel.close after the broker's channel.close reached the broker: % x", got)
	}
	if id, done := r.c.PendingClose(); done != nil {
		t.Fatalf("dropped channel.close left a pending close for %d", id)
	}
	r.write(chanClose(6, 200, "")) // other channels unaffected
	r.write(chanCloseOK(5))        // the answer goes out
	if got, want := r.take(), cat(chanClose(6, 200, ""), chanCloseOK(5)); !bytes.Equal(got, want) {
		t.Fatalf("%s", diff(got, want))
	}
	// Channel 5 is finished now.
	r.write(basicQos(5, 1), chanClose(5, 200, ""), chanCloseOK(5))
	if got := r.take(); len(got) != 0 {
		t.Fatalf("frames on channel 5 after its close-ok reached the broker: % x", got)
	}
	if d := r.c.Dropped(); d != 4 {
		t.Fatalf("Dropped() = %d, want 4", d)
	}
	// Reopened, channel 5 works, and a close on it is ours again.
	r.write(chanOpen(5), chanClose(5, 200, ""))
	if got, want := r.take(), cat(chanOpen(5), chanClose(5, 200, "")); !bytes.Equal(got, want) {
		t.Fatalf("%s", diff(got, want))
	}
	if ids := pendingIDs(r.c); !slices.Equal(ids, []uint16{5, 6}) {
		t.Fatalf("pending closes %v, want [5 6]", ids)
	}
	if ev := r.events(); !slices.Equal(ev, []closeEvent{{5, 406, "PRECONDITION_FAILED - inequivalent arg"}}) {
		t.Fatalf("onClose saw %v", ev)
	}
}

func TestInboundCloseOnUnopenedChannelIsAnswered(t *testing.T) {
	// amqp091-go answers a channel.close for a channel it does not know
	// with close-ok; that answer must reach the broker.
	r := newRig(t)
	r.writeStr(protoHeader)
	r.take()
	r.deliver(chanClose(12, 504, "CHANNEL_ERROR"))
	r.write(chanCloseOK(12))
	if got := r.take(); !bytes.Equal(got, chanCloseOK(12)) {
		t.Fatalf("%s", diff(got, chanCloseOK(12)))
	}
	// Answered once: a second close-ok is dropped.
	r.write(chanCloseOK(12))
	if got := r.take(); len(got) != 0 {
		t.Fatalf("second close-ok went out: % x", got)
	}
}

// crossingClose runs the simultaneous-close race on channel 5 and checks the
// pending close settles exactly one Read after the close-ok was read.
func TestCrossingClose(t *testing.T) {
	for _, tc := range []struct {
		name          string
		closeOKBefore bool // the broker's close-ok is read before we answer its close
	}{
		{"answer-then-close-ok", false},
		{"close-ok-then-answer", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.writeStr(protoHeader)
			r.write(chanOpen(5))
			if id, done := r.c.PendingClose(); done != nil {
				t.Fatalf("PendingClose before any close = %d, non-nil", id)
			}
			r.write(chanClose(5, 200, "Goodbye"))
			r.take()
			id, done := r.c.PendingClose()
			if done == nil || id != 5 {
				t.Fatalf("PendingClose = %d, %v; want 5, non-nil", id, done)
			}
			if isClosed(done) {
				t.Fatal("done closed before any close-ok")
			}
			r.deliver(chanClose(5, 406, "PRECONDITION_FAILED - crossing"))
			if isClosed(done) {
				t.Fatal("done closed by the broker's channel.close")
			}
			answer := func() {
				r.write(chanCloseOK(5))
				if got := r.take(); !bytes.Equal(got, chanCloseOK(5)) {
					t.Fatalf("close-ok answering the broker's close: %s", diff(got, chanCloseOK(5)))
				}
			}
			if !tc.closeOKBefore {
				answer()
			}
			r.deliver(cat(chanCloseOK(5), delivery(1, 1, pattern(10)))) // more after the close-ok in the same Read
			if isClosed(done) {
				t.Fatal("done closed during the Read that carried the close-ok; amqp091-go has not dispatched it yet")
			}
			if id2, d2 := r.c.PendingClose(); id2 != 5 || d2 != done {
				t.Fatalf("PendingClose after close-ok read = %d, %v; want 5 and the same channel", id2, d2)
			}
			if tc.closeOKBefore {
				answer()
			}
			res := r.startRead()
			if !isClosed(done) {
				t.Fatal("done not closed when the next Read began")
			}
			if id, d := r.c.PendingClose(); d != nil {
				t.Fatalf("PendingClose after settling = %d, non-nil", id)
			}
			r.finishRead(res)

			// Nothing more goes out on 5 until it is opened again.
			r.write(basicQos(5, 1), chanClose(5, 200, ""))
			if got := r.take(); len(got) != 0 {
				t.Fatalf("frames after the crossing close reached the broker: % x", got)
			}
			r.write(chanOpen(5))
			if got := r.take(); !bytes.Equal(got, chanOpen(5)) {
				t.Fatalf("reopen: %s", diff(got, chanOpen(5)))
			}
			if ev := r.events(); !slices.Equal(ev, []closeEvent{{5, 406, "PRECONDITION_FAILED - crossing"}}) {
				t.Fatalf("onClose saw %v", ev)
			}
		})
	}
}

func TestCloseOKSettlesOnNextRead(t *testing.T) {
	r := newRig(t)
	r.writeStr(protoHeader)
	r.write(chanOpen(1), chanOpen(2), chanOpen(3))
	r.write(chanClose(1, 200, ""), chanClose(2, 200, ""), chanClose(3, 200, ""))
	r.write(chanClose(3, 200, "")) // a second close on 3 is the same pending close
	if ids := pendingIDs(r.c); !slices.Equal(ids, []uint16{1, 2, 3}) {
		t.Fatalf("pending %v, want [1 2 3]", ids)
	}
	dones := map[uint16]<-chan struct{}{}
	r.c.mu.Lock()
	for id, pc := range r.c.closing {
		dones[id] = pc.done
	}
	r.c.mu.Unlock()

	r.deliver(cat(chanCloseOK(1), delivery(9, 1, nil), chanCloseOK(3)))
	for id, d := range dones {
		if isClosed(d) {
			t.Fatalf("channel %d settled during the Read carrying its close-ok", id)
		}
	}
	r.deliver(heartbeat())
	if !isClosed(dones[1]) || !isClosed(dones[3]) || isClosed(dones[2]) {
		t.Fatalf("after next Read: 1 closed %v, 3 closed %v, 2 closed %v; want true true false",
			isClosed(dones[1]), isClosed(dones[3]), isClosed(dones[2]))
	}
	if id, d := r.c.PendingClose(); id != 2 || d != dones[2] {
		t.Fatalf("PendingClose = %d, %v; want 2", id, d)
	}
	// A non-crossing close leaves the channel closed: later frames drop.
	r.take()
	r.write(basicQos(1, 1), basicQos(3, 1), basicQos(2, 1))
	if got := r.take(); !bytes.Equal(got, basicQos(2, 1)) {
		t.Fatalf("%s", diff(got, basicQos(2, 1)))
	}
	r.deliver(chanCloseOK(2))
	r.deliver(heartbeat())
	if !isClosed(dones[2]) {
		t.Fatal("channel 2 not settled")
	}
	if id, d := r.c.PendingClose(); d != nil {
		t.Fatalf("PendingClose = %d, non-nil after all settled", id)
	}
}

// TestPendingCloseNotSettledBeforeCloseOKIsComplete splits the broker's
// close-ok at every byte across two Reads. amqp091-go dispatches a frame only
// once it has read the frame-end octet, so a pending close may settle only at
// a Read call after the one that delivered the close-ok's last byte.
// Settling earlier lets the client reuse the channel id while amqp091-go's
// reader still holds a partial close-ok for it (DESIGN item 8).
func TestPendingCloseNotSettledBeforeCloseOKIsComplete(t *testing.T) {
	ok := chanCloseOK(5)
	for k := 1; k < len(ok); k++ {
		t.Run(fmt.Sprintf("split-%d", k), func(t *testing.T) {
			r := newRig(t)
			r.writeStr(protoHeader)
			r.write(chanOpen(5), chanClose(5, 200, ""))
			_, done := r.c.PendingClose()
			if done == nil {
				t.Fatal("no pending close")
			}
			r.deliver(ok[:k])
			res := r.startRead() // the Read that will carry the rest of the close-ok
			if isClosed(done) {
				t.Errorf("close-ok split after byte %d of %d: done was closed when the next Read began, "+
					"but the close-ok's last %d byte(s) had not been read, so amqp091-go cannot have dispatched it",
					k, len(ok), len(ok)-k)
			}
			wait := r.peerSend(ok[k:])
			if rr := waitRead(t, res); rr.err != nil || rr.n != len(ok)-k {
				t.Fatalf("Read = %d, %v", rr.n, rr.err)
			}
			if err := wait(); err != nil {
				t.Fatal(err)
			}
			if isClosed(done) && !t.Failed() {
				t.Errorf("split %d: done closed during the Read that completed the close-ok", k)
			}
			res = r.startRead()
			if !isClosed(done) {
				t.Errorf("split %d: done not closed at the Read after the close-ok was complete", k)
			}
			r.finishRead(res)
		})
	}
}

func TestForgetClose(t *testing.T) {
	r := newRig(t)
	r.writeStr(protoHeader)
	r.write(chanOpen(1), chanOpen(2), chanClose(1, 200, ""), chanClose(2, 200, ""))
	r.c.mu.Lock()
	d1, d2 := r.c.closing[1].done, r.c.closing[2].done
	r.c.mu.Unlock()

	r.c.ForgetClose(7) // unknown: no-op
	r.c.ForgetClose(1)
	if !isClosed(d1) || isClosed(d2) {
		t.Fatalf("after ForgetClose(1): 1 closed %v, 2 closed %v", isClosed(d1), isClosed(d2))
	}
	r.c.ForgetClose(1) // twice: no double close
	if id, d := r.c.PendingClose(); id != 2 || d != d2 {
		t.Fatalf("PendingClose = %d, %v; want 2", id, d)
	}
	// The late close-ok for the forgotten close and the next Read are harmless.
	r.deliver(chanCloseOK(1))
	r.deliver(heartbeat())
	if ids := pendingIDs(r.c); !slices.Equal(ids, []uint16{2}) {
		t.Fatalf("pending %v, want [2]", ids)
	}
	// Forget while the close-ok has been read but not settled yet.
	r.deliver(chanCloseOK(2))
	r.c.ForgetClose(2)
	if !isClosed(d2) {
		t.Fatal("ForgetClose(2) did not close done")
	}
	r.deliver(heartbeat()) // settle must not close it again
	if id, d := r.c.PendingClose(); d != nil {
		t.Fatalf("PendingClose = %d, non-nil", id)
	}
	// A new close on a reopened channel registers afresh.
	r.write(chanOpen(1), chanClose(1, 200, ""))
	if id, d := r.c.PendingClose(); id != 1 || d == nil || d == d1 || isClosed(d) {
		t.Fatalf("PendingClose after re-close = %d, %v (old %v)", id, d, d1)
	}
}

func TestReadErrorReleasesPendingCloses(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		r := newRig(t)
		r.writeStr(protoHeader)
		r.write(chanOpen(1), chanOpen(2), chanOpen(3), chanClose(1, 200, ""), chanClose(2, 200, ""))
		r.c.mu.Lock()
		d1, d2 := r.c.closing[1].done, r.c.closing[2].done
		r.c.mu.Unlock()
		r.deliver(chanCloseOK(1)) // read, not settled yet

		_ = r.c.SetReadDeadline(time.Unix(1, 0))
		buf := make([]byte, 100)
		if _, err := r.c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read error = %v, want deadline exceeded", err)
		}
		if !isClosed(d1) || !isClosed(d2) {
			t.Fatalf("Read error left pending closes: 1 closed %v, 2 closed %v", isClosed(d1), isClosed(d2))
		}
		if id, d := r.c.PendingClose(); d != nil {
			t.Fatalf("PendingClose = %d, non-nil after Read error", id)
		}
		// Nothing more will be dispatched: a new close is not registered
		// (no one would ever settle it), but it still goes out.
		r.take()
		r.write(chanClose(3, 200, ""))
		if got := r.take(); !bytes.Equal(got, chanClose(3, 200, "")) {
			t.Fatalf("%s", diff(got, chanClose(3, 200, "")))
		}
		if id, d := r.c.PendingClose(); d != nil {
			t.Fatalf("close after Read error registered pending close %d", id)
		}
		r.c.ForgetClose(1)
		r.c.ForgetClose(3)
		// Later Reads (after the deadline is lifted) work and do not panic.
		_ = r.c.SetReadDeadline(time.Now().Add(testTimeout))
		r.deliver(cat(chanCloseOK(3), chanCloseOK(2), heartbeat()))
		r.deliver(heartbeat())
	})
	t.Run("peer-closed", func(t *testing.T) {
		r := newRig(t)
		r.writeStr(protoHeader)
		r.write(chanOpen(1), chanClose(1, 200, ""))
		_, d := r.c.PendingClose()
		res := r.startRead()
		_ = r.peer.Close()
		rr := waitRead(t, res)
		if !errors.Is(rr.err, io.EOF) {
			t.Fatalf("Read error = %v, want EOF", rr.err)
		}
		if !isClosed(d) {
			t.Fatal("peer close left the pending close open")
		}
		if id, d := r.c.PendingClose(); d != nil {
			t.Fatalf("PendingClose = %d, non-nil", id)
		}
		if n, err := r.c.Write(chanClose(1, 200, "")); err == nil {
			t.Fatalf("Write to a closed peer = %d, nil; want an error", n)
		}
		if id, d := r.c.PendingClose(); d != nil {
			t.Fatalf("PendingClose = %d, non-nil", id)
		}
		if _, err := r.c.Read(make([]byte, 10)); err == nil {
			t.Fatal("Read after EOF succeeded")
		}
	})
	t.Run("data-and-error", func(t *testing.T) {
		// A Read returning bytes and an error walks the bytes too.
		var got []closeEvent
		c := New(&scriptConn{reads: []scriptRead{{b: chanClose(4, 404, "NOT_FOUND"), err: io.ErrUnexpectedEOF}}},
			func(id, code uint16, text string) { got = append(got, closeEvent{id, code, text}) })
		if _, err := c.Read(make([]byte, 100)); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Read error = %v", err)
		}
		if !slices.Equal(got, []closeEvent{{4, 404, "NOT_FOUND"}}) {
			t.Fatalf("onClose saw %v", got)
		}
	})
}

// scriptConn is a net.Conn whose Reads return a fixed script; Writes are
// discarded.
type scriptConn struct {
	net.Conn
	reads []scriptRead
}

type scriptRead struct {
	b   []byte
	err error
}

func (s *scriptConn) Read(p []byte) (int, error) {
	if len(s.reads) == 0 {
		return 0, io.EOF
	}
	r := s.reads[0]
	s.reads = s.reads[1:]
	return copy(p, r.b), r.err
}

func (s *scriptConn) Write(p []byte) (int, error) { return len(p), nil }

// ---------------------------------------------------------------------------
// Inbound: onClose.

func inboundCloseCases() []struct {
	name  string
	frame []byte
	want  closeEvent
} {
	long := strings.Repeat("x", 250) + "yzzzy"
	return []struct {
		name  string
		frame []byte
		want  closeEvent
	}{
		{"channel", chanClose(7, 404, "NOT_FOUND - no queue 'q' in vhost '/'"), closeEvent{7, 404, "NOT_FOUND - no queue 'q' in vhost '/'"}},
		{"channel-empty-text", chanClose(65535, 406, ""), closeEvent{65535, 406, ""}},
		{"channel-255", chanClose(300, 406, long), closeEvent{300, 406, long}},
		{"connection", connClose(320, "CONNECTION_FORCED - broker forced connection closure"), closeEvent{0, 320, "CONNECTION_FORCED - broker forced connection closure"}},
		{"connection-255", connClose(541, long), closeEvent{0, 541, long}},
	}
}

func TestOnCloseWhole(t *testing.T) {
	for _, tc := range inboundCloseCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.deliver(cat(delivery(1, 1, pattern(128)), tc.frame, delivery(1, 2, pattern(3))))
			if ev := r.events(); !slices.Equal(ev, []closeEvent{tc.want}) {
				t.Fatalf("onClose saw %v, want [%v]", ev, tc.want)
			}
		})
	}
}

func TestOnCloseSplitEverywhere(t *testing.T) {
	for _, tc := range inboundCloseCases() {
		t.Run(tc.name, func(t *testing.T) {
			before := delivery(1, 1, pattern(20))
			stream := cat(before, tc.frame, heartbeat())
			end := len(before) + len(tc.frame) // the close frame is complete at this offset
			for k := 1; k < len(stream); k++ {
				r := newRig(t)
				r.deliver(stream[:k])
				ev := r.events()
				if k < end && len(ev) != 0 {
					t.Fatalf("split %d: onClose ran before the frame was complete: %v", k, ev)
				}
				r.deliver(stream[k:])
				if ev := r.events(); !slices.Equal(ev, []closeEvent{tc.want}) {
					t.Fatalf("split %d: onClose saw %v, want [%v]", k, ev, tc.want)
				}
				if tc.want.id != 0 && !bit(&r.c.awaiting, tc.want.id) {
					t.Fatalf("split %d: channel %d not marked as awaiting close-ok", k, tc.want.id)
				}
				r.shutdown()
			}
			// Byte by byte.
			r := newRig(t)
			for i := range stream {
				r.deliver(stream[i : i+1])
			}
			if ev := r.events(); !slices.Equal(ev, []closeEvent{tc.want}) {
				t.Fatalf("byte by byte: onClose saw %v, want [%v]", ev, tc.want)
			}
		})
	}
}

func TestOnCloseIgnoresOtherMethods(t *testing.T) {
	r := newRig(t)
	r.deliver(cat(
		methodFrame(0, 20, 40, closeArgs(1, "channel.close on 0", 0, 0)), // not a channel's
		methodFrame(3, 10, 50, closeArgs(2, "connection.close on 3", 0, 0)),
		chanCloseOK(3), connCloseOK(), chanOpenOK(3),
		methodFrame(3, 20, 40, nil),       // close without arguments
		methodFrame(3, 20, 40, []byte{1}), // truncated arguments
	))
	if ev := r.events(); len(ev) != 0 {
		t.Fatalf("onClose saw %v, want nothing", ev)
	}
}

func TestOnCloseNotCalledForConnectionOpen(t *testing.T) {
	// connection.open is 10.40, the method id channel.close has in class 20.
	// It is not a close and must not be reported as one.
	r := newRig(t)
	r.deliver(cat(connOpen(), methodFrame(0, 10, 40, closeArgs(200, "looks like a close", 0, 0))))
	if ev := r.events(); len(ev) != 0 {
		t.Fatalf("onClose saw %v for connection.open frames, want nothing", ev)
	}
}

func TestOnCloseNil(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	_ = a.SetDeadline(time.Now().Add(testTimeout))
	_ = b.SetDeadline(time.Now().Add(testTimeout))
	c := New(a, nil)
	go func() { _, _ = b.Write(cat(chanClose(1, 404, "x"), connClose(320, "y"))) }()
	if _, err := io.ReadFull(c, make([]byte, len(chanClose(1, 404, "x"))+len(connClose(320, "y")))); err != nil {
		t.Fatal(err)
	}
}

func TestOnCloseMalformedReplyText(t *testing.T) {
	// A reply-text length longer than what follows is cut at what was kept;
	// no panic, and never more than 255 bytes.
	args := cat(u16(404), []byte{200}, []byte("short"))
	var got []closeEvent
	c := New(&scriptConn{reads: []scriptRead{{b: methodFrame(2, 20, 40, args)}}},
		func(id, code uint16, text string) { got = append(got, closeEvent{id, code, text}) })
	if _, err := c.Read(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].id != 2 || got[0].code != 404 || !strings.HasPrefix(got[0].text, "short") || len(got[0].text) > 255 {
		t.Fatalf("onClose saw %v", got)
	}
	// Arguments longer than any valid close are capped.
	args = cat(u16(404), shortstr(strings.Repeat("t", 255)), u16(60), u16(40), pattern(1000))
	got = nil
	c = New(&scriptConn{reads: []scriptRead{{b: methodFrame(2, 20, 40, args)}}},
		func(id, code uint16, text string) { got = append(got, closeEvent{id, code, text}) })
	if _, err := c.Read(make([]byte, 2000)); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].text != strings.Repeat("t", 255) {
		t.Fatalf("onClose saw %v", got)
	}
}

// ---------------------------------------------------------------------------
// Inbound walker robustness.

func TestInboundBadFrameEndStopsWalker(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  []byte
	}{
		{"heartbeat", func() []byte { f := heartbeat(); f[len(f)-1] = 0; return f }()},
		{"delivery-body", func() []byte { f := bodyFrame(1, pattern(50)); f[len(f)-1] = 0xCD; return f }()},
		{"close-being-captured", func() []byte { f := chanClose(3, 406, "x"); f[len(f)-1] = 'x'; return f }()},
		{"method-size-0", rawFrame(frameMethod, 1, nil)[:7:7]}, // end octet missing: next frame's type byte is taken for it
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := cat(delivery(1, 1, pattern(10)), tc.bad, chanClose(5, 406, "after"), connClose(320, "after"))
			for k := 1; k <= len(stream); k++ {
				r := newRig(t)
				r.deliver(stream[:k])
				if k < len(stream) {
					r.deliver(stream[k:])
				}
				r.deliver(chanClose(6, 406, "later read"))
				if !r.c.in.broken {
					t.Fatalf("split %d: walker not marked broken", k)
				}
				if ev := r.events(); len(ev) != 0 {
					t.Fatalf("split %d: onClose ran after a bad frame end: %v", k, ev)
				}
				if bit(&r.c.awaiting, 5) || bit(&r.c.awaiting, 6) {
					t.Fatalf("split %d: frames after a bad frame end were acted on", k)
				}
				r.shutdown()
			}
		})
	}
}

func TestInboundSmallMethodFrame(t *testing.T) {
	// A method frame too short for a method id is skipped as a whole; the
	// walker stays in step.
	r := newRig(t)
	r.deliver(cat(rawFrame(frameMethod, 1, nil), rawFrame(frameMethod, 1, []byte{0, 20, 0}), chanClose(2, 404, "ok")))
	if ev := r.events(); !slices.Equal(ev, []closeEvent{{2, 404, "ok"}}) {
		t.Fatalf("onClose saw %v", ev)
	}
	if r.c.in.broken {
		t.Fatal("walker broken")
	}
}

func TestInboundRandomGarbageNoPanic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 200 {
		data := make([]byte, 1+rng.IntN(600))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		if i%2 == 0 { // mostly plausible frames with some noise
			data = cat(delivery(1, 1, pattern(rng.IntN(50))), chanClose(2, 1, "a"), data)
			data[rng.IntN(len(data))] ^= byte(1 + rng.IntN(255))
		}
		sc := &scriptConn{}
		c := New(sc, func(uint16, uint16, string) {})
		for len(data) > 0 {
			n := min(len(data), 1+rng.IntN(64))
			sc.reads = []scriptRead{{b: data[:n]}}
			if _, err := c.Read(make([]byte, n)); err != nil {
				t.Fatal(err)
			}
			data = data[n:]
		}
	}
}

// ---------------------------------------------------------------------------
// Concurrency.

func TestConcurrentWritesAndReads(t *testing.T) {
	const (
		writers   = 8
		publishes = 300
		closeAt   = 100 // writer 0 sends close-ok here: its later publishes drop
	)
	r := newRig(t)
	r.writeStr(protoHeader)
	r.take()

	// The broker side keeps sending deliveries and closes on channels
	// nobody writes on; a reader goroutine reads them through Conn.
	inbound := cat(delivery(100, 1, pattern(128)), chanClose(101, 406, "x"), chanCloseOK(102), heartbeat())
	stopBroker := make(chan struct{})
	brokerDone := make(chan struct{})
	go func() {
		defer close(brokerDone)
		for {
			select {
			case <-stopBroker:
				return
			default:
			}
			if _, err := r.peer.Write(inbound); err != nil {
				return
			}
		}
	}()
	readerDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := r.c.Read(buf); err != nil {
				readerDone <- err
				return
			}
		}
	}()
	// Someone else polls the pending-close API meanwhile.
	pollDone := make(chan struct{})
	stopPoll := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			select {
			case <-stopPoll:
				return
			default:
			}
			if id, d := r.c.PendingClose(); d != nil && id > 200 {
				r.c.ForgetClose(id)
			}
			_ = r.c.Dropped()
			runtime.Gosched()
		}
	}()

	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch := uint16(g + 1)
			aux := uint16(201 + g) // opened and closed over and over
			if _, err := r.c.Write(chanOpen(ch)); err != nil {
				t.Error(err)
				return
			}
			msg := publish(ch, pattern(128+g))
			for i := range publishes {
				if g == 0 && i == closeAt {
					if _, err := r.c.Write(chanCloseOK(ch)); err != nil {
						t.Error(err)
						return
					}
				}
				if n, err := r.c.Write(msg); n != len(msg) || err != nil {
					t.Errorf("Write = %d, %v", n, err)
					return
				}
				if i%10 == 0 {
					if _, err := r.c.Write(cat(chanOpen(aux), chanClose(aux, 200, ""), chanCloseOK(aux))); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stopPoll)
	<-pollDone
	got := r.take()
	close(stopBroker)
	_ = r.raw.Conn.Close() // stops the reader and the broker writer
	select {
	case <-readerDone:
	case <-time.After(testTimeout):
		t.Fatal("reader did not stop")
	}
	select {
	case <-brokerDone:
	case <-time.After(testTimeout):
		t.Fatal("broker writer did not stop")
	}

	// Every frame arrived whole and each Write's frames stayed together.
	perCh := map[uint16]int{}
	for p := 0; p < len(got); {
		if len(got)-p < 8 {
			t.Fatalf("truncated frame at %d", p)
		}
		typ, ch, size := got[p], binary.BigEndian.Uint16(got[p+1:]), int(binary.BigEndian.Uint32(got[p+3:]))
		if p+8+size > len(got) || got[p+7+size] != frameEnd {
			t.Fatalf("bad frame at %d (type %d ch %d size %d)", p, typ, ch, size)
		}
		if typ == frameMethod && binary.BigEndian.Uint16(got[p+7:]) == 60 && binary.BigEndian.Uint16(got[p+9:]) == 40 {
			// a publish: header and body on the same channel must follow
			q := p + 8 + size
			for _, want := range []byte{2, 3} {
				if q+7 > len(got) || got[q] != want || binary.BigEndian.Uint16(got[q+1:]) != ch {
					t.Fatalf("publish on %d at %d not followed by its frame of type %d", ch, p, want)
				}
				q += 8 + int(binary.BigEndian.Uint32(got[q+3:]))
			}
			perCh[ch]++
		}
		p += 8 + size
	}
	for g := range writers {
		want := publishes
		if g == 0 {
			want = closeAt
		}
		if perCh[uint16(g+1)] != want {
			t.Errorf("channel %d: %d publishes arrived, want %d", g+1, perCh[uint16(g+1)], want)
		}
	}
	if d, want := r.c.Dropped(), uint64(3*(publishes-closeAt)); d != want {
		t.Errorf("Dropped() = %d, want %d", d, want)
	}
}

func TestConcurrentClosesAndSettles(t *testing.T) {
	// Pending closes registered by writers, settled by the reader and
	// forgotten by a third goroutine at once: no double close, no race.
	r := newRig(t)
	r.writeStr(protoHeader)
	r.take()
	const rounds = 200
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the broker answers every close at once
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := r.peer.Write(cat(chanCloseOK(uint16(1+i%4)), heartbeat())); err != nil {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 7)
		for {
			if _, err := r.c.Read(buf); err != nil {
				return
			}
		}
	}()
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if id, d := r.c.PendingClose(); d != nil && id%2 == 0 {
				r.c.ForgetClose(id)
			}
		}
	}()
	var wwg sync.WaitGroup
	for ch := uint16(1); ch <= 4; ch++ {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for range rounds {
				if _, err := r.c.Write(cat(chanOpen(ch), chanClose(ch, 200, ""))); err != nil {
					t.Error(err)
					return
				}
				_, _ = r.c.PendingClose()
			}
		}()
	}
	wwg.Wait()
	close(stop)
	fwg.Wait()
	_ = r.raw.Conn.Close()
	wg.Wait()
	r.c.mu.Lock()
	n := len(r.c.closing)
	r.c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d pending closes survive a Read error", n)
	}
}

// ---------------------------------------------------------------------------
// Allocation and benchmarks.

// discardConn is a net.Conn whose Writes succeed without doing anything.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

func TestWritePublishDoesNotAllocate(t *testing.T) {
	c := New(discardConn{}, nil)
	c.Write([]byte(protoHeader))
	c.Write(chanOpen(1))
	msg := publish(1, pattern(128))
	if a := testing.AllocsPerRun(1000, func() { _, _ = c.Write(msg) }); a != 0 {
		t.Fatalf("Write of a publish allocates %.1f times", a)
	}
	c.Write(chanCloseOK(1))
	open2 := chanOpen(2)
	if a := testing.AllocsPerRun(1000, func() { _, _ = c.Write(open2) }); a != 0 {
		t.Fatalf("Write of a channel.open allocates %.1f times", a)
	}
}

func BenchmarkWritePublish(b *testing.B) {
	msg := publish(1, pattern(128))
	b.Run("wire/discard", func(b *testing.B) {
		c := New(discardConn{}, nil)
		c.Write([]byte(protoHeader))
		c.Write(chanOpen(1))
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	tcp := func(b *testing.B, wrap bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Skip(err)
		}
		defer ln.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			s, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, s)
			s.Close()
		}()
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		var w io.Writer = raw
		if wrap {
			c := New(raw, nil)
			c.Write([]byte(protoHeader))
			c.Write(chanOpen(1))
			w = c
		}
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := w.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		raw.Close()
		<-done
	}
	b.Run("wire/tcp", func(b *testing.B) { tcp(b, true) })
	b.Run("raw/tcp", func(b *testing.B) { tcp(b, false) })
}

// loopConn reads a stream of whole frames over and over.
type loopConn struct {
	net.Conn
	stream []byte
	off    int
}

func (l *loopConn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], l.stream[l.off:])
		n += k
		l.off = (l.off + k) % len(l.stream)
	}
	return n, nil
}

func BenchmarkReadDeliveries(b *testing.B) {
	one := delivery(1, 1, pattern(128))
	var stream []byte
	for len(stream) < 1<<20 {
		stream = append(stream, one...)
	}
	run := func(b *testing.B, wrap bool) {
		var r io.Reader = &loopConn{stream: stream}
		var c *Conn
		if wrap {
			c = New(r.(net.Conn), func(uint16, uint16, string) {})
			r = c
		}
		buf := make([]byte, 4096) // amqp091-go reads through a default bufio.Reader
		b.ReportAllocs()
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			if _, err := r.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/(float64(b.N)*float64(len(buf))/float64(len(one))), "ns/delivery")
		if c != nil && c.in.broken {
			b.Fatal("walker lost frame sync")
		}
	}
	b.Run("wire", func(b *testing.B) { run(b, true) })
	b.Run("raw", func(b *testing.B) { run(b, false) })
}

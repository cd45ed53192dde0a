package wire

import (
	"bufio"
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
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
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
// A sink goroutine collects what the broker receives; an optional reader
// goroutine plays amqp091-go's reader and collects what Read hands on.

type closeEvent struct {
	id, code uint16
	text     string
}

func (e closeEvent) String() string { return fmt.Sprintf("{%d %d %q}", e.id, e.code, e.text) }

// countConn is the client end of the pipe under Conn. It counts the bytes
// the pipe has returned and notes, while a Read is blocked in the pipe, how
// many had been returned when that Read began: once the reader sits in a
// Read that began after every byte the broker sent was returned, Conn has
// walked all of them and the reader has collected what Conn handed on.
type countConn struct {
	net.Conn
	mu        sync.Mutex
	consumed  int // bytes the pipe has returned to Conn
	waitingAt int // consumed when the blocked Read began; -1: no Read blocked
}

func (e *countConn) Read(p []byte) (int, error) {
	e.mu.Lock()
	e.waitingAt = e.consumed
	e.mu.Unlock()
	n, err := e.Conn.Read(p)
	e.mu.Lock()
	e.waitingAt = -1
	e.consumed += n
	e.mu.Unlock()
	return n, err
}

func (e *countConn) idleAt(total int) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.waitingAt == total
}

const testTimeout = 10 * time.Second

type rig struct {
	t    testing.TB
	c    *Conn
	raw  *countConn // the client end, wrapped by c
	peer net.Conn   // the broker end

	mu        sync.Mutex
	out       []byte       // what the broker received
	closes    []closeEvent // what onClose saw
	in        []byte       // what Read handed on (reader goroutine)
	inErr     error        // the error that stopped the reader goroutine
	zeroReads int          // Reads that returned (0, nil)

	sent       int // bytes the broker wrote (test goroutine only)
	readerDone chan struct{}
	sinkDone   chan struct{}
	stop       sync.Once
}

func newRig(t testing.TB) *rig {
	t.Helper()
	a, b := net.Pipe()
	r := &rig{t: t, raw: &countConn{Conn: a, waitingAt: -1}, peer: b, sinkDone: make(chan struct{})}
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

// startReader starts the reader goroutine, reading through c with a buffer
// of size bytes (amqp091-go's bufio.Reader reads 4096).
func (r *rig) startReader(size int) {
	r.t.Helper()
	if r.readerDone != nil {
		r.t.Fatalf("reader already started")
	}
	r.readerDone = make(chan struct{})
	go func() {
		defer close(r.readerDone)
		buf := make([]byte, size)
		for {
			n, err := r.c.Read(buf)
			r.mu.Lock()
			r.in = append(r.in, buf[:n]...)
			clear(buf) // the caller's again: Conn must not keep parts of it
			if n == 0 && err == nil {
				r.zeroReads++
			}
			if err != nil {
				r.inErr = err
			}
			r.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
}

func (r *rig) shutdown() {
	r.stop.Do(func() {
		_ = r.raw.Conn.Close()
		_ = r.peer.Close()
		for what, done := range map[string]chan struct{}{"sink": r.sinkDone, "reader": r.readerDone} {
			if done == nil {
				continue
			}
			select {
			case <-done:
			case <-time.After(testTimeout):
				r.t.Errorf("%s goroutine did not stop", what)
			}
		}
		r.mu.Lock()
		z := r.zeroReads
		r.mu.Unlock()
		if z != 0 {
			r.t.Errorf("Read returned (0, nil) %d times", z)
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

// send makes the broker write each chunk (one pipe Write each) and returns
// once the reader goroutine, started with a 4096-byte buffer if it is not
// running yet, has been handed on everything Conn will hand on for them.
func (r *rig) send(chunks ...[]byte) {
	r.t.Helper()
	if r.readerDone == nil {
		r.startReader(4096)
	}
	for _, ch := range chunks {
		if _, err := r.peer.Write(ch); err != nil {
			r.t.Fatalf("broker write: %v", err)
		}
		r.sent += len(ch)
	}
	deadline := time.Now().Add(testTimeout)
	for !r.raw.idleAt(r.sent) {
		if time.Now().After(deadline) {
			r.t.Fatalf("reader never came back for more after the broker sent %d bytes", r.sent)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// takeIn returns and forgets what Read has handed on so far.
func (r *rig) takeIn() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := bytes.Clone(r.in)
	r.in = r.in[:0]
	return got
}

// recv makes the broker send chunks and requires Read to hand on want.
func (r *rig) recv(want []byte, chunks ...[]byte) {
	r.t.Helper()
	r.send(chunks...)
	if got := r.takeIn(); !bytes.Equal(got, want) {
		r.t.Fatalf("amqp091-go was handed the wrong bytes: %s", diff(got, want))
	}
}

// deliver makes the broker send chunk and requires Read to hand it on
// unchanged.
func (r *rig) deliver(chunk []byte) {
	r.t.Helper()
	r.recv(chunk, chunk)
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

// ---------------------------------------------------------------------------
// In-memory harness: a Conn over a memConn whose Reads return queued chunks
// (one chunk, or what fits of it, per Read) and then errWouldBlock, so a
// test can step Conn's reader deterministically without goroutines.

// errWouldBlock is what memConn's Read returns when no chunk is queued: to
// Conn it looks like a read deadline that expired.
var errWouldBlock = errors.New("memConn: nothing queued (would block)")

type memConn struct {
	net.Conn
	reads [][]byte
	eof   bool // with no chunk queued: io.EOF instead of errWouldBlock
	out   []byte
}

func (m *memConn) Read(p []byte) (int, error) {
	if len(m.reads) == 0 {
		if m.eof {
			return 0, io.EOF
		}
		return 0, errWouldBlock
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

// memRig is a Conn over a memConn that records onClose events and what
// Read hands on.
type memRig struct {
	t      testing.TB
	mc     *memConn
	c      *Conn
	closes []closeEvent
	in     []byte // what Read handed on
	sizes  []int  // Read buffer sizes, used in turn
	nread  int
	buf    []byte
}

func newMemRig(t testing.TB, sizes ...int) *memRig {
	if len(sizes) == 0 {
		sizes = []int{4096}
	}
	r := &memRig{t: t, mc: &memConn{}, sizes: sizes}
	r.c = New(r.mc, func(id, code uint16, text string) { r.closes = append(r.closes, closeEvent{id, code, text}) })
	return r
}

func (r *memRig) write(chunks ...[]byte) {
	r.t.Helper()
	for _, p := range chunks {
		if n, err := r.c.Write(p); n != len(p) || err != nil {
			r.t.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", len(p), n, err, len(p))
		}
	}
}

// read makes one Read call with the next buffer size and records what it
// hands on. (0, nil) is a failure: amqp091-go's bufio.Reader would retry
// it, but at most 100 times before failing with io.ErrNoProgress.
func (r *memRig) read() (int, error) {
	r.t.Helper()
	size := r.sizes[r.nread%len(r.sizes)]
	r.nread++
	if cap(r.buf) < size {
		r.buf = make([]byte, size)
	}
	buf := r.buf[:size]
	n, err := r.c.Read(buf)
	if n < 0 || n > size {
		r.t.Fatalf("Read into %d bytes = %d, %v", size, n, err)
	}
	if n == 0 && err == nil {
		r.t.Fatalf("Read into %d bytes returned (0, nil)", size)
	}
	r.in = append(r.in, buf[:n]...)
	// The buffer is the caller's again (io.Reader: "Implementations must
	// not retain p"): bufio reuses it for the next Read at once.
	for b := buf; len(b) > 0; {
		b = b[copy(b, junk[:]):]
	}
	return n, err
}

var junk = func() (j [4096]byte) {
	for i := range j {
		j[i] = 0xA5
	}
	return j
}()

// drain reads until Conn would block (or fails on another error).
func (r *memRig) drain() {
	r.t.Helper()
	for {
		_, err := r.read()
		if errors.Is(err, errWouldBlock) || errors.Is(err, ErrMalformed) {
			return
		}
		if err != nil {
			r.t.Fatalf("Read: %v", err)
		}
	}
}

// feed queues each chunk as the result of one underlying Read and reads
// through Conn until it would block.
func (r *memRig) feed(chunks ...[]byte) {
	r.t.Helper()
	for _, ch := range chunks {
		if len(ch) > 0 {
			r.mc.reads = append(r.mc.reads, ch)
		}
	}
	r.drain()
}

// takeIn returns and forgets what Read handed on.
func (r *memRig) takeIn() []byte {
	got := r.in
	r.in = nil
	return got
}

// recv feeds chunks and requires Read to hand on want.
func (r *memRig) recv(want []byte, chunks ...[]byte) {
	r.t.Helper()
	r.feed(chunks...)
	if got := r.takeIn(); !bytes.Equal(got, want) {
		r.t.Fatalf("amqp091-go was handed the wrong bytes: %s", diff(got, want))
	}
}

// readFrames reads frames the way amqp091-go's reader does (a 4096-byte
// bufio.Reader, io.ReadFull of header, payload and end octet) until an
// error, and returns the frames it got whole.
func readFrames(rd io.Reader) ([][]byte, error) {
	br := bufio.NewReader(rd)
	var frames [][]byte
	for {
		var h [frameHeaderLen]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return frames, err
		}
		size := binary.BigEndian.Uint32(h[3:7])
		if size > 131072-8 {
			return frames, errors.New("frame too large")
		}
		f := make([]byte, frameHeaderLen+int(size)+1)
		copy(f, h[:])
		if _, err := io.ReadFull(br, f[frameHeaderLen:]); err != nil {
			return frames, err
		}
		if f[len(f)-1] != frameEnd {
			return frames, errors.New("bad frame end")
		}
		frames = append(frames, f)
	}
}

// splitFrames cuts a well-formed stream into its frames.
func splitFrames(b []byte) [][]byte {
	var fs [][]byte
	for len(b) > 0 {
		n := frameHeaderLen + int(binary.BigEndian.Uint32(b[3:7])) + 1
		fs = append(fs, b[:n])
		b = b[n:]
	}
	return fs
}

// scriptConn is a net.Conn whose Reads return a fixed script (then io.EOF);
// Writes are discarded.
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
// Outbound: helpers.

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
	// A dropped channel.close is not one the broker will answer: a
	// close-ok for channel 9 is still a stray.
	r.recv(heartbeat(), cat(chanCloseOK(9), heartbeat()))
	if d := r.c.DroppedInbound(); d != 1 {
		t.Fatalf("DroppedInbound() = %d, want 1", d)
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
	// Nor inbound: a channel-class close-ok on channel 0 is handed on.
	r.deliver(cat(chanCloseOK(0), chanClose(0, 200, ""), chanCloseOK(0), heartbeat()))
	if d := r.c.DroppedInbound(); d != 0 {
		t.Fatalf("DroppedInbound() = %d, want 0", d)
	}
	if ev := r.events(); len(ev) != 0 {
		t.Fatalf("onClose saw %v for class-20 methods on channel 0", ev)
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
	r.write(chanOpen(3))
	r.recv(heartbeat(), cat(chanCloseOK(3), heartbeat())) // a stray: no close of ours on 3
	r.write(chanClose(3, 200, ""))
	r.deliver(chanCloseOK(3))
	want := []string{
		"out 1 20.10", "out 1 20.41", "drop 1 60.40", "in 2 20.11", "in 2 60.60",
		"out 3 20.10", "drop-in 3 20.41", "out 3 20.40", "in 3 20.41",
	}
	if !slices.Equal(tr, want) {
		t.Fatalf("trace = %q\nwant    %q", tr, want)
	}
}

// ---------------------------------------------------------------------------
// Inbound: helpers.

// inCase is an inbound stream for a Conn prepared by setup: what the broker
// sends, what amqp091-go must be handed, how many stray close-oks Conn must
// drop and which close events it must report while reading stream.
type inCase struct {
	setup  func(r *memRig) // outbound and inbound traffic before stream; nil: none
	stream []byte
	want   []byte
	drops  uint64
	events []closeEvent
}

// run feeds c.stream cut at cuts (one underlying Read per chunk, read until
// Conn would block after each) with Read buffers of the given sizes, and
// checks the result.
func (c inCase) run(t testing.TB, what string, cuts []int, sizes []int, oneFeed bool) {
	t.Helper()
	r := newMemRig(t, sizes...)
	if c.setup != nil {
		c.setup(r)
	}
	r.takeIn()
	d0, ev0 := r.c.DroppedInbound(), len(r.closes)
	if oneFeed {
		r.feed(chunks(c.stream, cuts)...)
	} else {
		for _, ch := range chunks(c.stream, cuts) {
			r.feed(ch)
		}
	}
	if got := r.takeIn(); !bytes.Equal(got, c.want) {
		t.Fatalf("%s (cuts %v, read sizes %v): amqp091-go was handed the wrong bytes: %s", what, cuts, sizes, diff(got, c.want))
	}
	if d := r.c.DroppedInbound() - d0; d != c.drops {
		t.Fatalf("%s (cuts %v, read sizes %v): DroppedInbound grew by %d, want %d", what, cuts, sizes, d, c.drops)
	}
	if ev := r.closes[ev0:]; !slices.Equal(ev, c.events) {
		t.Fatalf("%s (cuts %v, read sizes %v): onClose saw %v, want %v", what, cuts, sizes, ev, c.events)
	}
	if r.c.broken {
		t.Fatalf("%s (cuts %v): walker lost frame sync", what, cuts)
	}
}

// readSizeSets are the Read buffer sizes the chunking checks use in turn:
// bufio's 4096, the smallest size Read serves directly (22), sizes that go
// through Conn's own buffer (1..21), and a mix.
var readSizeSets = [][]int{{4096}, {22}, {1}, {11}, {21}, {23}, {7, 4096, 1, 22, 3}}

// checkInboundChunkings feeds the stream whole, frame by frame, split in
// two at every byte, byte by byte and in random chunks, each with several
// Read buffer sizes, and checks amqp091-go is handed exactly c.want.
func checkInboundChunkings(t *testing.T, c inCase) {
	t.Run("one-read", func(t *testing.T) {
		for _, sizes := range readSizeSets {
			c.run(t, "one read", nil, sizes, false)
		}
	})
	t.Run("frame-per-read", func(t *testing.T) {
		var cuts []int
		p := 0
		for _, f := range splitFrames(c.stream) {
			p += len(f)
			if p < len(c.stream) {
				cuts = append(cuts, p)
			}
		}
		for _, sizes := range readSizeSets {
			c.run(t, "frame per read", cuts, sizes, false)
			c.run(t, "frame per read, one feed", cuts, sizes, true)
		}
	})
	t.Run("every-read-size", func(t *testing.T) {
		var frameCuts, byteCuts []int
		p := 0
		for _, f := range splitFrames(c.stream) {
			if p += len(f); p < len(c.stream) {
				frameCuts = append(frameCuts, p)
			}
		}
		for k := 1; k < len(c.stream); k++ {
			byteCuts = append(byteCuts, k)
		}
		for size := 1; size <= 2*frameStartLen+2; size++ {
			for _, sizes := range [][]int{{size}, {size, 4096}} {
				c.run(t, "one read", nil, sizes, false)
				c.run(t, "frame per read", frameCuts, sizes, false)
				c.run(t, "byte by byte", byteCuts, sizes, false)
			}
		}
	})
	t.Run("every-split", func(t *testing.T) {
		for k := 1; k < len(c.stream); k++ {
			for _, sizes := range [][]int{{4096}, {22}, {1}, {11}} {
				c.run(t, fmt.Sprintf("split at %d", k), []int{k}, sizes, false)
			}
		}
	})
	t.Run("byte-by-byte", func(t *testing.T) {
		cuts := make([]int, 0, len(c.stream))
		for k := 1; k < len(c.stream); k++ {
			cuts = append(cuts, k)
		}
		for _, sizes := range readSizeSets {
			c.run(t, "byte by byte", cuts, sizes, false)
		}
		c.run(t, "byte by byte, one feed", cuts, []int{4096}, true)
	})
	t.Run("random", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		for i := range 300 {
			sizes := make([]int, 1+rng.IntN(4))
			for j := range sizes {
				if rng.IntN(3) == 0 {
					sizes[j] = 4096
				} else {
					sizes[j] = 1 + rng.IntN(40)
				}
			}
			c.run(t, fmt.Sprintf("random chunking %d", i), randomCuts(rng, len(c.stream), 1+rng.IntN(60)), sizes, rng.IntN(4) == 0)
		}
	})
}

// passCase is a stream to pass unchanged.
func passCase(setup func(*memRig), stream []byte, events ...closeEvent) inCase {
	return inCase{setup: setup, stream: stream, want: stream, events: events}
}

// ---------------------------------------------------------------------------
// Inbound: pass-through. Without stray close-oks, amqp091-go reads exactly
// what the broker sent, however it arrives and however it is read.

// inboundStream has frames of every type and size class: method frames
// with and without arguments, content headers, empty, small and several
// body frames, heartbeats, a channel.close and a connection.close, and
// class-20 close-oks on channel 0 (the connection's, never a stray).
func inboundStream() []byte {
	return cat(
		methodFrame(0, 10, 30, cat(u16(2047), u32(131072), u16(60))), // connection.tune
		methodFrame(0, 10, 41, shortstr("")),                         // connection.open-ok
		chanOpenOK(1), chanOpenOK(2),
		methodFrame(1, 60, 11, nil), // basic.qos-ok
		delivery(1, 1, pattern(40)),
		heartbeat(),
		cat(basicDeliverMethod(2, 2), contentHeader(2, 60, 0)), // empty body: no body frame
		cat(basicDeliverMethod(2, 3), contentHeader(2, 60, 30), bodyFrame(2, pattern(10)), bodyFrame(2, pattern(20))),
		basicAck(1, 7),
		chanCloseOK(0),
		chanClose(2, 406, "PRECONDITION_FAILED - x"),
		heartbeat(),
		connClose(320, "CONNECTION_FORCED"),
	)
}

func TestInboundPassThrough(t *testing.T) {
	checkInboundChunkings(t, passCase(nil, inboundStream(),
		closeEvent{2, 406, "PRECONDITION_FAILED - x"}, closeEvent{0, 320, "CONNECTION_FORCED"}))
}

func TestInboundPassThroughLargeFrames(t *testing.T) {
	// Body frames larger than bufio's buffer, which amqp091-go reads straight
	// into the payload, and a 255-byte close text.
	long := strings.Repeat("L", 255)
	stream := cat(delivery(1, 1, pattern(10000)), chanClose(3, 404, long), delivery(1, 2, pattern(4096)),
		cat(basicDeliverMethod(1, 3), contentHeader(1, 60, 140000), bodyFrame(1, pattern(131064)), bodyFrame(1, pattern(140000-131064))))
	c := passCase(nil, stream, closeEvent{3, 404, long})
	for _, sizes := range [][]int{{4096}, {22}, {23}, {140000}, {64, 4096, 21, 9000}} {
		c.run(t, "one read", nil, sizes, false)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range 12 {
		c.run(t, fmt.Sprintf("random %d", i), randomCuts(rng, len(stream), 1+rng.IntN(9000)), []int{4096, 1 + rng.IntN(30000)}, false)
	}
	// amqp091-go's own way of reading: whole frames out of a bufio.Reader.
	r := newMemRig(t)
	r.mc.reads = chunks(stream, randomCuts(rng, len(stream), 5000))
	r.mc.eof = true
	frames, err := readFrames(r.c)
	if err != io.EOF || !slices.EqualFunc(frames, splitFrames(stream), bytes.Equal) {
		t.Fatalf("readFrames = %d frames, %v; want %d frames, EOF", len(frames), err, len(splitFrames(stream)))
	}
}

func TestInboundExactBoundaryReads(t *testing.T) {
	// Each Read asks for exactly the next frame: it gets exactly that frame,
	// also when the frame is shorter than 22 bytes (served from Conn's own
	// buffer) and whether the broker's bytes come as one chunk or a frame
	// per chunk.
	frames := splitFrames(inboundStream())
	for _, perFrame := range []bool{false, true} {
		r := newMemRig(t)
		if perFrame {
			r.mc.reads = slices.Clone(frames)
		} else {
			r.mc.reads = [][]byte{cat(frames...)}
		}
		for i, f := range frames {
			r.sizes = []int{len(f)}
			r.nread = 0
			n, err := r.read()
			if err != nil || n != len(f) || !bytes.Equal(r.takeIn(), f) {
				t.Fatalf("per frame %v: Read of frame %d (%d bytes) = %d, %v", perFrame, i, len(f), n, err)
			}
		}
		if n, err := r.read(); n != 0 || !errors.Is(err, errWouldBlock) {
			t.Fatalf("Read after the last frame = %d, %v", n, err)
		}
	}
}

func TestInboundHoldsBackIncompleteFrameStart(t *testing.T) {
	// A frame start too short to judge (fewer than 11 bytes of a method
	// frame with a method id, fewer than 7 of any other frame) is kept back
	// until the rest arrives; the bytes before it are handed on at once.
	prev := delivery(1, 1, pattern(5))
	for _, tc := range []struct {
		name  string
		frame []byte
		judge int // bytes after which the frame's start can be judged
	}{
		{"method", chanOpenOK(1), 11},
		{"close", chanClose(1, 406, "x"), 11},
		{"deliver", basicDeliverMethod(1, 2), 11},
		{"heartbeat", heartbeat(), 7},
		{"header", contentHeader(1, 60, 3), 7},
		{"body", bodyFrame(1, pattern(3)), 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, sizes := range [][]int{{4096}, {22}, {1}, {21}} {
				for k := 1; k < len(tc.frame); k++ {
					r := newMemRig(t, sizes...)
					r.feed(cat(prev, tc.frame[:k]))
					want := prev
					if k >= tc.judge {
						want = cat(prev, tc.frame[:k])
					}
					if got := r.takeIn(); !bytes.Equal(got, want) {
						t.Fatalf("sizes %v, %d bytes of the frame: %s", sizes, k, diff(got, want))
					}
					r.recv(tc.frame[len(want)-len(prev):], tc.frame[k:])
				}
				// Kept back over several Reads that would block.
				r := newMemRig(t, sizes...)
				for k := 1; k < tc.judge; k++ {
					r.recv(nil, tc.frame[k-1:k])
				}
				r.recv(tc.frame, tc.frame[tc.judge-1:])
			}
		})
	}
}

func TestInboundHeldBytesAtEOF(t *testing.T) {
	// The broker's stream ends inside a frame start Conn keeps back.
	// What happens: Read returns (0, io.EOF) and keeps doing so; the held
	// bytes are never handed on. amqp091-go's reader therefore sees a clean
	// EOF at a frame boundary (io.EOF) where the raw stream would give it
	// io.ErrUnexpectedEOF; both end the connection with a FrameError.
	prev := delivery(1, 1, pattern(5))
	next := chanOpenOK(1)
	for _, sizes := range [][]int{{4096}, {22}, {1}, {21}} {
		for k := 1; k < len(next); k++ {
			stream := cat(prev, next[:k])
			r := newMemRig(t, sizes...)
			r.mc.reads = [][]byte{stream}
			r.mc.eof = true
			var err error
			for err == nil {
				_, err = r.read()
			}
			if err != io.EOF {
				t.Fatalf("sizes %v, k %d: Read error %v, want io.EOF", sizes, k, err)
			}
			want := stream
			if k < frameStartLen {
				want = prev
			}
			if got := r.takeIn(); !bytes.Equal(got, want) {
				t.Fatalf("sizes %v, k %d: %s", sizes, k, diff(got, want))
			}
			for range 3 {
				if n, err := r.read(); n != 0 || err != io.EOF {
					t.Fatalf("sizes %v, k %d: Read after EOF = %d, %v", sizes, k, n, err)
				}
			}
		}
	}
	for k := 1; k < len(next); k++ {
		stream := cat(prev, next[:k])
		_, rawErr := readFrames(bytes.NewReader(stream))
		rawWant := io.ErrUnexpectedEOF
		if k == frameHeaderLen {
			rawWant = io.EOF // a whole header and not one byte more
		}
		r := newMemRig(t)
		r.mc.reads = [][]byte{stream}
		r.mc.eof = true
		frames, err := readFrames(r.c)
		wantErr := io.ErrUnexpectedEOF
		if k < frameStartLen {
			wantErr = io.EOF
		}
		if rawErr != rawWant || err != wantErr || len(frames) != 3 {
			t.Fatalf("k %d: amqp091-go's reader gets %d frames, %v (raw stream: %v); want 3 frames, %v", k, len(frames), err, rawErr, wantErr)
		}
	}
	t.Run("data-and-EOF-in-one-read", func(t *testing.T) {
		c := New(&scriptConn{reads: []scriptRead{{b: cat(prev, next[:5]), err: io.EOF}}}, nil)
		buf := make([]byte, 100)
		if n, err := c.Read(buf); n != len(prev) || err != io.EOF || !bytes.Equal(buf[:n], prev) {
			t.Fatalf("Read = %d, %v; want %d, EOF", n, err, len(prev))
		}
		if n, err := c.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("second Read = %d, %v; want 0, EOF", n, err)
		}
		// Through Conn's own buffer, the error waits until the bytes are out.
		c = New(&scriptConn{reads: []scriptRead{{b: cat(prev, next[:5]), err: io.EOF}}}, nil)
		var got []byte
		for {
			n, err := c.Read(buf[:3])
			got = append(got, buf[:n]...)
			if n == 0 && err == nil {
				t.Fatal("Read returned (0, nil)")
			}
			if err != nil {
				if err != io.EOF || !bytes.Equal(got, prev) {
					t.Fatalf("tiny reads: got %d bytes, %v; want %d bytes, EOF", len(got), err, len(prev))
				}
				break
			}
		}
		if n, err := c.Read(buf[:3]); n != 0 || err != io.EOF {
			t.Fatalf("tiny Read after EOF = %d, %v", n, err)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		r := newRig(t)
		r.recv(prev, cat(prev, next[:5]))
		_ = r.peer.Close()
		select {
		case <-r.readerDone:
		case <-time.After(testTimeout):
			t.Fatal("reader did not see the broker's close")
		}
		r.mu.Lock()
		err, rest := r.inErr, len(r.in)
		r.mu.Unlock()
		if err != io.EOF || rest != 0 {
			t.Fatalf("after the broker closed: %d more bytes, %v; want 0, EOF", rest, err)
		}
	})
}

func TestInboundReadErrorKeepsHeldBytes(t *testing.T) {
	// A Read that fails (here: a deadline) while a frame start is kept back
	// keeps it; once reading resumes the frame is handed on whole.
	r := newRig(t)
	hb, f := heartbeat(), chanClose(4, 406, "deadline")
	wait := r.peerSend(cat(hb, f[:5]))
	buf := make([]byte, 100)
	if n, err := r.c.Read(buf); n != len(hb) || err != nil || !bytes.Equal(buf[:n], hb) {
		t.Fatalf("Read = %d, %v; want the heartbeat", n, err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	r.sent += len(hb) + 5
	_ = r.c.SetReadDeadline(time.Unix(1, 0))
	for _, size := range []int{100, 5} {
		if n, err := r.c.Read(buf[:size]); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read(%d) past the deadline = %d, %v", size, n, err)
		}
	}
	_ = r.c.SetReadDeadline(time.Now().Add(testTimeout))
	r.recv(f, f[5:])
	if ev := r.events(); !slices.Equal(ev, []closeEvent{{4, 406, "deadline"}}) {
		t.Fatalf("onClose saw %v", ev)
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
	// Both closes of ours are answered: their close-oks are handed on.
	r.deliver(cat(chanCloseOK(6), chanCloseOK(5)))
	if d := r.c.DroppedInbound(); d != 0 {
		t.Fatalf("DroppedInbound() = %d, want 0", d)
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

func TestReadDataAndError(t *testing.T) {
	// A Read returning bytes and an error walks the bytes too, and hands
	// them on with the error.
	var got []closeEvent
	f := chanClose(4, 404, "NOT_FOUND")
	c := New(&scriptConn{reads: []scriptRead{{b: cat(f, chanCloseOK(4)), err: io.ErrUnexpectedEOF}}},
		func(id, code uint16, text string) { got = append(got, closeEvent{id, code, text}) })
	buf := make([]byte, 100)
	if n, err := c.Read(buf); !errors.Is(err, io.ErrUnexpectedEOF) || n != len(f) || !bytes.Equal(buf[:n], f) {
		t.Fatalf("Read = %d, %v; want %d, unexpected EOF", n, err, len(f))
	}
	if !slices.Equal(got, []closeEvent{{4, 404, "NOT_FOUND"}}) {
		t.Fatalf("onClose saw %v", got)
	}
	if d := c.DroppedInbound(); d != 1 {
		t.Fatalf("DroppedInbound() = %d, want 1", d)
	}
}

// ---------------------------------------------------------------------------
// Inbound channel.close-ok: handed on only when it answers a channel.close
// of ours that is still unanswered.

// openClose prepares channel ch: opened, and our channel.close sent.
func openClose(ch uint16) func(*memRig) {
	return func(r *memRig) { r.write([]byte(protoHeader), chanOpen(ch), chanClose(ch, 200, "Goodbye")) }
}

func TestCleanCloseOKHandedOn(t *testing.T) {
	ok := chanCloseOK(5)
	t.Run("chunkings", func(t *testing.T) {
		checkInboundChunkings(t, passCase(openClose(5), cat(delivery(5, 1, pattern(30)), ok, heartbeat(), delivery(6, 1, pattern(5)))))
	})
	r := newMemRig(t)
	openClose(5)(r)
	r.recv(ok, ok)
	if d := r.c.DroppedInbound(); d != 0 {
		t.Fatalf("DroppedInbound() = %d, want 0", d)
	}
	// Answered: a second close-ok is a stray.
	r.recv(heartbeat(), cat(ok, heartbeat()))
	if d := r.c.DroppedInbound(); d != 1 {
		t.Fatalf("DroppedInbound() = %d, want 1", d)
	}
	// After the broker's close-ok nothing more goes out on 5 until it is
	// reopened.
	out := len(r.mc.out)
	r.write(basicQos(5, 1), chanClose(5, 200, ""), publish(5, pattern(3)))
	if got := r.mc.out[out:]; len(got) != 0 {
		t.Fatalf("frames on 5 after its close-ok reached the broker: % x", got)
	}
	if d := r.c.Dropped(); d != 5 {
		t.Fatalf("Dropped() = %d, want 5", d)
	}
	// Reopened and closed again: its close-ok is handed on again.
	r.write(chanOpen(5), chanClose(5, 200, ""))
	r.recv(ok, ok)
	if got, want := r.mc.out[out:], cat(chanOpen(5), chanClose(5, 200, "")); !bytes.Equal(got, want) {
		t.Fatalf("%s", diff(got, want))
	}
}

func TestCloseOKStateChangesWhenComplete(t *testing.T) {
	// The close-ok is judged by its first 11 bytes, but it ends the channel
	// only once its last byte has been read.
	ok := chanCloseOK(5)
	for k := frameStartLen; k < len(ok); k++ {
		r := newMemRig(t)
		openClose(5)(r)
		r.recv(ok[:k], ok[:k])
		out := len(r.mc.out)
		r.write(basicQos(5, 1))
		if got := r.mc.out[out:]; !bytes.Equal(got, basicQos(5, 1)) {
			t.Fatalf("split %d: frame on 5 before the close-ok was complete: %s", k, diff(got, basicQos(5, 1)))
		}
		r.recv(ok[k:], ok[k:])
		out = len(r.mc.out)
		r.write(basicQos(5, 2))
		if got := r.mc.out[out:]; len(got) != 0 {
			t.Fatalf("split %d: frame on 5 after the close-ok reached the broker", k)
		}
	}
}

// crossing prepares the simultaneous close on channel 5 (channel 6 open
// too): our close and the broker's cross, amqp091-go answers the broker's,
// and, with reopen, opens channel 5 again at once.
func crossing(reopen bool) func(*memRig) {
	return func(r *memRig) {
		r.write([]byte(protoHeader), chanOpen(5), chanOpen(6), chanClose(5, 200, "Goodbye"))
		bc := chanClose(5, 406, "PRECONDITION_FAILED - crossing")
		r.recv(bc, bc)
		out := len(r.mc.out)
		r.write(chanCloseOK(5)) // the answer always goes out
		if reopen {
			r.write(chanOpen(5))
		}
		want := chanCloseOK(5)
		if reopen {
			want = cat(want, chanOpen(5))
		}
		if got := r.mc.out[out:]; !bytes.Equal(got, want) {
			r.t.Fatalf("crossing: %s", diff(got, want))
		}
	}
}

func TestCrossingCloseOKDropped(t *testing.T) {
	for _, reopen := range []bool{false, true} {
		t.Run(fmt.Sprintf("reopen=%v", reopen), func(t *testing.T) {
			after := cat(delivery(6, 1, pattern(20)), heartbeat())
			if reopen {
				after = cat(chanOpenOK(5), delivery(5, 1, pattern(20)), after)
			}
			checkInboundChunkings(t, inCase{
				setup:  crossing(reopen),
				stream: cat(chanCloseOK(5), after),
				want:   after,
				drops:  1,
			})
			r := newMemRig(t)
			crossing(reopen)(r)
			r.recv(after, cat(chanCloseOK(5), after))
			if ev := r.closes; !slices.Equal(ev, []closeEvent{{5, 406, "PRECONDITION_FAILED - crossing"}}) {
				t.Fatalf("onClose saw %v", ev)
			}
			// Channel 5 as the crossing left it: closed, or open again.
			out := len(r.mc.out)
			r.write(basicQos(5, 1))
			if got := r.mc.out[out:]; bytes.Equal(got, basicQos(5, 1)) != reopen {
				t.Fatalf("after the stray: basic.qos on 5 went out: %v, want %v", len(got) > 0, reopen)
			}
		})
	}
}

func TestCrossingClosePipe(t *testing.T) {
	// The crossing with real goroutines: amqp091-go's reader (4096-byte
	// reads) and writes from the test.
	for _, reopen := range []bool{false, true} {
		t.Run(fmt.Sprintf("reopen=%v", reopen), func(t *testing.T) {
			r := newRig(t)
			r.writeStr(protoHeader)
			r.write(chanOpen(5), chanOpen(6), chanClose(5, 200, "Goodbye"))
			r.take()
			r.deliver(chanClose(5, 406, "PRECONDITION_FAILED - crossing"))
			r.write(chanCloseOK(5))
			if got := r.take(); !bytes.Equal(got, chanCloseOK(5)) {
				t.Fatalf("close-ok answering the broker's close: %s", diff(got, chanCloseOK(5)))
			}
			after := delivery(6, 1, pattern(10))
			if reopen {
				r.write(chanOpen(5))
				if got := r.take(); !bytes.Equal(got, chanOpen(5)) {
					t.Fatalf("reopen: %s", diff(got, chanOpen(5)))
				}
				after = cat(chanOpenOK(5), after)
			}
			r.recv(after, cat(chanCloseOK(5), after))
			if d := r.c.DroppedInbound(); d != 1 {
				t.Fatalf("DroppedInbound() = %d, want 1", d)
			}
			if ev := r.events(); !slices.Equal(ev, []closeEvent{{5, 406, "PRECONDITION_FAILED - crossing"}}) {
				t.Fatalf("onClose saw %v", ev)
			}
		})
	}
}

func TestReopenRace(t *testing.T) {
	// DESIGN item 8: the id of a channel whose close crossed the broker's is
	// reused before the broker's close-ok for our close arrives.
	openOK := chanOpenOK(5)
	steps := func(r *memRig) {
		crossing(true)(r)
		r.recv(openOK, chanCloseOK(5), openOK) // the stray is dropped, open-ok handed on
		if d := r.c.DroppedInbound(); d != 1 {
			r.t.Fatalf("DroppedInbound() = %d, want 1", d)
		}
		r.write(chanClose(5, 200, "again"))
	}
	// The new channel's own close is answered normally, however the bytes
	// arrive.
	checkInboundChunkings(t, passCase(steps, cat(chanCloseOK(5), heartbeat())))
	// And the stray and the open-ok in every chunking.
	checkInboundChunkings(t, inCase{setup: crossing(true), stream: cat(chanCloseOK(5), openOK, basicAck(5, 1)),
		want: cat(openOK, basicAck(5, 1)), drops: 1})
}

func TestCloseOKWithoutOurCloseDropped(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(r *memRig)
	}{
		{"never-opened", func(r *memRig) { r.write([]byte(protoHeader)) }},
		{"open-no-close", func(r *memRig) { r.write([]byte(protoHeader), chanOpen(5)) }},
		{"broker-closed-answered", func(r *memRig) {
			r.write([]byte(protoHeader), chanOpen(5))
			r.feed(chanClose(5, 406, "x"))
			r.write(chanCloseOK(5))
		}},
		{"broker-closed-ours-dropped", func(r *memRig) {
			r.write([]byte(protoHeader), chanOpen(5))
			r.feed(chanClose(5, 406, "x"))
			r.write(chanClose(5, 200, "")) // dropped: the broker's close was read
			r.write(chanCloseOK(5))
		}},
		{"closed-answered-reopened", func(r *memRig) {
			openClose(5)(r)
			r.feed(chanCloseOK(5))
			r.write(chanOpen(5))
		}},
		{"client-close-ok-then-reopened", func(r *memRig) {
			openClose(5)(r)
			r.write(chanCloseOK(5)) // not answering anything the broker sent
			r.write(chanOpen(5))
		}},
		{"close-on-unopened-dropped", func(r *memRig) {
			r.write([]byte(protoHeader), chanClose(5, 200, "")) // dropped: never opened
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkInboundChunkings(t, inCase{setup: tc.setup, stream: cat(chanCloseOK(5), heartbeat(), chanCloseOK(5)),
				want: heartbeat(), drops: 2})
		})
	}
}

func TestCloseOKDecisionsPerChannel(t *testing.T) {
	// closeSent is a bit per id in 64-bit words; neighbours and word
	// boundaries must not bleed into each other.
	ids := []uint16{1, 62, 63, 64, 65, 127, 128, 4095, 65534, 65535}
	for _, closed := range ids {
		r := newMemRig(t)
		r.write([]byte(protoHeader))
		for _, id := range ids {
			r.write(chanOpen(id))
		}
		r.write(chanClose(closed, 200, ""))
		var stream []byte
		for _, id := range ids {
			stream = append(stream, chanCloseOK(id)...)
		}
		r.recv(chanCloseOK(closed), stream)
		if d := r.c.DroppedInbound(); d != uint64(len(ids)-1) {
			t.Fatalf("only %d closed: DroppedInbound() = %d, want %d", closed, d, len(ids)-1)
		}
	}
}

func TestCloseOKReadBeforeAnswerIsStray(t *testing.T) {
	// Our channel.close crossed the broker's, and the broker's close-ok for
	// ours comes right behind its channel.close, in the same Read: Conn walks
	// both frames before amqp091-go dispatches either (bufio reads ahead up
	// to 4096 bytes). amqp091-go dispatches the channel.close first: it
	// writes the close-ok answer and releases the id at once (channel.go,
	// dispatch of *channelClose; connection.go, closeChannel). When it
	// reaches the close-ok the channel is gone: the close-ok answers nothing
	// amqp091-go still waits for, and if another goroutine reused the id in
	// between, it would be handed to the new channel (DESIGN item 8). So a
	// close-ok read after the broker's channel.close on its channel is a
	// stray even before amqp091-go's answer has gone out.
	bc := chanClose(5, 406, "PRECONDITION_FAILED - crossing")
	for _, tc := range []struct {
		name   string
		chunks [][]byte
	}{
		{"one-read", [][]byte{cat(bc, chanCloseOK(5))}},
		{"close-split", [][]byte{bc[:20], cat(bc[20:], chanCloseOK(5))}},
		{"with-frames-between", [][]byte{cat(bc, delivery(6, 1, pattern(100)), heartbeat(), chanCloseOK(5), heartbeat())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newMemRig(t)
			r.write([]byte(protoHeader), chanOpen(5), chanOpen(6), chanClose(5, 200, "Goodbye"))
			stream := cat(tc.chunks...)
			want := slices.Concat(slices.DeleteFunc(splitFrames(stream), func(f []byte) bool { return bytes.Equal(f, chanCloseOK(5)) })...)
			for _, ch := range tc.chunks {
				r.feed(ch)
			}
			got := r.takeIn()
			if !bytes.Equal(got, want) {
				t.Fatalf("amqp091-go was handed the close-ok behind the broker's unanswered channel.close "+
					"(DroppedInbound %d): %s", r.c.DroppedInbound(), diff(got, want))
			}
			r.write(chanCloseOK(5)) // amqp091-go's answer, written when it dispatches the close
			r.write(chanOpen(5))    // the id reused
			r.feed(chanOpenOK(5))
			if got := r.takeIn(); !bytes.Equal(got, chanOpenOK(5)) {
				t.Fatalf("open-ok: %s", diff(got, chanOpenOK(5)))
			}
		})
	}
}

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
			for _, sizes := range [][]int{{4096}, {22}, {1}, {13}} {
				for k := 1; k < len(stream); k++ {
					r := newMemRig(t, sizes...)
					r.feed(stream[:k])
					if k < end && len(r.closes) != 0 {
						t.Fatalf("sizes %v split %d: onClose ran before the frame was complete: %v", sizes, k, r.closes)
					}
					if k >= end && !slices.Equal(r.closes, []closeEvent{tc.want}) {
						t.Fatalf("sizes %v split %d: onClose saw %v once the frame was complete, want [%v]", sizes, k, r.closes, tc.want)
					}
					r.feed(stream[k:])
					if !slices.Equal(r.closes, []closeEvent{tc.want}) {
						t.Fatalf("sizes %v split %d: onClose saw %v, want [%v]", sizes, k, r.closes, tc.want)
					}
					if got := r.takeIn(); !bytes.Equal(got, stream) {
						t.Fatalf("sizes %v split %d: %s", sizes, k, diff(got, stream))
					}
					if tc.want.id != 0 && !r.c.awaiting.get(tc.want.id) {
						t.Fatalf("sizes %v split %d: channel %d not marked as awaiting close-ok", sizes, k, tc.want.id)
					}
				}
			}
			// Byte by byte over the pipe, amqp091-go's reader reading 4096.
			r := newRig(t)
			for i := range stream {
				r.send(stream[i : i+1])
				if ev := r.events(); (i+1 < end) != (len(ev) == 0) {
					t.Fatalf("byte by byte, %d bytes sent: onClose saw %v", i+1, ev)
				}
			}
			if got := r.takeIn(); !bytes.Equal(got, stream) {
				t.Fatalf("byte by byte: %s", diff(got, stream))
			}
			if ev := r.events(); !slices.Equal(ev, []closeEvent{tc.want}) {
				t.Fatalf("byte by byte: onClose saw %v, want [%v]", ev, tc.want)
			}
		})
	}
}

func TestOnCloseIgnoresOtherMethods(t *testing.T) {
	r := newRig(t)
	r.recv(cat(
		methodFrame(0, 20, 40, closeArgs(1, "channel.close on 0", 0, 0)), // not a channel's
		methodFrame(3, 10, 50, closeArgs(2, "connection.close on 3", 0, 0)),
		connCloseOK(), chanOpenOK(3),
	), cat(
		methodFrame(0, 20, 40, closeArgs(1, "channel.close on 0", 0, 0)),
		methodFrame(3, 10, 50, closeArgs(2, "connection.close on 3", 0, 0)),
		chanCloseOK(3), // a stray: dropped, and not a close
		connCloseOK(), chanOpenOK(3),
	))
	if ev := r.events(); len(ev) != 0 {
		t.Fatalf("onClose saw %v, want nothing", ev)
	}
	if d := r.c.DroppedInbound(); d != 1 {
		t.Fatalf("DroppedInbound() = %d, want 1", d)
	}
}

func TestOnCloseNotCalledForConnectionOpen(t *testing.T) {
	// connection.open is 10.40, the method id channel.close has in class 20.
	// It is not a close and must not be reported as one.
	r := newRig(t)
	r.deliver(cat(connOpen(), methodFrame(0, 10, 40, cat(shortstr("looks like a close"), shortstr(""), []byte{0}))))
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

// ---------------------------------------------------------------------------
// Inbound walker robustness.

func TestInboundBadFrameEndFailsTheConnection(t *testing.T) {
	// A frame whose end octet is not 0xCE is not AMQP framing: amqp091-go,
	// which does not read method frame sizes, might parse the bytes as
	// another frame Conn never judged. Conn withholds the frame and Read
	// fails with ErrMalformed; nothing after it is acted on.
	for _, tc := range []struct {
		name string
		bad  []byte
	}{
		{"heartbeat", func() []byte { f := heartbeat(); f[len(f)-1] = 0; return f }()},
		{"delivery-body", func() []byte { f := bodyFrame(1, pattern(50)); f[len(f)-1] = 0xCD; return f }()},
		{"close-being-captured", func() []byte { f := chanClose(3, 406, "x"); f[len(f)-1] = 'x'; return f }()},
		{"method-size-0", rawFrame(frameMethod, 1, nil)[:7:7]}, // end octet missing: next frame's type byte is taken for it
		// amqp091-go reads a method's arguments, not the frame's size
		// field, then expects the end octet: frames whose arguments end
		// before or after the size says put it and Conn out of step.
		{"method-without-id", rawFrame(frameMethod, 1, []byte{0, 20, 0})},
		{"close-without-arguments", methodFrame(3, 20, 40, nil)},
		{"close-arguments-truncated", methodFrame(3, 20, 40, []byte{1})},
		{"reply-text-overruns-frame", methodFrame(3, 20, 40, cat(u16(404), []byte{200}, []byte("short")))},
		{"bytes-after-close-arguments", methodFrame(3, 20, 40, cat(closeArgs(404, "x", 60, 40), pattern(10)))},
		{"open-ok-longstr-overruns", methodFrame(2, 20, 11, u32(1000))},
		// The second fuzz finding of FuzzClientAgainstHostileBroker
		// (4c1e7a36295c7699): a connection.unblocked whose size covers a
		// basic.nack multiple with a huge tag. amqp091-go ends the frame
		// after the (empty) arguments and parses the nack, which Conn
		// never judged, and counts up to its tag on the reader.
		{"nack-hidden-in-unblocked", methodFrame(0, 10, 61, methodFrame(1, 60, 120, cat(u64(1<<62), []byte{1})))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := delivery(1, 1, pattern(10))
			stream := cat(good, tc.bad, chanClose(5, 406, "after"), chanCloseOK(7), connClose(320, "after"))
			for _, sizes := range [][]int{{4096}, {22}, {1}} {
				for k := 1; k <= len(stream); k++ {
					r := newMemRig(t, sizes...)
					r.write([]byte(protoHeader))
					r.feed(stream[:k])
					if k < len(stream) {
						r.feed(stream[k:])
					}
					r.mc.eof = true
					if _, err := r.read(); !errors.Is(err, ErrMalformed) {
						t.Fatalf("sizes %v split %d: Read after a bad frame end = %v, want ErrMalformed", sizes, k, err)
					}
					got := r.takeIn()
					// The bad frame's end octet is never handed on (for
					// method-size-0 it is the next frame's first byte).
					limit := len(good) + len(tc.bad) - 1
					if tc.name == "method-size-0" {
						limit = len(good) + len(tc.bad)
					}
					if !bytes.HasPrefix(got, good) || !bytes.HasPrefix(stream[len(good):], got[len(good):]) || len(got) > limit {
						t.Fatalf("sizes %v split %d: handed on %d bytes (%d good, %d bad): want the frames before the bad one and at most part of it: %s", sizes, k, len(got), len(good), len(tc.bad), diff(got, stream))
					}
					if len(r.closes) != 0 || r.c.awaiting.get(5) || r.c.DroppedInbound() != 0 {
						t.Fatalf("sizes %v split %d: frames after a bad frame end were acted on", sizes, k)
					}
				}
			}
		})
	}
}

func TestInboundRandomGarbageNoPanic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 300 {
		data := make([]byte, 1+rng.IntN(600))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		if i%2 == 0 { // mostly plausible frames with some noise
			data = cat(delivery(1, 1, pattern(rng.IntN(50))), chanClose(2, 1, "a"), chanCloseOK(2), data)
			data[rng.IntN(len(data))] ^= byte(1 + rng.IntN(255))
		}
		sizes := []int{1 + rng.IntN(64), 4096, 1 + rng.IntN(21)}
		r := newMemRig(t, sizes...)
		r.write([]byte(protoHeader), chanOpen(2), chanClose(2, 200, ""))
		r.feed(chunks(data, randomCuts(rng, len(data), 64))...)
		if got := r.takeIn(); len(got) > len(data) {
			t.Fatalf("handed on %d bytes of %d", len(got), len(data))
		}
		r.mc.eof = true
		for range 3 {
			if _, err := r.read(); err != io.EOF && !errors.Is(err, ErrMalformed) {
				t.Fatalf("Read at the end = %v, want EOF or ErrMalformed", err)
			}
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
	// The stray close-ok on 102 is dropped; the reads that carry it are
	// compacted while the writers run.
	inbound := cat(delivery(100, 1, pattern(128)), chanClose(101, 406, "x"), chanCloseOK(102), heartbeat())
	stopBroker := make(chan struct{})
	brokerDone := make(chan struct{})
	var brokerSent int
	go func() {
		defer close(brokerDone)
		for {
			select {
			case <-stopBroker:
				return
			default:
			}
			// Odd-sized writes, so frames straddle Reads.
			for _, part := range [][]byte{inbound[:17], inbound[17:200], inbound[200:]} {
				if _, err := r.peer.Write(part); err != nil {
					return
				}
				brokerSent += len(part)
			}
		}
	}()
	r.startReader(4096)
	// Someone else polls the counters meanwhile.
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
			_ = r.c.Dropped()
			_ = r.c.DroppedInbound()
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
	select {
	case <-brokerDone:
	case <-time.After(testTimeout):
		t.Fatal("broker writer did not stop")
	}
	r.sent = brokerSent
	r.send() // wait until the reader has everything
	in := r.takeIn()
	r.shutdown()

	// amqp091-go got every inbound frame whole, in order, except the strays.
	cycle := slices.DeleteFunc(splitFrames(inbound), func(f []byte) bool { return bytes.Equal(f, chanCloseOK(102)) })
	frames := splitFrames(in)
	if len(frames)%len(cycle) != 0 || len(frames) == 0 {
		t.Errorf("amqp091-go got %d frames, not a whole number of %d-frame cycles", len(frames), len(cycle))
	}
	for i, f := range frames {
		if !bytes.Equal(f, cycle[i%len(cycle)]) {
			t.Fatalf("inbound frame %d: %s", i, diff(f, cycle[i%len(cycle)]))
		}
	}
	if d, want := r.c.DroppedInbound(), uint64(len(frames)/len(cycle)); d != want {
		t.Errorf("DroppedInbound() = %d, want %d", d, want)
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

func TestConcurrentClosesAndCloseOKs(t *testing.T) {
	// Writers open and close channels 1..4 over and over while the broker
	// sends close-oks for them and amqp091-go's reader reads them in tiny
	// pieces (through Conn's own buffer): closeSent is set by writers and
	// read and cleared by the reader at once. Whatever Conn decides, every
	// frame amqp091-go gets must be whole, and every close-ok is either
	// handed on or counted as dropped.
	r := newRig(t)
	r.writeStr(protoHeader)
	r.take()
	r.startReader(7)
	const rounds = 200
	stop := make(chan struct{})
	brokerDone := make(chan struct{})
	var sent, hbs, oks int
	go func() {
		defer close(brokerDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := cat(chanCloseOK(uint16(1+i%4)), heartbeat())
			if _, err := r.peer.Write(b); err != nil {
				return
			}
			sent += len(b)
			hbs++
			oks++
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
				_ = r.c.DroppedInbound()
			}
		}()
	}
	wwg.Wait()
	close(stop)
	select {
	case <-brokerDone:
	case <-time.After(testTimeout):
		t.Fatal("broker writer did not stop")
	}
	r.sent = sent
	r.send()
	frames := splitFrames(r.takeIn())
	gotHB, gotOK := 0, 0
	for i, f := range frames {
		switch {
		case bytes.Equal(f, heartbeat()):
			gotHB++
		case len(f) == 12 && f[0] == frameMethod && binary.BigEndian.Uint16(f[1:3]) >= 1 && binary.BigEndian.Uint16(f[1:3]) <= 4 &&
			bytes.Equal(f[3:], chanCloseOK(0)[3:]):
			gotOK++
		default:
			t.Fatalf("frame %d handed on is neither a heartbeat nor a close-ok: % x", i, f)
		}
	}
	if gotHB != hbs || uint64(gotOK)+r.c.DroppedInbound() != uint64(oks) {
		t.Fatalf("handed on %d heartbeats of %d and %d close-oks + %d dropped of %d", gotHB, hbs, gotOK, r.c.DroppedInbound(), oks)
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

func TestReadAllocations(t *testing.T) {
	one := delivery(1, 1, pattern(128))
	stream := bytes.Repeat(one, 64)
	// Reads that end on frame boundaries hold nothing back: no allocation.
	c := New(&loopConn{stream: stream}, nil)
	buf := make([]byte, 8*len(one))
	if a := testing.AllocsPerRun(1000, func() { _, _ = c.Read(buf) }); a != 0 {
		t.Fatalf("Read on frame boundaries allocates %.2f times", a)
	}
	// bufio's 4096-byte reads sometimes end inside a frame start, which is
	// kept back: one small allocation for that Read. (AllocsPerRun rounds
	// down, so count over many Reads.)
	c = New(&loopConn{stream: stream}, nil)
	buf = make([]byte, 4096)
	const reads = 20000
	held := 0
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range reads {
		if n, _ := c.Read(buf); n < len(buf) {
			held++
		}
	}
	runtime.ReadMemStats(&after)
	allocs := after.Mallocs - before.Mallocs
	if allocs > uint64(held)+20 { // a little slack for the runtime
		t.Fatalf("%d allocations in %d Reads, of which %d kept a frame start back", allocs, reads, held)
	}
	t.Logf("4096-byte Reads of %d-byte deliveries: %d of %d kept a frame start back; %d allocations", len(one), held, reads, allocs)
}

func BenchmarkReadDeliveries(b *testing.B) {
	one := delivery(1, 1, pattern(128))
	build := func(strays bool) []byte {
		var stream []byte
		for i := 0; len(stream) < 1<<20; i++ {
			stream = append(stream, one...)
			if strays && i%10 == 9 {
				stream = append(stream, chanCloseOK(2)...) // dropped: no close of ours on 2
			}
		}
		return stream
	}
	run := func(b *testing.B, wrap, strays bool) {
		var r io.Reader = &loopConn{stream: build(strays)}
		var c *Conn
		if wrap {
			c = New(r.(net.Conn), func(uint16, uint16, string) {})
			r = c
		}
		buf := make([]byte, 4096) // amqp091-go reads through a default bufio.Reader
		b.ReportAllocs()
		total := 0
		for b.Loop() {
			n, err := r.Read(buf)
			if err != nil {
				b.Fatal(err)
			}
			total += n
		}
		deliveries := float64(total) / float64(len(one))
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
		b.ReportMetric(float64(total)/float64(b.N), "B/read")
		if c != nil && c.broken {
			b.Fatal("walker lost frame sync")
		}
	}
	b.Run("wire", func(b *testing.B) { run(b, true, false) })
	b.Run("wire/strays", func(b *testing.B) { run(b, true, true) })
	b.Run("raw", func(b *testing.B) { run(b, false, false) })
}

// ---------------------------------------------------------------------------
// End to end: amqp091-go itself reads and writes through Conn, against a
// scripted broker on the other end of a net.Pipe.

type fbFrame struct {
	ch            uint16
	class, method uint16
	b             []byte
}

func (f fbFrame) is(class, method uint16) bool { return f.class == class && f.method == method }

// fakeBroker does the AMQP handshake with channel_max 1 (so amqp091-go
// reuses channel id 1 at once), then answers channel.open, basic.qos and
// connection.close, and leaves everything else to script.
type fakeBroker struct {
	t      testing.TB
	c      net.Conn
	br     *bufio.Reader
	script func(b *fakeBroker, f fbFrame) bool // true: handled
	done   chan struct{}
}

func longstr(s string) []byte { return append(u32(uint32(len(s))), s...) }

func (b *fakeBroker) send(fs ...[]byte) {
	if _, err := b.c.Write(cat(fs...)); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		b.t.Errorf("fake broker write: %v", err)
	}
}

func (b *fakeBroker) read() (fbFrame, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(b.br, h[:]); err != nil {
		return fbFrame{}, err
	}
	f := make([]byte, frameHeaderLen+int(binary.BigEndian.Uint32(h[3:7]))+1)
	copy(f, h[:])
	if _, err := io.ReadFull(b.br, f[frameHeaderLen:]); err != nil {
		return fbFrame{}, err
	}
	fr := fbFrame{ch: binary.BigEndian.Uint16(f[1:3]), b: f}
	if class, method, ok := methodOf(f); ok {
		fr.class, fr.method = class, method
	}
	return fr, nil
}

func (b *fakeBroker) expect(class, method uint16) {
	f, err := b.read()
	if err != nil || !f.is(class, method) {
		b.t.Errorf("fake broker: got %d.%d, %v; want %d.%d", f.class, f.method, err, class, method)
	}
}

func (b *fakeBroker) run() {
	defer close(b.done)
	hdr := make([]byte, len(protoHeader))
	if _, err := io.ReadFull(b.br, hdr); err != nil || string(hdr) != protoHeader {
		b.t.Errorf("fake broker: protocol header %q, %v", hdr, err)
		return
	}
	b.send(methodFrame(0, 10, 10, cat([]byte{0, 9}, u32(0), longstr("PLAIN"), longstr("en_US"))))
	b.expect(10, 11)
	b.send(methodFrame(0, 10, 30, cat(u16(1), u32(131072), u16(0))))
	b.expect(10, 31)
	b.expect(10, 40)
	b.send(methodFrame(0, 10, 41, shortstr("")))
	for {
		f, err := b.read()
		if err != nil {
			return
		}
		if b.script != nil && b.script(b, f) {
			continue
		}
		switch {
		case f.is(10, 50):
			b.send(connCloseOK()) // and read on: amqp091-go may send another
		case f.is(20, 10):
			b.send(chanOpenOK(f.ch))
		case f.is(60, 10):
			b.send(methodFrame(f.ch, 60, 11, nil))
		}
	}
}

// dialFake connects amqp091-go to a fake broker, through Conn when wrap is
// set, and returns the connection and the Conn (nil without wrap).
func dialFake(t *testing.T, wrap bool, script func(*fakeBroker, fbFrame) bool) (*amqp.Connection, *Conn, *fakeBroker) {
	t.Helper()
	a, bc := net.Pipe()
	b := &fakeBroker{t: t, c: bc, br: bufio.NewReader(bc), script: script, done: make(chan struct{})}
	go b.run()
	var rw net.Conn = a
	var c *Conn
	if wrap {
		c = New(a, nil)
		rw = c
	}
	conn, err := amqp.Open(rw, amqp.Config{SASL: []amqp.Authentication{&amqp.PlainAuth{Username: "guest", Password: "guest"}}, Vhost: "/"})
	if err != nil {
		a.Close()
		bc.Close()
		t.Fatalf("amqp.Open: %v", err)
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { _ = conn.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			if wrap { // without Conn the connection may be wrecked already
				t.Errorf("amqp091-go Connection.Close hung")
			}
		}
		a.Close()
		bc.Close()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Errorf("amqp091-go Connection.Close still hangs with the pipe closed: its reader is wedged")
		}
		<-b.done
	})
	return conn, c, b
}

// channelWithin runs conn.Channel with a time limit.
func channelWithin(conn *amqp.Connection, d time.Duration) (*amqp.Channel, error) {
	type res struct {
		ch  *amqp.Channel
		err error
	}
	rc := make(chan res, 1)
	go func() { ch, err := conn.Channel(); rc <- res{ch, err} }()
	select {
	case r := <-rc:
		return r.ch, r.err
	case <-time.After(d):
		return nil, errors.New("conn.Channel hung")
	}
}

func TestAmqp091CrossingCloseReusedID(t *testing.T) {
	// DESIGN item 8 with amqp091-go itself: our channel.close crosses the
	// broker's; amqp091-go answers the broker's and releases id 1; the next
	// Channel gets id 1 again (channel_max 1); the broker's close-ok for our
	// close arrives only now, just before the new channel's open-ok.
	// Without Conn amqp091-go hands the stray close-ok to the new channel's
	// open, which fails with 503 "unexpected command received"; through
	// Conn it never sees it.
	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("wire=%v", wrap), func(t *testing.T) {
			crossed := false
			conn, c, _ := dialFake(t, wrap, func(b *fakeBroker, f fbFrame) bool {
				switch {
				case f.is(20, 40) && !crossed: // our close: the broker's crosses it
					crossed = true
					b.send(chanClose(f.ch, 406, "PRECONDITION_FAILED - crossing"))
					return true
				case f.is(20, 10) && crossed: // the reopen: stray close-ok, then open-ok
					b.send(chanCloseOK(f.ch))
					if wrap {
						// Without Conn the open-ok would either tear the
						// connection down or wedge amqp091-go's reader for
						// good (channel.go dispatch, rpc <- msg), depending on
						// timing; that would leak its goroutines here.
						b.send(chanOpenOK(f.ch))
					}
					return true
				}
				return false
			})
			ch, err := channelWithin(conn, testTimeout)
			if err != nil {
				t.Fatalf("Channel: %v", err)
			}
			_ = ch.Close() // fails with the broker's 406: it crossed
			ch2, err := channelWithin(conn, testTimeout)
			var qerr error = errors.New("no channel")
			if err == nil {
				qerr = ch2.Qos(1, 0, false)
			}
			if !wrap {
				if err == nil && qerr == nil {
					t.Fatal("without Conn the stray close-ok did no harm; the test does not reproduce DESIGN item 8")
				}
				t.Logf("without Conn: Channel: %v; Qos: %v", err, qerr)
				return
			}
			if err != nil || qerr != nil {
				t.Fatalf("through Conn: Channel: %v; Qos: %v", err, qerr)
			}
			if d := c.DroppedInbound(); d != 1 {
				t.Fatalf("DroppedInbound() = %d, want 1", d)
			}
		})
	}
}

func TestAmqp091CloseOKBehindBrokersClose(t *testing.T) {
	// The broker's close-ok for our crossed close comes right behind its own
	// channel.close, in one write: both are in amqp091-go's bufio buffer (and
	// walked by Conn) before amqp091-go answers the close. amqp091-go then
	// answers, releases id 1, and blocks on a NotifyBlocked listener for a
	// connection.blocked that sits between the two; meanwhile Channel reuses
	// id 1. When the reader goes on, the close-ok must not reach the new
	// channel.
	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("wire=%v", wrap), func(t *testing.T) {
			opened := make(chan struct{})
			crossed := false
			conn, c, _ := dialFake(t, wrap, func(b *fakeBroker, f fbFrame) bool {
				switch {
				case f.is(20, 40) && !crossed:
					crossed = true
					b.send(chanClose(f.ch, 406, "PRECONDITION_FAILED - crossing"),
						methodFrame(0, 10, 60, shortstr("hold the reader")), // connection.blocked
						chanCloseOK(f.ch))
					return true
				case f.is(20, 10) && crossed:
					close(opened)
					if wrap { // see TestAmqp091CrossingCloseReusedID
						b.send(chanOpenOK(f.ch))
					}
					return true
				}
				return false
			})
			blocked := conn.NotifyBlocked(make(chan amqp.Blocking))
			ch, err := channelWithin(conn, testTimeout)
			if err != nil {
				t.Fatalf("Channel: %v", err)
			}
			_ = ch.Close()
			type res struct {
				ch  *amqp.Channel
				err error
			}
			rc := make(chan res, 1)
			go func() { ch, err := channelWithin(conn, testTimeout); rc <- res{ch, err} }()
			select {
			case <-opened: // id 1 reused while the reader holds the close-ok
			case <-time.After(testTimeout):
				t.Fatal("the second channel.open never reached the broker")
			}
			select {
			case <-blocked: // lets the reader go on to the close-ok
			case <-time.After(testTimeout):
				t.Fatal("connection.blocked never dispatched")
			}
			r := <-rc
			var qerr error = errors.New("no channel")
			if r.err == nil {
				qerr = r.ch.Qos(1, 0, false)
			}
			if !wrap {
				if r.err == nil && qerr == nil {
					t.Fatal("without Conn the close-ok did no harm; the test does not reproduce the race")
				}
				t.Logf("without Conn: Channel: %v; Qos: %v", r.err, qerr)
				return
			}
			if r.err != nil || qerr != nil {
				t.Fatalf("through Conn: Channel: %v; Qos: %v (DroppedInbound %d)", r.err, qerr, c.DroppedInbound())
			}
			if d := c.DroppedInbound(); d != 1 {
				t.Fatalf("DroppedInbound() = %d, want 1", d)
			}
		})
	}
}

// confirmEvent is what the confirm hooks saw: a return (ret) or a confirm.
type confirmEvent struct {
	id            uint16
	ret           bool
	tag           uint64
	multiple, ack bool
	dropped       bool
}

// Publisher confirms and returns are reported as they are read, however
// the stream is cut into reads, and the bytes reach amqp091-go unchanged.
func TestConfirmsAndReturnsAreReportedAtEverySplit(t *testing.T) {
	ret := cat(methodFrame(3, 60, 50, cat(u16(312), shortstr("NO_ROUTE"), shortstr(""), shortstr("k"))),
		contentHeader(3, 60, 2), bodyFrame(3, []byte("hi")))
	nack := methodFrame(3, 60, 120, cat(u64(8), []byte{2}))                                          // requeue bit only
	bare := methodFrame(3, 60, 50, cat(u16(312), shortstr("NO_ROUTE"), shortstr(""), shortstr("k"))) // no content follows
	stream := cat(ret, methodFrame(3, 60, 80, cat(u64(7), []byte{1})), nack,
		delivery(4, 1, []byte("x")), basicAck(5, 1<<40), bare, basicAck(3, 9))
	want := []confirmEvent{{id: 3, ret: true}, {3, false, 7, true, true, false}, {3, false, 8, false, false, false},
		{5, false, 1 << 40, false, true, false}, {id: 3, ret: true}, {id: 3, dropped: true}, {3, false, 9, false, true, false}}
	for size := 1; size <= len(stream); size += 1 + size/8 {
		r := newRig(t)
		var got []confirmEvent
		r.c.SetConfirmHooks(func(id uint16, tag uint64, multiple, ack bool) bool {
			got = append(got, confirmEvent{id, false, tag, multiple, ack, false})
			return true
		}, func(id uint16) { got = append(got, confirmEvent{id: id, ret: true}) },
			func(id uint16) { got = append(got, confirmEvent{id: id, dropped: true}) })
		var chunks [][]byte
		for i := 0; i < len(stream); i += size {
			chunks = append(chunks, stream[i:min(i+size, len(stream))])
		}
		r.recv(stream, chunks...)
		r.shutdown()
		if !slices.Equal(got, want) {
			t.Fatalf("reads of %d bytes: hooks saw %v, want %v", size, got, want)
		}
	}
}

// countWrites counts the Writes that reach the socket.
type countWrites struct {
	*countConn
	n atomic.Int64
}

func (w *countWrites) Write(p []byte) (int, error) { w.n.Add(1); return w.countConn.Write(p) }

// Corked writes are held back and leave in one socket write at the last
// Uncork; past maxCorked they go through.
func TestCorkHoldsWritesBackUntilTheLastUncork(t *testing.T) {
	r := newRig(t)
	cw := &countWrites{countConn: r.raw}
	r.c.Conn = cw
	r.writeStr(protoHeader)
	r.write(chanOpen(1), chanOpen(2), chanOpen(3))
	r.take()
	before := cw.n.Load()

	frames := [][]byte{publish(1, []byte("a")), publish(1, []byte("b")), publish(2, []byte("c"))}
	r.c.Cork()
	r.c.Cork() // nested: the outer Uncork writes
	r.write(frames...)
	if got := r.take(); len(got) != 0 {
		t.Fatalf("corked writes reached the socket: %d bytes", len(got))
	}
	if err := r.c.Uncork(); err != nil {
		t.Fatal(err)
	}
	if got := r.take(); len(got) != 0 {
		t.Fatalf("the inner Uncork wrote %d bytes", len(got))
	}
	if err := r.c.Uncork(); err != nil {
		t.Fatal(err)
	}
	if got, want := r.take(), cat(frames...); !bytes.Equal(got, want) {
		t.Fatalf("after Uncork the broker got %s", diff(got, want))
	}
	if n := cw.n.Load() - before; n != 1 {
		t.Errorf("socket writes for a corked burst: %d, want 1", n)
	}

	// A burst beyond maxCorked is not held back without bound.
	big := publish(3, make([]byte, maxCorked/2+1))
	r.c.Cork()
	r.write(big, big, big)
	if got := r.take(); len(got) < 2*len(big) {
		t.Errorf("a corked burst of %d bytes held back %d of them", 3*len(big), 3*len(big)-len(got))
	}
	if err := r.c.Uncork(); err != nil {
		t.Fatal(err)
	}
	r.take()
}

// channel.flow is reported with its active bit, at every split.
func TestChannelFlowIsReportedAtEverySplit(t *testing.T) {
	stream := cat(methodFrame(2, 20, 20, []byte{0}), delivery(2, 1, []byte("x")), methodFrame(2, 20, 20, []byte{1}))
	type ev struct {
		id     uint16
		active bool
	}
	want := []ev{{2, false}, {2, true}}
	for size := 1; size <= len(stream); size += 1 + size/6 {
		r := newRig(t)
		var got []ev
		r.c.SetFlowHook(func(id uint16, active bool) { got = append(got, ev{id, active}) }, func(uint16) {})
		var chunks [][]byte
		for i := 0; i < len(stream); i += size {
			chunks = append(chunks, stream[i:min(i+size, len(stream))])
		}
		r.recv(stream, chunks...)
		r.shutdown()
		if !slices.Equal(got, want) {
			t.Fatalf("reads of %d bytes: flow hook saw %v, want %v", size, got, want)
		}
	}
}

// A confirm the hook refuses never reaches amqp091-go, however the stream is
// cut into reads; the frames around it pass untouched.
func TestRefusedConfirmIsDroppedAtEverySplit(t *testing.T) {
	bogus := methodFrame(3, 60, 80, cat(u64(1<<60), []byte{1}))
	good := basicAck(3, 2)
	stream := cat(delivery(4, 1, []byte("x")), bogus, good)
	want := cat(delivery(4, 1, []byte("x")), good)
	for size := 1; size <= len(stream); size++ {
		r := newRig(t)
		r.c.SetConfirmHooks(func(id uint16, tag uint64, multiple, ack bool) bool { return tag < 1000 }, func(uint16) {}, func(uint16) {})
		var chunks [][]byte
		for i := 0; i < len(stream); i += size {
			chunks = append(chunks, stream[i:min(i+size, len(stream))])
		}
		r.send(chunks...)
		// A read that held only the refused confirm hands on a heartbeat
		// in its place (see TestReadsOfOnlyTakenConfirmsHandOnAHeartbeat),
		// between whole frames.
		if got := withoutHeartbeats(t, r.takeIn()); !bytes.Equal(got, want) {
			t.Fatalf("reads of %d bytes: amqp091-go was handed the wrong bytes: %s", size, diff(got, want))
		}
		r.shutdown()
		// The frame is left out (checked above), but it is the hook's: it
		// is not one of the stray close-oks DroppedInbound counts.
		if n := r.c.DroppedInbound(); n != 0 {
			t.Fatalf("reads of %d bytes: DroppedInbound %d, want 0", size, n)
		}
	}
}

// A confirm whose size is not exactly its arguments' is malformed: the
// connection fails, and the confirm hook never sees it (acting on it would
// resolve publishes on a frame that is then thrown out).
func TestMalformedConfirmIsNeverReported(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"one byte too many", methodFrame(3, 60, 80, cat(u64(7), []byte{1}, []byte{0}))},
		{"nack with a trailing tag", methodFrame(3, 60, 120, cat(u64(7), []byte{1}, u64(1<<40)))},
	} {
		for _, sizes := range [][]int{{4096}, {22}, {1}} {
			r := newMemRig(t, sizes...)
			var seen int
			r.c.SetConfirmHooks(func(uint16, uint64, bool, bool) bool { seen++; return true }, func(uint16) {}, func(uint16) {})
			r.feed(cat(basicAck(3, 1), tc.frame, basicAck(3, 2)))
			r.mc.eof = true
			var err error
			for range 20 {
				if _, err = r.read(); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s, reads %v: Read = %v, want ErrMalformed", tc.name, sizes, err)
			}
			if seen != 1 {
				t.Fatalf("%s, reads %v: confirm hook called %d times, want once (the good ack before it)", tc.name, sizes, seen)
			}
		}
	}
}

// A read that holds nothing but confirms the hook takes hands amqp091-go a
// heartbeat in their place: amqp091-go renews its read deadline only when
// it reads a frame, and the broker sends no heartbeat while it sends
// confirms. Never inside a frame amqp091-go is part way through.
func TestReadsOfOnlyTakenConfirmsHandOnAHeartbeat(t *testing.T) {
	hb := []byte{8, 0, 0, 0, 0, 0, 0, 0xCE}
	take := func(uint16, uint64, bool, bool) bool { return false }
	d := delivery(4, 1, []byte("body"))
	for _, tc := range []struct {
		name  string
		reads [][]byte
		want  [][]byte // what each Read hands on, in order
	}{
		{"confirms only", [][]byte{cat(basicAck(3, 1), basicAck(3, 2))}, [][]byte{hb}},
		{"a confirm split over reads", [][]byte{basicAck(3, 1)[:5], basicAck(3, 1)[5:]}, [][]byte{hb}},
		{"confirms and a delivery", [][]byte{cat(basicAck(3, 1), d)}, [][]byte{d}},
		// A delivery split inside its body, the rest followed by a
		// confirm: the rest is handed on, no heartbeat.
		{"rest of a frame, then confirms", [][]byte{d[:len(d)-3], cat(d[len(d)-3:], basicAck(3, 1))}, [][]byte{d[:len(d)-3], d[len(d)-3:]}},
	} {
		var sr []scriptRead
		for _, r := range tc.reads {
			sr = append(sr, scriptRead{b: r})
		}
		c := New(&scriptConn{reads: sr}, nil)
		c.SetConfirmHooks(take, func(uint16) {}, func(uint16) {})
		for i, want := range tc.want {
			buf := make([]byte, 4096)
			n, err := c.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], want) {
				t.Fatalf("%s: read %d: % x, %v; want % x", tc.name, i, buf[:n], err, want)
			}
		}
		if n, err := c.Read(make([]byte, 4096)); n != 0 || err != io.EOF {
			t.Fatalf("%s: last read: %d, %v; want 0, EOF", tc.name, n, err)
		}
	}
	// Without a hook that takes frames, nothing changes: a stray
	// close-ok alone is dropped and the next read goes on.
	c := New(&scriptConn{reads: []scriptRead{{b: chanCloseOK(4)}, {b: d}}}, nil)
	buf := make([]byte, 4096)
	if n, err := c.Read(buf); err != nil || !bytes.Equal(buf[:n], d) {
		t.Fatalf("stray close-ok then a delivery: % x, %v; want the delivery", buf[:n], err)
	}
}

// withoutHeartbeats returns the whole frames of b without its heartbeat
// frames, failing t if b is not whole frames.
func withoutHeartbeats(t *testing.T, b []byte) []byte {
	t.Helper()
	var out []byte
	for len(b) > 0 {
		if len(b) < 8 {
			t.Fatalf("not whole frames: % x left", b)
		}
		n := 7 + int(binary.BigEndian.Uint32(b[3:7])) + 1
		if n > len(b) || b[n-1] != 0xCE {
			t.Fatalf("not whole frames at % x", b[:min(len(b), 16)])
		}
		if b[0] != 8 {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

// slowConn hands out its reads one per Read, each after its delay.
type slowConn struct {
	net.Conn
	reads  [][]byte
	delays []time.Duration
}

func (s *slowConn) Read(p []byte) (int, error) {
	if len(s.reads) == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.delays[0])
	n := copy(p, s.reads[0])
	s.reads, s.delays = s.reads[1:], s.delays[1:]
	return n, nil
}

// The heartbeat in place of taken confirms is handed on only once
// amqp091-go has had nothing for beatEvery: a confirm stream costs it one
// heartbeat per beatEvery, not one per read.
func TestTakenConfirmsHandOnAHeartbeatOnlyAfterBeatEvery(t *testing.T) {
	hb := []byte{8, 0, 0, 0, 0, 0, 0, 0xCE}
	d := delivery(4, 1, []byte("body"))
	sc := &slowConn{
		reads:  [][]byte{d, basicAck(3, 1), basicAck(3, 2), basicAck(3, 3)},
		delays: []time.Duration{0, 0, 0, beatEvery + 100*time.Millisecond},
	}
	c := New(sc, nil)
	c.SetConfirmHooks(func(uint16, uint64, bool, bool) bool { return false }, func(uint16) {}, func(uint16) {})
	buf := make([]byte, 4096)
	if n, err := c.Read(buf); err != nil || !bytes.Equal(buf[:n], d) {
		t.Fatalf("first read: % x, %v; want the delivery", buf[:n], err)
	}
	// Acks 1 and 2 come at once after the delivery: no heartbeat for them;
	// ack 3 comes after beatEvery with nothing handed on: a heartbeat.
	start := time.Now()
	n, err := c.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], hb) {
		t.Fatalf("second read: % x, %v; want a heartbeat", buf[:n], err)
	}
	if len(sc.reads) != 0 {
		t.Fatalf("the heartbeat came before the last ack was read (%d reads left): too early", len(sc.reads))
	}
	if waited := time.Since(start); waited < beatEvery {
		t.Fatalf("heartbeat after %v, want at least %v", waited, beatEvery)
	}
}

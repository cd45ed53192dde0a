package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Tests of WriteContent: content written by warren itself, between and
// after frames amqp091-go writes through Write.

// contentConn is a net.Conn for WriteContent tests: it keeps what is
// written (each Write call as one piece), can fail writes, and serves
// queued reads. Safe for concurrent use.
type contentConn struct {
	net.Conn
	mu      sync.Mutex
	out     []byte
	writes  [][]byte
	failAt  int // fail the Write that would take out past this many bytes (0: never)
	failErr error
	closed  bool
	reads   [][]byte
}

var errContentWrite = errors.New("contentConn: write failed")

func (c *contentConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.failAt > 0 && len(c.out)+len(p) > c.failAt {
		n := c.failAt - len(c.out)
		c.out = append(c.out, p[:n]...)
		c.writes = append(c.writes, append([]byte(nil), p[:n]...))
		return n, c.failErr
	}
	c.out = append(c.out, p...)
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (c *contentConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.reads[0])
	if n < len(c.reads[0]) {
		c.reads[0] = c.reads[0][n:]
	} else {
		c.reads = c.reads[1:]
	}
	return n, nil
}

func (c *contentConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *contentConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// take returns and forgets what has been written.
func (c *contentConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.out
	c.out, c.writes = nil, nil
	return out
}

func (c *contentConn) writeCalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

// contentRig is a Conn over a contentConn, past the protocol header, with
// the given channels open.
func contentRig(t testing.TB, open ...uint16) (*Conn, *contentConn) {
	t.Helper()
	cc := &contentConn{failErr: errContentWrite}
	c := New(cc, nil)
	if _, err := c.Write([]byte(protoHeader)); err != nil {
		t.Fatal(err)
	}
	for _, ch := range open {
		if _, err := c.Write(chanOpen(ch)); err != nil {
			t.Fatal(err)
		}
	}
	cc.take()
	return c, cc
}

// contentHead is the head WriteContent is given: a basic.publish method
// frame and a content header for size bytes.
func contentHead(ch uint16, size int) []byte {
	return cat(basicPublishMethod(ch, "", "q"), contentHeader(ch, 60, uint64(size)))
}

// contentWant is what WriteContent must write for head and body at
// maxBody (<= 0: one frame).
func contentWant(ch uint16, head, body []byte, maxBody int) []byte {
	if maxBody <= 0 {
		maxBody = max(len(body), 1)
	}
	out := append([]byte(nil), head...)
	for len(body) > 0 {
		n := min(maxBody, len(body))
		out = append(out, bodyFrame(ch, body[:n])...)
		body = body[n:]
	}
	return out
}

// waitWaiters waits until n WriteContent calls wait for a frame boundary.
func waitWaiters(t testing.TB, c *Conn, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		c.wmu.Lock()
		w := c.waiters
		c.wmu.Unlock()
		if w == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d WriteContent calls waiting after 5 s, want %d", w, n)
		}
		if i < 1000 {
			runtime.Gosched()
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

// goContent runs WriteContent in a goroutine; its result comes on the
// channel returned.
func goContent(c *Conn, ch uint16, head, body []byte, maxBody int) <-chan error {
	done := make(chan error, 1)
	go func() { done <- c.WriteContent(ch, 0, head, body, maxBody) }()
	return done
}

func result(t testing.TB, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("WriteContent did not return within 5 s")
		return nil
	}
}

func TestWriteContentWaitsForAFrameBoundary(t *testing.T) {
	other := cat(basicQos(2, 10)) // another channel's frame, written by "amqp091-go"
	big := bodyFrame(2, pattern(5000))
	for _, tc := range []struct {
		name       string
		first, end []byte // the Write that ends inside a frame, and the one completing it
	}{
		{"inside a frame's payload", other[:len(other)-3], other[len(other)-3:]},
		{"before its end octet", other[:len(other)-1], other[len(other)-1:]},
		{"inside a frame header (held back)", other[:3], other[3:]},
		{"inside a method id (held back)", other[:9], other[9:]},
		{"inside a big body frame", big[:100], big[100:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, cc := contentRig(t, 1, 2)
			if _, err := c.Write(tc.first); err != nil {
				t.Fatal(err)
			}
			before := cc.take()
			head, body := contentHead(1, 10), pattern(10)
			done := goContent(c, 1, head, body, 4)
			waitWaiters(t, c, 1)
			time.Sleep(10 * time.Millisecond)
			if got := cc.take(); len(got) != 0 {
				t.Fatalf("WriteContent wrote %d bytes while a frame was half written", len(got))
			}
			if _, err := c.Write(tc.end); err != nil {
				t.Fatal(err)
			}
			if err := result(t, done); err != nil {
				t.Fatal(err)
			}
			got := append(before, cc.take()...)
			full := append(append([]byte(nil), tc.first...), tc.end...)
			if want := cat(full, contentWant(1, head, body, 4)); !bytes.Equal(got, want) {
				t.Fatalf("stream:\n%s", diff(got, want))
			}
		})
	}
	t.Run("inside the protocol header", func(t *testing.T) {
		cc := &contentConn{}
		c := New(cc, nil)
		if _, err := c.Write([]byte(protoHeader[:5])); err != nil {
			t.Fatal(err)
		}
		done := goContent(c, 1, contentHead(1, 0), nil, 4)
		waitWaiters(t, c, 1)
		if _, err := c.Write([]byte(protoHeader[5:])); err != nil {
			t.Fatal(err)
		}
		// The channel was never opened: refused once the header is whole.
		if err := result(t, done); !errors.Is(err, ErrChannelClosed) {
			t.Fatalf("WriteContent: %v, want ErrChannelClosed", err)
		}
		if got := cc.take(); string(got) != protoHeader {
			t.Fatalf("stream %q", got)
		}
	})
}

func TestWriteContentRefusesAChannelNotOpen(t *testing.T) {
	head, body := contentHead(1, 3), []byte("abc")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, c *Conn, cc *contentConn)
	}{
		{"never opened", func(t *testing.T, c *Conn, cc *contentConn) {}},
		{"channel 0", nil},
		{"our channel.close sent", func(t *testing.T, c *Conn, cc *contentConn) {
			mustWrite(t, c, chanOpen(1), chanClose(1, 200, "bye"))
		}},
		{"the broker's channel.close read", func(t *testing.T, c *Conn, cc *contentConn) {
			mustWrite(t, c, chanOpen(1))
			mustRead(t, c, cc, chanClose(1, 406, "PRECONDITION_FAILED"))
		}},
		{"our close answered by close-ok", func(t *testing.T, c *Conn, cc *contentConn) {
			mustWrite(t, c, chanOpen(1), chanClose(1, 200, "bye"))
			mustRead(t, c, cc, chanCloseOK(1))
		}},
		{"the broker's close answered by our close-ok", func(t *testing.T, c *Conn, cc *contentConn) {
			mustWrite(t, c, chanOpen(1))
			mustRead(t, c, cc, chanClose(1, 406, "PRECONDITION_FAILED"))
			mustWrite(t, c, chanCloseOK(1))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, cc := contentRig(t)
			ch := uint16(1)
			if tc.setup == nil {
				ch = 0
			} else {
				tc.setup(t, c, cc)
			}
			cc.take()
			if err := c.WriteContent(ch, 0, head, body, 0); !errors.Is(err, ErrChannelClosed) {
				t.Fatalf("WriteContent: %v, want ErrChannelClosed", err)
			}
			if got := cc.take(); len(got) != 0 {
				t.Fatalf("%d bytes written for a channel not open", len(got))
			}
			// Corked, the same: nothing joins the cork.
			c.Cork()
			if err := c.WriteContent(ch, 0, head, body, 0); !errors.Is(err, ErrChannelClosed) {
				t.Fatalf("corked WriteContent: %v, want ErrChannelClosed", err)
			}
			if err := c.Uncork(); err != nil {
				t.Fatal(err)
			}
			if got := cc.take(); len(got) != 0 {
				t.Fatalf("%d bytes written at Uncork for a channel not open", len(got))
			}
		})
	}
	t.Run("reopened", func(t *testing.T) {
		c, cc := contentRig(t)
		mustWrite(t, c, chanOpen(1), chanClose(1, 200, "bye"))
		mustRead(t, c, cc, chanCloseOK(1))
		mustWrite(t, c, chanOpen(1))
		cc.take()
		if err := c.WriteContent(1, 0, head, body, 0); err != nil {
			t.Fatal(err)
		}
		if got, want := cc.take(), contentWant(1, head, body, 0); !bytes.Equal(got, want) {
			t.Fatalf("stream:\n%s", diff(got, want))
		}
	})
}

func mustWrite(t *testing.T, c *Conn, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		if _, err := c.Write(f); err != nil {
			t.Fatal(err)
		}
	}
}

// mustRead has c read frames (as amqp091-go's reader would) up to their end.
func mustRead(t *testing.T, c *Conn, cc *contentConn, frames ...[]byte) {
	t.Helper()
	in := cat(frames...)
	cc.mu.Lock()
	cc.reads = append(cc.reads, in)
	cc.mu.Unlock()
	got := 0
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got += n
		if err != nil {
			break
		}
	}
	_ = got // dropped frames are not handed on: the state is what matters
}

func TestWriteContentSplitsAtMaxBody(t *testing.T) {
	for _, tc := range []struct{ size, maxBody int }{
		{0, 4}, {1, 4}, {4, 4}, {5, 4}, {12, 4}, {13, 4}, {10, 0}, {10, -1}, {0, 0},
		{4088, 4088}, {4089, 4088}, {3*4088 + 5, 4088},
		{copyMax, 4088}, {copyMax + 1, 4088}, {copyMax + 1, 0}, {1 << 20, 131064}, {1 << 20, 0},
	} {
		t.Run(fmt.Sprintf("%d/%d", tc.size, tc.maxBody), func(t *testing.T) {
			c, cc := contentRig(t, 7)
			head, body := contentHead(7, tc.size), pattern(tc.size)
			if err := c.WriteContent(7, 0, head, body, tc.maxBody); err != nil {
				t.Fatal(err)
			}
			got := cc.take()
			if want := contentWant(7, head, body, tc.maxBody); !bytes.Equal(got, want) {
				t.Fatalf("stream (%d bytes, want %d):\n%s", len(got), len(want), diff(got, want))
			}
			frames := splitFrames(got)
			for i, f := range frames[2:] {
				if f[0] != frameBody || binary.BigEndian.Uint16(f[1:3]) != 7 {
					t.Fatalf("frame %d: type %d channel %d", i+2, f[0], binary.BigEndian.Uint16(f[1:3]))
				}
			}
			if wantFrames := 2 + bodyFrames(tc.size, tc.maxBody); len(frames) != wantFrames {
				t.Fatalf("%d frames, want %d", len(frames), wantFrames)
			}
		})
	}
}

func bodyFrames(size, maxBody int) int {
	if size == 0 {
		return 0
	}
	if maxBody <= 0 {
		return 1
	}
	return (size + maxBody - 1) / maxBody
}

// The large-body paths (writev on a TCP socket, body not copied; runs of
// frames on others) write the same bytes as the copy path would,
// held-back bytes first.
func TestWriteContentLargeBodySameBytes(t *testing.T) {
	for _, size := range []int{copyMax + 1, 2*copyMax + 3, 300 << 10} {
		for _, maxBody := range []int{4088, 131064, 0, 1000, copyMax} {
			for _, corked := range []bool{false, true} {
				for _, vectored := range []bool{true, false} {
					t.Run(fmt.Sprintf("%d/%d/corked %v/vectored %v", size, maxBody, corked, vectored), func(t *testing.T) {
						c, cc := contentRig(t, 1, 2)
						c.vectored = vectored
						head, body := contentHead(1, size), pattern(size)
						var pre []byte
						if corked {
							c.Cork()
							pre = cat(basicQos(2, 1), publish(2, pattern(100)))
							mustWrite(t, c, pre)
							if cc.writeCalls() != 0 {
								t.Fatal("written while corked")
							}
						}
						if err := c.WriteContent(1, 0, head, body, maxBody); err != nil {
							t.Fatal(err)
						}
						if corked {
							if err := c.Uncork(); err != nil {
								t.Fatal(err)
							}
						}
						got := cc.take()
						if want := cat(pre, contentWant(1, head, body, maxBody)); !bytes.Equal(got, want) {
							t.Fatalf("stream (%d bytes, want %d):\n%s", len(got), len(want), diff(got, want))
						}
						// The caller's body is not changed.
						if !bytes.Equal(body, pattern(size)) {
							t.Fatal("body changed")
						}
					})
				}
			}
		}
	}
	t.Run("scratch reused after a large write", func(t *testing.T) {
		c, cc := contentRig(t, 1)
		for _, size := range []int{copyMax + 1, 10, 3 * copyMax, 100, 0} {
			head, body := contentHead(1, size), pattern(size)
			if err := c.WriteContent(1, 0, head, body, 4088); err != nil {
				t.Fatal(err)
			}
			if got, want := cc.take(), contentWant(1, head, body, 4088); !bytes.Equal(got, want) {
				t.Fatalf("size %d:\n%s", size, diff(got, want))
			}
		}
	})
}

func TestWriteContentCorked(t *testing.T) {
	c, cc := contentRig(t, 1, 2)
	c.Cork()
	a := basicQos(2, 5)
	h1, b1 := contentHead(1, 5), []byte("hello")
	h2, b2 := contentHead(1, 0), []byte(nil)
	mustWrite(t, c, a)
	if err := c.WriteContent(1, 0, h1, b1, 4088); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, basicQos(2, 6))
	if err := c.WriteContent(1, 0, h2, b2, 4088); err != nil {
		t.Fatal(err)
	}
	// head is not retained: the caller may reuse its buffer at once.
	for i := range h1 {
		h1[i] = 0
	}
	if n := cc.writeCalls(); n != 0 {
		t.Fatalf("%d writes while corked", n)
	}
	if err := c.Uncork(); err != nil {
		t.Fatal(err)
	}
	if n := cc.writeCalls(); n != 1 {
		t.Fatalf("%d writes at Uncork, want 1", n)
	}
	want := cat(a, contentWant(1, contentHead(1, 5), b1, 4088), basicQos(2, 6), contentWant(1, h2, b2, 4088))
	if got := cc.take(); !bytes.Equal(got, want) {
		t.Fatalf("stream:\n%s", diff(got, want))
	}

	t.Run("beyond maxCorked the content goes out with what was held", func(t *testing.T) {
		c, cc := contentRig(t, 1, 2)
		c.Cork()
		pre := publish(2, pattern(maxCorked-1000))
		mustWrite(t, c, pre)
		if cc.writeCalls() != 0 {
			t.Fatal("written while corked")
		}
		head, body := contentHead(1, 5000), pattern(5000)
		if err := c.WriteContent(1, 0, head, body, 4088); err != nil {
			t.Fatal(err)
		}
		mid := cc.writeCalls()
		if err := c.Uncork(); err != nil {
			t.Fatal(err)
		}
		if got, want := cc.take(), cat(pre, contentWant(1, head, body, 4088)); !bytes.Equal(got, want) {
			t.Fatalf("stream:\n%s", diff(got, want))
		}
		if mid != 1 {
			t.Fatalf("%d writes by the overflowing WriteContent, want 1", mid)
		}
	})
}

func TestWriteContentWriteErrorFailsTheWriter(t *testing.T) {
	for _, size := range []int{10, copyMax + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c, cc := contentRig(t, 1)
			cc.mu.Lock()
			cc.failAt = 20
			cc.mu.Unlock()
			head, body := contentHead(1, size), pattern(size)
			if err := c.WriteContent(1, 0, head, body, 4088); !errors.Is(err, errContentWrite) {
				t.Fatalf("WriteContent: %v, want the socket's error", err)
			}
			if !cc.isClosed() {
				t.Fatal("the socket was not closed after a failed write")
			}
			if err := c.WriteContent(1, 0, head, body, 4088); !errors.Is(err, ErrWriterFailed) {
				t.Fatalf("later WriteContent: %v, want ErrWriterFailed", err)
			}
			c.Cork()
			if err := c.WriteContent(1, 0, head, body, 4088); !errors.Is(err, ErrWriterFailed) {
				t.Fatalf("later corked WriteContent: %v, want ErrWriterFailed", err)
			}
			_ = c.Uncork()
		})
	}
	t.Run("amqp091-go's write failed", func(t *testing.T) {
		c, cc := contentRig(t, 1)
		cc.mu.Lock()
		cc.failAt = 5
		cc.mu.Unlock()
		if _, err := c.Write(basicQos(1, 1)); err == nil {
			t.Fatal("Write did not fail")
		}
		if err := c.WriteContent(1, 0, contentHead(1, 1), []byte("x"), 0); !errors.Is(err, ErrWriterFailed) {
			t.Fatalf("WriteContent after a failed Write: %v, want ErrWriterFailed", err)
		}
	})
	t.Run("Uncork failed", func(t *testing.T) {
		c, cc := contentRig(t, 1)
		c.Cork()
		if err := c.WriteContent(1, 0, contentHead(1, 1), []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		cc.mu.Lock()
		cc.failAt = 5
		cc.mu.Unlock()
		if err := c.Uncork(); err == nil {
			t.Fatal("Uncork did not fail")
		}
		if err := c.WriteContent(1, 0, contentHead(1, 1), []byte("x"), 0); !errors.Is(err, ErrWriterFailed) {
			t.Fatalf("WriteContent after a failed Uncork: %v, want ErrWriterFailed", err)
		}
	})
	t.Run("a waiter is woken by a failed Write", func(t *testing.T) {
		c, cc := contentRig(t, 1)
		f := basicQos(1, 1)
		mustWrite(t, c, f[:4])
		done := goContent(c, 1, contentHead(1, 1), []byte("x"), 0)
		waitWaiters(t, c, 1)
		cc.mu.Lock()
		cc.failAt = 1
		cc.mu.Unlock()
		if _, err := c.Write(f[4:]); err == nil {
			t.Fatal("Write did not fail")
		}
		if err := result(t, done); !errors.Is(err, ErrWriterFailed) {
			t.Fatalf("waiting WriteContent: %v, want ErrWriterFailed", err)
		}
	})
}

func TestWriteContentCloseWakesAWaiter(t *testing.T) {
	c, cc := contentRig(t, 1)
	f := basicQos(1, 1)
	mustWrite(t, c, f[:9])
	var dones []<-chan error
	for range 3 {
		dones = append(dones, goContent(c, 1, contentHead(1, 1), []byte("x"), 0))
	}
	waitWaiters(t, c, 3)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dones {
		if err := result(t, d); !errors.Is(err, ErrWriterFailed) {
			t.Fatalf("WriteContent after Close: %v, want ErrWriterFailed", err)
		}
	}
	if !cc.isClosed() {
		t.Fatal("the socket is open after Close")
	}
	if err := c.WriteContent(1, 0, contentHead(1, 1), []byte("x"), 0); !errors.Is(err, ErrWriterFailed) {
		t.Fatalf("WriteContent after Close: %v, want ErrWriterFailed", err)
	}
}

// Close while a WriteContent is stuck in the socket's Write: Close must not
// wait for wmu before closing the socket.
func TestWriteContentCloseEndsAStuckWrite(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	c := New(cli, nil)
	go func() { // the peer reads the header and the channel.open, then stops
		buf := make([]byte, len(protoHeader)+len(chanOpen(1)))
		_, _ = io.ReadFull(srv, buf)
	}()
	mustWrite(t, c, []byte(protoHeader), chanOpen(1))
	done := goContent(c, 1, contentHead(1, 10), pattern(10), 0)
	time.Sleep(20 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung behind a stuck WriteContent")
	}
	if err := result(t, done); err == nil {
		t.Fatal("the stuck WriteContent succeeded")
	}
	if err := c.WriteContent(1, 0, contentHead(1, 1), []byte("x"), 0); !errors.Is(err, ErrWriterFailed) {
		t.Fatalf("WriteContent after Close: %v, want ErrWriterFailed", err)
	}
}

// amqp091-go-like writers (whole frames cut into random pieces, one
// writer's frame completed before another writer starts, as amqp091-go's
// sendM does) and WriteContent on several channels at once: the stream is
// whole frames, each content's frames back to back.
func TestWriteContentConcurrentWithWrite(t *testing.T) {
	c, cc := contentRig(t, 1, 2, 3, 4, 10, 11)
	var amqpM sync.Mutex // amqp091-go's sendM
	var wg sync.WaitGroup
	const rounds = 300
	errs := make(chan error, 16)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range rounds {
				ch := uint16(10 + w)
				var frames []byte
				switch i % 3 {
				case 0:
					frames = basicQos(ch, uint16(i))
				case 1:
					frames = publish(ch, pattern(rng.IntN(300)))
				default:
					frames = heartbeat()
				}
				amqpM.Lock()
				for len(frames) > 0 {
					n := min(len(frames), 1+rng.IntN(20))
					if _, err := c.Write(frames[:n]); err != nil {
						errs <- err
						amqpM.Unlock()
						return
					}
					frames = frames[n:]
					if rng.IntN(4) == 0 {
						time.Sleep(time.Microsecond)
					}
				}
				amqpM.Unlock()
			}
		}()
	}
	for ch := uint16(1); ch <= 4; ch++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(ch), 2))
			for i := range rounds {
				size := rng.IntN(40)
				if i%50 == 0 {
					size = copyMax + 1 + rng.IntN(100)
				}
				if i%7 == 0 {
					c.Cork()
				}
				if err := c.WriteContent(ch, 0, contentHead(ch, size), pattern(size), 16+int(ch)); err != nil {
					errs <- err
					return
				}
				if i%7 == 0 {
					if err := c.Uncork(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	out := cc.take()
	frames, err := readFrames(bytes.NewReader(out))
	if err != io.EOF {
		t.Fatalf("the stream is not whole frames: %v after %d frames", err, len(frames))
	}
	contents := map[uint16]int{}
	for i := 0; i < len(frames); i++ {
		f := frames[i]
		ch := binary.BigEndian.Uint16(f[1:3])
		if ch < 1 || ch > 4 {
			continue
		}
		// A content of WriteContent: method, header, body frames, nothing between.
		if cl, m, ok := methodOf(f); !ok || cl != 60 || m != 40 {
			t.Fatalf("frame %d on channel %d is not a basic.publish (type %d)", i, ch, f[0])
		}
		if i+1 >= len(frames) || frames[i+1][0] != frameHeader || binary.BigEndian.Uint16(frames[i+1][1:3]) != ch {
			t.Fatalf("basic.publish at frame %d not followed by its content header", i)
		}
		size := int(binary.BigEndian.Uint64(frames[i+1][frameHeaderLen+4:]))
		i++
		got := 0
		for got < size {
			i++
			if i >= len(frames) || frames[i][0] != frameBody || binary.BigEndian.Uint16(frames[i][1:3]) != ch {
				t.Fatalf("content on channel %d interrupted at frame %d", ch, i)
			}
			got += len(frames[i]) - frameHeaderLen - 1
		}
		if got != size {
			t.Fatalf("content on channel %d: %d body bytes, want %d", ch, got, size)
		}
		if !bytes.Equal(bodyOf(frames[i-bodyFrames(size, 16+int(ch))+1:i+1]), pattern(size)) {
			t.Fatalf("content on channel %d: body garbled", ch)
		}
		contents[ch]++
	}
	for ch := uint16(1); ch <= 4; ch++ {
		if contents[ch] != rounds {
			t.Fatalf("channel %d: %d contents in the stream, want %d", ch, contents[ch], rounds)
		}
	}
}

func bodyOf(frames [][]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, f[frameHeaderLen:len(f)-1]...)
	}
	return b
}

// sinkConn counts what is written, without keeping it.
type sinkConn struct {
	net.Conn
	n int
}

func (s *sinkConn) Write(p []byte) (int, error) { s.n += len(p); return len(p), nil }

// WriteContent allocates nothing once its buffers have grown, by either
// path, corked or not.
func TestWriteContentAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers: allocation counts are not exact")
	}
	for _, size := range []int{0, 100, copyMax, copyMax + 1, 1 << 20} {
		for _, maxBody := range []int{4088, 131064, 0} {
			for _, vectored := range []bool{true, false} {
				sc := &sinkConn{}
				c := New(sc, nil)
				c.vectored = vectored
				mustWrite(t, c, []byte(protoHeader), chanOpen(1))
				head, body := contentHead(1, size), pattern(size)
				want := len(contentWant(1, head, body, maxBody))
				sc.n = 0
				n := testing.AllocsPerRun(50, func() {
					if err := c.WriteContent(1, 0, head, body, maxBody); err != nil {
						t.Fatal(err)
					}
				})
				if n != 0 {
					t.Errorf("WriteContent of %d bytes at %d: %v allocations, want 0", size, maxBody, n)
				}
				if sc.n != 51*want {
					t.Errorf("WriteContent of %d bytes at %d: %d bytes written in 51 calls, want %d", size, maxBody, sc.n, 51*want)
				}
			}
		}
	}
}

// A write for an earlier opening of a channel id is refused once the id has
// been closed and opened again: a settlement or publish meant for a channel
// the broker closed must not land on the channel that now has its number.
func TestWriteContentRefusesAnEarlierOpeningOfTheId(t *testing.T) {
	c, cc := contentRig(t)
	if g := c.OpenGen(5); g != 0 {
		t.Fatalf("OpenGen of a channel never opened: %d, want 0", g)
	}
	mustWrite(t, c, chanOpen(5))
	first := c.OpenGen(5)
	if first == 0 {
		t.Fatal("OpenGen after channel.open: 0")
	}
	head := contentHead(5, 3)
	if err := c.WriteContent(5, first, head, []byte("abc"), 0); err != nil {
		t.Fatalf("the opening's own write: %v", err)
	}
	// Closed (ours, answered) and opened again.
	mustWrite(t, c, chanClose(5, 200, ""))
	mustRead(t, c, cc, chanCloseOK(5))
	mustWrite(t, c, chanOpen(5))
	second := c.OpenGen(5)
	if second == first {
		t.Fatalf("OpenGen after a second channel.open: still %d", second)
	}
	cc.take()
	if err := c.WriteContent(5, first, head, []byte("abc"), 0); !errors.Is(err, ErrChannelClosed) {
		t.Fatalf("a write for the earlier opening: %v, want ErrChannelClosed", err)
	}
	if got := cc.take(); len(got) != 0 {
		t.Fatalf("the refused write put %d bytes on the wire", len(got))
	}
	if err := c.WriteContent(5, second, head, []byte("abc"), 0); err != nil {
		t.Fatalf("the new opening's write: %v", err)
	}
	if err := c.WriteContent(5, 0, head, []byte("abc"), 0); err != nil {
		t.Fatalf("a write for any opening (gen 0): %v", err)
	}
}

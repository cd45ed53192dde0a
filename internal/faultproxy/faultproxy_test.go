package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer accepts connections on a loopback port and echoes every byte
// back. It is stopped by the test's cleanup.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// start returns a proxy to a fresh echo server and a client connected
// through it. Both are closed by the test's cleanup.
func start(t *testing.T) (*Proxy, net.Conn) {
	t.Helper()
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, dial(t, p)
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads the echo, within 2 s.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: got %v, want nil", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: got %v, want nil", err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

// expectSilence checks that nothing arrives on c for d.
func expectSilence(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := c.Read(b[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while stalled: got %d bytes, err %v; want a read timeout", n, err)
	}
}

func TestProxyForwardsBothWays(t *testing.T) {
	_, c := start(t)
	roundTrip(t, c, "hello")
	roundTrip(t, c, "again")
}

func TestStallHoldsBytesUntilResume(t *testing.T) {
	for _, d := range []Direction{ClientToServer, ServerToClient} {
		t.Run(d.String(), func(t *testing.T) {
			p, c := start(t)
			roundTrip(t, c, "before")
			p.Stall(d)
			p.Stall(d) // idempotent
			if _, err := c.Write([]byte("held")); err != nil {
				t.Fatalf("write while stalled: got %v, want nil", err)
			}
			expectSilence(t, c, 200*time.Millisecond)
			p.Resume(d)
			p.Resume(d) // idempotent
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := make([]byte, 4)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("read after resume: got %v, want nil", err)
			}
			if string(got) != "held" {
				t.Fatalf("read after resume: got %q, want %q", got, "held")
			}
			roundTrip(t, c, "after")
		})
	}
}

func TestStallAppliesToConnectionsAcceptedLater(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Stall(ServerToClient)
	c := dial(t, p)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	expectSilence(t, c, 200*time.Millisecond)
	p.Resume(ServerToClient)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'x' {
		t.Fatalf("read after resume: got %q, %v; want \"x\", nil", b[:], err)
	}
}

func TestStalledDirectionEventuallyBlocksTheWriter(t *testing.T) {
	p, c := start(t)
	p.Stall(ClientToServer)
	chunk := bytes.Repeat([]byte{'a'}, 64*1024)
	deadline := time.Now().Add(5 * time.Second)
	_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	var total int
	for {
		n, err := c.Write(chunk)
		total += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("write: got %v, want nil or a write timeout", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("wrote %d bytes through a stalled proxy without blocking; want the writer to block", total)
		}
		_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	}
	t.Logf("writer blocked after %d bytes", total)
}

func TestCutAllResetsEveryConnection(t *testing.T) {
	p, c1 := start(t)
	c2 := dial(t, p)
	roundTrip(t, c1, "one")
	roundTrip(t, c2, "two")
	if got := p.Conns(); got != 2 {
		t.Fatalf("Conns before cut: got %d, want 2", got)
	}
	p.Stall(ServerToClient) // a stalled connection is cut too
	p.CutAll()
	for i, c := range []net.Conn{c1, c2} {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		var b [1]byte
		_, err := c.Read(b[:])
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("conn %d read after CutAll: got %v, want a reset or EOF", i+1, err)
		}
		t.Logf("conn %d after CutAll: %v", i+1, err)
	}
	waitConns(t, p, 0)

	// The proxy still accepts new connections.
	p.Resume(ServerToClient)
	roundTrip(t, dial(t, p), "three")
}

func waitConns(t *testing.T, p *Proxy, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for p.Conns() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Conns: got %d, want %d", p.Conns(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCloseStopsListeningAndEndsConnections(t *testing.T) {
	p, c := start(t)
	p.Stall(ClientToServer)
	if _, err := c.Write([]byte("pending")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: got %v, want nil", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not return within 2 s")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: got %v, want nil", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after Close: got %v, want a reset or EOF", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("dial after Close: got a connection, want an error")
	}
}

func TestUnreachableTargetClosesTheClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The reset can come before the client's connect has returned.
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("dial: got %v, want a connection or a reset", err)
		}
		t.Logf("dial: %v", err)
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: got %v, want a reset or EOF", err)
	}
}

func TestSlowAddsLatencyPerDirectionAndCanBeLifted(t *testing.T) {
	p, c := start(t)
	roundTrip(t, c, "warm")
	p.Slow(ClientToServer, 150*time.Millisecond)
	p.Slow(ServerToClient, 100*time.Millisecond)
	start := time.Now()
	roundTrip(t, c, "slow")
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("round trip with 150 ms + 100 ms of added latency took %v", d)
	}
	p.Slow(ClientToServer, 0)
	p.Slow(ServerToClient, 0)
	roundTrip(t, c, "flush") // a chunk read while slow may still be held
	start = time.Now()
	roundTrip(t, c, "fast")
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("round trip after Slow(0) took %v", d)
	}
}

package integration

// Network faults between warren and a real broker, injected by
// internal/faultproxy: a peer that never answers, a stalled direction, a
// cut connection, a silent peer found by heartbeats.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/internal/faultproxy"
)

// faultCheckLeaks makes the test fail if goroutines started during it are
// still running once every cleanup (clients, proxies) has run. Call it
// first, so that its cleanup runs last.
func faultCheckLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// faultRig is the test broker behind a fault proxy.
type faultRig struct {
	t     *testing.T
	b     *brokertest.Broker
	proxy *faultproxy.Proxy
	url   string // b.URL with the proxy's host:port
	name  string // connection name of clients dialled by dial
}

func newFaultRig(t *testing.T) *faultRig {
	t.Helper()
	b := brokertest.Need(t, broker)
	p, err := faultproxy.New(b.Addr())
	if err != nil {
		t.Fatalf("faultproxy.New: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return &faultRig{t: t, b: b, proxy: p, url: faultURL(t, b.URL, p.Addr()),
		name: fmt.Sprintf("warren-%s-%d", t.Name(), time.Now().UnixNano())}
}

// faultURL returns raw with its host:port replaced by hostPort, keeping
// scheme, credentials and virtual host.
func faultURL(t *testing.T, raw, hostPort string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse broker URL: %v", err)
	}
	u.Host = hostPort
	return u.String()
}

// dial connects a client through the proxy; the test's cleanup closes it.
func (r *faultRig) dial(opts ...warren.Option) *warren.Client {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := warren.Dial(ctx, r.url, append([]warren.Option{warren.WithName(r.name)}, opts...)...)
	if err != nil {
		r.t.Fatalf("dial through fault proxy: %v", err)
	}
	r.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// faultWithin runs fn and returns its error and how long it took. If fn has not
// returned after limit the test fails (fn is left running: the test's
// cleanup, which closes proxies and clients, is what can still end it).
func faultWithin(t *testing.T, limit time.Duration, what string, fn func() error) (time.Duration, error) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("%s: still running after %v, want it to return within %v", what, limit, limit)
		return 0, nil
	}
}

// faultWaitDone waits for the client's connection to end and returns how long
// that took.
func faultWaitDone(t *testing.T, c *warren.Client, limit time.Duration, what string) time.Duration {
	t.Helper()
	d, _ := faultWithin(t, limit, what, func() error { <-c.Done(); return nil })
	return d
}

// faultEventually polls cond every 50 ms until it returns "" or limit passes;
// then the test fails with cond's last message.
func faultEventually(t *testing.T, limit time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultBrokerChannels lists the channel numbers the broker has open on the
// connection named name. ok is false when the broker cannot be asked
// (not a private node).
func faultBrokerChannels(t *testing.T, b *brokertest.Broker, name string) (nums []int, ok bool) {
	t.Helper()
	if !b.Private() {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conns, err := b.Ctl(ctx, "list_connections", "--quiet", "--no-table-headers", "pid", "client_properties")
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	var pid string
	for _, line := range strings.Split(conns, "\n") {
		if strings.Contains(line, `"`+name+`"`) {
			pid, _, _ = strings.Cut(line, "\t")
		}
	}
	if pid == "" {
		return nil, true // the connection is gone
	}
	chans, err := b.Ctl(ctx, "list_channels", "--quiet", "--no-table-headers", "connection", "number")
	if err != nil {
		t.Fatalf("rabbitmqctl list_channels: %v", err)
	}
	for _, line := range strings.Split(chans, "\n") {
		conn, num, found := strings.Cut(strings.TrimSpace(line), "\t")
		if !found || conn != pid {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(num))
		if err != nil {
			t.Fatalf("rabbitmqctl list_channels: bad line %q", line)
		}
		nums = append(nums, n)
	}
	return nums, true
}

// faultRoundTrip declares a server-named queue on a new channel,
// publishes one message to it and gets it back: proof that the connection
// works.
func faultRoundTrip(t *testing.T, c *warren.Client) warren.Channel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatalf("open channel: got %v, want nil", err)
	}
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
	if err != nil {
		t.Fatalf("declare queue: got %v, want nil", err)
	}
	body := []byte("ping " + t.Name())
	if err := ch.Publish(ctx, "", q.Name, warren.Publishing{Body: body}); err != nil {
		t.Fatalf("publish: got %v, want nil", err)
	}
	// The publish is asynchronous: poll until the message is there.
	var d *warren.Delivery
	faultEventually(t, 5*time.Second, func() string {
		var ok bool
		d, ok, err = ch.Get(ctx, q.Name, warren.GetOptions{AutoAck: true})
		if err != nil {
			t.Fatalf("get: got %v, want nil", err)
		}
		if !ok {
			return "get: queue still empty, want the published message"
		}
		return ""
	})
	if !bytes.Equal(d.Body, body) {
		t.Fatalf("get: got body %q, want %q", d.Body, body)
	}
	return ch
}

// faultSilentListener accepts TCP connections and never writes a byte.
func faultSilentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
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
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestDialHonoursItsContextForTheWholeHandshake(t *testing.T) {
	b := brokertest.Need(t, broker)
	cases := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"listener that never answers", func(t *testing.T) string {
			return faultURL(t, b.URL, faultSilentListener(t))
		}},
		{"amqps to a listener that never answers", func(t *testing.T) string {
			u, err := url.Parse(faultURL(t, b.URL, faultSilentListener(t)))
			if err != nil {
				t.Fatal(err)
			}
			u.Scheme = "amqps"
			return u.String()
		}},
		{"proxy with server-to-client stalled", func(t *testing.T) string {
			r := newFaultRig(t)
			r.proxy.Stall(faultproxy.ServerToClient)
			return r.url
		}},
	}
	// The socket's own deadline and the context's timer expire together;
	// several attempts make sure the context error wins every time.
	const attempts = 10
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			faultCheckLeaks(t)
			u := tc.url(t)
			for i := 1; i <= attempts; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				var c *warren.Client
				took, err := faultWithin(t, 3*time.Second, "Dial", func() (err error) {
					c, err = warren.Dial(ctx, u)
					return err
				})
				cancel()
				if c != nil {
					_ = c.Close(context.Background())
				}
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("attempt %d/%d: Dial: got %v, want an error wrapping context.DeadlineExceeded", i, attempts, err)
				}
				if took > time.Second {
					t.Errorf("attempt %d/%d: Dial took %v with a 300ms context, want at most 1s", i, attempts, took)
				}
				if i == 1 {
					t.Logf("Dial returned after %v: %v", took, err)
				}
			}
		})
	}
}

func TestDialContextDeadlineDoesNotOutliveTheHandshake(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	// A deadline that bounds the dial must not be left on the socket: the
	// connection has to keep working once it has passed.
	const dialBound = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), dialBound)
	defer cancel()
	c, err := warren.Dial(ctx, b.URL)
	if err != nil {
		t.Fatalf("Dial: got %v, want nil", err)
	}
	defer c.Close(context.Background())
	<-ctx.Done()
	time.Sleep(200 * time.Millisecond)
	if err := c.Err(); err != nil {
		t.Fatalf("Err after the dial context expired: got %v, want nil", err)
	}
	faultRoundTrip(t, c)
	if err := c.Err(); err != nil {
		t.Fatalf("Err after using the connection: got %v, want nil", err)
	}
}

func TestAbandonedRPCPoisonsItsChannel(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	if got := c.OpenChannels(); got != 1 {
		t.Fatalf("OpenChannels: got %d, want 1", got)
	}

	r.proxy.Stall(faultproxy.ServerToClient)
	qctx, qcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer qcancel()
	took, err := faultWithin(t, 2*time.Second, "QueueDeclare with a stalled broker", func() error {
		_, err := ch.QueueDeclare(qctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
		return err
	})
	t.Logf("abandoned QueueDeclare returned after %v: %v", took, err)
	if took > time.Second {
		t.Errorf("QueueDeclare took %v with a 200ms context, want at most 1s", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("abandoned QueueDeclare: got %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("abandoned QueueDeclare: got %v, want an error wrapping warren.ErrPoisoned", err)
	}
	r.proxy.Resume(faultproxy.ServerToClient)

	// Every later operation on the channel reports the poisoning.
	_, err = ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
	var pe *warren.PoisonedError
	if !errors.As(err, &pe) {
		t.Fatalf("QueueDeclare after the abandoned one: got %v, want a *warren.PoisonedError", err)
	}
	if !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("QueueDeclare after the abandoned one: got %v, want errors.Is warren.ErrPoisoned", err)
	}
	if pe.Op != "queue.declare" || pe.ChannelID != ch.ID() || !errors.Is(pe.Cause, context.DeadlineExceeded) {
		t.Errorf("PoisonedError: got Op %q, ChannelID %d, Cause %v; want Op %q, ChannelID %d, Cause context.DeadlineExceeded",
			pe.Op, pe.ChannelID, pe.Cause, "queue.declare", ch.ID())
	}
	if err := ch.Publish(ctx, "", "warren-nowhere", warren.Publishing{Body: []byte("x")}); !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("Publish on the poisoned channel: got %v, want errors.Is warren.ErrPoisoned", err)
	}
	if err := ch.Err(); !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("Err of the poisoned channel: got %v, want errors.Is warren.ErrPoisoned", err)
	}

	// The connection and a new channel on it are fine.
	if err := c.Err(); err != nil {
		t.Fatalf("client Err: got %v, want nil", err)
	}
	ch2 := faultRoundTrip(t, c)

	// warren closes the poisoned channel once the abandoned reply is in.
	faultEventually(t, 5*time.Second, func() string {
		if got := c.OpenChannels(); got != 1 {
			return fmt.Sprintf("OpenChannels: got %d, want 1 (the poisoned channel closed, the new one open)", got)
		}
		return ""
	})
	if _, ok := faultBrokerChannels(t, r.b, r.name); ok {
		faultEventually(t, 30*time.Second, func() string {
			nums, _ := faultBrokerChannels(t, r.b, r.name)
			if len(nums) != 1 || nums[0] != int(ch2.ID()) {
				return fmt.Sprintf("broker's channels on the connection: got %v, want [%d] (poisoned channel %d closed)", nums, ch2.ID(), ch.ID())
			}
			return ""
		})
	} else {
		t.Log("broker is not a private node: channel list at the broker not checked")
	}

	if err := ch.Close(ctx); !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("Close of the poisoned channel: got %v, want errors.Is warren.ErrPoisoned", err)
	}
}

func TestPublishAbandonedDuringAStalledWriteEndsTheConnection(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}

	r.proxy.Stall(faultproxy.ClientToServer)
	body := bytes.Repeat([]byte{'w'}, 64*1024)
	var (
		n      int
		pubErr error
	)
	took, _ := faultWithin(t, 12*time.Second, "publishing into a stalled socket", func() error {
		stop := time.Now().Add(10 * time.Second)
		for time.Now().Before(stop) {
			pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			pubErr = ch.Publish(pctx, "", "warren-nowhere", warren.Publishing{Body: body})
			pcancel()
			if pubErr != nil {
				return nil
			}
			n++
		}
		return nil
	})
	if pubErr == nil {
		t.Fatalf("published %d messages of 64 KiB into a stalled socket in %v without an error; want a Publish to fail once the socket buffers are full", n, took)
	}
	t.Logf("publish %d failed after %v (%d KiB accepted first): %v", n+1, took, n*64, pubErr)
	if !errors.Is(pubErr, context.DeadlineExceeded) {
		t.Errorf("stalled Publish: got %v, want an error wrapping context.DeadlineExceeded", pubErr)
	}

	dead := faultWaitDone(t, c, 3*time.Second, "client.Done after the abandoned publish")
	t.Logf("connection ended %v after the publish returned", dead)
	err = c.Err()
	var ce *warren.ConnectionError
	if !errors.As(err, &ce) {
		t.Fatalf("client Err: got %v (%T), want a *warren.ConnectionError", err, err)
	}
	if !errors.Is(err, warren.ErrConnectionLost) || ce.Server {
		t.Errorf("client Err: got %v (Server %v), want errors.Is warren.ErrConnectionLost and Server false", err, ce.Server)
	}
	if !strings.Contains(err.Error(), "abandoned") || !strings.Contains(err.Error(), "basic.publish") {
		t.Errorf("client Err text: got %q, want it to say the basic.publish was abandoned", err)
	}
	if err := ch.Publish(ctx, "", "warren-nowhere", warren.Publishing{Body: []byte("x")}); !errors.As(err, &ce) {
		t.Errorf("Publish after the connection ended: got %v, want a *warren.ConnectionError", err)
	}

	took, err = faultWithin(t, 2*time.Second, "Client.Close", func() error { return c.Close(ctx) })
	t.Logf("Close returned after %v: %v", took, err)
	if !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("Close: got %v, want the *ConnectionError that ended the connection (errors.Is warren.ErrConnectionLost)", err)
	}
}

func TestClientCloseIsBoundedWhenTheBrokerStopsAnswering(t *testing.T) {
	cases := []struct {
		name  string
		opts  []warren.Option
		ctx   func() (context.Context, context.CancelFunc)
		limit time.Duration
	}{
		{"context deadline 500ms", nil,
			func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 500*time.Millisecond)
			}, 1500 * time.Millisecond},
		{"close timeout option 700ms", []warren.Option{warren.WithCloseTimeout(700 * time.Millisecond)},
			func() (context.Context, context.CancelFunc) { return context.Background(), func() {} },
			1700 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			faultCheckLeaks(t)
			before := goleak.IgnoreCurrent()
			r := newFaultRig(t)
			c := r.dial(tc.opts...)
			octx, ocancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer ocancel()
			if _, err := c.Channel(octx); err != nil {
				t.Fatalf("open channel: %v", err)
			}

			r.proxy.Stall(faultproxy.ServerToClient)
			ctx, cancel := tc.ctx()
			defer cancel()
			took, err := faultWithin(t, tc.limit, "Client.Close with a stalled broker", func() error { return c.Close(ctx) })
			t.Logf("Close returned after %v: %v", took, err)
			select {
			case <-c.Done():
			default:
				t.Error("Done after Close: still open, want closed")
			}
			// Nothing of the client's is left running, though the broker
			// is still stalled (only the proxy's listener is).
			goleak.VerifyNone(t, before, goleak.IgnoreAnyFunction("github.com/warrenmq/warren/internal/faultproxy.(*Proxy).accept"))
			// Later calls return at once, with the first call's result.
			took2, err2 := faultWithin(t, 500*time.Millisecond, "second Client.Close", func() error { return c.Close(context.Background()) })
			if fmt.Sprint(err2) != fmt.Sprint(err) {
				t.Errorf("second Close after %v: got %v, want the first call's %v", took2, err2, err)
			}
		})
	}
}

func TestChannelCloseIsBoundedWhenTheBrokerStopsAnswering(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}

	r.proxy.Stall(faultproxy.ServerToClient)
	cctx, ccancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer ccancel()
	took, err := faultWithin(t, 1500*time.Millisecond, "Channel.Close with a stalled broker", func() error { return ch.Close(cctx) })
	t.Logf("Channel.Close returned after %v: %v", took, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Channel.Close: got %v, want an error wrapping context.DeadlineExceeded", err)
	}

	// The channel is left poisoned: its close was abandoned.
	var pe *warren.PoisonedError
	if cause := ch.Err(); !errors.As(cause, &pe) || pe.Op != "close" || !errors.Is(cause, warren.ErrPoisoned) {
		t.Errorf("channel Err after the abandoned close: got %v, want a *warren.PoisonedError for op \"close\"", cause)
	}
	if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true}); !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("QueueDeclare after the abandoned close: got %v, want errors.Is warren.ErrPoisoned", err)
	}
	if err2 := ch.Close(ctx); fmt.Sprint(err2) != fmt.Sprint(err) {
		t.Errorf("second Channel.Close: got %v, want the first call's %v", err2, err)
	}
	if got := c.OpenChannels(); got != 0 {
		t.Errorf("OpenChannels after Close: got %d, want 0", got)
	}

	// Once the broker answers again the connection carries on.
	r.proxy.Resume(faultproxy.ServerToClient)
	if err := c.Err(); err != nil {
		t.Fatalf("client Err: got %v, want nil", err)
	}
	ch2 := faultRoundTrip(t, c)
	if nums, ok := faultBrokerChannels(t, r.b, r.name); ok {
		faultEventually(t, 30*time.Second, func() string {
			nums, _ = faultBrokerChannels(t, r.b, r.name)
			if len(nums) != 1 || nums[0] != int(ch2.ID()) {
				return fmt.Sprintf("broker's channels on the connection: got %v, want [%d] (closed channel %d gone)", nums, ch2.ID(), ch.ID())
			}
			return ""
		})
	}
}

func TestNetworkCutEndsTheConnectionWithConnectionLost(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ch := faultRoundTrip(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	r.proxy.CutAll()
	dead := faultWaitDone(t, c, 3*time.Second, "client.Done after the network cut")
	t.Logf("connection ended %v after the cut", dead)

	err := c.Err()
	var ce *warren.ConnectionError
	if !errors.As(err, &ce) {
		t.Fatalf("client Err: got %v (%T), want a *warren.ConnectionError", err, err)
	}
	if ce.Server || !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("client Err: got %v (Server %v), want errors.Is warren.ErrConnectionLost and Server false", err, ce.Server)
	}

	ops := []struct {
		name string
		do   func() error
	}{
		{"QueueDeclare", func() error {
			_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
			return err
		}},
		{"Publish", func() error { return ch.Publish(ctx, "", "warren-nowhere", warren.Publishing{Body: []byte("x")}) }},
		{"Get", func() error { _, _, err := ch.Get(ctx, "warren-nowhere", warren.GetOptions{}); return err }},
		{"Client.Channel", func() error { _, err := c.Channel(ctx); return err }},
		{"Channel.Close", func() error { return ch.Close(ctx) }},
	}
	for _, op := range ops {
		_, err := faultWithin(t, 2*time.Second, op.name+" after the cut", op.do)
		var oe *warren.ConnectionError
		if !errors.As(err, &oe) || !errors.Is(err, warren.ErrConnectionLost) {
			t.Errorf("%s after the cut: got %v, want a *warren.ConnectionError matching warren.ErrConnectionLost", op.name, err)
		}
	}

	took, err := faultWithin(t, 2*time.Second, "Client.Close", func() error { return c.Close(ctx) })
	t.Logf("Close returned after %v: %v", took, err)
	if !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("Close: got %v, want the *ConnectionError that ended the connection (errors.Is warren.ErrConnectionLost)", err)
	}
}

func TestHeartbeatDetectsASilentPeer(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial(warren.WithHeartbeat(time.Second))
	faultRoundTrip(t, c)

	r.proxy.Stall(faultproxy.ClientToServer)
	r.proxy.Stall(faultproxy.ServerToClient)
	dead := faultWaitDone(t, c, 4*time.Second, "client.Done with heartbeat 1s and a silent peer")
	t.Logf("silent peer detected after %v (heartbeat 1s)", dead)

	err := c.Err()
	var ce *warren.ConnectionError
	if !errors.As(err, &ce) || ce.Server || !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("client Err: got %v (%T), want a *warren.ConnectionError matching warren.ErrConnectionLost, Server false", err, err)
	}
	if _, err := faultWithin(t, 2*time.Second, "Client.Close", func() error { return c.Close(context.Background()) }); !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("Close: got %v, want the *ConnectionError that ended the connection", err)
	}
}

package warrentest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/warrentest"
)

// testCtx returns a context that ends after d or when the test ends.
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// dial dials url and closes the client when the test ends.
func dial(t *testing.T, ctx context.Context, url string, opts ...warren.Option) *warren.Client {
	t.Helper()
	c, err := warren.Dial(ctx, url, opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// controllable returns the test binary's broker, ending the test unless
// warrentest can control its node.
func controllable(t *testing.T) *warrentest.Broker {
	t.Helper()
	b := warrentest.Start(t)
	if !b.Controllable() {
		t.Skipf("the broker cannot be controlled: %s", b)
	}
	return b
}

// roundTrip publishes on a fresh channel of c to a server-named queue and
// gets the message back: the connection works.
func roundTrip(t *testing.T, ctx context.Context, c *warren.Client) error {
	t.Helper()
	ch, err := c.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close(ctx)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}
	if err := ch.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte("ping")}); err != nil {
		return err
	}
	for {
		d, ok, err := ch.Get(ctx, q.Name, warren.GetOptions{AutoAck: true})
		if err != nil {
			return err
		}
		if ok {
			if string(d.Body) != "ping" {
				t.Errorf("got %q, want ping", d.Body)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartGivesAWorkingBrokerAndItsVersion(t *testing.T) {
	b := warrentest.Start(t)
	if again := warrentest.Start(t); again != b {
		t.Errorf("a second Start under Main gave %v, want the shared broker %v", again, b)
	}
	v := b.Version()
	if v.Major < 3 || v.Raw == "" {
		t.Fatalf("Version() = %+v, want a RabbitMQ version", v)
	}
	if !v.AtLeast(3, 0) || v.AtLeast(v.Major+1, 0) || !v.AtLeast(v.Major, v.Minor) || v.AtLeast(v.Major, v.Minor+1) {
		t.Errorf("Version %v: AtLeast disagrees with the version", v)
	}
	if strings.Contains(b.String(), "guest:guest") {
		t.Errorf("String() = %q shows credentials", b.String())
	}
	t.Logf("broker %s, RabbitMQ %s", b, v)
	ctx := testCtx(t, 30*time.Second)
	c := dial(t, ctx, b.URL())
	if got := c.ServerVersion(); got != v.Raw {
		t.Errorf("the client sees RabbitMQ %q, Version() says %q", got, v.Raw)
	}
	if err := roundTrip(t, ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close of Start's broker: %v, want nil (and the broker left running)", err)
	}
	if err := roundTrip(t, ctx, c); err != nil {
		t.Fatalf("after Close of Start's broker: %v, want it still running", err)
	}
}

func TestCloseConnectionClosesOnlyTheNamedConnection(t *testing.T) {
	b := controllable(t)
	ctx := testCtx(t, time.Minute)
	victim := dial(t, ctx, b.URL(), warren.WithName("warrentest-victim"))
	bystander := dial(t, ctx, b.URL(), warren.WithName("warrentest-bystander"))
	if err := b.CloseConnection(ctx, "warrentest-victim"); err != nil {
		t.Fatalf("CloseConnection: %v", err)
	}
	select {
	case <-victim.Done():
	case <-ctx.Done():
		t.Fatal("the named connection is still open")
	}
	if err := victim.Err(); !errors.Is(err, warren.ErrConnectionForced) || !strings.Contains(err.Error(), "closed by warrentest") {
		t.Errorf("the closed client's Err: %v, want 320 CONNECTION_FORCED with the reason \"closed by warrentest\"", err)
	}
	if err := roundTrip(t, ctx, bystander); err != nil {
		t.Fatalf("the other connection: %v, want it to work", err)
	}
	err := b.CloseConnection(ctx, "warrentest-nobody")
	if !errors.Is(err, warrentest.ErrConnectionNotFound) {
		t.Errorf("CloseConnection of an unknown name: %v, want ErrConnectionNotFound", err)
	}
}

func TestBlockBlocksPublishersUntilUnblock(t *testing.T) {
	b := controllable(t)
	ctx := testCtx(t, 2*time.Minute)
	c := dial(t, ctx, b.URL(), warren.WithFlowPolicy(warren.FlowFail))
	if err := b.Block(ctx); err != nil {
		t.Fatalf("Block: %v", err)
	}
	blocked := true
	t.Cleanup(func() {
		if blocked {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = b.Unblock(ctx)
		}
	})
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The broker blocks a connection at its first publish.
	if err := ch.Publish(ctx, "", "", warren.Publishing{Body: []byte("trigger")}); err != nil {
		t.Fatalf("the publish that triggers the block: %v", err)
	}
	for !c.Blocked() {
		select {
		case <-ctx.Done():
			t.Fatal("the client never saw connection.blocked after Block")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := ch.Publish(ctx, "", "", warren.Publishing{Body: []byte("refused")}); !errors.Is(err, warren.ErrBlocked) {
		t.Fatalf("Publish while blocked: %v, want ErrBlocked", err)
	}
	if err := b.Unblock(ctx); err != nil {
		t.Fatalf("Unblock: %v", err)
	}
	blocked = false
	for c.Blocked() {
		select {
		case <-ctx.Done():
			t.Fatal("the client never saw connection.unblocked after Unblock")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := roundTrip(t, ctx, c); err != nil {
		t.Fatalf("after Unblock: %v", err)
	}
	if err := b.Unblock(ctx); err != nil {
		t.Errorf("Unblock of an unblocked broker: %v, want nil", err)
	}
}

func TestRestartDropsConnectionsKeepsDurableQueuesAndEndsABlock(t *testing.T) {
	b := controllable(t)
	ctx := testCtx(t, 2*time.Minute)
	c := dial(t, ctx, b.URL())
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q := "warrentest-restart-" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true}); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("kept"), DeliveryMode: warren.Persistent}); err != nil {
		t.Fatal(err)
	}
	// A block does not outlive the restart.
	if err := b.Block(ctx); err != nil {
		t.Fatalf("Block: %v", err)
	}
	start := time.Now()
	if err := b.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("Restart took %v", time.Since(start).Round(time.Millisecond))
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the client's connection survived the restart")
	}
	// The broker closes with 320; a client writing as it does (this one
	// is blocked, so its writes wait in the socket) may see the reset first.
	if err := c.Err(); !errors.Is(err, warren.ErrConnectionForced) && !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("the client's Err after Restart: %v, want 320 CONNECTION_FORCED or the connection lost", err)
	}
	c2 := dial(t, ctx, b.URL())
	ch2, err := c2.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch2.QueueDelete(ctx, q, warren.QueueDeleteOptions{})
	d, ok, err := ch2.Get(ctx, q, warren.GetOptions{AutoAck: true})
	if err != nil || !ok || string(d.Body) != "kept" {
		t.Fatalf("Get after Restart: ok=%v err=%v, want the persistent message in the durable queue", ok, err)
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := roundTrip(t, rctx, c2); err != nil || c2.Blocked() {
		t.Fatalf("publishing after Block and Restart: %v (blocked %v), want the block gone", err, c2.Blocked())
	}
}

// stateLog records a Client's state events.
type stateLog struct {
	mu     sync.Mutex
	events []warren.State
	change chan struct{}
}

func newStateLog() *stateLog { return &stateLog{change: make(chan struct{}, 1)} }

func (l *stateLog) record(e warren.StateEvent) {
	l.mu.Lock()
	l.events = append(l.events, e.State)
	l.mu.Unlock()
	select {
	case l.change <- struct{}{}:
	default:
	}
}

// wait waits until s has been recorded n times.
func (l *stateLog) wait(ctx context.Context, s warren.State, n int) error {
	for {
		l.mu.Lock()
		count := 0
		for _, e := range l.events {
			if e == s {
				count++
			}
		}
		l.mu.Unlock()
		if count >= n {
			return nil
		}
		select {
		case <-l.change:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func TestProxyCutDropsOnlyItsClientsWhichReconnect(t *testing.T) {
	b := warrentest.Start(t)
	ctx := testCtx(t, time.Minute)
	p := b.Proxy(t)
	if !strings.HasPrefix(p.URL(), "amqp://") || p.URL() == b.URL() {
		t.Fatalf("Proxy URL %q, want an amqp URL other than the broker's", p.URL())
	}
	states := newStateLog()
	viaProxy := dial(t, ctx, p.URL(), warren.WithReconnect(warren.ReconnectPolicy{}), warren.WithStateCallback(states.record))
	direct := dial(t, ctx, b.URL())
	p.Cut()
	if err := states.wait(ctx, warren.StateDisconnected, 1); err != nil {
		t.Fatalf("the client behind the proxy never lost its connection: %v", err)
	}
	if err := states.wait(ctx, warren.StateReconnected, 1); err != nil {
		t.Fatalf("the client behind the proxy never reconnected: %v", err)
	}
	if err := roundTrip(t, ctx, viaProxy); err != nil {
		t.Fatalf("through the proxy after the cut: %v", err)
	}
	select {
	case <-direct.Done():
		t.Fatalf("the direct client ended: %v", direct.Err())
	default:
	}
	if err := roundTrip(t, ctx, direct); err != nil {
		t.Fatalf("the direct client: %v", err)
	}
}

func TestProxyBlackHoleStopsTrafficUntilRestore(t *testing.T) {
	b := warrentest.Start(t)
	ctx := testCtx(t, time.Minute)
	p := b.Proxy(t)
	c := dial(t, ctx, p.URL())
	p.BlackHole()
	short, cancel := context.WithTimeout(ctx, time.Second)
	_, err := c.Channel(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Channel through a black hole: %v, want it to wait until its ctx ends", err)
	}
	if !strings.Contains(p.URL(), "127.0.0.1") {
		t.Errorf("Proxy URL %q, want a loopback address", p.URL())
	}
	p.Restore()
	// The abandoned channel open may have poisoned nothing but itself; the
	// connection works again.
	if err := roundTrip(t, ctx, c); err != nil {
		t.Fatalf("after Restore: %v", err)
	}
}

// The broker at AMQP_URL is used as it is: New returns it, Close leaves it
// running, and the faults that need its node say so.
func TestABrokerFromAMQPURLIsNotControllable(t *testing.T) {
	shared := warrentest.Start(t)
	t.Setenv("AMQP_URL", shared.URL())
	t.Setenv("WARREN_BROKER", "")
	ctx := testCtx(t, time.Minute)
	b, err := warrentest.New(ctx)
	if err != nil {
		t.Fatalf("New with AMQP_URL: %v", err)
	}
	if b.URL() != shared.URL() || b.Controllable() {
		t.Fatalf("New with AMQP_URL gave %s (controllable %v), want %s, not controllable", b.URL(), b.Controllable(), shared.URL())
	}
	for name, fault := range map[string]func(context.Context) error{
		"Block":           b.Block,
		"Unblock":         b.Unblock,
		"Restart":         b.Restart,
		"CloseConnection": func(ctx context.Context) error { return b.CloseConnection(ctx, "x") },
	} {
		if err := fault(ctx); !errors.Is(err, warrentest.ErrNotControllable) {
			t.Errorf("%s: %v, want ErrNotControllable", name, err)
		}
	}
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c := dial(t, ctx, shared.URL())
	if err := roundTrip(t, ctx, c); err != nil {
		t.Fatalf("the broker after Close of New's AMQP_URL broker: %v, want it running", err)
	}
}

// In a child test binary whose AMQP_URL points at nothing, Main finds no
// broker: Start skips the tests, or, with CI set, the run fails before any
// test runs.
func TestMainSkipsWithoutABrokerAndFailsOnCI(t *testing.T) {
	if os.Getenv("WARRENTEST_CHILD") != "" {
		t.Fatal("the child must skip before this line")
	}
	ctx := testCtx(t, time.Minute)
	for _, ci := range []string{"", "true"} {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestStartGivesAWorkingBrokerAndItsVersion$", "-test.v")
		cmd.Env = append(os.Environ(), "WARRENTEST_CHILD=1", "AMQP_URL=amqp://guest:guest@127.0.0.1:1/",
			"WARREN_BROKER=", "WARREN_REQUIRE_BROKER=", "CI="+ci)
		out, err := cmd.CombinedOutput()
		t.Logf("CI=%q: %v\n%s", ci, err, out)
		if ci == "" {
			if err != nil || !strings.Contains(string(out), "--- SKIP: TestStartGivesAWorkingBrokerAndItsVersion") ||
				!strings.Contains(string(out), "no RabbitMQ broker") {
				t.Errorf("without CI: %v, want the test skipped with the reason", err)
			}
			continue
		}
		if err == nil || !strings.Contains(string(out), "warrentest: FAIL: a broker is required") ||
			strings.Contains(string(out), "=== RUN") {
			t.Errorf("with CI=true: %v, want a failure before any test runs", err)
		}
	}
}

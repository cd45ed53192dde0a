package warren_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// killable serves a connection until kill receives, then drops it as a
// node that stops would.
func killable(kill <-chan struct{}) func(*fb.Conn) {
	return func(c *fb.Conn) {
		done := make(chan struct{})
		go func() {
			select {
			case <-kill:
				c.Close()
			case <-done:
			case <-c.Quit():
			}
		}()
		_ = c.Serve()
		close(done)
	}
}

// deadURL returns the URL of a loopback port nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "amqp://guest:guest@" + addr + "/"
}

type eventLog struct {
	mu     sync.Mutex
	events []warren.StateEvent
	more   chan struct{}
}

func newEventLog() *eventLog { return &eventLog{more: make(chan struct{}, 100)} }

func (l *eventLog) add(e warren.StateEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	l.more <- struct{}{}
}

// waitState waits for the next event of state st and returns it.
func (l *eventLog) waitState(t *testing.T, st warren.State) warren.StateEvent {
	t.Helper()
	deadline := time.After(testBound)
	for {
		l.mu.Lock()
		for i, e := range l.events {
			if e.State == st {
				l.events = l.events[i+1:]
				l.mu.Unlock()
				return e
			}
		}
		l.mu.Unlock()
		select {
		case <-l.more:
		case <-deadline:
			t.Fatalf("no %v event within %v", st, testBound)
		}
	}
}

func TestDialClusterFailsOverRoundTheEndpoints(t *testing.T) {
	leakCheck(t)
	var kills [2]chan struct{}
	var brokers [2]*fb.Broker
	for i := range brokers {
		kills[i] = make(chan struct{}, 1)
		brokers[i] = fb.Start(t, fb.Config{}, killable(kills[i]))
	}
	a, b := brokers[0], brokers[1]
	dead := deadURL(t)
	log := newEventLog()
	client, err := warren.DialCluster(testCtx(t), []string{dead, a.URL(), b.URL()},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}),
		warren.WithStateCallback(log.add))
	if err != nil {
		t.Fatalf("DialCluster: %v", err)
	}
	defer client.Close(context.Background())

	// The dead first endpoint is skipped at Dial.
	if ep := client.Endpoint(); !strings.Contains(ep, a.Addr()) || strings.Contains(ep, "guest:guest") {
		t.Fatalf("Endpoint() = %q, want %s without the password", ep, a.Addr())
	}
	if e := log.waitState(t, warren.StateConnected); !strings.Contains(e.Endpoint, a.Addr()) {
		t.Fatalf("connected event endpoint %q, want %s", e.Endpoint, a.Addr())
	}
	first, err := client.Channel(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// A channel of the connection that will be lost, closed only after the
	// reconnect: its close still counts.
	late, err := client.Channel(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	// Losing a: the next endpoint is b, dialled first.
	kills[0] <- struct{}{}
	log.waitState(t, warren.StateDisconnected)
	e := log.waitState(t, warren.StateReconnected)
	if !strings.Contains(e.Endpoint, b.Addr()) || e.Attempt != 1 {
		t.Fatalf("after losing a: reconnected to %q at attempt %d, want %s at attempt 1", e.Endpoint, e.Attempt, b.Addr())
	}
	_ = late.Close(testCtx(t)) // the lost connection's error
	if st := client.Stats(); !strings.Contains(st.Endpoint, b.Addr()) || st.Reconnects != 1 || st.ChannelsOpened != 2 || st.ChannelsClosed != 2 {
		t.Fatalf("Stats() = %+v, want endpoint %s, 1 reconnect, and both channels of a opened and closed", st, b.Addr())
	}
	// Losing b: round the circle, past the dead endpoint, back to a.
	kills[1] <- struct{}{}
	log.waitState(t, warren.StateDisconnected)
	e = log.waitState(t, warren.StateReconnected)
	if !strings.Contains(e.Endpoint, a.Addr()) || e.Attempt != 2 {
		t.Fatalf("after losing b: reconnected to %q at attempt %d, want %s at attempt 2 (after the dead one)", e.Endpoint, e.Attempt, a.Addr())
	}
	ch, err := client.Channel(testCtx(t))
	if err != nil {
		t.Fatalf("Channel after two failovers: %v", err)
	}
	if err := ch.Close(testCtx(t)); err != nil {
		t.Fatalf("channel close: %v", err)
	}
	if st := client.Stats(); st.Reconnects != 2 || st.ChannelsOpened != 3 || st.ChannelsClosed != 3 {
		t.Fatalf("Stats() = %+v, want 2 reconnects and 3 channels opened and closed over the three connections", st)
	}
}

func TestDialClusterShufflesByDefault(t *testing.T) {
	leakCheck(t)
	var urls []string
	var addrs []string
	for range 3 {
		b := fb.Start(t, fb.Config{}, serve)
		urls = append(urls, b.URL())
		addrs = append(addrs, b.Addr())
	}
	count := func(opts ...warren.Option) map[string]int {
		n := map[string]int{}
		for range 24 {
			c, err := warren.DialCluster(testCtx(t), urls, opts...)
			if err != nil {
				t.Fatalf("DialCluster: %v", err)
			}
			for _, a := range addrs {
				if strings.Contains(c.Endpoint(), a) {
					n[a]++
				}
			}
			if err := c.Close(testCtx(t)); err != nil {
				t.Fatalf("Close: %v", err)
			}
		}
		return n
	}
	// 24 clients all on at most two of three endpoints by chance: 3·(2/3)²⁴ ≈ 2e-4.
	if n := count(); len(n) != 3 {
		t.Fatalf("shuffled: clients per endpoint %v, want all three endpoints used", n)
	}
	if n := count(warren.WithEndpointOrder(warren.EndpointsInOrder)); n[addrs[0]] != 24 {
		t.Fatalf("in order: clients per endpoint %v, want all 24 on the first", n)
	}
}

func TestDialClusterReportsEveryEndpointsError(t *testing.T) {
	leakCheck(t)
	d1, d2 := deadURL(t), deadURL(t)
	_, err := warren.DialCluster(testCtx(t), []string{d1, d2})
	if err == nil {
		t.Fatal("DialCluster to two dead endpoints succeeded")
	}
	for _, u := range []string{d1, d2} {
		host := strings.TrimSuffix(strings.TrimPrefix(u, "amqp://guest:guest@"), "/")
		if !strings.Contains(err.Error(), host) {
			t.Fatalf("error %q does not name endpoint %s", err, host)
		}
	}
	if strings.Contains(err.Error(), "guest:guest") {
		t.Fatalf("error %q shows the password", err)
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Fatalf("error %q does not carry the dial errors", err)
	}
}

func TestDialClusterRefusesBadInput(t *testing.T) {
	for name, urls := range map[string][]string{
		"no endpoints":    nil,
		"not a URL":       {"amqp://guest:guest@127.0.0.1:5672/", "http://x/"},
		"bad port":        {"amqp://127.0.0.1:notaport/"},
		"empty string in": {""},
		// Parameters only warren checks: refused for every endpoint at
		// once, not found out at a failover.
		"heartbeat=0 on the second": {"amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5673/?heartbeat=0"},
		"unsupported auth":          {"amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5673/?auth_mechanism=scram"},
	} {
		if _, err := warren.DialCluster(context.Background(), urls); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := warren.DialCluster(context.Background(), []string{"amqp://x/"}, warren.WithEndpointOrder(7)); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("order 7: err = %v, want ErrInvalidArgument", err)
	}
}

func TestHostURLs(t *testing.T) {
	got, err := warren.HostURLs("amqps://app:s3cret@ignored:5671/orders?heartbeat=5", "rabbit-1", "rabbit-2:5673", " 10.0.0.3 ", "[::1]:5674", "::2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"amqps://app:s3cret@rabbit-1:5671/orders?heartbeat=5",
		"amqps://app:s3cret@rabbit-2:5673/orders?heartbeat=5",
		"amqps://app:s3cret@10.0.0.3:5671/orders?heartbeat=5",
		"amqps://app:s3cret@[::1]:5674/orders?heartbeat=5",
		"amqps://app:s3cret@[::2]:5671/orders?heartbeat=5",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("HostURLs =\n%v\nwant\n%v", got, want)
	}
	got, err = warren.HostURLs("amqp://guest:guest@/", "a", "b:1")
	if err != nil || got[0] != "amqp://guest:guest@a/" || got[1] != "amqp://guest:guest@b:1/" {
		t.Fatalf("no base port: %v, %v", got, err)
	}
	for _, bad := range [][]string{{"http://x/", "a"}, {"amqp://x/"}, {"amqp://x/", "a/b"}, {"amqp://x/", "u@h"}, {"amqp://x/", ""}} {
		if _, err := warren.HostURLs(bad[0], bad[1:]...); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("HostURLs%q: err = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

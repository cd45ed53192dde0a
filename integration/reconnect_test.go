package integration

// WithReconnect (issue 7, first part): the Client dials a new connection
// when its connection is lost, reports the changes in order on one
// goroutine, never moves an old channel to the new connection, gives up per
// its policy, and stops when closed.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/faultproxy"
)

// stateLog records state events.
type stateLog struct {
	mu     sync.Mutex
	events []warren.StateEvent
	seen   chan warren.State
}

func newStateLog() *stateLog { return &stateLog{seen: make(chan warren.State, 64)} }

func (l *stateLog) record(e warren.StateEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
	l.seen <- e.State
}

func (l *stateLog) states() []warren.State {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]warren.State, len(l.events))
	for i, e := range l.events {
		out[i] = e.State
	}
	return out
}

// await waits for state s, failing after d.
func (l *stateLog) await(t *testing.T, s warren.State, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case got := <-l.seen:
			if got == s {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event within %v; events so far: %v", s, d, l.states())
		}
	}
}

func TestReconnectAfterTheConnectionIsCut(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	log := newStateLog()
	var reconnects atomic.Int64
	c := r.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}),
		warren.WithStateCallback(log.record),
		warren.WithMetrics(warren.MetricsHook{Reconnected: func(attempts int, downtime time.Duration) {
			if attempts >= 1 && downtime > 0 {
				reconnects.Add(1)
			}
		}}))
	old, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, ctx, c)

	for round := 1; round <= 3; round++ {
		start := time.Now()
		r.proxy.CutAll()
		log.await(t, warren.StateDisconnected, 10*time.Second)
		log.await(t, warren.StateReconnected, 10*time.Second)
		t.Logf("round %d: reconnected %v after the cut", round, time.Since(start))
		select {
		case <-c.Done():
			t.Fatal("Done closed although the Client reconnected")
		default:
		}
		if err := c.Err(); err != nil {
			t.Fatalf("Err after reconnecting: %v", err)
		}
		roundTrip(t, ctx, c)
	}
	// The channel of the first connection stays dead: nothing moved it.
	if err := old.Publish(ctx, "", "x", warren.Publishing{}); !errors.Is(err, warren.ErrConnectionLost) {
		t.Errorf("a channel of the lost connection: got %v, want its ErrConnectionLost", err)
	}
	if n := reconnects.Load(); n != 3 {
		t.Errorf("MetricsHook.Reconnected: %d calls with attempts and downtime, want 3", n)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	<-c.Done()
	want := []warren.State{warren.StateConnected}
	for i := 0; i < 3; i++ {
		want = append(want, warren.StateDisconnected, warren.StateReconnected)
	}
	want = append(want, warren.StateClosed)
	if got := log.states(); !equalStates(got, want) {
		t.Errorf("events: %v, want %v", got, want)
	}
	log.mu.Lock()
	for _, e := range log.events {
		if e.State == warren.StateDisconnected && !errors.Is(e.Err, warren.ErrConnectionLost) {
			t.Errorf("Disconnected event: Err %v, want ErrConnectionLost", e.Err)
		}
		if e.State == warren.StateReconnected && e.Attempt < 1 {
			t.Errorf("Reconnected event: Attempt %d", e.Attempt)
		}
	}
	log.mu.Unlock()
}

func TestReconnectGivesUpAfterMaxAttemptsAndCloseStopsIt(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	log := newStateLog()
	c := r.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxAttempts: 3}),
		warren.WithStateCallback(log.record))
	r.proxy.Close() // nothing listens any more: every dial fails
	log.await(t, warren.StateClosed, 20*time.Second)
	select {
	case <-c.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed after the Client gave up")
	}
	log.mu.Lock()
	last := log.events[len(log.events)-1]
	log.mu.Unlock()
	if last.Err == nil || !strings.Contains(last.Err.Error(), "gave up after 3 attempts") {
		t.Errorf("Closed event: Err %v, want it to say it gave up after 3 attempts", last.Err)
	}
	if _, err := c.Channel(ctx); err == nil {
		t.Error("Channel on a Client that gave up: got nil error")
	}
	_ = c.Close(ctx)

	// Close during backoff returns promptly and stops reconnecting.
	r2 := newFaultRig(t)
	log2 := newStateLog()
	c2 := r2.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 5 * time.Second, MaxBackoff: 5 * time.Second}),
		warren.WithStateCallback(log2.record))
	r2.proxy.Close()
	log2.await(t, warren.StateDisconnected, 10*time.Second)
	time.Sleep(100 * time.Millisecond) // into the first backoff
	start := time.Now()
	_ = c2.Close(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close during a 5 s backoff took %v", d)
	}
	if got := log2.states(); got[len(got)-1] != warren.StateClosed {
		t.Errorf("events: %v, want StateClosed last", got)
	}
}

func equalStates(a, b []warren.State) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// With reconnection on, a Pool, a Publisher and a consumer carry on across
// connection cuts: every message whose Publish returned nil is consumed
// (zero lost), every failure is reported to its caller, and duplicates
// (redeliveries of messages whose ack was lost with a connection) are
// counted.
//
// The cuts are tied to the publishers' progress, not to the clock: each
// lands while they publish, and a quarter of the messages go out after the
// last one. The consumer is stopped only once it has consumed a message
// published after the last cut, that is once it has subscribed again on
// the connection that replaced the last one cut: stopping it while it
// handles a cut would race its ctx against the connection loss, and the
// test would be checking which of the two Consume saw first.
func TestReconnectPublisherPoolAndConsumerCarryOnAcrossCuts(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, 2*opTimeout)
	c := r.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	q := uniqueName(t, "q-")
	direct := dial(t, r.b.URL)
	declareQueue(t, ctx, r.b, openChannel(t, ctx, direct), q)

	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := c.NewPool(ctx, warren.PoolOptions{Size: 2})
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	consumed := map[string]int{}
	cctx, stopConsumer := context.WithCancel(ctx)
	consumeDone := make(chan error, 1)
	go func() {
		consumeDone <- c.Consume(cctx, q, func(ctx context.Context, d *warren.Delivery) error {
			mu.Lock()
			consumed[string(d.Body)]++
			mu.Unlock()
			return nil
		}, warren.ConsumeOptions{Workers: 4, Prefetch: 50})
	}()

	const goroutines, each, cuts = 8, 400, 3
	const total = goroutines * each
	var acked sync.Map
	var failures, unknown, returned atomic.Int64
	var firstFailure atomic.Pointer[error]
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("%d-%d", g, i)
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := pub.Publish(pctx, "", q, warren.Publishing{DeliveryMode: warren.Persistent, Body: []byte(id)})
				cancel()
				switch {
				case err == nil:
					acked.Store(id, true)
				case errors.Is(err, warren.ErrOutcomeUnknown):
					unknown.Add(1)
				default:
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, &err)
				}
				// The cuts: as the publishes that have returned pass a
				// quarter, a half and three quarters of the total, while
				// the other goroutines' publishes are in flight.
				if n := returned.Add(1); n%(total/(cuts+1)) == 0 && n < total {
					r.proxy.CutAll()
				}
			}
		}()
	}
	wg.Wait()

	// A Consume that returned by itself stopped consuming: with
	// WithReconnect it must subscribe again after every cut.
	consumerRunning := func() {
		t.Helper()
		select {
		case err := <-consumeDone:
			t.Fatalf("Consume returned before its ctx ended: %v; with WithReconnect it must subscribe again after a cut", err)
		default:
		}
	}
	// Published after the last cut: consumed only by a subscription on
	// the connection that replaced the last one cut.
	const marker = "after-the-cuts"
	if err := pub.Publish(ctx, "", q, warren.Publishing{DeliveryMode: warren.Persistent, Body: []byte(marker)}); err != nil {
		consumerRunning()
		t.Fatalf("Publish after the cuts: %v", err)
	}
	nAcked := 0
	acked.Range(func(_, _ any) bool { nAcked++; return true })
	acked.Store(marker, true)
	eventually(t, ctx, "every acked message consumed, the one published after the cuts included", func() string {
		consumerRunning()
		mu.Lock()
		defer mu.Unlock()
		missing := 0
		acked.Range(func(k, _ any) bool {
			if consumed[k.(string)] == 0 {
				missing++
			}
			return true
		})
		if missing > 0 {
			return fmt.Sprintf("%d of %d acked messages not consumed yet (the one published after the cuts consumed: %v)", missing, nAcked+1, consumed[marker] > 0)
		}
		return ""
	})
	stopConsumer()
	if err := <-consumeDone; !errors.Is(err, context.Canceled) {
		t.Errorf("Consume: %v, want context.Canceled after its ctx ended", err)
	}
	mu.Lock()
	dups := extraCopies(consumed)
	t.Logf("%d published across %d cuts: %d acked, %d unknown, %d failed; %d distinct consumed (and the one published after the cuts), %d duplicates (redelivered after a lost ack); %d reconnects",
		total, cuts, nAcked, unknown.Load(), failures.Load(), len(consumed)-1, dups, c.Stats().Reconnects)
	mu.Unlock()
	if p := firstFailure.Load(); p != nil {
		t.Logf("first failed publish: %v", *p)
	}
	if nAcked < total/2 {
		t.Errorf("only %d of %d publishes acked across %d cuts", nAcked, total, cuts)
	}
	// The pool works on the current connection.
	if err := pool.Do(ctx, func(ch warren.Channel) error {
		_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		return err
	}); err != nil {
		t.Errorf("pool after the cuts: %v", err)
	}
	if err := pub.Close(ctx); err != nil {
		t.Errorf("Publisher.Close: %v", err)
	}
	if err := pool.Close(ctx); err != nil {
		t.Errorf("Pool.Close: %v", err)
	}
}

// WithTopology declares on Dial and again after every reconnect, before the
// new connection is used; a failure after a reconnect is reported in the
// StateReconnected event, and the Client carries on.
func TestReconnectRedeclaresTopologyAndReportsItsFailure(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	q := uniqueName(t, "topo-")
	deleteQueueLater(t, r.b, q)
	var calls atomic.Int64
	log := newStateLog()
	c := r.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}),
		warren.WithStateCallback(log.record),
		warren.WithTopology(func(ctx context.Context, ch warren.Channel) error {
			if calls.Add(1) == 3 {
				return errors.New("declarations refused on purpose")
			}
			_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true})
			return err
		}))
	direct := dial(t, r.b.URL)
	dch := openChannel(t, ctx, direct)
	if _, err := dch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil {
		t.Fatalf("after Dial the topology is not there: %v", err)
	}
	if _, err := dch.QueueDelete(ctx, q, warren.QueueDeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.proxy.CutAll()
	log.await(t, warren.StateReconnected, 10*time.Second)
	if _, err := dch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil {
		t.Fatalf("after the reconnect the topology was not redeclared: %v", err)
	}
	r.proxy.CutAll()
	log.await(t, warren.StateReconnected, 10*time.Second)
	log.mu.Lock()
	last := log.events[len(log.events)-1]
	log.mu.Unlock()
	if last.State != warren.StateReconnected || last.Err == nil || !strings.Contains(last.Err.Error(), "refused on purpose") {
		t.Errorf("second reconnect event: %+v, want StateReconnected carrying the topology error", last)
	}
	roundTrip(t, ctx, c)
}

// During a reconnect, Pool.Acquire and Client.Channel wait for the new
// connection (bounded by their ctx) instead of failing.
func TestReconnectAcquireAndChannelWaitForTheNewConnection(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	log := newStateLog()
	c := r.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}),
		warren.WithStateCallback(log.record))
	pool, err := c.NewPool(ctx, warren.PoolOptions{Size: 1, MinIdle: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close(ctx)

	r.proxy.Stall(faultproxy.ClientToServer) // the next handshake hangs
	r.proxy.CutAll()
	log.await(t, warren.StateDisconnected, 10*time.Second)

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = pool.Acquire(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire during a reconnect with a short ctx: got %v, want its deadline", err)
	}
	acquired := make(chan error, 1)
	go func() {
		ch, err := pool.Acquire(ctx)
		if err == nil {
			_, err = ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
			pool.Release(ch)
		}
		acquired <- err
	}()
	opened := make(chan error, 1)
	go func() {
		ch, err := c.Channel(ctx)
		if err == nil {
			err = ch.Close(ctx)
		}
		opened <- err
	}()
	select {
	case err := <-acquired:
		t.Fatalf("Acquire returned %v while the broker was unreachable", err)
	case <-time.After(300 * time.Millisecond):
	}
	r.proxy.Resume(faultproxy.ClientToServer)
	log.await(t, warren.StateReconnected, 10*time.Second)
	for name, c := range map[string]chan error{"Pool.Acquire": acquired, "Client.Channel": opened} {
		select {
		case err := <-c:
			if err != nil {
				t.Errorf("%s after the reconnect: %v", name, err)
			}
		case <-ctx.Done():
			t.Fatalf("%s still waiting after the reconnect", name)
		}
	}
}

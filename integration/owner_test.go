package integration

// One owner across connections (issue 19), on a real broker: the pools'
// channel budget outlives a reconnect to a connection whose channel_max is
// lower, and every entry point called while a reconnect is stalled waits
// for the new connection (bounded by its ctx) and works there.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren"
)

// ownerLeakCheck fails the test if it leaves goroutines running. Call it
// first: its check runs after every later cleanup (the clients' Close).
func ownerLeakCheck(t *testing.T) {
	t.Helper()
	opts := append(containerLeakIgnores(), goleak.IgnoreCurrent())
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

var channelMaxEnv = regexp.MustCompile(`\{ok,(\d+)\}`)

// brokerChannelMaxSetter returns a function that sets the channel_max the
// broker offers to new connections (connections already open keep theirs);
// the broker's setting is restored when the test ends.
func brokerChannelMaxSetter(t *testing.T) func(n int) {
	t.Helper()
	out := ctl(t, broker, "eval", "application:get_env(rabbit, channel_max).")
	m := channelMaxEnv.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("application:get_env(rabbit, channel_max): %q, want {ok,N}", out)
	}
	orig, _ := strconv.Atoi(m[1])
	set := func(n int) {
		t.Helper()
		ctl(t, broker, "eval", fmt.Sprintf("application:set_env(rabbit, channel_max, %d).", n))
	}
	t.Cleanup(func() { set(orig) })
	return set
}

// publishOnLeases leases n channels of p at once and publishes one message
// to queue on each: the pool holds n channels open on the broker together.
// settledDepth returns the depth of queue once it has reached want, or
// what it is after 10 s: publishes on plain channels have no reply, and the
// broker orders a channel's frames, not several channels', so a passive
// declare on another channel may count them before they all arrive.
func settledDepth(t *testing.T, ctx context.Context, c *warren.Client, queue string, want int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := queueDepthOn(t, ctx, c, queue)
		if got >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func publishOnLeases(t *testing.T, ctx context.Context, p *warren.Pool, n int, queue string) {
	t.Helper()
	leases := make([]warren.Channel, 0, n)
	defer func() {
		for _, ch := range leases {
			p.Release(ch)
		}
	}()
	for i := 0; i < n; i++ {
		ch, err := p.Acquire(ctx)
		if err != nil {
			t.Fatalf("Acquire %d of %d: %v", i+1, n, err)
		}
		leases = append(leases, ch)
	}
	for _, ch := range leases {
		if err := ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte("lease")}); err != nil {
			t.Fatalf("Publish on leased channel %d: %v", ch.ID(), err)
		}
	}
}

// A reconnect that lands on a connection whose channel_max is lower than
// the pools' total fails the pools that no longer fit, the later ones first,
// with an error matching ErrChannelMax from Acquire (the connection is not
// cost a broker 530); the pools that still fit work on it; and a pool made
// after the reconnect is checked against what the earlier pools hold.
func TestPoolsThatNoLongerFitTheChannelMaxOfTheNewConnectionFailWithErrChannelMax(t *testing.T) {
	ownerLeakCheck(t)
	needPrivate(t, broker)
	ctx := testCtx(t, opTimeout)
	setChannelMax := brokerChannelMaxSetter(t)
	setChannelMax(64)
	name := uniqueName(t, "conn-")
	log := newStateLog()
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}),
		warren.WithStateCallback(log.record))
	if got := c.ChannelMax(); got != 64 {
		t.Fatalf("ChannelMax: %d, want the broker's 64", got)
	}
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, ch, q)

	// 20+4 and 20+20+4 fit 64; after the reconnect only 20+4 fits 32.
	older, err := c.NewPool(ctx, warren.PoolOptions{Size: 20, Headroom: 4})
	if err != nil {
		t.Fatalf("NewPool 20 on channel_max 64: %v", err)
	}
	defer older.Close(ctx)
	newer, err := c.NewPool(ctx, warren.PoolOptions{Size: 20, Headroom: 4})
	if err != nil {
		t.Fatalf("NewPool 20 more on channel_max 64: %v", err)
	}
	defer newer.Close(ctx)
	publishOnLeases(t, ctx, older, 20, q)
	publishOnLeases(t, ctx, newer, 20, q)

	setChannelMax(32)
	ctl(t, broker, "close_connection", mustConnectionPid(t, broker, name), "test: reconnect to a lower channel_max")
	log.await(t, warren.StateDisconnected, 10*time.Second)
	log.await(t, warren.StateReconnected, 10*time.Second)
	if got := c.ChannelMax(); got != 32 {
		t.Fatalf("ChannelMax after the reconnect: %d, want the broker's new 32", got)
	}
	if bc, ok := brokerConnectionNamed(t, broker, name); !ok || bc.ChannelMax != 32 {
		t.Fatalf("the broker's view of the new connection: %+v (listed %v), want channel_max 32", bc, ok)
	}

	_, err = newer.Acquire(ctx)
	if !errors.Is(err, warren.ErrChannelMax) || errors.Is(err, warren.ErrNotAllowed) {
		t.Fatalf("Acquire on the pool that no longer fits: got %v, want an error matching ErrChannelMax (not a broker refusal)", err)
	}
	t.Logf("Acquire on the pool that no longer fits: %v", err)
	if _, again := newer.Acquire(ctx); !errors.Is(again, warren.ErrChannelMax) {
		t.Errorf("a second Acquire on the pool that no longer fits: got %v, want ErrChannelMax again", again)
	}
	// The pool that still fits opens all its channels on the new connection,
	// and its headroom is left for a channel of its own.
	publishOnLeases(t, ctx, older, 20, q)
	own := openChannel(t, ctx, c)
	if err := own.Publish(ctx, "", q, warren.Publishing{Body: []byte("own")}); err != nil {
		t.Fatalf("Publish on a channel opened beside the pool: %v", err)
	}

	// 20 of 32 are held by the older pool: 10+4 more does not fit, 8+4 does.
	if p, err := c.NewPool(ctx, warren.PoolOptions{Size: 10, Headroom: 4}); !errors.Is(err, warren.ErrInvalidArgument) || !errors.Is(err, warren.ErrChannelMax) {
		if err == nil {
			_ = p.Close(ctx)
		}
		t.Fatalf("NewPool 10 after the reconnect: got %v, want it refused (20 of 32 held by the older pool, 4 headroom)", err)
	}
	fits, err := c.NewPool(ctx, warren.PoolOptions{Size: 8, Headroom: 4})
	if err != nil {
		t.Fatalf("NewPool 8 after the reconnect: %v (20+8+4 fits 32)", err)
	}
	defer fits.Close(ctx)
	publishOnLeases(t, ctx, fits, 8, q)

	// Nothing cost the connection: one cut, one reconnect.
	if got, want := log.states(), []warren.State{warren.StateConnected, warren.StateDisconnected, warren.StateReconnected}; !equalStates(got, want) {
		t.Errorf("events: %v, want %v (no connection lost to a refused channel)", got, want)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err: %v, want nil", err)
	}
	want := 20 + 20 + 20 + 1 + 8
	if got := settledDepth(t, ctx, c, q, want); got != want {
		t.Errorf("queue holds %d messages, want %d", got, want)
	}
}

// entryPoint is one of the Client's ways to open something on its
// connection (Consume aside), used at once: use opens it and publishes body
// to queue through it.
type entryPoint struct {
	name string
	use  func(ctx context.Context, c *warren.Client, queue, body string) error
}

var entryPoints = []entryPoint{
	{"Channel", func(ctx context.Context, c *warren.Client, queue, body string) error {
		ch, err := c.Channel(ctx)
		if err != nil {
			return err
		}
		defer ch.Close(ctx)
		return ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)})
	}},
	{"Begin", func(ctx context.Context, c *warren.Client, queue, body string) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if err := tx.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)}); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}},
	{"Tx", func(ctx context.Context, c *warren.Client, queue, body string) error {
		return c.Tx(ctx, func(tx *warren.Tx) error {
			return tx.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)})
		})
	}},
	{"NewPool", func(ctx context.Context, c *warren.Client, queue, body string) error {
		p, err := c.NewPool(ctx, warren.PoolOptions{Size: 2, MinIdle: 1})
		if err != nil {
			return err
		}
		defer p.Close(ctx)
		return p.Do(ctx, func(ch warren.Channel) error {
			return ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)})
		})
	}},
	{"NewPublisher", func(ctx context.Context, c *warren.Client, queue, body string) error {
		p, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 2})
		if err != nil {
			return err
		}
		defer p.Close(ctx)
		return p.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)})
	}},
}

// During a reconnect stalled by a broker that is down, Channel, Begin, Tx,
// NewPool, NewPublisher and Consume each wait for the new connection: with
// a short ctx they give up with an error matching context.DeadlineExceeded;
// with a long one they return once the broker is back, and what they return
// works on the new connection.
func TestEveryEntryPointWaitsForTheBrokerDuringAStalledReconnectAndWorksAfterIt(t *testing.T) {
	ownerLeakCheck(t)
	needPrivate(t, broker)
	ctx := testCtx(t, 2*time.Minute)
	name := uniqueName(t, "conn-")
	log := newStateLog()
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 250 * time.Millisecond}),
		warren.WithStateCallback(log.record))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, ch, q)
	cq := uniqueName(t, "q-consume-")
	declareQueue(t, ctx, broker, ch, cq)

	if err := broker.StopApp(ctx); err != nil {
		t.Fatalf("stop_app: %v", err)
	}
	down := true
	t.Cleanup(func() {
		if down { // a failure below left the broker down: start it for the tests after this one
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := broker.StartApp(ctx); err != nil {
				t.Errorf("cleanup: start_app: %v", err)
			}
		}
	})
	log.await(t, warren.StateDisconnected, 10*time.Second)

	// A short ctx: every entry point gives up when it ends.
	for _, e := range entryPoints {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := e.use(short, c, q, "short-"+e.name)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s with a 200 ms ctx while the broker is down: got %v, want an error matching context.DeadlineExceeded", e.name, err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := c.Consume(short, cq, func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Consume with a 200 ms ctx while the broker is down: got %v, want an error matching context.DeadlineExceeded", err)
	}

	// A long ctx: every entry point waits for the broker, then works.
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(entryPoints))
	for _, e := range entryPoints {
		go func() { results <- result{e.name, e.use(ctx, c, q, "long-"+e.name)} }()
	}
	received := make(chan string, 1)
	cctx, stopConsume := context.WithCancel(ctx)
	defer stopConsume()
	consumed := make(chan error, 1)
	go func() {
		consumed <- c.Consume(cctx, cq, func(_ context.Context, d *warren.Delivery) error {
			select {
			case received <- string(d.Body):
			default:
			}
			return nil
		}, warren.ConsumeOptions{})
	}()
	select {
	case r := <-results:
		t.Fatalf("%s returned while the broker was still down: %v, want it to wait", r.name, r.err)
	case err := <-consumed:
		t.Fatalf("Consume returned while the broker was still down: %v, want it to wait", err)
	case <-time.After(time.Second):
	}

	if err := broker.StartApp(ctx); err != nil {
		t.Fatalf("start_app: %v", err)
	}
	down = false
	log.await(t, warren.StateReconnected, 30*time.Second)
	var done []string
	for range entryPoints {
		select {
		case r := <-results:
			if r.err != nil {
				t.Errorf("%s called while the broker was down: %v, want it to work once the broker was back", r.name, r.err)
				continue
			}
			done = append(done, r.name)
		case <-ctx.Done():
			t.Fatalf("entry points still waiting after the reconnect; returned so far: %v", done)
		}
	}
	slices.Sort(done)
	t.Logf("worked on the new connection: %v", done)

	// The consumer subscribed on the new connection: it receives.
	if err := publishOn(ctx, c, cq, "probe"); err != nil {
		t.Fatalf("publishing to the consumer's queue: %v", err)
	}
	select {
	case body := <-received:
		if body != "probe" {
			t.Errorf("the consumer received %q, want %q", body, "probe")
		}
	case err := <-consumed:
		t.Fatalf("Consume returned %v before receiving", err)
	case <-ctx.Done():
		t.Fatal("the consumer started while the broker was down never received")
	}
	stopConsume()
	if err := <-consumed; !errors.Is(err, context.Canceled) {
		t.Errorf("Consume after its ctx was cancelled: got %v, want context.Canceled", err)
	}

	// Exactly the long calls' messages arrived; the short ones sent nothing.
	bodies := drainBodies(t, ctx, c, q, len(entryPoints))
	var want []string
	for _, e := range entryPoints {
		want = append(want, "long-"+e.name)
	}
	slices.Sort(want)
	if !slices.Equal(bodies, want) {
		t.Errorf("queue held %v, want %v", bodies, want)
	}
	if err := c.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// publishOn publishes body to queue on a channel of its own.
func publishOn(ctx context.Context, c *warren.Client, queue, body string) error {
	ch, err := c.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close(ctx)
	return ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)})
}

// drainBodies gets every message in queue (at least want of them, waiting
// for late ones until a second after the last) and returns their bodies,
// sorted.
func drainBodies(t *testing.T, ctx context.Context, c *warren.Client, queue string, want int) []string {
	t.Helper()
	ch := openChannel(t, ctx, c)
	var bodies []string
	quiet := time.Now().Add(time.Second)
	for time.Now().Before(quiet) || len(bodies) < want {
		if ctx.Err() != nil {
			t.Fatalf("draining %s: got %v so far, want %d", queue, bodies, want)
		}
		d, ok, err := ch.Get(ctx, queue, warren.GetOptions{AutoAck: true})
		if err != nil {
			t.Fatalf("Get from %s: %v", queue, err)
		}
		if !ok {
			time.Sleep(pollEvery)
			continue
		}
		bodies = append(bodies, string(d.Body))
		quiet = time.Now().Add(time.Second)
	}
	slices.Sort(bodies)
	return bodies
}

// A handler that ignores its ctx does not hold up the consumer after a cut:
// the consumer subscribes again on the new connection and receives while
// that handler still runs. When the handler at last acks its delivery
// (which the broker has requeued), the ack fails with ErrDeliveryVoid
// instead of settling the new channel's delivery of the same tag; every
// message is acked once and none is lost.
func TestAHandlerThatIgnoresItsCtxAndAcksLateAfterACutNeitherDelaysTheConsumerNorAcksANewDelivery(t *testing.T) {
	ownerLeakCheck(t)
	needPrivate(t, broker)
	ctx := testCtx(t, opTimeout)
	name := uniqueName(t, "conn-")
	log := newStateLog()
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}),
		warren.WithStateCallback(log.record))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, ch, q)
	const n = 20
	for i := 0; i < n; i++ {
		if err := ch.Publish(ctx, "", q, warren.Publishing{MessageId: fmt.Sprint(i), Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}

	var (
		mu       sync.Mutex
		acked    = map[string]int{} // message id -> acks that reached the broker
		deliver  int                // deliveries so far
		cut      bool
		newTag   uint64                // delivery tag of the first delivery after the cut
		oldTag   uint64                // delivery tag of the stuck handler's delivery
		held     = make(chan struct{}) // the first delivery's handler is stuck
		release  = make(chan struct{}) // unsticks it
		lateAck  = make(chan error, 1) // its late Ack's result
		newHeld  = make(chan struct{}) // the first handler after the cut runs
		lateDone = make(chan struct{}) // lets that handler return
	)
	var releaseOnce, lateDoneOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	defer lateDoneOnce.Do(func() { close(lateDone) })
	handler := func(_ context.Context, d *warren.Delivery) error {
		mu.Lock()
		deliver++
		first, afterCut := deliver == 1, cut && newTag == 0
		if afterCut {
			newTag = d.DeliveryTag
		}
		if first {
			oldTag = d.DeliveryTag
		}
		mu.Unlock()
		switch {
		case first:
			close(held)
			<-release // ignores its ctx
			err := d.Ack(context.Background())
			if err == nil {
				mu.Lock()
				acked[d.MessageId]++
				mu.Unlock()
			}
			lateAck <- err
			return nil
		case afterCut:
			close(newHeld)
			<-lateDone
		}
		mu.Lock()
		acked[d.MessageId]++
		mu.Unlock()
		return nil
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, q, handler, warren.ConsumeOptions{Prefetch: 1, ShutdownTimeout: 5 * time.Second})
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("no delivery before the cut")
	}
	mu.Lock()
	cut = true
	mu.Unlock()
	ctl(t, broker, "close_connection", mustConnectionPid(t, broker, name), "test: cut under a stuck handler")
	log.await(t, warren.StateDisconnected, 10*time.Second)
	log.await(t, warren.StateReconnected, 10*time.Second)
	select {
	case <-newHeld:
	case err := <-done:
		t.Fatalf("Consume returned %v after the cut, want it to subscribe again", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10 s of the reconnect while a handler of the lost subscription still runs: resubscription waited for it")
	}
	mu.Lock()
	t.Logf("stuck handler's delivery tag %d; first delivery after the cut: tag %d", oldTag, newTag)
	mu.Unlock()

	// The stuck handler acks now, while the new channel holds an unacked
	// delivery (with Prefetch 1, of the same tag).
	releaseOnce.Do(func() { close(release) })
	select {
	case err := <-lateAck:
		if !errors.Is(err, warren.ErrDeliveryVoid) {
			t.Errorf("the late Ack of a delivery of the lost connection: got %v, want an error matching ErrDeliveryVoid", err)
		}
	case <-ctx.Done():
		t.Fatal("the released handler never acked")
	}
	lateDoneOnce.Do(func() { close(lateDone) })

	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		got := len(acked)
		mu.Unlock()
		if got == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(pollEvery)
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Consume: got %v, want context.Canceled", err)
	}
	mu.Lock()
	if len(acked) != n {
		t.Errorf("acked %d distinct messages, want %d", len(acked), n)
	}
	for id, k := range acked {
		if k != 1 {
			t.Errorf("message %s acked %d times, want once", id, k)
		}
	}
	mu.Unlock()
	if left := queueDepthOn(t, ctx, c, q); left != 0 {
		t.Errorf("%d messages left in the queue, want 0", left)
	}
	// The late ack cost neither the new channel nor the connection.
	if got, want := log.states(), []warren.State{warren.StateConnected, warren.StateDisconnected, warren.StateReconnected}; !equalStates(got, want) {
		t.Errorf("events: %v, want %v", got, want)
	}
}

// A Publisher's channels come from a pool of its own, budgeted like any
// other: when a reconnect lands on a channel_max its pool no longer fits
// (it was made after a pool that still fits), Publish fails with an error
// matching ErrChannelMax instead of waiting for a channel that cannot come,
// and the pool made before it goes on working.
func TestAPublisherThatNoLongerFitsTheChannelMaxOfTheNewConnectionFailsWithErrChannelMax(t *testing.T) {
	ownerLeakCheck(t)
	needPrivate(t, broker)
	ctx := testCtx(t, opTimeout)
	setChannelMax := brokerChannelMaxSetter(t)
	setChannelMax(64)
	name := uniqueName(t, "conn-")
	log := newStateLog()
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}),
		warren.WithStateCallback(log.record))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, ch, q)

	// 20+4 and 20+4+4 fit 64; after the reconnect only 20+4 fits 26.
	pool, err := c.NewPool(ctx, warren.PoolOptions{Size: 20, Headroom: 4})
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	defer pool.Close(ctx)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 4, Headroom: 4})
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer pub.Close(ctx)
	if err := pub.Publish(ctx, "", q, warren.Publishing{Body: []byte("before")}); err != nil {
		t.Fatalf("Publish before the reconnect: %v", err)
	}

	setChannelMax(26)
	ctl(t, broker, "close_connection", mustConnectionPid(t, broker, name), "test: reconnect to a lower channel_max")
	log.await(t, warren.StateDisconnected, 10*time.Second)
	log.await(t, warren.StateReconnected, 10*time.Second)
	if got := c.ChannelMax(); got != 26 {
		t.Fatalf("ChannelMax after the reconnect: %d, want the broker's new 26", got)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = pub.Publish(pctx, "", q, warren.Publishing{Body: []byte("after")})
	cancel()
	if !errors.Is(err, warren.ErrChannelMax) {
		t.Fatalf("Publish on the Publisher that no longer fits: got %v, want an error matching ErrChannelMax", err)
	}
	t.Logf("Publish on the Publisher that no longer fits: %v", err)
	publishOnLeases(t, ctx, pool, 20, q)
	want := 1 + 20
	if got := settledDepth(t, ctx, c, q, want); got != want {
		t.Errorf("queue holds %d messages, want %d", got, want)
	}
	if got, want := log.states(), []warren.State{warren.StateConnected, warren.StateDisconnected, warren.StateReconnected}; !equalStates(got, want) {
		t.Errorf("events: %v, want %v", got, want)
	}
}

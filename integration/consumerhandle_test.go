package integration

// The consumer handle (issue 20, item 1): StartConsumer returns at
// basic.consume-ok, Ready re-arms after a cut, Pause and Resume, a
// graceful Cancel under load, the broker's cancel with and without
// reconnect, and Client.Close ending a Consumer.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// idSet records the message numbers a handler saw.
type idSet struct {
	mu   sync.Mutex
	seen map[int]int
}

func (s *idSet) add(t *testing.T, d *warren.Delivery) {
	n, err := strconv.Atoi(string(d.Body))
	if err != nil {
		t.Errorf("unexpected body %q", d.Body)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[int]int{}
	}
	s.seen[n]++
}

func (s *idSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// startConsumer starts a Consumer and cancels it when the test ends.
func startConsumer(t *testing.T, ctx context.Context, c *warren.Client, q string, h warren.Handler, opts warren.ConsumeOptions) *warren.Consumer {
	t.Helper()
	k, err := c.StartConsumer(ctx, q, h, opts)
	require.NoError(t, err, "StartConsumer")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = k.Cancel(ctx)
	})
	return k
}

// closedWithin reports whether ch is closed within d.
func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
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

func TestStartConsumerReturnsReadyAndAMissingQueueIsErrNotFoundWithNothingLeft(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	before := c.OpenChannels()
	_, err := c.StartConsumer(ctx, uniqueName(t, "missing-"), func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
	require.ErrorIs(t, err, warren.ErrNotFound, "StartConsumer on a missing queue")
	if n := c.OpenChannels(); n != before {
		t.Errorf("open channels after a failed start: got %d, want %d", n, before)
	}
	_, err = c.StartConsumer(ctx, "q", nil, warren.ConsumeOptions{})
	assert.ErrorIs(t, err, warren.ErrInvalidArgument, "StartConsumer with a nil handler")

	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	fillNumbered(t, ctx, c, q, 10)
	var got idSet
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error { got.add(t, d); return nil },
		warren.ConsumeOptions{Tag: "handle-tag-" + randHex(4)})
	if !isClosed(k.Ready()) {
		t.Error("Ready is not closed when StartConsumer returned")
	}
	if k.Tag() == "" || k.Tag()[:11] != "handle-tag-" {
		t.Errorf("Tag: got %q, want the one asked for", k.Tag())
	}
	eventually(t, ctx, "the 10 messages handled", func() string {
		if s := k.Stats(); s.Acked != 10 || s.Delivered != 10 {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	require.NoError(t, k.Cancel(ctx), "Cancel")
	if !isClosed(k.Done()) || k.Err() != nil {
		t.Fatalf("after Cancel: Done closed %v, Err %v; want closed and nil", isClosed(k.Done()), k.Err())
	}
	assert.NoError(t, k.Cancel(ctx), "a second Cancel")
	assert.ErrorIs(t, k.Pause(ctx), warren.ErrConsumerEnded, "Pause after Cancel")
	wantOpenChannels(t, ctx, "after Cancel", c, before+1) // + the test's own channel
}

func TestConsumerReadyRearmsAfterACutAndClosesAgainOnResubscription(t *testing.T) {
	needPrivate(t, broker)
	ctx := testCtx(t, opTimeout)
	name := uniqueName(t, "conn-")
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, openChannel(t, ctx, c), q)
	var got idSet
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error { got.add(t, d); return nil }, warren.ConsumeOptions{})
	ready := k.Ready()
	if !isClosed(ready) {
		t.Fatal("Ready not closed after StartConsumer")
	}
	ctl(t, broker, "close_connection", mustConnectionPid(t, broker, name), "test: cut under a consumer handle")
	// Ready re-arms: a new, open channel...
	var rearmed <-chan struct{}
	eventually(t, ctx, "Ready re-armed after the cut", func() string {
		r := k.Ready()
		if isClosed(r) {
			if k.Stats().Resubscriptions > 0 {
				return "" // already resubscribed: the re-armed channel was closed again
			}
			return "Ready still closed"
		}
		rearmed = r
		return ""
	})
	// ...that closes on the resubscription's consume-ok.
	if rearmed != nil && !closedWithin(rearmed, 15*time.Second) {
		t.Fatalf("the re-armed Ready was not closed within 15 s of the cut (stats %+v, err %v)", k.Stats(), k.Err())
	}
	if !isClosed(k.Ready()) {
		t.Fatal("Ready not closed after the resubscription")
	}
	if s := k.Stats(); s.Resubscriptions != 1 {
		t.Errorf("Resubscriptions: got %d, want 1", s.Resubscriptions)
	}
	fillNumbered(t, ctx, c, q, 20)
	eventually(t, ctx, "the 20 messages after the cut", func() string {
		if n := got.len(); n != 20 {
			return fmt.Sprint(n, " handled")
		}
		return ""
	})
	require.NoError(t, k.Err(), "Err of a running consumer")
}

func TestConsumerPauseDeliversNothingAndResumeLetsTheMessagesFlow(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	var got idSet
	var received atomic.Int64
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error {
		received.Add(1)
		got.add(t, d)
		return nil
	}, warren.ConsumeOptions{})
	require.NoError(t, k.Pause(ctx), "Pause")
	if isClosed(k.Ready()) {
		t.Error("Ready closed while paused")
	}
	assert.NoError(t, k.Pause(ctx), "a second Pause")
	fillNumbered(t, ctx, c, q, 50)
	time.Sleep(500 * time.Millisecond)
	if n := received.Load(); n != 0 {
		t.Fatalf("%d messages delivered while paused, want 0", n)
	}
	if d := queueDepthOn(t, ctx, c, q); d != 50 {
		t.Errorf("queue depth while paused: got %d, want 50", d)
	}
	require.NoError(t, k.Resume(ctx), "Resume")
	if !isClosed(k.Ready()) {
		t.Error("Ready not closed after Resume returned")
	}
	eventually(t, ctx, "the 50 messages after Resume", func() string {
		if n := got.len(); n != 50 {
			return fmt.Sprint(n, " handled")
		}
		return ""
	})
	if s := k.Stats(); s.Acked != 50 || s.Resubscriptions != 0 {
		t.Errorf("stats: got %+v, want 50 acked and no resubscription", s)
	}
}

func TestConsumerPausedHandlersFinishAndSettleOnTheOpenChannel(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	fillNumbered(t, ctx, c, q, 5)
	started := make(chan struct{}, 5)
	release := make(chan struct{})
	k := startConsumer(t, ctx, c, q, func(hctx context.Context, d *warren.Delivery) error {
		started <- struct{}{}
		select {
		case <-release:
		case <-hctx.Done():
			return hctx.Err()
		}
		return nil
	}, warren.ConsumeOptions{Prefetch: 5})
	<-started
	require.NoError(t, k.Pause(ctx), "Pause")
	close(release)
	// The 5 prefetched before the pause are handled and acked.
	eventually(t, ctx, "the 5 prefetched deliveries acked while paused", func() string {
		if s := k.Stats(); s.Acked != 5 {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	if d := queueDepthOn(t, ctx, c, q); d != 0 {
		t.Errorf("queue depth: got %d, want 0", d)
	}
}

func TestConsumerCancelUnderLoadAckedPlusLeftEqualsPublished(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	const n = 2000
	fillNumbered(t, ctx, c, q, n)
	var got idSet
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error {
		time.Sleep(time.Millisecond)
		got.add(t, d)
		return nil
	}, warren.ConsumeOptions{Workers: 4, Prefetch: 100})
	eventually(t, ctx, "some messages handled", func() string {
		if k.Stats().Acked < 200 {
			return "fewer than 200 acked"
		}
		return ""
	})
	require.NoError(t, k.Cancel(ctx), "Cancel")
	s := k.Stats()
	left := 0
	eventually(t, ctx, "the unacked messages back in the queue", func() string {
		left = queueDepthOn(t, ctx, c, q)
		if int(s.Acked)+left != n {
			return fmt.Sprintf("acked %d + left %d != %d", s.Acked, left, n)
		}
		return ""
	})
	if s.InFlight != 0 || int(s.Acked) != got.len() || s.Acked == n {
		t.Errorf("after Cancel: stats %+v, %d distinct handled; want nothing in flight, acked == handled < %d", s, got.len(), n)
	}
	t.Logf("acked %d, left %d", s.Acked, left)
}

func TestConsumerBrokerCancelWithoutReconnectEndsWithErrConsumerCancelled(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true})
	require.NoError(t, err, "QueueDeclare")
	k := startConsumer(t, ctx, c, q, func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
	_, err = ch.QueueDelete(ctx, q, warren.QueueDeleteOptions{})
	require.NoError(t, err, "QueueDelete")
	if !closedWithin(k.Done(), 10*time.Second) {
		t.Fatal("the consumer did not end within 10 s of its queue's deletion")
	}
	require.ErrorIs(t, k.Err(), warren.ErrConsumerCancelled, "Err")
	if s := k.Stats(); s.BrokerCancels != 1 {
		t.Errorf("BrokerCancels: got %d, want 1", s.BrokerCancels)
	}
	assert.NoError(t, k.Cancel(ctx), "Cancel of an ended consumer")
	assert.ErrorIs(t, k.Err(), warren.ErrConsumerCancelled, "Err after a late Cancel: the first cause kept")
}

func TestConsumerWithReconnectResubscribesOnceTheDeletedQueueExistsAgain(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	var got idSet
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error { got.add(t, d); return nil }, warren.ConsumeOptions{})
	_, err := ch.QueueDelete(ctx, q, warren.QueueDeleteOptions{})
	require.NoError(t, err, "QueueDelete")
	eventually(t, ctx, "the consumer checking for its missing queue", func() string {
		if s := k.Stats(); s.BrokerCancels != 1 || s.QueueChecks < 2 {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	ready := k.Ready()
	if isClosed(ready) {
		t.Fatal("Ready closed while the queue is missing")
	}
	if isClosed(k.Done()) {
		t.Fatalf("the consumer ended: %v", k.Err())
	}
	_, err = ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true})
	require.NoError(t, err, "QueueDeclare")
	if !closedWithin(ready, 10*time.Second) {
		t.Fatalf("Ready not closed within 10 s of the queue's return (stats %+v)", k.Stats())
	}
	fillNumbered(t, ctx, c, q, 10)
	eventually(t, ctx, "the 10 messages after the resubscription", func() string {
		if n := got.len(); n != 10 {
			return fmt.Sprint(n, " handled")
		}
		return ""
	})
	if s := k.Stats(); s.Resubscriptions != 1 {
		t.Errorf("Resubscriptions: got %d, want 1", s.Resubscriptions)
	}
}

func TestClientCloseEndsAConsumerWithErrClientClosed(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	k, err := c.StartConsumer(ctx, q, func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
	require.NoError(t, err, "StartConsumer")
	require.NoError(t, k.Pause(ctx), "Pause") // a paused consumer ends too
	require.NoError(t, c.Close(ctx), "Close")
	if !closedWithin(k.Done(), 10*time.Second) {
		t.Fatal("the consumer did not end within 10 s of Client.Close")
	}
	assert.ErrorIs(t, k.Err(), warren.ErrClientClosed, "Err after Client.Close")
}

// A queue deleted while its Consumer was paused (no consumer, so no
// broker cancel): Resume's basic.consume finds it missing (404). With
// WithReconnect the Consumer waits for the queue as after a broker cancel;
// without, it ends with ErrConsumerCancelled and ErrNotFound.
func TestConsumerResumeOnAQueueDeletedWhilePaused(t *testing.T) {
	b := brokertest.Need(t, broker)
	for _, reconnect := range []bool{false, true} {
		t.Run(fmt.Sprintf("reconnect=%v", reconnect), func(t *testing.T) {
			ctx := testCtx(t, opTimeout)
			var opts []warren.Option
			if reconnect {
				opts = append(opts, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
			}
			c := dial(t, b.URL, opts...)
			ch := openChannel(t, ctx, c)
			q := uniqueName(t, "q-")
			declareQueue(t, ctx, b, ch, q)
			var got idSet
			k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error { got.add(t, d); return nil }, warren.ConsumeOptions{})
			require.NoError(t, k.Pause(ctx), "Pause")
			_, err := ch.QueueDelete(ctx, q, warren.QueueDeleteOptions{})
			require.NoError(t, err, "QueueDelete")
			short, cancel := context.WithTimeout(ctx, time.Second)
			err = k.Resume(short)
			cancel()
			if !reconnect {
				if !errors.Is(err, warren.ErrConsumerEnded) || !errors.Is(err, warren.ErrNotFound) {
					t.Fatalf("Resume on a deleted queue: got %v, want ErrConsumerEnded and ErrNotFound", err)
				}
				if err := k.Err(); !errors.Is(err, warren.ErrConsumerCancelled) || !errors.Is(err, warren.ErrNotFound) {
					t.Fatalf("Err: got %v, want ErrConsumerCancelled and ErrNotFound", err)
				}
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Resume on a deleted queue with reconnect: got %v, want DeadlineExceeded (still waiting for the queue)", err)
			}
			eventually(t, ctx, "the consumer checking for its missing queue", func() string {
				if s := k.Stats(); s.QueueChecks < 2 {
					return fmt.Sprintf("stats %+v", s)
				}
				return ""
			})
			if isClosed(k.Done()) {
				t.Fatalf("the consumer ended: %v", k.Err())
			}
			ready := k.Ready()
			_, err = ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true})
			require.NoError(t, err, "QueueDeclare")
			if !closedWithin(ready, 10*time.Second) {
				t.Fatalf("Ready not closed within 10 s of the queue's return (stats %+v)", k.Stats())
			}
			fillNumbered(t, ctx, c, q, 10)
			eventually(t, ctx, "the 10 messages after the queue came back", func() string {
				if n := got.len(); n != 10 {
					return fmt.Sprint(n, " handled")
				}
				return ""
			})
			// The subscription Resume asked for: not a resubscription.
			if s := k.Stats(); s.Resubscriptions != 0 || s.BrokerCancels != 0 {
				t.Errorf("stats after Resume found the queue deleted: %+v, want Resubscriptions 0 and BrokerCancels 0", s)
			}
		})
	}
}

// BrokerCancels is counted after Ready is re-armed: whoever sees the count
// go up sees an open Ready (the queue is missing, so it stays open).
func TestConsumerBrokerCancelIsCountedAfterReadyIsReArmed(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	k := startConsumer(t, ctx, c, q, func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
	old := k.Ready()
	require.True(t, isClosed(old), "Ready closed after StartConsumer")
	_, err := ch.QueueDelete(ctx, q, warren.QueueDeleteOptions{})
	require.NoError(t, err, "QueueDelete")
	for k.Stats().BrokerCancels == 0 {
		if ctx.Err() != nil {
			t.Fatalf("BrokerCancels still 0 (stats %+v, err %v)", k.Stats(), k.Err())
		}
		time.Sleep(50 * time.Microsecond)
	}
	r := k.Ready()
	if r == old || isClosed(r) {
		t.Fatalf("BrokerCancels counted while Ready is still closed (the old channel: %v)", r == old)
	}
	_, err = ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true})
	require.NoError(t, err, "QueueDeclare")
	if !closedWithin(r, 10*time.Second) {
		t.Fatalf("Ready not closed within 10 s of the queue's return (stats %+v)", k.Stats())
	}
}

// A connection cut while the Consumer is paused: Resume subscribes on the
// new connection, and that is not counted as a resubscription.
func TestConsumerResumeAfterACutWhilePausedIsNotAResubscription(t *testing.T) {
	needPrivate(t, broker)
	ctx := testCtx(t, opTimeout)
	name := uniqueName(t, "conn-")
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, openChannel(t, ctx, c), q)
	var got idSet
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error { got.add(t, d); return nil }, warren.ConsumeOptions{})
	require.NoError(t, k.Pause(ctx), "Pause")
	pid := mustConnectionPid(t, broker, name)
	ctl(t, broker, "close_connection", pid, "test: cut under a paused consumer")
	eventually(t, ctx, "the reconnect", func() string {
		if p := connectionPid(t, broker, name); p == "" || p == pid {
			return "no new connection yet"
		}
		return ""
	})
	require.NoError(t, k.Resume(ctx), "Resume")
	if s := k.Stats(); s.Resubscriptions != 0 {
		t.Errorf("Resubscriptions after Pause, a cut and Resume: got %d, want 0", s.Resubscriptions)
	}
	fillNumbered(t, ctx, c, q, 10)
	eventually(t, ctx, "the 10 messages after Resume", func() string {
		if n := got.len(); n != 10 {
			return fmt.Sprint(n, " handled")
		}
		return ""
	})
}

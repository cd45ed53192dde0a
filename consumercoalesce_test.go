package warren_test

// ConsumeOptions.CoalesceAcks against the scripted broker, which shows the
// settlements themselves: acks held back while deliveries wait go out as
// multiple acks that cover exactly the handled deliveries, never one a
// handler settled otherwise or one still being handled.

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// ackedTags replays settlements as the broker applies them to the
// outstanding tags 1..n: it returns, per tag, how it was settled, and an
// error for a settlement of a tag not outstanding (the broker's 406).
func ackedTags(got []settlement, n uint64) (map[uint64]string, error) {
	out := make(map[uint64]string)
	for _, s := range got {
		if s.tag < 1 || s.tag > n {
			return out, fmt.Errorf("%v: tag never delivered", s)
		}
		if !s.multiple {
			if _, done := out[s.tag]; done {
				return out, fmt.Errorf("%v: tag already settled", s)
			}
			out[s.tag] = s.kind
			continue
		}
		if _, done := out[s.tag]; done {
			return out, fmt.Errorf("%v: tag already settled", s)
		}
		for tag := uint64(1); tag <= s.tag; tag++ {
			if _, done := out[tag]; !done {
				out[tag] = s.kind
			}
		}
	}
	return out, nil
}

func TestCoalescedAcksCoverExactlyTheHandledDeliveries(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	const n = 100
	release := make(chan struct{})
	handled := make(chan uint64, n)
	k, err := client.StartConsumer(ctx, "q", func(hctx context.Context, d *warren.Delivery) error {
		if d.DeliveryTag == 1 {
			select { // the rest arrive and wait meanwhile
			case <-release:
			case <-hctx.Done():
				return hctx.Err()
			}
		}
		if d.DeliveryTag%10 == 7 {
			// Settled by the handler itself: no ack of warren's may
			// cover it as if it were pending (it is not outstanding).
			if err := d.Nack(hctx, true); err != nil {
				t.Errorf("Nack %d: %v", d.DeliveryTag, err)
			}
		}
		handled <- d.DeliveryTag
		return nil
	}, warren.ConsumeOptions{CoalesceAcks: true, Prefetch: 1000})
	if err != nil {
		t.Fatal(err)
	}
	s := f.nextConsume(t)
	for tag := uint64(1); tag <= n; tag++ {
		f.deliver(t, s, tag, "x")
	}
	waitFor(t, "the deliveries buffered", testBound, func() bool { return len(f.settlements()) == 0 })
	close(release)
	waitFor(t, "every delivery settled", testBound, func() bool {
		m, _ := ackedTags(f.settlements(), n)
		return len(m) == n
	})
	got := f.settlements()
	m, err := ackedTags(got, n)
	if err != nil {
		t.Fatalf("settlements %v: %v", got, err)
	}
	for tag := uint64(1); tag <= n; tag++ {
		want := "ack"
		if tag%10 == 7 {
			want = "nack"
		}
		if m[tag] != want {
			t.Errorf("tag %d: %q, want %q (settlements %v)", tag, m[tag], want, got)
		}
	}
	multiples := 0
	for _, s := range got {
		if s.multiple {
			multiples++
		}
	}
	// 90 acks and 10 nacks; the acks of deliveries that waited while
	// another was handled go out together.
	if multiples == 0 || len(got) >= n {
		t.Errorf("%d settlements (%d multiple) for %d deliveries, want fewer, coalesced: %v", len(got), multiples, n, got)
	}
	// (Counted once sent: the broker may see the frame first.)
	waitFor(t, "Stats counting every settlement", testBound, func() bool {
		st := k.Stats()
		return st.Acked == n-10 && st.Nacked == 10 && st.Delivered == n && st.InFlight == 0
	})
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if st := k.Stats(); st.Acked != n-10 || st.Nacked != 10 {
		t.Errorf("Stats after Cancel: %+v", st)
	}
	if len(handled) != n {
		t.Errorf("%d deliveries handled, want %d", len(handled), n)
	}
}

// A multiple ack never covers a delivery whose handler has not finished:
// the acks held back when a Pause's cancel ends the round go out before
// the worker ends, and the next round's acks stay single while an older
// round's worker still runs a handler.
func TestCoalescedAcksNeverCoverADeliveryStillBeingHandled(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	hang := make(chan struct{})
	inHang := make(chan struct{})
	k, err := client.StartConsumer(ctx, "q", func(hctx context.Context, d *warren.Delivery) error {
		if string(d.Body) == "hang" {
			close(inHang)
			select {
			case <-hang:
			case <-hctx.Done():
				return hctx.Err()
			}
		}
		return nil
	}, warren.ConsumeOptions{CoalesceAcks: true, Prefetch: 1000})
	if err != nil {
		t.Fatal(err)
	}
	s1 := f.nextConsume(t)
	for tag := uint64(1); tag <= 3; tag++ {
		f.deliver(t, s1, tag, "x")
	}
	f.deliver(t, s1, 4, "hang")
	waitDone(t, "the handler of tag 4", inHang, testBound)
	waitFor(t, "tags 1-3 acked", testBound, func() bool {
		m, _ := ackedTags(f.settlements(), 4)
		return len(m) == 3
	})
	// Pause while 4 is being handled, and Resume: the new round's
	// deliveries (5, 6) are handled while 4 still is.
	if err := k.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := f.nextConsume(t)
	f.deliver(t, s2, 5, "x")
	f.deliver(t, s2, 6, "x")
	waitFor(t, "tags 5 and 6 acked", testBound, func() bool {
		m, _ := ackedTags(f.settlements(), 6)
		_, five := m[5]
		_, six := m[6]
		return five && six
	})
	got := f.settlements()
	m, err := ackedTags(got, 6)
	if err != nil {
		t.Fatalf("settlements %v: %v", got, err)
	}
	if _, done := m[4]; done {
		t.Fatalf("tag 4 settled while its handler runs: %v", got)
	}
	close(hang)
	waitFor(t, "tag 4 acked", testBound, func() bool {
		m, _ := ackedTags(f.settlements(), 6)
		return len(m) == 6
	})
	if _, err := ackedTags(f.settlements(), 6); err != nil {
		t.Fatalf("settlements %v: %v", f.settlements(), err)
	}
	waitFor(t, "Stats counting every ack", testBound, func() bool { return k.Stats().Acked == 6 })
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if st := k.Stats(); st.Acked != 6 {
		t.Errorf("Stats after Cancel: %+v", st)
	}
}

func TestCoalesceAcksNeedsOneWorkerAndManualAcks(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	for _, opts := range []warren.ConsumeOptions{
		{CoalesceAcks: true, Workers: 2},
		{CoalesceAcks: true, AutoAck: true},
	} {
		k, err := client.StartConsumer(ctx, "q", nopHandler, opts)
		if !errors.Is(err, warren.ErrInvalidArgument) || k != nil {
			t.Errorf("%+v: got (%v, %v), want (nil, ErrInvalidArgument)", opts, k, err)
		}
	}
	if n := f.opens.Load(); n != 0 {
		t.Errorf("%d channels opened for refused options, want 0", n)
	}
}

// A worker waiting for a delivery is not a handler: when the broker never
// answers the shutdown's basic.cancel, Cancel waits ShutdownTimeout for that
// answer and then closes the channel, without waiting that long again for
// a worker that has nothing to do.
func TestCancelDoesNotWaitForAnIdleWorkerWhenTheBrokerIgnoresBasicCancel(t *testing.T) {
	consumed := make(chan subscribed, 1)
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		for {
			m, err := c.Next()
			if err != nil {
				return
			}
			switch m.ID {
			case fb.ChannelOpen:
				c.OpenOK(m.Channel)
			case fbBasicConsume:
				r := m.Reader()
				r.Short()
				r.ShortStr()
				tag := r.ShortStr()
				c.Send(m.Channel, fbBasicConsumeOK, new(fb.Args).ShortStr(tag))
				consumed <- subscribed{m.Channel, tag}
			case fbBasicCancel:
				// never answered
			default:
				if c.Answer(m) != nil {
					return
				}
			}
		}
	})
	ctx := testCtx(t)
	const bound = 500 * time.Millisecond
	k, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{ShutdownTimeout: bound})
	if err != nil {
		t.Fatal(err)
	}
	<-consumed
	start := time.Now()
	err = k.Cancel(ctx)
	took := time.Since(start)
	if err != nil {
		t.Errorf("Cancel: %v, want nil (no handler was running)", err)
	}
	if !isDone(k.Done()) {
		t.Error("Done not closed after Cancel")
	}
	// One bound for basic.cancel-ok; a second one would be the wait for
	// the idle worker.
	if took < bound || took >= 2*bound {
		t.Errorf("Cancel took %v, want one ShutdownTimeout (%v) and well under two", took, bound)
	}
}

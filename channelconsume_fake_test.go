package warren_test

// Channel.Consume against the scripted broker: deliveries nobody reads when
// the connection drops or the broker cancels, and an abandoned basic.consume.
// startFake checks that no goroutine is left behind.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

var (
	fbBasicConsume   = fb.ID(60, 20)
	fbBasicConsumeOK = fb.ID(60, 21)
	fbBasicCancel    = fb.ID(60, 30)
)

// consumeOK answers the next method, which must be basic.consume, and
// returns the consumer tag.
func consumeOK(c *fb.Conn, ch uint16) string {
	m := c.ExpectOn(int(ch), fbBasicConsume)
	r := m.Reader()
	r.Short() // reserved
	r.ShortStr()
	tag := r.ShortStr()
	c.Send(ch, fbBasicConsumeOK, new(fb.Args).ShortStr(tag))
	return tag
}

// deliver sends basic.deliver of body to the consumer tag on ch.
func deliver(c *fb.Conn, ch uint16, tag string, dtag uint64, body string) {
	c.Send(ch, fb.BasicDeliver, new(fb.Args).ShortStr(tag).LongLong(dtag).Bits(false).ShortStr("").ShortStr("q"))
	c.SendFrame(fb.HeaderFrame(ch, fb.BasicDeliver.Class(), uint64(len(body)), nil))
	c.SendFrame(fb.Frame{Type: fb.FrameBody, Channel: ch, Payload: []byte(body)})
}

// drainStream reads sub's deliveries until the stream closes (bounded) and
// returns them.
func drainStream(t *testing.T, sub *warren.Subscription) []*warren.Delivery {
	t.Helper()
	var got []*warren.Delivery
	deadline := time.After(testBound)
	for {
		select {
		case d, ok := <-sub.Deliveries():
			if !ok {
				return got
			}
			got = append(got, d)
		case <-deadline:
			t.Fatalf("the stream did not close within %v (%d deliveries read)", testBound, len(got))
		}
	}
}

func TestChannelConsumeUnreadDeliveriesEndWithTheConnection(t *testing.T) {
	const n = 100
	readOne := make(chan struct{})
	script := func(c *fb.Conn) {
		ch := openOK(c)
		tag := consumeOK(c, ch)
		for i := 1; i <= n; i++ {
			deliver(c, ch, tag, uint64(i), fmt.Sprint("m", i))
		}
		<-readOne
		c.CloseConnection(320, "CONNECTION_FORCED - broker forced connection closure")
		serve(c)
	}
	client := startFake(t, fb.Config{}, script)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	sub, err := ch.Consume(ctx, "q", warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	var held *warren.Delivery
	select {
	case held = <-sub.Deliveries():
	case <-time.After(testBound):
		t.Fatalf("no delivery within %v", testBound)
	}
	close(readOne)
	waitDone(t, "connection lost", client.Done(), testBound)
	// Nobody reads the other deliveries: the subscription ends all the
	// same (the leak check at the end says its goroutine is gone too).
	waitFor(t, "Err set", testBound, func() bool { return sub.Err() != nil })
	asConnectionError(t, "Err after the connection was closed", sub.Err())
	if d, ok := <-sub.Deliveries(); ok {
		t.Errorf("after the loss: got delivery %q, want the stream closed (deliveries of a lost channel are void)", d.Body)
	}
	if err := held.Ack(ctx); !errors.Is(err, warren.ErrDeliveryVoid) {
		t.Errorf("Ack of a delivery of the lost connection: got %v, want ErrDeliveryVoid", err)
	}
}

func TestChannelConsumeBrokerCancelDeliversWhatWasSentThenEnds(t *testing.T) {
	const n = 50
	script := func(c *fb.Conn) {
		ch := openOK(c)
		tag := consumeOK(c, ch)
		for i := 1; i <= n; i++ {
			deliver(c, ch, tag, uint64(i), fmt.Sprint("m", i))
		}
		c.Send(ch, fbBasicCancel, new(fb.Args).ShortStr(tag).Bits(false))
		serve(c)
	}
	client := startFake(t, fb.Config{}, script)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	sub, err := ch.Consume(ctx, "q", warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	got := drainStream(t, sub)
	if len(got) != n {
		t.Fatalf("deliveries: got %d, want all %d sent before the cancel", len(got), n)
	}
	for i, d := range got {
		if want := fmt.Sprint("m", i+1); string(d.Body) != want || d.DeliveryTag != uint64(i+1) {
			t.Errorf("delivery %d: got %q tag %d, want %q tag %d", i, d.Body, d.DeliveryTag, want, i+1)
		}
	}
	if err := sub.Err(); !errors.Is(err, warren.ErrConsumerCancelled) {
		t.Errorf("Err: got %v, want ErrConsumerCancelled", err)
	}
	// The channel is fine: the deliveries still settle.
	for i, d := range got {
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack %d after the broker's cancel: %v", i, err)
		}
	}
	if err := ch.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestChannelConsumeAbandonedByItsContextPoisonsTheChannel(t *testing.T) {
	consumed := make(chan struct{})
	script := func(c *fb.Conn) {
		ch := openOK(c)
		c.ExpectOn(int(ch), fbBasicConsume) // never answered
		close(consumed)
		serve(c)
	}
	client := startFake(t, fb.Config{}, script)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		<-consumed
		cancel()
	}()
	sub, err := ch.Consume(cctx, "q", warren.ChannelConsumeOptions{Tag: "t1"})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, warren.ErrPoisoned) || sub != nil {
		t.Fatalf("Consume abandoned by its ctx: got %v, %v; want nil and context.Canceled matching ErrPoisoned", sub, err)
	}
	if _, err := ch.Consume(ctx, "q", warren.ChannelConsumeOptions{Tag: "t1"}); !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("Consume after the poisoning: got %v, want ErrPoisoned", err)
	}
}

// A Cancel (Subscription.Cancel or Channel.Cancel) whose ctx had already
// ended sends nothing and changes nothing: the ctx's error, the channel
// not poisoned, the consumer still delivering. A later Cancel with a live
// ctx ends it.
func TestCancelWithAnEndedCtxSendsNothingAndTheConsumerGoesOn(t *testing.T) {
	failed := make(chan struct{}) // both Cancels with the ended ctx have returned
	read := make(chan struct{})   // the test has read the delivery sent after them
	var early atomic.Bool         // a basic.cancel came before the delivery was read
	script := func(c *fb.Conn) {
		ch := openOK(c)
		tag := consumeOK(c, ch)
		<-failed
		deliver(c, ch, tag, 1, "after")
		m, err := c.Next()
		if err == nil && m.ID == fb.BasicAck {
			m, err = c.Next()
		}
		if err != nil || m.ID != fbBasicCancel {
			t.Errorf("fake broker: got %v (%v), want basic.ack then basic.cancel", m, err)
			return
		}
		select {
		case <-read:
		default:
			early.Store(true)
		}
		c.Send(ch, fbBasicCancelOK, new(fb.Args).ShortStr(m.Reader().ShortStr()))
		serve(c)
	}
	client := startFake(t, fb.Config{}, script)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	sub, err := ch.Consume(ctx, "q", warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	ended, cancel := context.WithCancel(ctx)
	cancel()
	for name, call := range map[string]func() error{
		"Subscription.Cancel": func() error { return sub.Cancel(ended) },
		"Channel.Cancel":      func() error { return ch.Cancel(ended, sub.Tag()) },
	} {
		err := call()
		if !errors.Is(err, context.Canceled) || errors.Is(err, warren.ErrPoisoned) {
			t.Errorf("%s with an ended ctx: got %v, want context.Canceled, not ErrPoisoned", name, err)
		}
	}
	close(failed)
	if err := ch.Err(); err != nil {
		t.Errorf("channel Err after the Cancels with an ended ctx: %v, want nil", err)
	}
	select {
	case d, ok := <-sub.Deliveries():
		if !ok {
			t.Fatalf("the stream closed after a Cancel with an ended ctx (Err %v); want it running", sub.Err())
		}
		if string(d.Body) != "after" {
			t.Errorf("delivery: got %q, want %q", d.Body, "after")
		}
		if err := d.Ack(ctx); err != nil {
			t.Errorf("Ack: %v", err)
		}
	case <-time.After(testBound):
		t.Fatalf("no delivery within %v after the Cancels with an ended ctx", testBound)
	}
	close(read)
	if err := sub.Cancel(ctx); err != nil {
		t.Fatalf("Cancel with a live ctx: %v", err)
	}
	if got := drainStream(t, sub); len(got) != 0 {
		t.Errorf("deliveries after the Cancel: got %d, want none", len(got))
	}
	if err := sub.Err(); err != nil {
		t.Errorf("Err after Cancel: %v, want nil", err)
	}
	if early.Load() {
		t.Error("a basic.cancel reached the broker before the live Cancel: a Cancel with an ended ctx sent it")
	}
	if err := ch.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// A Cancel whose ctx ends while it waits for basic.cancel-ok poisons and
// closes the channel: the subscription ends, Err the *PoisonedError.
func TestCancelAbandonedByItsCtxPoisonsTheChannelAndEndsTheSubscription(t *testing.T) {
	sent := make(chan struct{})
	script := func(c *fb.Conn) {
		ch := openOK(c)
		consumeOK(c, ch)
		c.ExpectOn(int(ch), fbBasicCancel) // never answered
		close(sent)
		serve(c)
	}
	client := startFake(t, fb.Config{}, script)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	sub, err := ch.Consume(ctx, "q", warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		<-sent
		cancel()
	}()
	err = sub.Cancel(cctx)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, warren.ErrPoisoned) {
		t.Fatalf("Cancel abandoned by its ctx: got %v, want context.Canceled matching ErrPoisoned", err)
	}
	drainStream(t, sub)
	var pe *warren.PoisonedError
	if !errors.As(sub.Err(), &pe) {
		t.Errorf("Err: got %v, want the *PoisonedError", sub.Err())
	}
	if err := ch.Err(); !errors.Is(err, warren.ErrPoisoned) {
		t.Errorf("channel Err: got %v, want ErrPoisoned", err)
	}
}

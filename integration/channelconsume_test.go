package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// streamWait bounds how long a test waits for a delivery or for a stream
// to close.
const streamWait = 10 * time.Second

// nextDelivery receives one delivery from sub, failing the test if the
// stream closes or nothing comes within streamWait.
func nextDelivery(t *testing.T, sub *warren.Subscription, what string) *warren.Delivery {
	t.Helper()
	select {
	case d, ok := <-sub.Deliveries():
		if !ok {
			t.Fatalf("%s: the stream closed (Err %v), want a delivery", what, sub.Err())
		}
		return d
	case <-time.After(streamWait):
		t.Fatalf("%s: no delivery within %v", what, streamWait)
	}
	return nil
}

// waitStreamEnd waits for sub's stream to close, failing the test on a
// delivery (unless drain) or after streamWait, and returns Err. With drain
// it returns the deliveries received on the way.
func waitStreamEnd(t *testing.T, sub *warren.Subscription, drain bool) ([]*warren.Delivery, error) {
	t.Helper()
	var got []*warren.Delivery
	deadline := time.After(streamWait)
	for {
		select {
		case d, ok := <-sub.Deliveries():
			if !ok {
				return got, sub.Err()
			}
			if !drain {
				t.Fatalf("waiting for the stream to close: got a delivery (%q), want the close", d.Body)
			}
			got = append(got, d)
		case <-deadline:
			t.Fatalf("the stream did not close within %v", streamWait)
		}
	}
}

// publishN publishes bodies prefix0..prefix<n-1> to queue on ch.
func publishN(t *testing.T, ctx context.Context, ch warren.Channel, queue, prefix string, n int) {
	t.Helper()
	for i := range n {
		if err := ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte(prefix + strconv.Itoa(i))}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
}

// waitUnacked waits until queue has no ready message left and unacked
// messages out: the broker has sent them to the consumer.
func waitUnacked(t *testing.T, ctx context.Context, ch warren.Channel, queue string) {
	t.Helper()
	deadline := time.Now().Add(streamWait)
	for {
		qs, err := ch.QueueDeclare(ctx, queue, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatalf("QueueDeclare(passive %q): %v", queue, err)
		}
		if qs.Messages == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %q still has %d ready messages after %v", queue, qs.Messages, streamWait)
		}
		time.Sleep(pollEvery)
	}
}

func TestChannelConsumeDeliversWarrenDeliveriesThatSettleSafely(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}); err != nil {
		t.Fatalf("Qos: %v", err)
	}
	publishN(t, ctx, ch, q, "m", 3)

	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	if sub.Tag() == "" {
		t.Errorf("Tag: got empty, want a generated tag")
	}
	for i := range 3 {
		d := nextDelivery(t, sub, fmt.Sprint("delivery ", i))
		if want := "m" + strconv.Itoa(i); string(d.Body) != want {
			t.Errorf("delivery %d: got body %q, want %q", i, d.Body, want)
		}
		if d.ConsumerTag != sub.Tag() {
			t.Errorf("delivery %d: got consumer tag %q, want %q", i, d.ConsumerTag, sub.Tag())
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack %d: %v", i, err)
		}
		if err := d.Ack(ctx); !errors.Is(err, warren.ErrAlreadySettled) {
			t.Errorf("second Ack %d: got %v, want ErrAlreadySettled", i, err)
		}
	}
	if err := sub.Err(); err != nil {
		t.Errorf("Err while the stream is open: got %v, want nil", err)
	}
	if err := sub.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	if _, err := waitStreamEnd(t, sub, false); err != nil {
		t.Errorf("Err after Cancel: got %v, want nil", err)
	}
	// Acked, the messages are gone; had a second ack reached the broker it
	// would have closed the channel and this declare would fail.
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("QueueDeclare after the stream: %v", err)
	}
	if qs.Messages != 0 || qs.Consumers != 0 {
		t.Errorf("queue after acking all and cancelling: got %d messages, %d consumers, want 0, 0", qs.Messages, qs.Consumers)
	}
	if err := sub.Cancel(ctx); err != nil {
		t.Errorf("second Cancel: got %v, want nil", err)
	}
	if err := ch.Cancel(ctx, sub.Tag()); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("Channel.Cancel of the ended tag: got %v, want ErrInvalidArgument", err)
	}
	if err := ch.Err(); err != nil {
		t.Errorf("channel.Err: got %v, want nil", err)
	}
}

func TestChannelConsumeCancelDeliversWhatWasSentBeforeCancelOk(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 50}); err != nil {
		t.Fatalf("Qos: %v", err)
	}
	const n = 5
	publishN(t, ctx, ch, q, "m", n)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: "tagged-" + randHex(4)})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	// Every message is out to the consumer before the cancel, none read.
	waitUnacked(t, ctx, ch, q)
	if err := ch.Cancel(ctx, sub.Tag()); err != nil {
		t.Fatalf("Channel.Cancel: %v", err)
	}
	ds, err := waitStreamEnd(t, sub, true)
	if err != nil {
		t.Errorf("Err after Channel.Cancel: got %v, want nil", err)
	}
	if len(ds) != n {
		t.Fatalf("deliveries after the cancel: got %d, want %d", len(ds), n)
	}
	for i, d := range ds {
		if err := d.Ack(ctx); err != nil {
			t.Errorf("Ack %d after the cancel: got %v, want nil", i, err)
		}
	}
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	if qs.Messages != 0 {
		t.Errorf("queue after acking the deliveries: got %d messages, want 0", qs.Messages)
	}
}

func TestChannelConsumeAndPublishOnOneChannelDirectReplyTo(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	server := openChannel(t, ctx, c)
	client := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, server, q)

	requests, err := server.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("server Consume: %v", err)
	}
	replies, err := client.Consume(ctx, "amq.rabbitmq.reply-to", warren.ChannelConsumeOptions{AutoAck: true})
	if err != nil {
		t.Fatalf("client Consume(amq.rabbitmq.reply-to): %v", err)
	}
	for i := range 3 {
		corr := "req-" + strconv.Itoa(i)
		if err := client.Publish(ctx, "", q, warren.Publishing{
			ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: corr, Body: []byte("ping " + corr),
		}); err != nil {
			t.Fatalf("request %d: Publish: %v", i, err)
		}
		req := nextDelivery(t, requests, "request")
		if req.CorrelationId != corr || req.ReplyTo == "" || req.ReplyTo == "amq.rabbitmq.reply-to" {
			t.Fatalf("request %d: got correlation id %q, reply-to %q; want %q and the broker's generated address", i, req.CorrelationId, req.ReplyTo, corr)
		}
		if err := server.Publish(ctx, "", req.ReplyTo, warren.Publishing{
			CorrelationId: req.CorrelationId, Body: []byte("pong " + corr),
		}); err != nil {
			t.Fatalf("request %d: reply Publish: %v", i, err)
		}
		if err := req.Ack(ctx); err != nil {
			t.Fatalf("request %d: Ack: %v", i, err)
		}
		rep := nextDelivery(t, replies, "reply")
		if rep.CorrelationId != corr || string(rep.Body) != "pong "+corr {
			t.Errorf("reply %d: got correlation id %q body %q, want %q and %q", i, rep.CorrelationId, rep.Body, corr, "pong "+corr)
		}
		if err := rep.Ack(ctx); !errors.Is(err, warren.ErrAlreadySettled) {
			t.Errorf("reply %d: Ack of an AutoAck delivery: got %v, want ErrAlreadySettled", i, err)
		}
	}
	for _, s := range []*warren.Subscription{requests, replies} {
		if err := s.Cancel(ctx); err != nil {
			t.Errorf("Cancel %s: %v", s.Queue(), err)
		}
		if _, err := waitStreamEnd(t, s, false); err != nil {
			t.Errorf("Err after Cancel of %s: got %v, want nil", s.Queue(), err)
		}
	}
}

func TestChannelConsumeEndsWithErrConsumerCancelledWhenTheQueueIsDeleted(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	other := openChannel(t, ctx, c)
	if _, err := other.QueueDelete(ctx, q, warren.QueueDeleteOptions{}); err != nil {
		t.Fatalf("QueueDelete: %v", err)
	}
	_, err = waitStreamEnd(t, sub, false)
	if !errors.Is(err, warren.ErrConsumerCancelled) {
		t.Errorf("Err after the queue was deleted: got %v, want ErrConsumerCancelled", err)
	}
	if err := ch.Err(); err != nil {
		t.Errorf("channel.Err after the broker's cancel: got %v, want nil (only the consumer ended)", err)
	}
	if err := sub.Cancel(ctx); err != nil {
		t.Errorf("Cancel after the broker's cancel: got %v, want nil", err)
	}
}

func TestChannelConsumeEndsWithTheChannelErrorWhenTheBrokerClosesTheChannel(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	publishN(t, ctx, ch, q, "m", 1)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	held := nextDelivery(t, sub, "delivery")

	// A 406 from another operation on the channel closes it.
	if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Exclusive: true}); err == nil {
		t.Fatalf("redeclaring the queue exclusive: got nil, want a channel error")
	}
	_, err = waitStreamEnd(t, sub, false)
	var ce *warren.ChannelError
	if !errors.As(err, &ce) {
		t.Fatalf("Err after the broker closed the channel: got %v (%T), want a *ChannelError", err, err)
	}
	if chErr := ch.Err(); !errors.As(chErr, new(*warren.ChannelError)) {
		t.Errorf("channel.Err: got %v, want the *ChannelError", chErr)
	}
	if err := held.Ack(ctx); !errors.Is(err, warren.ErrDeliveryVoid) {
		t.Errorf("Ack of a delivery of the closed channel: got %v, want ErrDeliveryVoid", err)
	}
	// The message went back to the queue.
	if n := queueDepth(t, b, q); n != 1 {
		t.Errorf("queue depth after the channel closed: got %d, want 1", n)
	}
}

func TestChannelConsumeEndsWhenTheClientCloses(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	publishN(t, ctx, ch, q, "m", 3)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	waitUnacked(t, ctx, ch, q) // deliveries wait, unread, inside warren
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Client.Close: %v", err)
	}
	_, err = waitStreamEnd(t, sub, true)
	if !errors.Is(err, warren.ErrClientClosed) && !errors.As(err, new(*warren.ConnectionError)) {
		t.Errorf("Err after Client.Close: got %v, want the connection's error", err)
	}
}

func TestChannelConsumeRefusesADuplicateTagBeforeSending(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	tag := "dup-" + randHex(4)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: tag})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: tag}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Fatalf("second Consume with tag %q: got %v, want ErrInvalidArgument", tag, err)
	}
	// RabbitMQ would have closed the connection (530) for the reuse.
	if err := c.Err(); err != nil {
		t.Errorf("Client.Err: got %v, want nil", err)
	}
	if err := ch.Cancel(ctx, "no-such-tag"); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("Channel.Cancel(unknown tag): got %v, want ErrInvalidArgument", err)
	}
	publishN(t, ctx, ch, q, "m", 1)
	d := nextDelivery(t, sub, "delivery to the first consumer")
	if err := d.Ack(ctx); err != nil {
		t.Errorf("Ack: %v", err)
	}
	if err := sub.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	if _, err := waitStreamEnd(t, sub, false); err != nil {
		t.Errorf("Err after Cancel: got %v, want nil", err)
	}
	// Once ended, the tag is free again.
	sub2, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: tag})
	if err != nil {
		t.Fatalf("Consume with the freed tag: %v", err)
	}
	if err := sub2.Cancel(ctx); err != nil {
		t.Errorf("Cancel: %v", err)
	}
}

func TestPoolDiscardsAChannelReleasedWithALiveConsumer(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	setup := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, setup, q)
	publishN(t, ctx, setup, q, "m", 2)
	p, err := c.NewPool(ctx, warren.PoolOptions{Size: 1})
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })

	ch, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 1}); err != nil {
		t.Fatalf("Qos: %v", err)
	}
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	held := nextDelivery(t, sub, "delivery")
	first := ch.ID()
	p.Release(ch)

	_, err = waitStreamEnd(t, sub, true)
	if !errors.Is(err, warren.ErrChannelClosed) {
		t.Errorf("Err after Release: got %v, want ErrChannelClosed", err)
	}
	if got := p.Stats().Discarded.Consuming; got != 1 {
		t.Errorf("Discarded.Consuming: got %d, want 1", got)
	}
	if err := held.Ack(ctx); !errors.Is(err, warren.ErrReleased) {
		t.Errorf("Ack after Release: got %v, want ErrReleased", err)
	}
	ch2, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("second Acquire: %v", err)
	}
	if ch2.ID() == first {
		t.Errorf("second Acquire: got channel %d again, want another one", first)
	}
	// The broker requeued the unacked message: both are there to get.
	for i := range 2 {
		d, ok, err := ch2.Get(ctx, q, warren.GetOptions{AutoAck: true})
		if err != nil || !ok {
			t.Fatalf("Get %d after the discard: got ok %v, err %v; want a message", i, ok, err)
		}
		if i == 0 && !d.Redelivered {
			t.Errorf("Get 0: got Redelivered false, want true for the requeued message")
		}
	}
	p.Release(ch2)
	if got := p.Stats().Opened; got != 2 {
		t.Errorf("Opened: got %d, want 2", got)
	}
}

func TestPoolReusesAChannelWhoseConsumerWasCancelledAndDrained(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	setup := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, setup, q)
	publishN(t, ctx, setup, q, "m", 1)
	p, err := c.NewPool(ctx, warren.PoolOptions{Size: 1})
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })

	ch, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	if err := nextDelivery(t, sub, "delivery").Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := sub.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	if _, err := waitStreamEnd(t, sub, false); err != nil {
		t.Fatalf("Err after Cancel: %v", err)
	}
	first := ch.ID()
	p.Release(ch)
	ch2, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("second Acquire: %v", err)
	}
	defer p.Release(ch2)
	if ch2.ID() != first {
		t.Errorf("second Acquire: got channel %d, want %d reused", ch2.ID(), first)
	}
	if s := p.Stats().Discarded; s != (warren.DiscardStats{}) {
		t.Errorf("Discarded: got %+v, want none", s)
	}
}

// streamQueue declares a stream queue, deleted when the test ends, and
// returns its name.
func streamQueue(t *testing.T, ctx context.Context, b *brokertest.Broker, c *warren.Client) string {
	t.Helper()
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "")
	if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Type: warren.QueueStream}); err != nil {
		t.Fatalf("QueueDeclare(stream): %v", err)
	}
	deleteQueueLater(t, b, q)
	return q
}

// publishConfirmed publishes bodies prefix0..prefix<n-1> to queue on a
// confirm channel, each confirmed.
func publishConfirmed(t *testing.T, ctx context.Context, ch warren.Channel, queue, prefix string, n int) {
	t.Helper()
	for i := range n {
		m := warren.Message{Key: queue, Publishing: warren.Publishing{Body: []byte(prefix + strconv.Itoa(i))}}
		if err := ch.PublishMessage(ctx, m); err != nil {
			t.Fatalf("PublishMessage %d: %v", i, err)
		}
	}
}

func TestChannelConsumeStreamOffsets(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := streamQueue(t, ctx, b, c)
	pub := confirmChannel(t, ctx, c)
	publishConfirmed(t, ctx, pub, q, "a", 5)
	// StreamSince has whole seconds: the first batch is over a second old
	// at since, the second written after it.
	time.Sleep(1500 * time.Millisecond)
	since := time.Now()
	time.Sleep(100 * time.Millisecond)
	publishConfirmed(t, ctx, pub, q, "b", 2)

	for _, tc := range []struct {
		name   string
		offset warren.StreamOffset
		want   string
	}{
		{"first", warren.StreamFirst(), "a0"},
		{"offset 3", warren.StreamAt(3), "a3"},
		{"since", warren.StreamSince(since), "b0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := openChannel(t, ctx, c)
			if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}); err != nil {
				t.Fatalf("Qos: %v", err)
			}
			sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: tc.offset})
			if err != nil {
				t.Fatalf("Consume(%v): %v", tc.offset, err)
			}
			d := nextDelivery(t, sub, "first delivery")
			if string(d.Body) != tc.want {
				t.Errorf("first delivery from %v: got %q, want %q", tc.offset, d.Body, tc.want)
			}
			if err := d.Ack(ctx); err != nil {
				t.Errorf("Ack: %v", err)
			}
			if err := sub.Cancel(ctx); err != nil {
				t.Fatalf("Cancel: %v", err)
			}
			if _, err := waitStreamEnd(t, sub, true); err != nil {
				t.Errorf("Err after Cancel: got %v, want nil", err)
			}
		})
	}
}

func TestChannelConsumeRefusesAStreamConsumerWithoutAckOrPrefetchBeforeSending(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := streamQueue(t, ctx, b, c)
	ch := openChannel(t, ctx, c)

	// No Qos on the channel yet.
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst()}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("stream consumer without a prefetch: got %v, want ErrInvalidArgument", err)
	}
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Args: warren.Table{"x-stream-offset": "first"}}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("x-stream-offset in Args without a prefetch: got %v, want ErrInvalidArgument", err)
	}
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}); err != nil {
		t.Fatalf("Qos: %v", err)
	}
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst(), AutoAck: true}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("stream consumer with AutoAck: got %v, want ErrInvalidArgument", err)
	}
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamAt(-1)}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("negative stream offset: got %v, want ErrInvalidArgument", err)
	}
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 0}); err != nil {
		t.Fatalf("Qos 0: %v", err)
	}
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst()}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("stream consumer after Qos 0: got %v, want ErrInvalidArgument", err)
	}
	// Nothing reached the broker: the channel is open and consumes fine.
	if err := ch.Err(); err != nil {
		t.Fatalf("channel.Err after the refusals: got %v, want nil", err)
	}
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 5}); err != nil {
		t.Fatalf("Qos: %v", err)
	}
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst()})
	if err != nil {
		t.Fatalf("Consume after the refusals: %v", err)
	}
	if err := sub.Cancel(ctx); err != nil {
		t.Errorf("Cancel: %v", err)
	}
	if _, err := waitStreamEnd(t, sub, true); err != nil {
		t.Errorf("Err after Cancel: got %v, want nil", err)
	}
}

func TestChannelConsumeCancelUnderLoadLosesNothing(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	const n, cancelAfter = 500, 100
	publishN(t, ctx, ch, q, "m", n)
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 20}); err != nil {
		t.Fatalf("Qos: %v", err)
	}
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	acked := 0
	seen := make(map[string]bool)
loop:
	for {
		var d *warren.Delivery
		select {
		case got, ok := <-sub.Deliveries():
			if !ok {
				break loop
			}
			d = got
		case <-ctx.Done():
			t.Fatalf("stream still open when the test's time ran out (%d acked)", acked)
		}
		if seen[string(d.Body)] {
			t.Errorf("delivery %q: got it twice", d.Body)
		}
		seen[string(d.Body)] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack %q: %v", d.Body, err)
		}
		acked++
		if acked == cancelAfter {
			// The broker keeps pushing (prefetch 20) until its cancel-ok:
			// those still arrive and are acked here.
			if err := sub.Cancel(ctx); err != nil {
				t.Fatalf("Cancel: %v", err)
			}
		}
	}
	if err := sub.Err(); err != nil {
		t.Errorf("Err after Cancel: got %v, want nil", err)
	}
	if acked < cancelAfter || acked > cancelAfter+20 {
		t.Errorf("acked: got %d, want %d plus at most the prefetch (20)", acked, cancelAfter)
	}
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	if acked+qs.Messages != n {
		t.Errorf("acked %d + left in the queue %d: got %d, want %d", acked, qs.Messages, acked+qs.Messages, n)
	}
}

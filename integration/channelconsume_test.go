package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
		require.NoError(t, err, "QueueDeclare(passive %q)", queue)
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
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}), "Qos")
	publishN(t, ctx, ch, q, "m", 3)

	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	require.NoError(t, err, "Consume")
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
	assert.NoError(t, sub.Err(), "Err while the stream is open")
	require.NoError(t, sub.Cancel(ctx), "Cancel")
	if _, err := waitStreamEnd(t, sub, false); err != nil {
		t.Errorf("Err after Cancel: got %v, want nil", err)
	}
	// Acked, the messages are gone; had a second ack reached the broker it
	// would have closed the channel and this declare would fail.
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	require.NoError(t, err, "QueueDeclare after the stream")
	if qs.Messages != 0 || qs.Consumers != 0 {
		t.Errorf("queue after acking all and cancelling: got %d messages, %d consumers, want 0, 0", qs.Messages, qs.Consumers)
	}
	assert.NoError(t, sub.Cancel(ctx), "second Cancel")
	assert.ErrorIs(t, ch.Cancel(ctx, sub.Tag()), warren.ErrInvalidArgument, "Channel.Cancel of the ended tag")
	assert.NoError(t, ch.Err(), "channel.Err")
}

func TestChannelConsumeCancelDeliversWhatWasSentBeforeCancelOk(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 50}), "Qos")
	const n = 5
	publishN(t, ctx, ch, q, "m", n)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: "tagged-" + randHex(4)})
	require.NoError(t, err, "Consume")
	// Every message is out to the consumer before the cancel, none read.
	waitUnacked(t, ctx, ch, q)
	require.NoError(t, ch.Cancel(ctx, sub.Tag()), "Channel.Cancel")
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
	require.NoError(t, err, "QueueDeclare")
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
	require.NoError(t, err, "server Consume")
	replies, err := client.Consume(ctx, "amq.rabbitmq.reply-to", warren.ChannelConsumeOptions{AutoAck: true})
	require.NoError(t, err, "client Consume(amq.rabbitmq.reply-to)")
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
	require.NoError(t, err, "Consume")
	other := openChannel(t, ctx, c)
	if _, err := other.QueueDelete(ctx, q, warren.QueueDeleteOptions{}); err != nil {
		t.Fatalf("QueueDelete: %v", err)
	}
	_, err = waitStreamEnd(t, sub, false)
	if !errors.Is(err, warren.ErrConsumerCancelled) {
		t.Errorf("Err after the queue was deleted: got %v, want ErrConsumerCancelled", err)
	}
	assert.NoError(t, ch.Err(), "channel.Err after the broker's cancel (only the consumer ended)")
	assert.NoError(t, sub.Cancel(ctx), "Cancel after the broker's cancel")
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
	require.NoError(t, err, "Consume")
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
	assert.ErrorIs(t, held.Ack(ctx), warren.ErrDeliveryVoid, "Ack of a delivery of the closed channel")
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
	require.NoError(t, err, "Consume")
	waitUnacked(t, ctx, ch, q) // deliveries wait, unread, inside warren
	require.NoError(t, c.Close(ctx), "Client.Close")
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
	require.NoError(t, err, "Consume")
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: tag}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Fatalf("second Consume with tag %q: got %v, want ErrInvalidArgument", tag, err)
	}
	// RabbitMQ would have closed the connection (530) for the reuse.
	assert.NoError(t, c.Err(), "Client.Err")
	assert.ErrorIs(t, ch.Cancel(ctx, "no-such-tag"), warren.ErrInvalidArgument, "Channel.Cancel(unknown tag)")
	publishN(t, ctx, ch, q, "m", 1)
	d := nextDelivery(t, sub, "delivery to the first consumer")
	assert.NoError(t, d.Ack(ctx), "Ack")
	require.NoError(t, sub.Cancel(ctx), "Cancel")
	if _, err := waitStreamEnd(t, sub, false); err != nil {
		t.Errorf("Err after Cancel: got %v, want nil", err)
	}
	// Once ended, the tag is free again.
	sub2, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{Tag: tag})
	require.NoError(t, err, "Consume with the freed tag")
	assert.NoError(t, sub2.Cancel(ctx), "Cancel")
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
	require.NoError(t, err, "NewPool")
	t.Cleanup(func() { _ = p.Close(context.Background()) })

	ch, err := p.Acquire(ctx)
	require.NoError(t, err, "Acquire")
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 1}), "Qos")
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	require.NoError(t, err, "Consume")
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
	assert.ErrorIs(t, held.Ack(ctx), warren.ErrReleased, "Ack after Release")
	ch2, err := p.Acquire(ctx)
	require.NoError(t, err, "second Acquire")
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
	require.NoError(t, err, "NewPool")
	t.Cleanup(func() { _ = p.Close(context.Background()) })

	ch, err := p.Acquire(ctx)
	require.NoError(t, err, "Acquire")
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	require.NoError(t, err, "Consume")
	require.NoError(t, nextDelivery(t, sub, "delivery").Ack(ctx), "Ack")
	require.NoError(t, sub.Cancel(ctx), "Cancel")
	if _, err := waitStreamEnd(t, sub, false); err != nil {
		t.Fatalf("Err after Cancel: %v", err)
	}
	first := ch.ID()
	p.Release(ch)
	ch2, err := p.Acquire(ctx)
	require.NoError(t, err, "second Acquire")
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
			require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}), "Qos")
			sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: tc.offset})
			require.NoError(t, err, "Consume(%v)", tc.offset)
			d := nextDelivery(t, sub, "first delivery")
			if string(d.Body) != tc.want {
				t.Errorf("first delivery from %v: got %q, want %q", tc.offset, d.Body, tc.want)
			}
			assert.NoError(t, d.Ack(ctx), "Ack")
			require.NoError(t, sub.Cancel(ctx), "Cancel")
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
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}), "Qos")
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst(), AutoAck: true}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("stream consumer with AutoAck: got %v, want ErrInvalidArgument", err)
	}
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamAt(-1)}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("negative stream offset: got %v, want ErrInvalidArgument", err)
	}
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 0}), "Qos 0")
	if _, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst()}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("stream consumer after Qos 0: got %v, want ErrInvalidArgument", err)
	}
	// Nothing reached the broker: the channel is open and consumes fine.
	require.NoError(t, ch.Err(), "channel.Err after the refusals")
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 5}), "Qos")
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{StreamOffset: warren.StreamFirst()})
	require.NoError(t, err, "Consume after the refusals")
	assert.NoError(t, sub.Cancel(ctx), "Cancel")
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
	require.NoError(t, ch.Qos(ctx, warren.QosOptions{PrefetchCount: 20}), "Qos")
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	require.NoError(t, err, "Consume")
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
			require.NoError(t, sub.Cancel(ctx), "Cancel")
		}
	}
	assert.NoError(t, sub.Err(), "Err after Cancel")
	if acked < cancelAfter || acked > cancelAfter+20 {
		t.Errorf("acked: got %d, want %d plus at most the prefetch (20)", acked, cancelAfter)
	}
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	require.NoError(t, err, "QueueDeclare")
	if acked+qs.Messages != n {
		t.Errorf("acked %d + left in the queue %d: got %d, want %d", acked, qs.Messages, acked+qs.Messages, n)
	}
}

// Cancel with a ctx that had already ended sends nothing and changes
// nothing: the consumer goes on delivering; a later Cancel ends it.
func TestChannelConsumeCancelWithAnEndedCtxLeavesTheConsumerRunning(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)
	sub, err := ch.Consume(ctx, q, warren.ChannelConsumeOptions{})
	require.NoError(t, err, "Consume")
	ended, cancel := context.WithCancel(ctx)
	cancel()
	err = sub.Cancel(ended)
	require.ErrorIs(t, err, context.Canceled, "Subscription.Cancel with an ended ctx")
	assert.NotErrorIs(t, err, warren.ErrPoisoned, "Subscription.Cancel with an ended ctx")
	err = ch.Cancel(ended, sub.Tag())
	require.ErrorIs(t, err, context.Canceled, "Channel.Cancel with an ended ctx")
	assert.NotErrorIs(t, err, warren.ErrPoisoned, "Channel.Cancel with an ended ctx")
	require.NoError(t, ch.Err(), "channel Err after the Cancels with an ended ctx")
	publishN(t, ctx, ch, q, "m", 1)
	select {
	case d, ok := <-sub.Deliveries():
		require.True(t, ok, "the stream closed after a Cancel with an ended ctx (Err %v)", sub.Err())
		require.NoError(t, d.Ack(ctx), "Ack")
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10 s after the Cancels with an ended ctx")
	}
	require.NoError(t, sub.Cancel(ctx), "Cancel with a live ctx")
	ds, err := waitStreamEnd(t, sub, true)
	assert.NoError(t, err, "Err after Cancel")
	assert.Empty(t, ds, "deliveries after Cancel")
}

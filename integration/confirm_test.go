package integration

// Publisher confirms against a real broker (issue 4): every outcome a
// Confirmation can have (ack, nack, unroutable, outcome unknown), the
// Publisher from many goroutines, batches, and the mode refusals.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/internal/faultproxy"
)

// --- helpers ---------------------------------------------------------------

// confirmChannel opens a channel and puts it in confirm mode.
func confirmChannel(t *testing.T, ctx context.Context, c *warren.Client) warren.Channel {
	t.Helper()
	ch := openChannel(t, ctx, c)
	if err := ch.SetMode(ctx, warren.ModeConfirm); err != nil {
		t.Fatalf("SetMode(ModeConfirm): %v", err)
	}
	return ch
}

// queueDepth returns how many ready messages queue holds, asked over a
// connection of its own.
func queueDepth(t *testing.T, b *brokertest.Broker, queue string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := warren.Dial(ctx, b.URL)
	if err != nil {
		t.Fatalf("queueDepth: Dial: %v", err)
	}
	defer c.Close(ctx)
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatalf("queueDepth: Channel: %v", err)
	}
	q, err := ch.QueueDeclare(ctx, queue, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("queueDepth(%q): %v", queue, err)
	}
	return q.Messages
}

// waitDepth waits until queue holds want ready messages (the broker's
// count can lag its confirms by a moment).
func waitDepth(t *testing.T, ctx context.Context, b *brokertest.Broker, queue string, want int) {
	t.Helper()
	eventually(t, ctx, fmt.Sprintf("queue %q holds %d messages", queue, want), func() string {
		if got := queueDepth(t, b, queue); got != want {
			return fmt.Sprintf("it holds %d", got)
		}
		return ""
	})
}

// waitAll waits for every confirmation, each bounded by ctx, and fails the
// test if one does not resolve in time.
func waitAll(t *testing.T, ctx context.Context, confs []*warren.Confirmation) []error {
	t.Helper()
	errs := make([]error, len(confs))
	for i, c := range confs {
		select {
		case <-c.Done():
		case <-ctx.Done():
			t.Fatalf("confirmation %d (tag %d) did not resolve: %v", i, c.DeliveryTag(), ctx.Err())
		}
		errs[i] = c.Wait(ctx)
	}
	return errs
}

// suspendQueue suspends the Erlang process of a classic queue on the private
// node: messages routed to it are not enqueued, so the broker cannot confirm
// them, until resumeQueue. The test's cleanup resumes it.
func suspendQueue(t *testing.T, b *brokertest.Broker, queue string) {
	t.Helper()
	ctl(t, b, "eval", queueEval(queue, "sys:suspend"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
		defer cancel()
		_, _ = b.Ctl(ctx, "eval", queueEval(queue, "sys:resume"))
	})
}

func resumeQueue(t *testing.T, b *brokertest.Broker, queue string) {
	t.Helper()
	ctl(t, b, "eval", queueEval(queue, "sys:resume"))
}

func queueEval(queue, fn string) string {
	return fmt.Sprintf(`{ok,Q}=rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>,queue,<<"%s">>)), %s(amqqueue:get_pid(Q)).`, queue, fn)
}

// wantUnknown checks that err is an outcome-unknown error whose cause
// matches cause.
func wantUnknown(t *testing.T, what string, err, cause error) {
	t.Helper()
	if !errors.Is(err, warren.ErrOutcomeUnknown) {
		t.Fatalf("%s: got %v, want an error matching ErrOutcomeUnknown", what, err)
	}
	var ou *warren.OutcomeUnknownError
	if !errors.As(err, &ou) {
		t.Fatalf("%s: got %T, want *warren.OutcomeUnknownError", what, err)
	}
	if !errors.Is(err, cause) {
		t.Errorf("%s: got %v, want its cause to match %v", what, err, cause)
	}
	if errors.Is(err, warren.ErrNacked) || errors.Is(err, warren.ErrUnroutable) {
		t.Errorf("%s: an unknown outcome also matches nack or unroutable: %v", what, err)
	}
}

var body128 = []byte(strings.Repeat("m", 128))

// --- ack -------------------------------------------------------------------

func TestConfirmAckPathTenThousandDeferredPublishesAllAckedAndAllInTheQueue(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)

	const n = 10000
	confs := make([]*warren.Confirmation, 0, n)
	for i := 0; i < n; i++ {
		cf, err := ch.PublishDeferred(ctx, warren.Message{Key: q, Publishing: warren.Publishing{Body: body128}})
		if err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
		if got, want := cf.DeliveryTag(), uint64(i+1); got != want {
			t.Fatalf("PublishDeferred %d: DeliveryTag %d, want %d", i, got, want)
		}
		if cf.ChannelID() != ch.ID() {
			t.Fatalf("ChannelID %d, want %d", cf.ChannelID(), ch.ID())
		}
		confs = append(confs, cf)
	}
	for i, err := range waitAll(t, ctx, confs) {
		if err != nil {
			t.Fatalf("confirmation %d: got %v, want nil (ack)", i, err)
		}
	}
	if p := ch.PendingConfirms(); p != 0 {
		t.Errorf("PendingConfirms after all acks: %d, want 0", p)
	}
	waitDepth(t, ctx, b, q, n)
	if s := c.Stats(); s.StrayConfirms != 0 || s.StrayReturns != 0 {
		t.Errorf("Stats: %d stray confirms, %d stray returns; want 0", s.StrayConfirms, s.StrayReturns)
	}
}

func TestConfirmPublishOnAConfirmChannelReturnsTheAck(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	for i := 0; i < 20; i++ {
		if err := ch.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		// Publish on a confirm channel waited for the ack: nothing is
		// pending once it returns.
		if p := ch.PendingConfirms(); p != 0 {
			t.Fatalf("PendingConfirms after Publish returned: %d, want 0", p)
		}
	}
	waitDepth(t, ctx, b, q, 20)
}

// Acks for messages to different queues come back out of order (a durable
// queue confirms persistent messages after fsync, a transient one at once)
// and RabbitMQ acks many at a time with multiple=true: every confirmation
// still resolves exactly once, to its own ack.
func TestConfirmOutOfOrderAndMultipleAcksResolveEachConfirmationOnce(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	ch := confirmChannel(t, ctx, c)
	slow, fast := uniqueName(t, "slow-"), uniqueName(t, "fast-")
	if _, err := ch.QueueDeclare(ctx, slow, warren.QueueOptions{Durable: true}); err != nil {
		t.Fatal(err)
	}
	deleteQueueLater(t, b, slow)
	declareQueue(t, ctx, b, ch, fast)

	const n = 4000
	confs := make([]*warren.Confirmation, n)
	for i := range confs {
		m := warren.Message{Key: fast, Publishing: warren.Publishing{Body: body128}}
		if i%2 == 0 {
			m = warren.Message{Key: slow, Publishing: warren.Publishing{Body: body128, DeliveryMode: warren.Persistent}}
		}
		var err error
		if confs[i], err = ch.PublishDeferred(ctx, m); err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
	}
	for i, err := range waitAll(t, ctx, confs) {
		if err != nil {
			t.Fatalf("confirmation %d: %v", i, err)
		}
	}
	waitDepth(t, ctx, b, slow, n/2)
	waitDepth(t, ctx, b, fast, n/2)
}

// --- nack ------------------------------------------------------------------

func TestConfirmNackPathQueueWithRejectPublishOverflow(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "full-")
	if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Args: warren.Table{
		"x-max-length": int32(5), "x-overflow": "reject-publish"}}); err != nil {
		t.Fatal(err)
	}
	deleteQueueLater(t, b, q)

	confs := make([]*warren.Confirmation, 20)
	for i := range confs {
		var err error
		if confs[i], err = ch.PublishDeferred(ctx, warren.Message{Key: q, Publishing: warren.Publishing{Body: body128}}); err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
	}
	for i, err := range waitAll(t, ctx, confs) {
		if i < 5 {
			if err != nil {
				t.Errorf("confirmation %d (fits in the queue): got %v, want nil", i, err)
			}
			continue
		}
		if !errors.Is(err, warren.ErrNacked) {
			t.Fatalf("confirmation %d (queue full): got %v, want ErrNacked", i, err)
		}
		var ne *warren.NackedError
		if !errors.As(err, &ne) || ne.DeliveryTag != uint64(i+1) || ne.ChannelID != ch.ID() {
			t.Errorf("confirmation %d: got %#v, want *NackedError{ChannelID: %d, DeliveryTag: %d}", i, err, ch.ID(), i+1)
		}
		if errors.Is(err, warren.ErrOutcomeUnknown) {
			t.Errorf("confirmation %d: a nack also matches ErrOutcomeUnknown", i)
		}
	}
	// A nack closes nothing.
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: body128}); !errors.Is(err, warren.ErrNacked) {
		t.Errorf("Publish to the full queue: got %v, want ErrNacked", err)
	}
	if err := ch.Err(); err != nil {
		t.Errorf("channel after nacks: %v, want usable", err)
	}
	waitDepth(t, ctx, b, q, 5)
}

// --- unroutable ------------------------------------------------------------

// Mandatory publishes alternate between a routable key and one no queue is
// bound for, all in flight at once: each returned message is matched to its
// own publish (basic.return carries no delivery tag and precedes the ack).
func TestConfirmUnroutableMandatoryPublishesAreMatchedToTheirOwnConfirmation(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	nowhere := uniqueName(t, "no-binding-")

	headers := warren.Table{"app": "x"}
	const n = 200
	confs := make([]*warren.Confirmation, n)
	for i := range confs {
		key := q
		if i%3 == 1 {
			key = nowhere
		}
		var err error
		confs[i], err = ch.PublishDeferred(ctx, warren.Message{Key: key, Mandatory: true,
			Publishing: warren.Publishing{Body: []byte(fmt.Sprint("msg-", i)), Headers: headers}})
		if err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
	}
	routed := 0
	for i, err := range waitAll(t, ctx, confs) {
		if i%3 != 1 {
			if err != nil {
				t.Errorf("confirmation %d (routable): got %v, want nil", i, err)
			}
			routed++
			continue
		}
		var ue *warren.UnroutableError
		if !errors.As(err, &ue) {
			t.Fatalf("confirmation %d (no binding): got %v, want *UnroutableError", i, err)
		}
		if !errors.Is(err, warren.ErrUnroutable) || !errors.Is(err, warren.ErrNoRoute) {
			t.Errorf("confirmation %d: errors.Is ErrUnroutable %v, ErrNoRoute %v; want both", i,
				errors.Is(err, warren.ErrUnroutable), errors.Is(err, warren.ErrNoRoute))
		}
		if ue.Code != warren.CodeNoRoute || ue.DeliveryTag != uint64(i+1) || ue.ChannelID != ch.ID() {
			t.Errorf("confirmation %d: Code %d tag %d channel %d; want 312, %d, %d", i, ue.Code, ue.DeliveryTag, ue.ChannelID, i+1, ch.ID())
		}
		if got, want := string(ue.Return.Body), fmt.Sprint("msg-", i); got != want {
			t.Errorf("confirmation %d: returned body %q, want %q", i, got, want)
		}
		if ue.Return.RoutingKey != nowhere {
			t.Errorf("confirmation %d: returned routing key %q, want %q", i, ue.Return.RoutingKey, nowhere)
		}
		if _, ok := ue.Return.Headers[warren.StampHeader]; ok {
			t.Errorf("confirmation %d: the Return still carries warren's stamp header", i)
		}
		if ue.Return.Headers["app"] != "x" {
			t.Errorf("confirmation %d: returned headers %v lost the caller's", i, ue.Return.Headers)
		}
	}
	if len(headers) != 1 {
		t.Errorf("the caller's Headers table was modified: %v", headers)
	}
	waitDepth(t, ctx, b, q, routed)
	if s := c.Stats(); s.StrayReturns != 0 {
		t.Errorf("Stats.StrayReturns = %d, want 0", s.StrayReturns)
	}
}

// --- outcome unknown -------------------------------------------------------

// The broker closes the channel (404 on a passive declare) while publishes
// to a suspended queue wait for their confirms: each resolves "outcome
// unknown" with the channel's typed cause, never ack or nack; no wait hangs.
func TestConfirmOutcomeUnknownWhenTheBrokerClosesTheChannelMidFlight(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	suspendQueue(t, b, q)

	const n = 50 // well inside RabbitMQ's credit flow, so the channel never blocks
	confs := make([]*warren.Confirmation, n)
	for i := range confs {
		var err error
		if confs[i], err = ch.PublishDeferred(ctx, warren.Message{Key: q, Publishing: warren.Publishing{Body: body128}}); err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
	}
	_, err := ch.QueueDeclare(ctx, uniqueName(t, "missing-"), warren.QueueOptions{Passive: true})
	wantChannelError(t, "passive declare of a missing queue", err, warren.ErrNotFound, warren.CodeNotFound, ch.ID())

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i, err := range waitAll(t, wctx, confs) {
		wantUnknown(t, fmt.Sprintf("confirmation %d", i), err, warren.ErrNotFound)
		var ce *warren.ChannelError
		if !errors.As(err, &ce) || ce.ChannelID != ch.ID() {
			t.Errorf("confirmation %d: cause %v, want the *ChannelError of channel %d", i, err, ch.ID())
		}
	}
	// The broker may still enqueue them: that is why "unknown" is not "nack".
	resumeQueue(t, b, q)
	t.Logf("after resuming the queue it holds %d of the %d messages whose outcome was unknown", queueDepth(t, b, q), n)
}

// rabbitmqctl close_connection while publishes wait for confirms: the
// Confirmations and the Publisher's callers get "outcome unknown" wrapping
// the broker's 320 CONNECTION_FORCED.
func TestConfirmOutcomeUnknownWhenTheBrokerClosesTheConnection(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, opTimeout)
	name := uniqueName(t, "conn-")
	c := dial(t, b.URL, warren.WithName(name))
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	suspendQueue(t, b, q)

	confs := make([]*warren.Confirmation, 40)
	for i := range confs {
		if confs[i], err = ch.PublishDeferred(ctx, warren.Message{Key: q, Publishing: warren.Publishing{Body: body128}}); err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
	}
	pubErrs := make(chan error, 20)
	for i := 0; i < cap(pubErrs); i++ {
		go func() { pubErrs <- pub.Publish(ctx, "", q, warren.Publishing{Body: body128}) }()
	}
	// Wait until the Publisher has them all on the wire.
	eventually(t, ctx, "the Publisher has 20 publishes pending", func() string {
		if p := pub.Stats().Pending; p != 20 {
			return fmt.Sprintf("%d pending", p)
		}
		return ""
	})
	time.Sleep(200 * time.Millisecond) // let the last frames leave
	ctl(t, b, "close_connection", mustConnectionPid(t, b, name), "test: broker closes the connection")

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i, err := range waitAll(t, wctx, confs) {
		wantUnknown(t, fmt.Sprintf("confirmation %d", i), err, warren.ErrConnectionForced)
	}
	for i := 0; i < cap(pubErrs); i++ {
		select {
		case err := <-pubErrs:
			if !errors.Is(err, warren.ErrConnectionForced) {
				t.Errorf("Publisher.Publish: got %v, want the connection's 320", err)
			}
			if err == nil || errors.Is(err, warren.ErrNacked) {
				t.Errorf("Publisher.Publish: got %v: reported as ack or nack", err)
			}
		case <-wctx.Done():
			t.Fatalf("Publisher.Publish %d did not return after the connection closed", i)
		}
	}
	st := pub.Stats()
	if st.Acked != 0 || st.Nacked != 0 || st.Unknown+st.NotPublished != 20 {
		t.Errorf("Publisher stats %+v: want 20 unknown or not published, no acks or nacks", st)
	}
	if err := pub.Close(ctx); err != nil {
		t.Errorf("Publisher.Close after the connection died: %v", err)
	}
	if err := pub.Publish(ctx, "", q, warren.Publishing{}); !errors.Is(err, warren.ErrPublisherClosed) && !warren.IsConnectionLevel(err) {
		t.Errorf("Publish after Close: got %v, want ErrPublisherClosed or the connection error", err)
	}
}

// The socket is cut while publishes are in flight (held in a stalled proxy,
// so the broker never saw them): every Confirmation resolves "outcome
// unknown" wrapping ErrConnectionLost.
func TestConfirmOutcomeUnknownWhenTheSocketIsCut(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	c := r.dial()
	ch := confirmChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)

	r.proxy.Stall(faultproxy.ClientToServer)
	confs := make([]*warren.Confirmation, 30)
	for i := range confs {
		if confs[i], err = ch.PublishDeferred(ctx, warren.Message{Key: q.Name, Publishing: warren.Publishing{Body: body128}}); err != nil {
			t.Fatalf("PublishDeferred %d: %v", i, err)
		}
	}
	pubErr := make(chan error, 1)
	go func() { pubErr <- pub.Publish(ctx, "", q.Name, warren.Publishing{Body: body128}) }()
	eventually(t, ctx, "the Publisher's message is pending", func() string {
		if pub.Stats().Pending != 1 {
			return "not yet"
		}
		return ""
	})
	r.proxy.CutAll()

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i, err := range waitAll(t, wctx, confs) {
		wantUnknown(t, fmt.Sprintf("confirmation %d", i), err, warren.ErrConnectionLost)
	}
	select {
	case err := <-pubErr:
		if err == nil || errors.Is(err, warren.ErrNacked) || !warren.IsConnectionLevel(err) {
			t.Errorf("Publisher.Publish after the cut: got %v, want outcome unknown or not published, with the connection error", err)
		}
	case <-wctx.Done():
		t.Fatal("Publisher.Publish did not return after the socket was cut")
	}
}

// Wait is bounded by its ctx, which ends the wait but not the publish: a
// later Wait gets the ack. Publish on a confirm channel, which cannot wait
// again, reports the ended wait as outcome unknown.
func TestConfirmWaitEndsWithItsContextAndTheConfirmationStaysPending(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	c := r.dial()
	ch := confirmChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	r.proxy.Stall(faultproxy.ServerToClient) // acks are held back
	cf, err := ch.PublishDeferred(ctx, warren.Message{Key: q.Name, Publishing: warren.Publishing{Body: body128}})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	err = cf.Wait(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, warren.ErrOutcomeUnknown) {
		t.Fatalf("Wait with a short deadline: got %v, want the deadline error only", err)
	}
	select {
	case <-cf.Done():
		t.Fatal("the confirmation resolved while the acks were held back")
	default:
	}

	short, cancel = context.WithTimeout(ctx, 150*time.Millisecond)
	err = ch.Publish(short, "", q.Name, warren.Publishing{Body: body128})
	cancel()
	wantUnknown(t, "Publish on a confirm channel whose ctx ended while waiting", err, context.DeadlineExceeded)

	r.proxy.Resume(faultproxy.ServerToClient)
	if err := cf.Wait(ctx); err != nil {
		t.Fatalf("Wait after the acks flowed again: got %v, want nil", err)
	}
	if err := ch.Err(); err != nil {
		t.Fatalf("channel after an ended wait: %v, want usable", err)
	}
	eventually(t, ctx, "no confirms pending", func() string {
		if p := ch.PendingConfirms(); p != 0 {
			return fmt.Sprint(p, " pending")
		}
		return ""
	})
}

// --- Publisher -------------------------------------------------------------

func TestPublisherManyGoroutinesAllAckedAllInTheQueue(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 3, Window: 8}) // 32 callers overflow the first channel
	if err != nil {
		t.Fatal(err)
	}

	const goroutines, each = 32, 320
	var g errgroup.Group
	start := time.Now()
	for range goroutines {
		g.Go(func() error {
			for i := range each {
				if err := pub.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
					return fmt.Errorf("Publish %d: %w", i, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("%d goroutines publishing %d each: got %v, want every publish acked", goroutines, each, err)
	}
	elapsed := time.Since(start)
	st := pub.Stats()
	t.Logf("%d messages from %d goroutines in %v (%.0f msg/s); stats %+v", goroutines*each, goroutines, elapsed,
		float64(goroutines*each)/elapsed.Seconds(), st)
	if st.Acked != goroutines*each || st.Pending != 0 || st.Unknown != 0 || st.Nacked != 0 {
		t.Errorf("Stats: %+v, want %d acked and nothing else", st, goroutines*each)
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitDepth(t, ctx, b, q, goroutines*each)
	if err := pub.Publish(ctx, "", q, warren.Publishing{}); !errors.Is(err, warren.ErrPublisherClosed) {
		t.Errorf("Publish after Close: got %v, want ErrPublisherClosed", err)
	}
	// Its channels are closed and their numbers given back.
	if got := c.OpenChannels(); got != 1 {
		t.Errorf("OpenChannels after Publisher.Close: %d, want 1", got)
	}
}

// Every outcome through the Publisher, and a batch with results in input
// order: ack, unroutable, nack, and an argument refused before sending.
func TestPublisherReportsEveryOutcomeAndBatchResultsAreInInputOrder(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q, full := uniqueName(t, "q-"), uniqueName(t, "full-")
	declareQueue(t, ctx, b, ch, q)
	if _, err := ch.QueueDeclare(ctx, full, warren.QueueOptions{Durable: true, Args: warren.Table{
		"x-max-length": int32(1), "x-overflow": "reject-publish"}}); err != nil {
		t.Fatal(err)
	}
	deleteQueueLater(t, b, full)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)

	msg := func(key string, mandatory bool) warren.Message {
		return warren.Message{Key: key, Mandatory: mandatory, Publishing: warren.Publishing{Body: body128}}
	}
	errs := pub.PublishBatch(ctx, []warren.Message{
		msg(q, true),
		msg(uniqueName(t, "nowhere-"), true),
		msg(full, false),
		msg(full, false),
		msg(strings.Repeat("k", 256), false),
		msg(q, false),
	})
	if len(errs) != 6 {
		t.Fatalf("PublishBatch: %d results for 6 messages", len(errs))
	}
	if errs[0] != nil || errs[5] != nil {
		t.Errorf("routable messages: got %v and %v, want nil", errs[0], errs[5])
	}
	if !errors.Is(errs[1], warren.ErrUnroutable) {
		t.Errorf("unroutable mandatory message: got %v, want ErrUnroutable", errs[1])
	}
	// The two messages to the one-slot queue went over the pipeline; exactly
	// one fits, whichever the broker took first.
	nacks := 0
	for _, err := range errs[2:4] {
		switch {
		case err == nil:
		case errors.Is(err, warren.ErrNacked):
			nacks++
		default:
			t.Errorf("message to the full queue: got %v, want nil or ErrNacked", err)
		}
	}
	if nacks != 1 {
		t.Errorf("messages to a one-slot reject-publish queue: %d nacks, want 1 (%v, %v)", nacks, errs[2], errs[3])
	}
	if !errors.Is(errs[4], warren.ErrInvalidArgument) {
		t.Errorf("256-byte routing key: got %v, want ErrInvalidArgument", errs[4])
	}
	st := pub.Stats()
	if st.Acked != 3 || st.Unroutable != 1 || st.Nacked != 1 || st.NotPublished != 1 {
		t.Errorf("Stats: %+v, want 3 acked, 1 unroutable, 1 nacked, 1 not published", st)
	}
}

// A Publisher's caller whose ctx ends before the broker answers gets outcome
// unknown; the Publisher goes on.
func TestPublisherCallerContextEndingWhileWaitingIsOutcomeUnknown(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	c := r.dial()
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	r.proxy.Stall(faultproxy.ServerToClient)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = pub.Publish(short, "", q.Name, warren.Publishing{Body: body128})
	cancel()
	wantUnknown(t, "Publisher.Publish whose ctx ended before the ack", err, context.DeadlineExceeded)
	r.proxy.Resume(faultproxy.ServerToClient)
	if err := pub.Publish(ctx, "", q.Name, warren.Publishing{Body: body128}); err != nil {
		t.Fatalf("Publish after the acks flowed again: %v", err)
	}
	// The ended wait's message was published and acked after all.
	eventually(t, ctx, "both messages are in the queue", func() string {
		got, err := ch.QueueDeclare(ctx, q.Name, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatal(err)
		}
		if got.Messages != 2 {
			return fmt.Sprint(got.Messages, " messages")
		}
		return ""
	})
}

// A message to an exchange that does not exist makes the broker close the
// Publisher's channel: that message and any sent with it are outcome unknown
// with the 404; the Publisher replaces the channel and goes on.
func TestPublisherReplacesAChannelTheBrokerClosed(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)

	err = pub.Publish(ctx, uniqueName(t, "no-such-exchange-"), "k", warren.Publishing{Body: body128})
	wantUnknown(t, "publish to a missing exchange", err, warren.ErrNotFound)
	for i := 0; i < 10; i++ {
		if err := pub.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatalf("Publish %d after the channel was closed by the broker: %v", i, err)
		}
	}
	waitDepth(t, ctx, b, q, 10)
}

// --- refusals --------------------------------------------------------------

func TestConfirmOnlyOperationsAreRefusedOnOtherModesWithoutARoundTrip(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	plain := openChannel(t, ctx, c)
	q := warren.Queue{Name: uniqueName(t, "q-")}
	declareQueue(t, ctx, b, plain, q.Name)
	if _, err := plain.PublishDeferred(ctx, warren.Message{Key: q.Name}); !errors.Is(err, warren.ErrNotConfirmMode) {
		t.Errorf("PublishDeferred on a plain channel: got %v, want ErrNotConfirmMode", err)
	}
	err := plain.PublishMessage(ctx, warren.Message{Key: q.Name, Mandatory: true})
	if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "confirm") {
		t.Errorf("mandatory publish on a plain channel: got %v, want ErrInvalidArgument saying it needs confirm mode", err)
	}
	conf := confirmChannel(t, ctx, c)
	if err := conf.SetMode(ctx, warren.ModeTx); !errors.Is(err, warren.ErrModeConflict) {
		t.Errorf("SetMode(ModeTx) on a confirm channel: got %v, want ErrModeConflict", err)
	}
	// Nothing reached the broker: a 406 would have closed the channels.
	for _, ch := range []warren.Channel{plain, conf} {
		if err := ch.Publish(ctx, "", q.Name, warren.Publishing{Body: body128}); err != nil {
			t.Errorf("channel %d after the refusals: %v", ch.ID(), err)
		}
	}
	waitDepth(t, ctx, b, q.Name, 2)
}

// A pooled confirm channel released while its confirmations are pending
// still resolves them, and the next lease's publishes are tracked apart.
func TestConfirmPoolChannelReleasedWithPendingConfirmations(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1, Mode: warren.ModeConfirm})
	var confs []*warren.Confirmation
	for lease := 0; lease < 5; lease++ {
		lc, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			cf, err := lc.PublishDeferred(ctx, warren.Message{Key: q, Publishing: warren.Publishing{Body: body128}})
			if err != nil {
				t.Fatalf("lease %d publish %d: %v", lease, i, err)
			}
			confs = append(confs, cf)
		}
		p.Release(lc)
	}
	for i, err := range waitAll(t, ctx, confs) {
		if err != nil {
			t.Fatalf("confirmation %d: %v", i, err)
		}
		if got := confs[i].DeliveryTag(); got != uint64(i+1) {
			t.Fatalf("confirmation %d: tag %d, want %d (one channel, five leases)", i, got, i+1)
		}
	}
	waitDepth(t, ctx, b, q, 500)
}

// The metrics hook sees every confirmed publish with its outcome and
// latency, every pool acquire, and channel churn; Stats counts churn too.
func TestMetricsHookSeesOutcomesPoolWaitsAndChurn(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	var mu sync.Mutex
	outcomes := map[warren.Outcome]int{}
	var acquires, opened, closed int
	var maxLatency time.Duration
	c := dial(t, b.URL, warren.WithMetrics(warren.MetricsHook{
		PublishConfirmed: func(o warren.Outcome, d time.Duration) {
			mu.Lock()
			outcomes[o]++
			maxLatency = max(maxLatency, d)
			mu.Unlock()
		},
		PoolAcquired:  func(m warren.Mode, d time.Duration) { mu.Lock(); acquires++; mu.Unlock() },
		ChannelOpened: func(uint16) { mu.Lock(); opened++; mu.Unlock() },
		ChannelClosed: func(uint16) { mu.Lock(); closed++; mu.Unlock() },
	}))
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	for i := 0; i < 10; i++ {
		if err := ch.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.PublishMessage(ctx, warren.Message{Key: uniqueName(t, "nowhere-"), Mandatory: true}); !errors.Is(err, warren.ErrUnroutable) {
		t.Fatalf("mandatory publish nowhere: %v", err)
	}
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2})
	for i := 0; i < 3; i++ {
		lc, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.Release(lc)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if outcomes[warren.OutcomeAcked] != 10 || outcomes[warren.OutcomeUnroutable] != 1 || len(outcomes) != 2 {
		t.Errorf("PublishConfirmed outcomes: %v, want 10 acked and 1 unroutable", outcomes)
	}
	if maxLatency <= 0 || maxLatency > opTimeout {
		t.Errorf("PublishConfirmed latency: max %v", maxLatency)
	}
	if acquires != 3 {
		t.Errorf("PoolAcquired: %d calls, want 3", acquires)
	}
	s := c.Stats()
	if uint64(opened) != s.ChannelsOpened || uint64(closed) != s.ChannelsClosed || opened < 2 || closed < 1 {
		t.Errorf("churn: hook saw %d opened, %d closed; Stats says %d, %d", opened, closed, s.ChannelsOpened, s.ChannelsClosed)
	}
	if int(s.ChannelsOpened-s.ChannelsClosed) != s.OpenChannels {
		t.Errorf("Stats: opened %d - closed %d != open %d", s.ChannelsOpened, s.ChannelsClosed, s.OpenChannels)
	}
}

// warren takes every confirm from amqp091-go, whose read deadline (three
// heartbeat intervals) is renewed only by frames it reads, and the broker
// sends no heartbeat while it is sending confirms: a connection that only
// publishes and waits for confirms, for longer than three intervals, must
// live on (it timed out with "i/o timeout" before the wire handed
// amqp091-go a heartbeat in place of reads that held only confirms).
func TestConfirmsAloneForLongerThanThreeHeartbeatsKeepTheConnection(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL, warren.WithHeartbeat(time.Second))
	ch := confirmChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, ch, q)
	n := 0
	for start := time.Now(); time.Since(start) < 5*time.Second; n++ {
		if err := ch.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatalf("Publish %d, %v after the first: %v", n, time.Since(start).Round(time.Millisecond), err)
		}
	}
	// Idle, then again: the heartbeats carry the connection.
	time.Sleep(3500 * time.Millisecond)
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
		t.Fatalf("Publish after the pause: %v", err)
	}
	if s := c.Stats(); s.Reconnects != 0 {
		t.Errorf("Stats: %d reconnects, want 0", s.Reconnects)
	}
	waitDepth(t, ctx, b, q, n+1)
}

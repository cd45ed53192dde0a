package integration

// A blocked broker (issue 6/7): a memory alarm on the private node makes
// RabbitMQ send connection.blocked; publishes then wait (bounded by their
// ctx) or fail fast with ErrBlocked, nothing is sent meanwhile, Close stays
// bounded, and publishing resumes when the alarm clears.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// memoryAlarm raises the private node's memory alarm until the test ends
// (or clear is called). RabbitMQ sends connection.blocked to a connection
// only once it publishes: see triggerBlocked.
func memoryAlarm(t *testing.T, b *brokertest.Broker) (clear func()) {
	t.Helper()
	ctl(t, b, "set_vm_memory_high_watermark", "0.0000001")
	cleared := false
	clear = func() {
		if !cleared {
			cleared = true
			ctl(t, b, "set_vm_memory_high_watermark", "0.4")
		}
	}
	t.Cleanup(clear)
	return clear
}

// triggerBlocked publishes one message nowhere (default exchange, empty
// routing key) on a channel of its own, which makes the alarmed broker stop
// reading from c and send connection.blocked, and waits for it.
func triggerBlocked(t *testing.T, ctx context.Context, c *warren.Client) {
	t.Helper()
	ch := openChannel(t, ctx, c)
	if err := ch.Publish(ctx, "", "", warren.Publishing{Body: []byte("trigger")}); err != nil {
		t.Fatalf("trigger publish: %v", err)
	}
	eventually(t, ctx, "the client sees connection.blocked", func() string {
		if !c.Blocked() {
			return "not yet"
		}
		return ""
	})
}

func TestBlockedBrokerPublishesWaitOrFailFastAndResume(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, opTimeout)
	waiter := dial(t, b.URL)
	failer := dial(t, b.URL, warren.WithFlowPolicy(warren.FlowFail))
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, waiter), q)
	wch := confirmChannel(t, ctx, waiter)
	fch := openChannel(t, ctx, failer)
	pub, err := waiter.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)

	clear := memoryAlarm(t, b)
	triggerBlocked(t, ctx, waiter)
	triggerBlocked(t, ctx, failer)

	// FlowFail: refused at once, nothing sent.
	start := time.Now()
	err = fch.Publish(ctx, "", q, warren.Publishing{Body: body128})
	if !errors.Is(err, warren.ErrBlocked) {
		t.Fatalf("Publish with FlowFail on a blocked connection: got %v, want ErrBlocked", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("FlowFail took %v to refuse", d)
	}

	// FlowWait: bounded by ctx, nothing sent, the channel stays usable.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = wch.Publish(short, "", q, warren.Publishing{Body: body128})
	cancel()
	if !errors.Is(err, warren.ErrBlocked) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, warren.ErrOutcomeUnknown) {
		t.Fatalf("Publish with FlowWait and a short ctx: got %v, want ErrBlocked and DeadlineExceeded (not sent)", err)
	}
	short, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	err = pub.Publish(short, "", q, warren.Publishing{Body: body128})
	cancel()
	if !errors.Is(err, warren.ErrBlocked) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publisher.Publish on a blocked connection with a short ctx: got %v", err)
	}
	if errors.Is(err, warren.ErrOutcomeUnknown) {
		t.Errorf("Publisher.Publish that waited for the block to lift reported an unknown outcome: %v", err)
	}

	// A waiting publish goes through once the alarm clears.
	waited := make(chan error, 1)
	go func() { waited <- wch.Publish(ctx, "", q, warren.Publishing{Body: body128}) }()
	pubWaited := make(chan error, 1)
	go func() { pubWaited <- pub.Publish(ctx, "", q, warren.Publishing{Body: body128}) }()
	select {
	case err := <-waited:
		t.Fatalf("Publish returned %v while the connection was blocked", err)
	case <-time.After(300 * time.Millisecond):
	}
	clear()
	for name, c := range map[string]chan error{"Channel.Publish": waited, "Publisher.Publish": pubWaited} {
		select {
		case err := <-c:
			if err != nil {
				t.Errorf("%s after the alarm cleared: %v", name, err)
			}
		case <-ctx.Done():
			t.Fatalf("%s still waiting after the alarm cleared", name)
		}
	}
	waitDepth(t, ctx, b, q, 2)
}

// Close stays bounded while the broker blocks the connection, even with a
// publish stuck waiting.
func TestBlockedBrokerCloseIsBounded(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL, warren.WithCloseTimeout(3*time.Second))
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	memoryAlarm(t, b)
	triggerBlocked(t, ctx, c)
	stuck := make(chan error, 1)
	go func() { stuck <- ch.Publish(context.Background(), "", q.Name, warren.Publishing{Body: body128}) }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	_ = c.Close(context.Background())
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close on a blocked connection took %v, want within the 3 s close timeout (+ slack)", d)
	}
	select {
	case err := <-stuck:
		if err == nil || !warren.IsConnectionLevel(err) {
			t.Errorf("the publish waiting when the client closed: got %v, want the connection's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting publish did not return after Close")
	}
}

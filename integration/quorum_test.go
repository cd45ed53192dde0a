package integration

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// TestQuorumQueueDeliveryLimitDeadLetters declares a quorum queue with
// QueueOptions' own fields (no hand-written table) and checks that RabbitMQ
// applied them: a message rejected with requeue more often than the
// delivery limit allows lands in the dead-letter queue, with the routing
// key set. (Reject, not Nack: from RabbitMQ 4.3 a nack does not count
// towards the limit.)
func TestQuorumQueueDeliveryLimitDeadLetters(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)

	dlx, dlq, q := uniqueName(t, "dlx-"), uniqueName(t, "dlq-"), uniqueName(t, "qq-")
	if err := ch.ExchangeDeclare(ctx, dlx, warren.ExchangeDirect, warren.ExchangeOptions{AutoDelete: true}); err != nil {
		t.Fatal(err)
	}
	declareQueue(t, ctx, b, ch, dlq)
	if err := ch.QueueBind(ctx, dlq, "poison", dlx, nil); err != nil {
		t.Fatal(err)
	}
	const limit = 2
	opts := warren.QueueOptions{
		Durable:              true,
		Type:                 warren.QueueQuorum,
		DeliveryLimit:        limit,
		DeadLetterExchange:   dlx,
		DeadLetterRoutingKey: "poison",
	}
	if _, err := ch.QueueDeclare(ctx, q, opts); err != nil {
		t.Fatalf("QueueDeclare quorum: %v", err)
	}
	deleteQueueLater(t, b, q)
	// Declared again with the same fields: RabbitMQ compares the
	// arguments (a different delivery limit would be 406).
	if _, err := ch.QueueDeclare(ctx, q, opts); err != nil {
		t.Fatalf("QueueDeclare quorum again, same arguments: %v", err)
	}
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("poison")}); err != nil {
		t.Fatal(err)
	}
	// Delivered limit+1 times: the first delivery and `limit` redeliveries.
	for i := 0; i <= limit; i++ {
		d := getOne(t, ctx, ch, q)
		if string(d.Body) != "poison" || d.Redelivered != (i > 0) || d.DeliveryCount() != i {
			t.Fatalf("delivery %d: %q redelivered=%v DeliveryCount()=%d", i, d.Body, d.Redelivered, d.DeliveryCount())
		}
		if err := d.Reject(ctx, true); err != nil {
			t.Fatalf("Reject %d: %v", i, err)
		}
	}
	d := getOne(t, ctx, ch, dlq)
	if string(d.Body) != "poison" || d.RoutingKey != "poison" {
		t.Fatalf("dead-lettered: %q with key %q", d.Body, d.RoutingKey)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _, err := ch.Get(ctx, q, warren.GetOptions{}); err != nil || n != nil {
		t.Fatalf("quorum queue still holds %v (%v)", n, err)
	}

	// Declaring it with another limit is refused by the broker (the
	// arguments really reached it), as a typed channel error.
	other := opts
	other.DeliveryLimit = limit + 1
	ch2 := openChannel(t, ctx, c)
	_, err := ch2.QueueDeclare(ctx, q, other)
	if !errors.Is(err, warren.ErrPreconditionFailed) {
		t.Fatalf("redeclare with another delivery limit: %v, want PRECONDITION_FAILED", err)
	}
	// And what warren refuses never reaches the broker: the channel lives.
	ch3 := openChannel(t, ctx, c)
	if _, err := ch3.QueueDeclare(ctx, q, warren.QueueOptions{Type: warren.QueueQuorum}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Fatalf("non-durable quorum queue: %v, want ErrInvalidArgument", err)
	}
	if _, err := ch3.QueueDeclare(ctx, "", warren.QueueOptions{Durable: true, Type: warren.QueueQuorum}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Fatalf("server-named quorum queue: %v, want ErrInvalidArgument", err)
	}
	if _, err := ch3.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true, Type: warren.QueueQuorum}); err != nil {
		t.Fatalf("channel unusable after a refused declaration: %v", err)
	}
}

// A consumer whose handler keeps failing on a message rejects it each time
// (basic.reject, requeued): its delivery count rises on every RabbitMQ
// version, and the quorum queue dead-letters it at the limit instead of
// redelivering it for ever. (With basic.nack, RabbitMQ 4.3 never counts.)
func TestAPoisonMessageIsDeadLetteredAtTheDeliveryLimit(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)

	dlq, q := uniqueName(t, "dlq-"), uniqueName(t, "qq-")
	declareQueue(t, ctx, b, ch, dlq)
	const limit = 3
	if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{
		Durable: true, Type: warren.QueueQuorum, DeliveryLimit: limit,
		Args: warren.Table{"x-dead-letter-exchange": ""}, DeadLetterRoutingKey: dlq,
	}); err != nil {
		t.Fatalf("QueueDeclare quorum: %v", err)
	}
	deleteQueueLater(t, b, q)
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("poison")}); err != nil {
		t.Fatal(err)
	}
	var counts []int
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, q, func(_ context.Context, d *warren.Delivery) error {
			counts = append(counts, d.DeliveryCount())
			return errors.New("cannot process")
		}, warren.ConsumeOptions{Prefetch: 1})
	}()
	d := getOne(t, ctx, ch, dlq)
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume: got %v, want context.Canceled", err)
	}
	if string(d.Body) != "poison" {
		t.Fatalf("dead-lettered %q, want poison", d.Body)
	}
	// Handled once and redelivered `limit` times, each with its count.
	if want := []int{0, 1, 2, 3}; !slices.Equal(counts, want) {
		t.Fatalf("the handler saw delivery counts %v, want %v", counts, want)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

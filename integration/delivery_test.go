package integration

import (
	"errors"
	"fmt"
	"testing"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

func TestSecondAckOfADeliveryIsRefusedAndTheChannelStaysOpen(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)

	for i := range 3 {
		if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte(fmt.Sprint("m", i))}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	var ds []*warren.Delivery
	for i := range 3 {
		d := getOne(t, ctx, ch, q)
		if want := fmt.Sprint("m", i); string(d.Body) != want {
			t.Errorf("Get %d: got body %q, want %q", i, d.Body, want)
		}
		if d.Redelivered {
			t.Errorf("Get %d: got Redelivered true for a first delivery, want false", i)
		}
		ds = append(ds, d)
	}
	for i, d := range ds {
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack %d: got %v, want nil", i, err)
		}
	}

	err := ds[1].Ack(ctx)
	if !errors.Is(err, warren.ErrAlreadySettled) {
		t.Errorf("second Ack of the same delivery: got %v, want ErrAlreadySettled", err)
	}
	for _, settle := range []struct {
		name string
		fn   func() error
	}{
		{"Nack after Ack", func() error { return ds[0].Nack(ctx, true) }},
		{"Reject after Ack", func() error { return ds[2].Reject(ctx, false) }},
	} {
		if err := settle.fn(); !errors.Is(err, warren.ErrAlreadySettled) {
			t.Errorf("%s: got %v, want ErrAlreadySettled", settle.name, err)
		}
	}

	// Had any of those reached the broker as a second ack of the tag, it
	// would have closed the channel with 406 PRECONDITION_FAILED before
	// answering this declare.
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("QueueDeclare after the refused second Ack: got %v, want nil", err)
	}
	if qs.Messages != 0 {
		t.Errorf("queue after acking all 3: got %d ready messages, want 0", qs.Messages)
	}
	if err := ch.Err(); err != nil {
		t.Errorf("channel.Err: got %v, want nil", err)
	}
	// Acked messages stay acked when the channel closes: nothing comes back.
	if err := ch.Close(ctx); err != nil {
		t.Fatalf("Close: got %v, want nil", err)
	}
	ch2 := openChannel(t, ctx, c)
	if d, ok, err := ch2.Get(ctx, q, warren.GetOptions{}); err != nil || ok {
		body := ""
		if ok {
			body = string(d.Body)
		}
		t.Errorf("Get after closing the acking channel: got ok=%v body=%q err=%v, want an empty queue", ok, body, err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("client.Err: got %v, want nil", err)
	}
}

func TestNackWithRequeueRedeliversTheMessage(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)

	body := "nack-me-" + randHex(4)
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte(body), MessageId: "id-1"}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	d := getOne(t, ctx, ch, q)
	if string(d.Body) != body || d.Redelivered {
		t.Fatalf("first Get: got body %q Redelivered %v, want %q false", d.Body, d.Redelivered, body)
	}
	if err := d.Nack(ctx, true); err != nil {
		t.Fatalf("Nack(requeue=true): got %v, want nil", err)
	}
	if err := d.Nack(ctx, true); !errors.Is(err, warren.ErrAlreadySettled) {
		t.Errorf("second Nack: got %v, want ErrAlreadySettled", err)
	}

	again := getOne(t, ctx, ch, q)
	if string(again.Body) != body || again.MessageId != "id-1" {
		t.Errorf("Get after Nack: got body %q id %q, want %q %q", again.Body, again.MessageId, body, "id-1")
	}
	if !again.Redelivered {
		t.Errorf("Get after Nack: got Redelivered false, want true")
	}
	if again.DeliveryTag == d.DeliveryTag {
		t.Errorf("Get after Nack: got the same delivery tag %d, want a new one", again.DeliveryTag)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatalf("Ack of the redelivery: %v", err)
	}
	qs, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("QueueDeclare after Ack: got %v, want nil", err)
	}
	if qs.Messages != 0 {
		t.Errorf("queue after acking the redelivery: got %d messages, want 0", qs.Messages)
	}
}

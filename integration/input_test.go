package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// wantInvalid checks that err is a refusal of an argument before anything
// was sent.
func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("%s: got %v, want ErrInvalidArgument", what, err)
	}
	if warren.IsChannelLevel(err) || warren.IsConnectionLevel(err) {
		t.Errorf("%s: IsChannelLevel/IsConnectionLevel = %v/%v, want false/false for a refused argument",
			what, warren.IsChannelLevel(err), warren.IsConnectionLevel(err))
	}
}

func TestInvalidArgumentsAreRefusedAndLoseNothing(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, ch, q)

	stillWorks := func(what string) {
		t.Helper()
		if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil {
			t.Fatalf("after %s: QueueDeclare on the same channel: got %v, want nil", what, err)
		}
		if err := ch.Err(); err != nil {
			t.Fatalf("after %s: channel.Err: got %v, want nil", what, err)
		}
		if err := c.Err(); err != nil {
			t.Fatalf("after %s: client.Err: got %v, want nil", what, err)
		}
	}

	long := strings.Repeat("q", 256)
	_, err := ch.QueueDeclare(ctx, long, warren.QueueOptions{Durable: true})
	wantInvalid(t, "QueueDeclare with a 256-byte name", err)
	stillWorks("a 256-byte queue name")

	// 255 bytes is the most AMQP allows, and is accepted.
	maxName := uniqueName(t, "")
	maxName += strings.Repeat("m", 255-len(maxName))
	if _, err := ch.QueueDeclare(ctx, maxName, warren.QueueOptions{Exclusive: true}); err != nil {
		t.Errorf("QueueDeclare with a 255-byte name: got %v, want nil", err)
	}

	_, err = ch.QueueDeclare(ctx, uniqueName(t, ""), warren.QueueOptions{Durable: true, Args: warren.Table{"x-bad": struct{ A int }{1}}})
	wantInvalid(t, "QueueDeclare with a struct in its arguments", err)
	stillWorks("a struct table argument")

	err = ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("bad headers"), Headers: warren.Table{"h": struct{}{}}})
	wantInvalid(t, "Publish with a struct header", err)
	stillWorks("a struct header")

	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: -1}); err != nil {
		wantInvalid(t, "Qos with PrefetchCount -1", err)
	} else {
		t.Errorf("Qos with PrefetchCount -1: got nil, want ErrInvalidArgument")
	}
	stillWorks("Qos with PrefetchCount -1")

	// Messages around a refused publish all arrive, in order.
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("before")}); err != nil {
		t.Fatalf("Publish before: %v", err)
	}
	err = ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("refused"), MessageId: strings.Repeat("i", 256)})
	wantInvalid(t, "Publish with a 256-byte MessageId", err)
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("after")}); err != nil {
		t.Fatalf("Publish after: %v", err)
	}
	stillWorks("a 256-byte MessageId")
	for _, want := range []string{"before", "after"} {
		d := getOne(t, ctx, ch, q)
		if string(d.Body) != want {
			t.Errorf("Get: got body %q, want %q", d.Body, want)
		}
		if err := d.Ack(ctx); err != nil {
			t.Errorf("Ack: %v", err)
		}
	}
	if d, ok, err := ch.Get(ctx, q, warren.GetOptions{}); err != nil || ok {
		body := ""
		if d != nil {
			body = string(d.Body)
		}
		t.Errorf("Get after the two good messages: got ok=%v body=%q err=%v, want an empty queue", ok, body, err)
	}
	roundTrip(t, ctx, c)
}

func TestDialWithMalformedURLIsInvalidArgumentWithoutEchoingIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const secret = "pa ss"
	c, err := warren.Dial(ctx, "amqp://user:"+secret+"@host")
	if err == nil {
		c.Close(ctx)
		t.Fatalf("Dial of a malformed URL: got a client, want an error")
	}
	if !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("Dial of a malformed URL: got %v, want ErrInvalidArgument", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("Dial error text %q contains the password %q", err, secret)
	}
}

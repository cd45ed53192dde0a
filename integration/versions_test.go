package integration

// What differs between RabbitMQ versions, and what warren refuses so that
// no version can close the connection over it.

import (
	"errors"
	"strings"
	"testing"

	"github.com/warrenmq/warren"
)

// A transient non-exclusive queue is refused before sending on every
// version (RabbitMQ 4.3 denies it with a connection close), and arguments
// of features 4.0 removed are refused on 4.x brokers; the connection
// carries on either way. AllowTransient sends it as asked.
func TestDeprecatedQueueDeclarationsAreRefusedAndTheConnectionLives(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	c := dial(t, broker.URL)
	v := c.ServerVersion()
	if v == "" {
		t.Fatal("ServerVersion: empty, want the broker's version")
	}
	t.Logf("broker version %s", v)
	ch := openChannel(t, ctx, c)
	name := uniqueName(t, "transient-")
	_, err := ch.QueueDeclare(ctx, name, warren.QueueOptions{})
	if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "neither Durable nor Exclusive") {
		t.Fatalf("QueueDeclare with the zero QueueOptions: got %v, want ErrInvalidArgument about a transient non-exclusive queue", err)
	}
	// Opted in: sent as asked (Debian's builds of 3.10 and 4.3 permit it).
	allowed := uniqueName(t, "allowed-")
	if _, err := ch.QueueDeclare(ctx, allowed, warren.QueueOptions{AllowTransient: true}); err != nil {
		t.Fatalf("QueueDeclare with AllowTransient: got %v, want nil", err)
	}
	deleteQueueLater(t, broker, allowed)
	master := warren.QueueOptions{Durable: true, Args: warren.Table{"x-queue-master-locator": "min-masters"}}
	if strings.HasPrefix(v, "3.") {
		// 3.x has the feature: sent as given.
		if _, err := ch.QueueDeclare(ctx, name, master); err != nil {
			t.Fatalf("x-queue-master-locator on %s: got %v, want nil", v, err)
		}
		deleteQueueLater(t, broker, name)
	} else {
		_, err := ch.QueueDeclare(ctx, name, master)
		if !errors.Is(err, warren.ErrInvalidArgument) {
			t.Fatalf("x-queue-master-locator on %s: got %v, want ErrInvalidArgument before sending", v, err)
		}
		_, err = ch.QueueDeclare(ctx, name, warren.QueueOptions{Durable: true, Args: warren.Table{"x-queue-version": int32(1)}})
		if !errors.Is(err, warren.ErrInvalidArgument) {
			t.Fatalf("x-queue-version 1 on %s: got %v, want ErrInvalidArgument before sending", v, err)
		}
	}
	if err := ch.Err(); err != nil {
		t.Fatalf("the channel after refused declarations: %v, want nil", err)
	}
	roundTrip(t, ctx, c)
}

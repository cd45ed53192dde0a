package integration

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// softError describes a channel-level error provoked on channel A of a
// client that also has channel B open.
type softError struct {
	sentinel error
	code     warren.ReplyCode
	provoke  func(a warren.Channel) error // the operation the broker refuses
	texts    []string                     // what the error text must contain
	bQueue   string                       // name B declares to show it still works ("" = server-named)
}

// checkSoftErrorClosesOnlyA provokes s on a fresh channel A of c and checks
// that A, and only A, is closed with the typed error, that every later
// operation on A and A.Close return the same error, and that a second
// channel B and the connection keep working.
func checkSoftErrorClosesOnlyA(t *testing.T, ctx context.Context, c *warren.Client, s softError) {
	t.Helper()
	a := openChannel(t, ctx, c)
	bch := openChannel(t, ctx, c)
	if a.ID() == bch.ID() {
		t.Fatalf("channels A and B share ID %d", a.ID())
	}

	first := wantChannelError(t, "provoking operation on A", s.provoke(a), s.sentinel, s.code, a.ID(), s.texts...)
	if first.Reason == "" {
		t.Errorf("provoking operation on A: got empty Reason, want the broker's reply text")
	}

	if _, err := bch.QueueDeclare(ctx, s.bQueue, warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on B (channel %d) after A (channel %d) was closed: got %v, want nil", bch.ID(), a.ID(), err)
	}
	if err := bch.Err(); err != nil {
		t.Errorf("B.Err: got %v, want nil", err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("client.Err after a channel-level error: got %v, want nil", err)
	}

	same := func(what string, err error) {
		t.Helper()
		ce := wantChannelError(t, what, err, s.sentinel, s.code, a.ID(), s.texts...)
		if ce.Reason != first.Reason {
			t.Errorf("%s: got Reason %q, want the first error's %q", what, ce.Reason, first.Reason)
		}
	}
	_, err := a.QueueDeclare(ctx, s.bQueue, warren.QueueOptions{Exclusive: true, AutoDelete: true})
	same("QueueDeclare on A afterwards", err)
	same("Publish on A afterwards", a.Publish(ctx, "", "nowhere", warren.Publishing{Body: []byte("x")}))
	same("A.Err", a.Err())
	same("A.Close", a.Close(ctx))
	same("second A.Close", a.Close(ctx))

	if _, err := bch.QueueDeclare(ctx, s.bQueue, warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on B after A.Close: got %v, want nil", err)
	}
	if err := bch.Close(ctx); err != nil {
		t.Errorf("B.Close: got %v, want nil", err)
	}
	if err := c.Err(); err != nil {
		t.Errorf("client.Err at the end: got %v, want nil", err)
	}
}

func TestNotFoundClosesOnlyTheChannelThatCausedIt(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	missing := uniqueName(t, "missing-")
	checkSoftErrorClosesOnlyA(t, ctx, c, softError{
		sentinel: warren.ErrNotFound,
		code:     warren.CodeNotFound,
		provoke: func(a warren.Channel) error {
			_, err := a.QueueDeclare(ctx, missing, warren.QueueOptions{Passive: true})
			return err
		},
		texts: []string{"NOT_FOUND", "no queue '" + missing + "'"},
	})
}

func TestPreconditionFailedClosesOnlyTheChannelThatCausedIt(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	setup := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, setup, q)
	checkSoftErrorClosesOnlyA(t, ctx, c, softError{
		sentinel: warren.ErrPreconditionFailed,
		code:     warren.CodePreconditionFailed,
		provoke: func(a warren.Channel) error {
			// declareQueue made it durable, not auto-delete.
			_, err := a.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, AutoDelete: true})
			return err
		},
		texts: []string{"PRECONDITION_FAILED", "auto_delete", q},
	})
}

func TestResourceLockedClosesOnlyTheChannelThatCausedIt(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	owner := dial(t, b.URL)
	q := uniqueName(t, "")
	if _, err := openChannel(t, ctx, owner).QueueDeclare(ctx, q, warren.QueueOptions{Exclusive: true}); err != nil {
		t.Fatalf("declaring exclusive queue on the owning client: %v", err)
	}
	c := dial(t, b.URL)
	checkSoftErrorClosesOnlyA(t, ctx, c, softError{
		sentinel: warren.ErrResourceLocked,
		code:     warren.CodeResourceLocked,
		provoke: func(a warren.Channel) error {
			_, err := a.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true})
			return err
		},
		texts: []string{"RESOURCE_LOCKED", q},
	})
}

func TestAccessRefusedClosesOnlyTheChannelThatCausedIt(t *testing.T) {
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, opTimeout)
	user, pass := uniqueName(t, "user-"), "pw-"+randHex(8)
	addUser(t, b, user, pass, "^allowed-.*", "^allowed-.*", "^allowed-.*")
	c := dial(t, b.URLWith(user, pass, ""))
	forbidden := "forbidden-" + randHex(4)
	allowed := "allowed-" + randHex(4)
	deleteQueueLater(t, b, forbidden) // in case the broker wrongly lets it through
	checkSoftErrorClosesOnlyA(t, ctx, c, softError{
		sentinel: warren.ErrAccessRefused,
		code:     warren.CodeAccessRefused,
		provoke: func(a warren.Channel) error {
			_, err := a.QueueDeclare(ctx, forbidden, warren.QueueOptions{Durable: true})
			return err
		},
		texts:  []string{"ACCESS_REFUSED", forbidden, user},
		bQueue: allowed,
	})
}

func TestPublishToMissingExchangeSurfacesNotFoundOnEveryLaterOperation(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	other := openChannel(t, ctx, c)
	q := uniqueName(t, "")
	declareQueue(t, ctx, b, other, q)
	exchange := uniqueName(t, "missing-exchange-")

	// Fire-and-forget: the broker's refusal comes back asynchronously, so
	// this may well return nil.
	if err := ch.Publish(ctx, exchange, "key", warren.Publishing{Body: []byte("lost")}); err != nil {
		t.Logf("Publish to the missing exchange returned %v at once", err)
	}

	check := func(what string, err error) {
		t.Helper()
		wantChannelError(t, what, err, warren.ErrNotFound, warren.CodeNotFound, ch.ID(), "NOT_FOUND", exchange)
		if err == nil {
			return
		}
		if strings.Contains(err.Error(), "not open") {
			t.Errorf("%s: error text %q is amqp091-go's generic 504, want the broker's 404", what, err)
		}
		if errors.Is(err, warren.ErrChannelError) {
			t.Errorf("%s: errors.Is(err, ErrChannelError) = true, want false (the cause is 404, not 504)", what)
		}
	}
	_, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
	check("QueueDeclare after the publish", err)
	check("Publish", ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("x")}))
	_, _, err = ch.Get(ctx, q, warren.GetOptions{})
	check("Get", err)
	check("Qos", ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10}))
	check("Ack", ch.Ack(ctx, 1, false))
	check("Channel.Err", ch.Err())
	check("Close", ch.Close(ctx))
	check("second Close", ch.Close(ctx))

	if _, err := other.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil {
		t.Errorf("QueueDeclare on another channel of the same client: got %v, want nil", err)
	}
	if err := other.Publish(ctx, "", q, warren.Publishing{Body: []byte("ok")}); err != nil {
		t.Errorf("Publish on another channel: got %v, want nil", err)
	}
	d := getOne(t, ctx, other, q)
	if string(d.Body) != "ok" {
		t.Errorf("Get on another channel: got body %q, want %q", d.Body, "ok")
	}
	if err := c.Err(); err != nil {
		t.Errorf("client.Err: got %v, want nil", err)
	}
}

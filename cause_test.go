package warren_test

// One test per rule of the close cause's precedence (cause.go): each
// source wins where the rule says. (Rule 2's wire record, for a close that
// races amqp091-go's own, is TestCrossingCloseReturnsNilOrTheBrokersErrorAndKeepsTheConnection.)

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// Rule 1: a recorded cause stands. A channel poisoned by an abandoned RPC
// keeps reporting the poisoning after the broker closes it.
func TestCauseRuleARecordedCauseIsNeverReplaced(t *testing.T) {
	closeIt := make(chan struct{})
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		id := openOK(c)
		c.ExpectOn(int(id), fb.QueueDeclare) // never answered
		<-closeIt
		c.CloseChannel(id, 404, "NOT_FOUND - late")
		serve(c)
	})
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = ch.QueueDeclare(short, "q", warren.QueueOptions{Durable: true})
	cancel()
	if !errors.Is(err, warren.ErrPoisoned) {
		t.Fatalf("abandoned QueueDeclare: got %v, want ErrPoisoned", err)
	}
	close(closeIt)
	// The broker's close ends the abandoned RPC; warren then closes and
	// forgets the channel.
	waitFor(t, "the poisoned channel closed after the broker's close", testBound, func() bool { return client.OpenChannels() == 0 })
	if err := ch.Err(); !errors.Is(err, warren.ErrPoisoned) || errors.Is(err, warren.ErrNotFound) {
		t.Fatalf("Err after the broker's later close: got %v, want the recorded *PoisonedError", err)
	}
}

// Rule 2: the broker's channel.close is the channel's cause, as a
// *ChannelError, also once the connection is gone when it was a close of
// its own; rule 3: the other channels get the connection's error.
func TestCauseRuleTheBrokersChannelCloseThenTheConnections(t *testing.T) {
	closed := make(chan struct{})
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		a := openOK(c)
		openOK(c)
		c.CloseChannel(a, 406, "PRECONDITION_FAILED - this channel")
		c.ExpectOn(int(a), fb.ChannelCloseOK)
		<-closed
		c.CloseConnection(320, "CONNECTION_FORCED - the whole connection")
		_ = c.Serve()
	})
	ctx := testCtx(t)
	a, err := client.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := client.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "channel a closed by the broker", testBound, func() bool { return a.Err() != nil })
	if ce := asChannelError(t, "a.Err", a.Err()); ce.Code != 406 {
		t.Fatalf("a.Err: got %v, want the broker's 406", ce)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("b.Err while only a was closed: got %v, want nil", err)
	}
	close(closed)
	waitDone(t, "client done", client.Done(), testBound)
	if ce := asChannelError(t, "a.Err after the connection closed", a.Err()); ce.Code != 406 {
		t.Fatalf("a.Err after the connection closed: got %v, want still the 406", ce)
	}
	if ce := asConnectionError(t, "b.Err", b.Err()); ce.Code != 320 {
		t.Fatalf("b.Err: got %v, want the connection's 320", ce)
	}
}

// Rule 4: nothing else: a channel the application closed says so.
func TestCauseRuleAChannelTheApplicationClosedIsErrChannelClosed(t *testing.T) {
	client := startFake(t, fb.Config{}, serve)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ch.Err(); !errors.Is(err, warren.ErrChannelClosed) {
		t.Fatalf("Err after Close: got %v, want ErrChannelClosed", err)
	}
}

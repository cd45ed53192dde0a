package warren_test

// Misuse and hostile peers: calls a user can make in the wrong state, and a
// broker that stops answering, each of which must end with a clear error
// within the caller's ctx.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// FIXED BUG (issue 17, defect 4): once one channel.open was abandoned by
// its ctx and never answered, every later open waited on a plain mutex,
// past its own ctx, until the first open resolved (possibly never).
func TestOpensAfterAnUnansweredOpenStillEndWithTheirCtx(t *testing.T) {
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		c.Expect(fb.ChannelOpen) // never answered
		for {
			if _, err := c.Next(); err != nil {
				return
			}
		}
	}, warren.WithCloseTimeout(time.Second))

	const bound = 300 * time.Millisecond
	const slack = 700 * time.Millisecond // scheduling on a loaded machine; far below the old hang
	opens := []struct {
		name string
		open func(ctx context.Context) error
	}{
		{"Channel (the first, unanswered)", func(ctx context.Context) error { _, err := client.Channel(ctx); return err }},
		{"Channel", func(ctx context.Context) error { _, err := client.Channel(ctx); return err }},
		{"NewPool", func(ctx context.Context) error {
			_, err := client.NewPool(ctx, warren.PoolOptions{Size: 2, MinIdle: 1})
			return err
		}},
		{"NewPublisher", func(ctx context.Context) error {
			_, err := client.NewPublisher(ctx, warren.PublisherOptions{})
			return err
		}},
		{"Begin", func(ctx context.Context) error { _, err := client.Begin(ctx); return err }},
		{"Tx", func(ctx context.Context) error {
			return client.Tx(ctx, func(*warren.Tx) error { return nil })
		}},
		{"Consume", func(ctx context.Context) error {
			return client.Consume(ctx, "q", func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
		}},
	}
	for _, o := range opens {
		ctx, cancel := context.WithTimeout(t.Context(), bound)
		start := time.Now()
		err := o.open(ctx)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: got %v, want an error wrapping context.DeadlineExceeded", o.name, err)
		}
		if took > bound+slack {
			t.Errorf("%s: returned after %v, want within its ctx of %v (+%v)", o.name, took, bound, slack)
		}
	}
	// The broker answers no connection.close either: Close ends with its
	// ctx (the cleanup's would wait the whole test bound).
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	if err := client.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with no close-ok: got %v, want an error wrapping context.DeadlineExceeded", err)
	}
}

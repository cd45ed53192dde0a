package integration

// A ctx that ends while a publish or ack is being written to a healthy
// socket must not cost the connection: only a write that makes no progress
// (a stalled broker or network) does. (Found by review: every such cancel
// used to close the connection.)

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

func TestContextEndingDuringAHealthyWriteKeepsTheConnection(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 64<<10)
	var sent, cancelled int
	for i := 0; i < 1500; i++ {
		pctx, cancel := context.WithCancel(ctx)
		timer := time.AfterFunc(time.Duration(rand.IntN(50))*time.Microsecond, cancel)
		err := ch.Publish(pctx, "", q.Name, warren.Publishing{Body: body})
		timer.Stop()
		cancel()
		switch {
		case err == nil:
			sent++
		case errors.Is(err, context.Canceled) && !warren.IsConnectionLevel(err):
			cancelled++
		default:
			t.Fatalf("publish %d (%d sent, %d cancelled before): %v", i, sent, cancelled, err)
		}
	}
	t.Logf("%d publishes written, %d refused by their ended ctx; the connection lived", sent, cancelled)
	if err := c.Err(); err != nil {
		t.Fatalf("connection after cancelled publishes: %v", err)
	}
	roundTrip(t, ctx, c)
	if _, err := ch.QueuePurge(ctx, q.Name); err != nil {
		t.Fatal(err)
	}
}

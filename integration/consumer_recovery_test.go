package integration

// A consumer survives a connection cut at once: its handlers' deliveries
// are void when the connection goes (the broker requeues them), so warren
// cancels their ctx immediately and subscribes again as soon as the new
// connection is up, without waiting for them.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren"
)

func TestAConsumerReceivesAgainRightAfterAReconnect(t *testing.T) {
	for _, honoursCtx := range []bool{true, false} {
		t.Run(fmt.Sprintf("handler honours its ctx=%v", honoursCtx), func(t *testing.T) {
			testConsumerRecovery(t, honoursCtx)
		})
	}
}

func testConsumerRecovery(t *testing.T, honoursCtx bool) {
	needPrivate(t, broker)
	ctx := testCtx(t, opTimeout)
	name := uniqueName(t, "conn-")
	reconnected := make(chan time.Time, 4)
	lost := make(chan time.Time, 4) // when the client saw the cut
	c := dial(t, broker.URL, warren.WithName(name),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			switch e.State {
			case warren.StateDisconnected:
				lost <- e.At
			case warren.StateReconnected:
				reconnected <- e.At
			}
		}))
	ch := openChannel(t, ctx, c)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, broker, ch, q)
	const n = 20
	for i := 0; i < n; i++ {
		if err := ch.Publish(ctx, "", q, warren.Publishing{MessageId: fmt.Sprint(i), Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	acked := map[string]int{} // message id -> handler returned nil (acked)
	blocked := make(chan struct{})
	ctxEnded := make(chan time.Time, 1)
	released := make(chan struct{}) // ends the handler that ignores its ctx
	defer close(released)
	firstAfterCut := make(chan time.Time, 1)
	var cut bool
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, q, func(hctx context.Context, d *warren.Delivery) error {
			mu.Lock()
			first := len(acked) == 0 && !cut
			afterCut := cut
			mu.Unlock()
			if first {
				close(blocked)
				if honoursCtx {
					<-hctx.Done()
					ctxEnded <- time.Now()
				} else {
					<-released // ignores its ctx; returns once the test ends
				}
				return errors.New("interrupted")
			}
			if afterCut {
				select {
				case firstAfterCut <- time.Now():
				default:
				}
			}
			mu.Lock()
			acked[d.MessageId]++
			mu.Unlock()
			return nil
		}, warren.ConsumeOptions{Prefetch: 1, ShutdownTimeout: 5 * time.Second})
	}()
	select {
	case <-blocked:
	case <-ctx.Done():
		t.Fatal("no delivery before the cut")
	}
	mu.Lock()
	cut = true
	mu.Unlock()
	ctl(t, broker, "close_connection", mustConnectionPid(t, broker, name), "test: cut under a consumer")
	var cutAt time.Time // when the client saw the connection go
	select {
	case cutAt = <-lost:
	case <-ctx.Done():
		t.Fatal("the client never saw the cut")
	}

	var reconnectAt time.Time
	select {
	case reconnectAt = <-reconnected:
	case <-ctx.Done():
		t.Fatal("no reconnect after the cut")
	}
	if honoursCtx {
		select {
		case at := <-ctxEnded:
			t.Logf("the blocked handler's ctx ended %v after the cut", at.Sub(cutAt).Round(time.Millisecond))
			if at.Sub(cutAt) > time.Second {
				t.Errorf("the handler's ctx ended %v after the cut, want at once (its delivery is void)", at.Sub(cutAt))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the blocked handler's ctx was not cancelled after the cut")
		}
	}
	select {
	case at := <-firstAfterCut:
		gap := at.Sub(reconnectAt)
		t.Logf("reconnected %v after the cut; first delivery %v after the reconnect", reconnectAt.Sub(cutAt).Round(time.Millisecond), gap.Round(time.Millisecond))
		if gap > time.Second {
			t.Errorf("the consumer received again %v after the reconnect, want within 1 s", gap)
		}
	case <-ctx.Done():
		t.Fatal("the consumer never received again after the reconnect")
	}
	// Every message is handled and acked once: the one whose handler was
	// interrupted came back (redelivered) and was acked the second time.
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		got := len(acked)
		mu.Unlock()
		if got == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(pollEvery)
	}
	stop()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume: got %v, want context.Canceled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acked) != n {
		t.Fatalf("acked %d distinct messages, want %d", len(acked), n)
	}
	for id, k := range acked {
		if k != 1 {
			t.Errorf("message %s acked %d times, want once", id, k)
		}
	}
	if left := queueDepthOn(t, ctx, c, q); left != 0 {
		t.Errorf("%d messages left in the queue, want 0", left)
	}
}

// queueDepthOn returns the ready messages of queue, through c.
func queueDepthOn(t *testing.T, ctx context.Context, c *warren.Client, queue string) int {
	t.Helper()
	ch := openChannel(t, ctx, c)
	qq, err := ch.QueueDeclare(ctx, queue, warren.QueueOptions{Passive: true})
	if err != nil {
		t.Fatalf("passive QueueDeclare: %v", err)
	}
	return qq.Messages
}

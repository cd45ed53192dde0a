package warren_test

import (
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// A Close waiting for another goroutine's operation on a leased channel
// loses the race with the holder's Release: the channel goes back to the
// pool with closeWait set, and every later lease gets ErrChannelClosed.
func TestAChannelReleasedWhileACloseWaitsForItIsDiscardedNotReused(t *testing.T) {
	answer := make(chan struct{})
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		for {
			m, err := c.Next()
			if err != nil {
				return
			}
			if m.ID == fb.QueueDeclare {
				select {
				case <-answer:
				case <-c.Quit():
					return
				}
				c.DeclareOK(m.Channel, "q")
				continue
			}
			if err := c.Answer(m); err != nil {
				return
			}
		}
	})
	ctx := testCtx(t)
	pool, err := client.NewPool(ctx, warren.PoolOptions{Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close(ctx)
	for i := 0; i < 50; i++ {
		ch, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatalf("iteration %d: Acquire: %v", i, err)
		}
		if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 1}); err != nil {
			t.Fatalf("iteration %d: a fresh lease is unusable: %v (stats %+v)", i, err, pool.Stats().Discarded)
		}
		declared := make(chan struct{})
		go func() {
			_, _ = ch.QueueDeclare(ctx, "q", warren.QueueOptions{Durable: true})
			pool.Release(ch) // the holder releases as soon as its op returns
			close(declared)
		}()
		time.Sleep(20 * time.Millisecond) // the declare is in flight
		closed := make(chan error, 1)
		go func() { closed <- ch.Close(ctx) }() // a watchdog closes the lease
		time.Sleep(20 * time.Millisecond)       // the Close waits (closeWait set)
		answer <- struct{}{}
		<-declared
		t.Logf("iteration %d: Close: %v", i, <-closed)
	}
}

package warren_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// An operation refused inside enter (cancelled ctx, closeWait, ...) releases
// the serialisation point with busy.Store(false), not exit(): a Close
// waiting on ch.idle is never woken.
func TestCloseIsWokenWhenAnOperationGivesUpBeforeStarting(t *testing.T) {
	client := startFake(t, fb.Config{}, serve)
	ctx := testCtx(t)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	slow := 0
	for i := 0; i < 300 && slow == 0; i++ {
		ch, err := client.Channel(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var stop atomic.Bool
		started := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			close(started)
			for n := 0; n < 200 && !stop.Load(); n++ {
				_ = ch.Qos(cancelled, warren.QosOptions{PrefetchCount: 1})
			}
		}()
		<-started
		cctx, ccancel := context.WithTimeout(ctx, 1*time.Second)
		start := time.Now()
		err = ch.Close(cctx)
		took := time.Since(start)
		ccancel()
		stop.Store(true)
		<-done
		if took > 500*time.Millisecond {
			slow++
			t.Logf("iteration %d: Close took %v: %v (no operation was running)", i, took, err)
		}
	}
	if slow > 0 {
		t.Fatalf("Close waited for its bound with nothing running")
	}
}

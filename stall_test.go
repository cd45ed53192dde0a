package warren_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// TestStalledPublishIsCutAfterItsContextEnds: a broker that stops reading
// leaves a publish stuck in the socket write. Once the publish's ctx has
// ended, the connection's stall watch cuts the connection within one to
// two ticks (250 ms each), and the publish and the Client say why.
func TestStalledPublishIsCutAfterItsContextEnds(t *testing.T) {
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		openOK(c)
		<-c.Quit() // reads nothing more: the client's writes fill the socket buffers
	})
	ch, err := client.Channel(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte{'s'}, 1<<20)
	type result struct {
		err   error
		ended time.Time // when the failed publish's ctx ended
	}
	done := make(chan result, 1)
	go func() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := ch.Publish(ctx, "", "q", warren.Publishing{Body: body})
			d, _ := ctx.Deadline()
			cancel()
			if err != nil {
				done <- result{err, d}
				return
			}
		}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(testBound):
		// Closing the client (cleanup) ends the stuck write.
		t.Fatalf("no publish returned within %v: the stalled write was never cut", testBound)
	}
	pubErr, ended := r.err, r.ended
	late := time.Since(ended)
	if !errors.Is(pubErr, context.DeadlineExceeded) || !strings.Contains(pubErr.Error(), "stalled write") {
		t.Fatalf("publish: %v, want the stalled-write error wrapping context.DeadlineExceeded", pubErr)
	}
	if late > 2*time.Second {
		t.Fatalf("publish returned %v after its ctx ended; the watch cuts within 2 ticks (500 ms) plus scheduling", late)
	}
	t.Logf("publish cut %v after its ctx ended", late.Round(time.Millisecond))
	var ce *warren.ConnectionError
	if err := client.Err(); !errors.As(err, &ce) || !strings.Contains(err.Error(), "basic.publish") {
		t.Fatalf("client.Err() = %v, want a *ConnectionError naming basic.publish", err)
	}
}

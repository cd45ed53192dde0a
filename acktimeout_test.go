package warren_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// A basic.cancel that arrives 50 ms after the first delivery, with
// AckTimeout one hour, is reported as ErrAckTimeout (a leader move,
// an operator's cancel...).
func TestABrokerCancelSoonAfterADeliveryIsNotAnAckTimeout(t *testing.T) {
	release := make(chan struct{})
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		id := openOK(c)
		c.ExpectOn(int(id), fb.BasicQos)
		c.Send(id, fb.BasicQosOK, nil)
		m := c.ExpectOn(int(id), fb.ID(60, 20))
		r := m.Reader()
		r.Short()
		r.ShortStr()
		tag := r.ShortStr()
		c.Send(id, fb.ID(60, 21), new(fb.Args).ShortStr(tag))
		for i := uint64(1); i <= 2; i++ {
			c.Send(id, fb.BasicDeliver, new(fb.Args).ShortStr(tag).LongLong(i).Bits(false).ShortStr("").ShortStr("q"))
			c.SendFrame(fb.HeaderFrame(id, 60, 1, nil))
			c.SendFrame(fb.Frame{Type: fb.FrameBody, Channel: id, Payload: []byte("x")})
		}
		time.Sleep(50 * time.Millisecond)
		c.Send(id, fb.ID(60, 30), new(fb.Args).ShortStr(tag).Bits(true)) // basic.cancel, nowait
		serve(c)
	})
	ctx := testCtx(t)
	start := time.Now()
	err := client.Consume(ctx, "q", func(ctx context.Context, d *warren.Delivery) error {
		select {
		case <-ctx.Done():
		case <-release:
		}
		return nil
	}, warren.ConsumeOptions{AckTimeout: time.Hour, ShutdownTimeout: time.Second})
	close(release)
	t.Logf("after %v: %v", time.Since(start), err)
	if errors.Is(err, warren.ErrAckTimeout) {
		t.Fatalf("a cancel %v after the delivery, AckTimeout 1h, reported as ErrAckTimeout", time.Since(start))
	}
}

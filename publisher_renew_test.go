package warren_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// TestPublisherRenewsAChannelThatOnlyNacks pins down the Publisher's answer
// to a RabbitMQ 3.10 behaviour found on a cluster: a channel that began
// publishing to a quorum queue during a leader election is nacked for
// ever, while a new channel is acked. The fake broker nacks everything on
// the first channel the Publisher uses and acks on any other.
func TestPublisherRenewsAChannelThatOnlyNacks(t *testing.T) {
	var mu sync.Mutex
	var opened []uint16
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		for {
			m, err := c.Next()
			if err != nil {
				return
			}
			switch {
			case m.ID == fb.ChannelOpen:
				mu.Lock()
				opened = append(opened, m.Channel)
				mu.Unlock()
			case m.ID == fb.BasicPublish && m.Tag != 0:
				mu.Lock()
				first := m.Channel == opened[0]
				mu.Unlock()
				if first {
					c.Nack(m.Channel, m.Tag, false)
					continue
				}
			}
			if err := c.Answer(m); err != nil {
				return
			}
		}
	})
	ctx := testCtx(t)
	p, err := client.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	nacked := 0
	start := time.Now()
	for {
		err := p.Publish(ctx, "", "q", warren.Publishing{Body: []byte("x")})
		if err == nil {
			break
		}
		if !errors.Is(err, warren.ErrNacked) {
			t.Fatalf("publish %d: %v, want a nack", nacked, err)
		}
		nacked++
		if ctx.Err() != nil {
			t.Fatal("no ack before the test's bound")
		}
	}
	took := time.Since(start)
	// Renewal waits for 32 nacks in a row and for the channel to be a
	// second old.
	if nacked < 32 || took < 900*time.Millisecond {
		t.Fatalf("renewed after %d nacks and %v; want at least 32 and about a second", nacked, took)
	}
	if st := p.Stats(); st.Renewed != 1 || st.Nacked != int64(nacked) || st.Acked != 1 {
		t.Fatalf("stats %+v after %d nacks and one ack, want one renewal", st, nacked)
	}
	mu.Lock()
	n := len(opened)
	mu.Unlock()
	if n != 2 {
		t.Fatalf("%d channels opened, want 2 (the nacking one and its replacement)", n)
	}
	// Acks on the new channel: no more renewals.
	for i := range 100 {
		if err := p.Publish(ctx, "", "q", warren.Publishing{Body: []byte("y")}); err != nil {
			t.Fatalf("publish %d on the new channel: %v", i, err)
		}
	}
	if st := p.Stats(); st.Renewed != 1 {
		t.Fatalf("renewed %d times, want once", st.Renewed)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

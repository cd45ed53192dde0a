package warren_test

import (
	"context"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// Same channel_max before and after the reconnect: nothing should fail.
func TestEachPoolsOwnHeadroomIsCheckedAgainAfterAReconnect(t *testing.T) {
	leakCheck(t)
	kill := make(chan struct{}, 1)
	first := fb.Start(t, fb.Config{ChannelMax: 100}, killable(kill))
	second := fb.Start(t, fb.Config{ChannelMax: 100}, serve)
	log := newEventLog()
	client, err := warren.DialCluster(testCtx(t), []string{first.URL(), second.URL()},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}),
		warren.WithStateCallback(log.add))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	ctx := testCtx(t)
	a, err := client.NewPool(ctx, warren.PoolOptions{Size: 10, Headroom: 80}) // 10+80 <= 100
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	b, err := client.NewPool(ctx, warren.PoolOptions{Size: 20, Headroom: 1}) // 10+20+1 <= 100
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	ch, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("before reconnect: %v", err)
	}
	b.Release(ch)
	kill <- struct{}{}
	log.waitState(t, warren.StateReconnected)
	t.Logf("ChannelMax after: %d", client.ChannelMax())
	ch, err = b.Acquire(ctx)
	if err != nil {
		t.Fatalf("after reconnect to the same channel_max: %v", err)
	}
	b.Release(ch)
}

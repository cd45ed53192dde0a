package warren_test

import (
	"context"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// Client.Close is "bounded by ctx", but waits for the supervisor, which may
// be re-declaring the topology on a new connection for up to DialTimeout.
func TestCloseDoesNotWaitForATopologyRedeclareInProgress(t *testing.T) {
	kill := make(chan struct{}, 1)
	first := fb.Start(t, fb.Config{}, killable(kill))
	second := fb.Start(t, fb.Config{}, serve)
	inTopo := make(chan struct{}, 10)
	calls := 0
	client, err := warren.DialCluster(testCtx(t), []string{first.URL(), second.URL()},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, DialTimeout: 3 * time.Second}),
		warren.WithTopology(func(ctx context.Context, ch warren.Channel) error {
			calls++
			if calls > 1 {
				inTopo <- struct{}{}
				<-ctx.Done() // a broker that does not answer the declare
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	kill <- struct{}{}
	<-inTopo
	cctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = client.Close(cctx)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Close(200ms ctx) took %v: %v", took, err)
	}
}

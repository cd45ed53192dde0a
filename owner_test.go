package warren_test

// The Client owns every book across its connections: the pools' channel
// budget outlives a reconnect, and every entry point acts on the live
// connection.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// A reconnect to a broker whose channel_max is lower than the pools' total
// fails the pools that no longer fit (the newest first) with a clear error
// from Acquire, instead of opening channels the broker would refuse by
// closing the connection; and a pool made afterwards is checked against the
// budget the earlier pools still hold.
func TestPoolsThatNoLongerFitANewConnectionsChannelMaxGetAClearError(t *testing.T) {
	leakCheck(t)
	kill := make(chan struct{}, 1)
	big := fb.Start(t, fb.Config{ChannelMax: 100}, killable(kill))
	small := fb.Start(t, fb.Config{ChannelMax: 30}, serve)
	log := newEventLog()
	client, err := warren.DialCluster(testCtx(t), []string{big.URL(), small.URL()},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}),
		warren.WithStateCallback(log.add))
	if err != nil {
		t.Fatalf("DialCluster: %v", err)
	}
	defer client.Close(context.Background())
	ctx := testCtx(t)
	// Headroom 16 (default): 10+16 fits 30 and 100; 10+40+16 fits only 100.
	older, err := client.NewPool(ctx, warren.PoolOptions{Size: 10})
	if err != nil {
		t.Fatalf("NewPool 10: %v", err)
	}
	defer older.Close(ctx)
	newer, err := client.NewPool(ctx, warren.PoolOptions{Size: 40})
	if err != nil {
		t.Fatalf("NewPool 40 on channel_max 100: %v", err)
	}
	defer newer.Close(ctx)

	kill <- struct{}{}
	log.waitState(t, warren.StateReconnected)
	if got := client.ChannelMax(); got != 30 {
		t.Fatalf("ChannelMax after the reconnect: %d, want 30", got)
	}
	_, err = newer.Acquire(ctx)
	if !errors.Is(err, warren.ErrChannelMax) {
		t.Fatalf("Acquire on the pool that no longer fits: got %v, want ErrChannelMax", err)
	}
	ch, err := older.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire on the pool that still fits: %v", err)
	}
	older.Release(ch)
	// 10 + 8 + 16 > 30: the older pool's numbers still count.
	if _, err := client.NewPool(ctx, warren.PoolOptions{Size: 8}); !errors.Is(err, warren.ErrInvalidArgument) || !errors.Is(err, warren.ErrChannelMax) {
		t.Fatalf("NewPool 8 after the reconnect: got %v, want refused (10 of 30 held by the older pool, 16 headroom)", err)
	}
	p, err := client.NewPool(ctx, warren.PoolOptions{Size: 4})
	if err != nil {
		t.Fatalf("NewPool 4 after the reconnect: %v (10+4+16 fits 30)", err)
	}
	_ = p.Close(ctx)
}

// During a reconnect that takes a while, every entry point that opens a
// channel waits for the new connection (bounded by its ctx) and works on it.
func TestEveryEntryPointWaitsForTheNewConnectionDuringAReconnect(t *testing.T) {
	leakCheck(t)
	kill := make(chan struct{}, 1)
	first := fb.Start(t, fb.Config{}, killable(kill))
	// The second endpoint is dialled only after a round of failures: the
	// first refuses reconnects for a moment.
	second := fb.Start(t, fb.Config{}, serve)
	log := newEventLog()
	client, err := warren.DialCluster(testCtx(t), []string{first.URL(), second.URL()},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 300 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, StableAfter: time.Hour}),
		warren.WithStateCallback(log.add))
	if err != nil {
		t.Fatalf("DialCluster: %v", err)
	}
	defer client.Close(context.Background())
	ctx := testCtx(t)
	kill <- struct{}{}
	log.waitState(t, warren.StateDisconnected)
	// StableAfter keeps the connection counted as unstable: the redial
	// waits a backoff first, and the calls below come during it.
	calls := map[string]func() error{
		"Channel": func() error { _, err := client.Channel(ctx); return err },
		"Begin": func() error {
			tx, err := client.Begin(ctx)
			if err == nil {
				err = tx.Rollback(ctx)
			}
			return err
		},
		"Tx": func() error { return client.Tx(ctx, func(*warren.Tx) error { return nil }) },
		"NewPool": func() error {
			p, err := client.NewPool(ctx, warren.PoolOptions{Size: 1, MinIdle: 1})
			closeIf(ctx, p, err)
			return err
		},
		"NewPublisher": func() error {
			p, err := client.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
			if err == nil {
				err = p.Close(ctx)
			}
			return err
		},
	}
	errs := make(chan error, len(calls))
	for name, call := range calls {
		go func() {
			if err := call(); err != nil {
				errs <- errors.Join(errors.New(name), err)
				return
			}
			errs <- nil
		}()
	}
	for range calls {
		if err := <-errs; err != nil {
			t.Errorf("during the reconnect: %v, want it to wait and work on the new connection", err)
		}
	}
	if e := log.waitState(t, warren.StateReconnected); e.Err != nil {
		t.Fatalf("reconnected with %v", e.Err)
	}
}

func closeIf(ctx context.Context, p *warren.Pool, err error) {
	if err == nil {
		_ = p.Close(ctx)
	}
}

// Client.Close with a Publisher still open ends its workers first (they
// stop when the Close begins), with or without WithReconnect.
func TestClientCloseWithAPublisherOpenReturnsPromptly(t *testing.T) {
	for _, reconnect := range []bool{false, true} {
		t.Run(fmt.Sprint("reconnect=", reconnect), func(t *testing.T) {
			var opts []warren.Option
			if reconnect {
				opts = append(opts, warren.WithReconnect(warren.ReconnectPolicy{}))
			}
			client := startFake(t, fb.Config{}, serve, opts...)
			ctx := testCtx(t)
			if _, err := client.NewPublisher(ctx, warren.PublisherOptions{Channels: 2}); err != nil {
				t.Fatalf("NewPublisher: %v", err)
			}
			start := time.Now()
			closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := client.Close(closeCtx); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("Close took %v with a Publisher open", took)
			}
		})
	}
}

// A Publisher made on an earlier connection is the Client's, not that
// connection's: Client.Close returns only once its workers have ended, so
// nothing of it is left running when Close returns (checked at once, with
// no grace for stragglers). And Close is prompt: a pool warming its
// channels on the closing connection does not hold it for the close timeout
// (1 run in ~30 took 10 s before).
func TestClientCloseAfterAReconnectLeavesNoPublisherWorkerRunning(t *testing.T) {
	leakCheck(t)
	kill := make(chan struct{}, 1)
	first := fb.Start(t, fb.Config{}, killable(kill))
	second := fb.Start(t, fb.Config{}, serve)
	log := newEventLog()
	client, err := warren.DialCluster(testCtx(t), []string{first.URL(), second.URL()},
		warren.WithEndpointOrder(warren.EndpointsInOrder),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}),
		warren.WithStateCallback(log.add))
	if err != nil {
		t.Fatalf("DialCluster: %v", err)
	}
	ctx := testCtx(t)
	p, err := client.NewPublisher(ctx, warren.PublisherOptions{Channels: 4})
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	kill <- struct{}{}
	log.waitState(t, warren.StateReconnected)
	// The first publish may meet the worker's channel of the lost
	// connection: not sent (retried), or sent as it died (unknown).
	if err := p.Publish(ctx, "", "q", warren.Publishing{Body: []byte("x")}); err != nil && !errors.Is(err, warren.ErrOutcomeUnknown) {
		t.Fatalf("Publish: %v", err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
	defer ccancel()
	if err := client.Close(cctx); err != nil {
		buf := make([]byte, 1<<20)
		t.Fatalf("Close: %v\n%s", err, buf[:runtime.Stack(buf, true)])
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	if strings.Contains(stacks, "(*Publisher).work") {
		t.Fatalf("a Publisher worker still running after Client.Close returned:\n%s", stacks)
	}
}

package integration

// Batch consumers (issue 20, item 3): batches of Size, smaller ones after
// MaxWait, a partial failure expressed by rejecting, nothing lost across
// 10,000 messages with several workers, a prefetch below the batch size
// refused, and a panicking batch handler.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// startBatchConsumer starts a batch Consumer and cancels it when the test
// ends.
func startBatchConsumer(t *testing.T, ctx context.Context, c *warren.Client, q string, h warren.BatchHandler, opts warren.BatchOptions) *warren.Consumer {
	t.Helper()
	k, err := c.StartBatchConsumer(ctx, q, h, opts)
	require.NoError(t, err, "StartBatchConsumer")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = k.Cancel(ctx)
	})
	return k
}

// batchSizes records the sizes of the batches a handler got.
type batchSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchSizes) add(n int) {
	b.mu.Lock()
	b.sizes = append(b.sizes, n)
	b.mu.Unlock()
}

func (b *batchSizes) get() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.sizes...)
}

func TestBatchConsumerHandsFullBatchesOfSize(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	fillNumbered(t, ctx, c, q, 100)
	var sizes batchSizes
	k := startBatchConsumer(t, ctx, c, q, func(_ context.Context, batch []*warren.Delivery) error {
		sizes.add(len(batch))
		return nil
	}, warren.BatchOptions{Size: 10, MaxWait: 5 * time.Second})
	eventually(t, ctx, "100 acked", func() string {
		if s := k.Stats(); s.Acked != 100 {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	require.Equal(t, slices.Repeat([]int{10}, 10), sizes.get(), "batch sizes: want 10 batches of 10")
	if d := queueDepthOn(t, ctx, c, q); d != 0 {
		t.Errorf("queue depth: got %d, want 0", d)
	}
}

func TestBatchConsumerHandsASmallerBatchAfterMaxWait(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	var sizes batchSizes
	k := startBatchConsumer(t, ctx, c, q, func(_ context.Context, batch []*warren.Delivery) error {
		sizes.add(len(batch))
		return nil
	}, warren.BatchOptions{Size: 10, MaxWait: 200 * time.Millisecond})
	fillNumbered(t, ctx, c, q, 3)
	eventually(t, ctx, "3 acked", func() string {
		if s := k.Stats(); s.Acked != 3 {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	if got := sizes.get(); len(got) != 1 || got[0] != 3 {
		t.Errorf("batch sizes: got %v, want [3]", got)
	}
}

func TestBatchConsumerPartialFailureRejectsOnlyTheFailedOnes(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	const n = 20
	fillNumbered(t, ctx, c, q, n)
	var mu sync.Mutex
	firstSeen := map[int]bool{}
	redelivered := map[int]int{}
	k := startBatchConsumer(t, ctx, c, q, func(ctx context.Context, batch []*warren.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range batch {
			i, _ := strconv.Atoi(string(d.Body))
			if d.Redelivered {
				redelivered[i]++
				continue // acked by warren with the rest
			}
			firstSeen[i] = true
			if i%2 == 0 { // "fails" the first time: rejected by the handler, requeued
				if err := d.Reject(ctx, true); err != nil {
					return err
				}
			}
		}
		return nil
	}, warren.BatchOptions{Size: 10, MaxWait: time.Second})
	eventually(t, ctx, "every message acked", func() string {
		if s := k.Stats(); s.Acked != n {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	mu.Lock()
	defer mu.Unlock()
	if len(firstSeen) != n {
		t.Errorf("%d distinct messages seen, want %d", len(firstSeen), n)
	}
	if len(redelivered) != n/2 {
		t.Errorf("%d messages redelivered (%v), want the %d rejected ones", len(redelivered), redelivered, n/2)
	}
	for i, k := range redelivered {
		if i%2 != 0 || k != 1 {
			t.Errorf("message %d redelivered %d times; want only even ones, once", i, k)
		}
	}
	if s := k.Stats(); s.Rejected != n/2 {
		t.Errorf("Rejected: got %d, want %d", s.Rejected, n/2)
	}
}

func TestBatchConsumerLosesNothingAcrossTenThousandMessages(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	const n = 10000
	fillNumbered(t, ctx, c, q, n)
	var mu sync.Mutex
	seen := make([]int, n)
	k := startBatchConsumer(t, ctx, c, q, func(_ context.Context, batch []*warren.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range batch {
			i, err := strconv.Atoi(string(d.Body))
			if err != nil || i < 0 || i >= n {
				t.Errorf("unexpected body %q", d.Body)
				continue
			}
			seen[i]++
		}
		return nil
	}, warren.BatchOptions{Size: 50, ConsumeOptions: warren.ConsumeOptions{Workers: 4}})
	eventually(t, ctx, "10,000 acked", func() string {
		if s := k.Stats(); s.Acked != n {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	require.NoError(t, k.Cancel(ctx), "Cancel")
	mu.Lock()
	defer mu.Unlock()
	for i, k := range seen {
		if k != 1 {
			t.Fatalf("message %d handled %d times, want once", i, k)
		}
	}
	if d := queueDepthOn(t, ctx, c, q); d != 0 {
		t.Errorf("queue depth: got %d, want 0", d)
	}
}

func TestBatchConsumerRefusesAPrefetchBelowTheBatchSize(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	before := c.OpenChannels()
	_, err := c.StartBatchConsumer(ctx, "any", func(context.Context, []*warren.Delivery) error { return nil },
		warren.BatchOptions{Size: 50, ConsumeOptions: warren.ConsumeOptions{Prefetch: 10}})
	if !errors.Is(err, warren.ErrInvalidArgument) {
		t.Fatalf("Prefetch 10 with Size 50: got %v, want ErrInvalidArgument", err)
	}
	if n := c.OpenChannels(); n != before {
		t.Errorf("open channels: got %d, want %d (nothing opened)", n, before)
	}
}

func TestBatchConsumerPanicRejectsTheUnsettledRest(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	fillNumbered(t, ctx, c, q, 5)
	var mu sync.Mutex
	redelivered := 0
	panicked := false
	var onPanic int
	k := startBatchConsumer(t, ctx, c, q, func(ctx context.Context, batch []*warren.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		if !panicked {
			panicked = true
			if err := batch[0].Ack(ctx); err != nil {
				return err
			}
			panic("batch handler panics")
		}
		for _, d := range batch {
			if d.Redelivered {
				redelivered++
			}
		}
		return nil
	}, warren.BatchOptions{Size: 5, MaxWait: time.Second, ConsumeOptions: warren.ConsumeOptions{
		OnPanic: func(*warren.Delivery, any, []byte) { onPanic++ }}})
	eventually(t, ctx, "all 5 acked", func() string {
		if s := k.Stats(); s.Acked != 5 {
			return fmt.Sprintf("stats %+v", s)
		}
		return ""
	})
	mu.Lock()
	defer mu.Unlock()
	if redelivered != 4 {
		t.Errorf("%d redelivered after the panic, want the 4 left unsettled", redelivered)
	}
	if s := k.Stats(); s.Panics != 1 || s.Rejected != 4 || s.HandlerErrors != 1 || onPanic != 1 {
		t.Errorf("stats %+v, OnPanic called %d times; want 1 panic, 4 rejected, 1 handler error, OnPanic once", s, onPanic)
	}
}

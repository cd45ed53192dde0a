package integration

// ConsumeOptions.CoalesceAcks against a real broker: a double or stray
// multiple ack would close the channel (406 PRECONDITION_FAILED, unknown
// delivery tag), a lost one leave messages unacked; neither may happen, and
// the acks go out as multiple acks.

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

func TestCoalescedAcksSettleEveryMessageOnce(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	const n = 3000
	fillNumbered(t, ctx, c, q, n)
	var got idSet
	k := startConsumer(t, ctx, c, q, func(_ context.Context, d *warren.Delivery) error {
		got.add(t, d)
		if d.DeliveryTag%100 == 50 {
			return fmt.Errorf("tag %d fails once", d.DeliveryTag) // rejected, requeued
		}
		return nil
	}, warren.ConsumeOptions{CoalesceAcks: true, Prefetch: 300})
	eventually(t, ctx, "every message handled and acked", func() string {
		if s := k.Stats(); got.len() != n || s.Acked != n {
			return fmt.Sprintf("%d handled, stats %+v", got.len(), s)
		}
		return ""
	})
	require.NoError(t, k.Cancel(ctx), "Cancel")
	require.NoError(t, k.Err(), "Err")
	s := k.Stats()
	if s.Rejected == 0 || s.Delivered != n+s.Rejected {
		t.Errorf("stats %+v: want some rejects, each delivered again", s)
	}
	if d := queueDepthOn(t, ctx, c, q); d != 0 {
		t.Errorf("queue depth after consuming: %d, want 0", d)
	}
}

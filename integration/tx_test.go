package integration

// Transactions against a real broker (issue 4): commit and rollback of
// publishes and of acks, database/sql semantics after the end, the Tx(fn)
// helpers with error and panic, tx pools, an unknown commit outcome, and
// confirm/tx mixing refused client-side.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/internal/faultproxy"
)

// fill publishes n messages to queue on a channel of its own.
func fill(t *testing.T, ctx context.Context, c *warren.Client, queue string, n int) {
	t.Helper()
	ch, err := c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close(ctx)
	if err := ch.SetMode(ctx, warren.ModeConfirm); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte(fmt.Sprint("m-", i))}); err != nil {
			t.Fatalf("fill: %v", err)
		}
	}
}

// wantTxDone checks that every operation of a finished Tx returns ErrTxDone.
func wantTxDone(t *testing.T, ctx context.Context, tx *warren.Tx, queue string) {
	t.Helper()
	if err := tx.Publish(ctx, "", queue, warren.Publishing{}); !errors.Is(err, warren.ErrTxDone) {
		t.Errorf("Publish after the end: got %v, want ErrTxDone", err)
	}
	if _, _, err := tx.Get(ctx, queue, warren.GetOptions{}); !errors.Is(err, warren.ErrTxDone) {
		t.Errorf("Get after the end: got %v, want ErrTxDone", err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, warren.ErrTxDone) {
		t.Errorf("Commit after the end: got %v, want ErrTxDone", err)
	}
	if err := tx.Rollback(ctx); !errors.Is(err, warren.ErrTxDone) {
		t.Errorf("Rollback after the end: got %v, want ErrTxDone", err)
	}
}

func TestTxPublishesAppearOnlyOnCommit(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)

	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if m := tx.Channel().Mode(); m != warren.ModeTx {
		t.Fatalf("Tx channel mode: %s, want tx", m)
	}
	for i := 0; i < 10; i++ {
		if err := tx.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	time.Sleep(200 * time.Millisecond) // give uncommitted messages every chance to show
	if got := queueDepth(t, b, q); got != 0 {
		t.Fatalf("before Commit the queue holds %d messages, want 0", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if got := queueDepth(t, b, q); got != 10 {
		t.Fatalf("after Commit the queue holds %d messages, want 10", got)
	}
	wantTxDone(t, ctx, tx, q)
	// Client.Begin's channel is the transaction's own: closed at the end.
	if err := tx.Channel().Err(); !errors.Is(err, warren.ErrChannelClosed) {
		t.Errorf("Tx channel after Commit: %v, want ErrChannelClosed", err)
	}
	if got := c.OpenChannels(); got != 1 {
		t.Errorf("OpenChannels after the transaction: %d, want 1", got)
	}
}

func TestTxRollbackDiscardsPublishes(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)

	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) // safe after Rollback: ErrTxDone, ignored
	for i := 0; i < 10; i++ {
		if err := tx.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	wantTxDone(t, ctx, tx, q)
	time.Sleep(200 * time.Millisecond)
	if got := queueDepth(t, b, q); got != 0 {
		t.Fatalf("after Rollback the queue holds %d messages, want 0", got)
	}
}

// Acks made inside a transaction take effect on commit; rolled back, the
// messages are still unacknowledged and come back to the queue (redelivered)
// when the transaction's channel closes.
func TestTxAcksTakeEffectOnCommitAndComeBackAfterRollback(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	fill(t, ctx, c, q, 6)

	take := func(tx *warren.Tx, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			d, ok, err := tx.Get(ctx, q, warren.GetOptions{})
			if err != nil || !ok {
				t.Fatalf("Get %d: ok %v, err %v", i, ok, err)
			}
			if err := d.Ack(ctx); err != nil {
				t.Fatalf("Ack %d: %v", i, err)
			}
		}
	}

	// Rolled back: the 3 acked messages return.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	take(tx, 3)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	waitDepth(t, ctx, b, q, 6)

	// Committed: the acks stand.
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch := tx.Channel()
	d, ok, err := ch.Get(ctx, q, warren.GetOptions{})
	if err != nil || !ok {
		t.Fatalf("Get: ok %v err %v", ok, err)
	}
	if !d.Redelivered {
		t.Errorf("the first message after the rollback: Redelivered false, want true")
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	take(tx, 3)
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	waitDepth(t, ctx, b, q, 2)
}

func TestTxHelperCommitsOnNilRollsBackOnErrorAndOnPanic(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	publish := func(tx *warren.Tx) {
		if err := tx.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
			t.Fatalf("Publish in Tx: %v", err)
		}
	}

	if err := c.Tx(ctx, func(tx *warren.Tx) error { publish(tx); return nil }); err != nil {
		t.Fatalf("Tx returning nil: %v", err)
	}
	waitDepth(t, ctx, b, q, 1)

	boom := errors.New("handler failed")
	if err := c.Tx(ctx, func(tx *warren.Tx) error { publish(tx); return boom }); !errors.Is(err, boom) {
		t.Fatalf("Tx returning an error: got %v, want it back", err)
	}

	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("Tx with a panicking function: recovered %v, want the panic to continue", r)
			}
		}()
		_ = c.Tx(ctx, func(tx *warren.Tx) error { publish(tx); panic("kaboom") })
		t.Fatal("Tx returned after its function panicked")
	}()

	// fn may end the transaction itself.
	if err := c.Tx(ctx, func(tx *warren.Tx) error { publish(tx); return tx.Commit(ctx) }); err != nil {
		t.Fatalf("Tx whose function committed: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := queueDepth(t, b, q); got != 2 {
		t.Fatalf("queue holds %d messages, want 2 (the two committed transactions)", got)
	}
	if got := c.OpenChannels(); got != 1 {
		t.Errorf("OpenChannels after four transactions: %d, want 1", got)
	}
}

// A tx pool reuses a channel across clean transactions; one that fetched a
// message, or is released with uncommitted work, is closed instead (which
// returns the message and discards the work).
func TestTxPoolReusesCleanChannelsAndDiscardsUnfinishedOnes(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2, Mode: warren.ModeTx})

	var ids []uint16
	for i := 0; i < 5; i++ {
		err := p.Tx(ctx, func(tx *warren.Tx) error {
			ids = append(ids, tx.Channel().ID())
			return tx.Publish(ctx, "", q, warren.Publishing{Body: body128})
		})
		if err != nil {
			t.Fatalf("Pool.Tx %d: %v", i, err)
		}
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Errorf("clean transactions used channels %v, want one channel reused", ids)
			break
		}
	}
	waitDepth(t, ctx, b, q, 5)
	if s := p.Stats(); s.Opened != 1 {
		t.Errorf("Stats.Opened after 5 clean transactions: %d, want 1", s.Opened)
	}

	// A transaction that fetched a message and rolled back: its channel
	// is closed, and the message is back.
	err := p.Tx(ctx, func(tx *warren.Tx) error {
		if _, ok, err := tx.Get(ctx, q, warren.GetOptions{}); err != nil || !ok {
			t.Fatalf("Get: ok %v err %v", ok, err)
		}
		return errors.New("roll back")
	})
	if err == nil {
		t.Fatal("Pool.Tx returning an error: got nil")
	}
	waitDepth(t, ctx, b, q, 5)

	// A raw lease released with uncommitted work: closed, work discarded.
	lc, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := lc.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
		t.Fatal(err)
	}
	p.Release(lc)
	s := p.Stats()
	if s.Discarded.TxUnfinished != 2 {
		t.Errorf("Stats.Discarded.TxUnfinished: %d, want 2 (%+v)", s.Discarded.TxUnfinished, s)
	}
	// The next transaction gets a clean channel: committing it commits
	// nothing left over.
	if err := p.Tx(ctx, func(tx *warren.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := queueDepth(t, b, q); got != 5 {
		t.Errorf("queue holds %d messages, want 5: a discarded transaction's publish leaked into a later commit", got)
	}

	if _, err := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1}).Begin(ctx); !errors.Is(err, warren.ErrModeConflict) {
		t.Errorf("Begin on a plain pool: got %v, want ErrModeConflict", err)
	}
}

// A commit whose answer never comes (ctx ends while the broker's replies
// are held back) has an unknown outcome, not a failure.
func TestTxCommitWithoutAnAnswerIsOutcomeUnknown(t *testing.T) {
	r := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	c := r.dial()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Publish(ctx, "", "amq.rabbitmq.nowhere", warren.Publishing{Body: body128}); err != nil {
		t.Fatal(err)
	}
	r.proxy.Stall(faultproxy.ServerToClient)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = tx.Commit(short)
	cancel()
	wantUnknown(t, "Commit abandoned by its ctx", err, context.DeadlineExceeded)
	var ou *warren.OutcomeUnknownError
	if errors.As(err, &ou) && ou.Op != "tx.commit" {
		t.Errorf("OutcomeUnknownError.Op = %q, want tx.commit", ou.Op)
	}
	if !strings.Contains(err.Error(), "tx.commit") {
		t.Errorf("error %q does not name tx.commit", err)
	}
	wantTxDone(t, ctx, tx, "q")
	r.proxy.Resume(faultproxy.ServerToClient)
	roundTrip(t, ctx, c)
}

// Confirm and tx mode are refused on each other's channels before anything
// is sent: the channel stays usable (the broker's answer would be a 406).
func TestTxAndConfirmMixingIsRefusedClientSide(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)

	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Channel().SetMode(ctx, warren.ModeConfirm); !errors.Is(err, warren.ErrModeConflict) {
		t.Fatalf("SetMode(ModeConfirm) on a tx channel: got %v, want ErrModeConflict", err)
	}
	if _, err := tx.Channel().PublishDeferred(ctx, warren.Message{Key: q}); !errors.Is(err, warren.ErrNotConfirmMode) {
		t.Errorf("PublishDeferred on a tx channel: got %v, want ErrNotConfirmMode", err)
	}
	if err := tx.PublishMessage(ctx, warren.Message{Key: q, Mandatory: true}); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("mandatory publish in a transaction: got %v, want ErrInvalidArgument", err)
	}
	if err := tx.Publish(ctx, "", q, warren.Publishing{Body: body128}); err != nil {
		t.Fatalf("Publish after the refusals: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("Commit after the refusals: %v (a 406 would mean the refusal reached the broker)", err)
	}
	waitDepth(t, ctx, b, q, 1)
}

// A transaction that fetched messages and acked them all, committed, leaves
// its channel clean: the tx pool reuses it.
func TestTxPoolReusesChannelsOfCommittedGetAndAck(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	fill(t, ctx, c, q, 6)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1, Mode: warren.ModeTx})
	for i := 0; i < 3; i++ {
		err := p.Tx(ctx, func(tx *warren.Tx) error {
			for j := 0; j < 2; j++ {
				d, ok, err := tx.Get(ctx, q, warren.GetOptions{})
				if err != nil || !ok {
					t.Fatalf("Get: ok %v err %v", ok, err)
				}
				if err := d.Ack(ctx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Pool.Tx %d: %v", i, err)
		}
	}
	if s := p.Stats(); s.Opened != 1 || s.Discarded.TxUnfinished != 0 {
		t.Errorf("after 3 committed Get+Ack transactions: Opened %d, TxUnfinished %d; want 1 and 0", s.Opened, s.Discarded.TxUnfinished)
	}
	waitDepth(t, ctx, b, q, 0)
}

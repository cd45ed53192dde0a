package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/internal/faultproxy"
)

// closers is how many goroutines call one Close at once.
const closers = 50

// closeAllLimit bounds how long the closers of one object may take
// together.
const closeAllLimit = 15 * time.Second

// fromMany calls fn from closers goroutines released at once and returns
// what each call returned. A panic in fn crashes the test binary; calls
// still running after closeAllLimit fail the test.
func fromMany(t *testing.T, what string, fn func() error) []error {
	t.Helper()
	errs := make([]error, closers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range closers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = fn()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	close(start)
	select {
	case <-done:
	case <-time.After(closeAllLimit):
		t.Fatalf("%s from %d goroutines at once: not every call returned within %v", what, closers, closeAllLimit)
	}
	return errs
}

// wantAllNil checks that every call returned nil.
func wantAllNil(t *testing.T, what string, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s, caller %d of %d: got %v, want nil (a clean close)", what, i, len(errs), err)
		}
	}
}

// wantAllSame checks that every call returned the same error, matching
// target.
func wantAllSame(t *testing.T, what string, errs []error, target error) {
	t.Helper()
	first := errs[0]
	if !errors.Is(first, target) {
		t.Errorf("%s, caller 0: got %v, want an error matching %v", what, first, target)
		return
	}
	for i, err := range errs[1:] {
		if err == nil || err.Error() != first.Error() {
			t.Errorf("%s, caller %d: got %v, want the same result as caller 0: %v", what, i+1, err, first)
		}
	}
}

// wantOneNilRestTxDone checks database/sql's rule for a Tx: one call ends
// the transaction, every other one returns ErrTxDone.
func wantOneNilRestTxDone(t *testing.T, what string, errs []error) {
	t.Helper()
	var ok, done int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, warren.ErrTxDone):
			done++
		default:
			t.Errorf("%s, caller %d: got %v, want nil or ErrTxDone", what, i, err)
		}
	}
	if ok != 1 || done != len(errs)-1 {
		t.Errorf("%s from %d goroutines: got %d nil and %d ErrTxDone, want 1 and %d", what, len(errs), ok, done, len(errs)-1)
	}
}

// wantOpenChannels waits (briefly) for the client to report want open
// channels.
func wantOpenChannels(t *testing.T, ctx context.Context, what string, c *warren.Client, want int) {
	t.Helper()
	eventually(t, ctx, what, func() string {
		if got := c.OpenChannels(); got != want {
			return fmt.Sprintf("OpenChannels: got %d, want %d", got, want)
		}
		return ""
	})
}

func TestEveryCloseCalledFromFiftyGoroutinesAtOnceGivesEachCallerTheFirstResultAndReallyCloses(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)

	t.Run("Channel", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		ch := openChannel(t, ctx, c)
		if err := ch.Publish(ctx, "", uniqueName(t, "nowhere-"), warren.Publishing{Body: []byte("x")}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		wantAllNil(t, "Channel.Close", fromMany(t, "Channel.Close", func() error { return ch.Close(ctx) }))
		wantErrIs(t, "Publish after Close", ch.Publish(ctx, "", "nowhere", warren.Publishing{}), warren.ErrChannelClosed)
		wantOpenChannels(t, ctx, "after Channel.Close", c, 0)
		roundTrip(t, ctx, c) // the connection is fine
	})

	t.Run("Channel the broker closed first", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		ch := openChannel(t, ctx, c)
		missing := uniqueName(t, "missing-exchange-")
		_ = ch.Publish(ctx, missing, "", warren.Publishing{Body: []byte("x")})
		eventually(t, ctx, "the broker's 404 reaches the channel", func() string {
			if err := ch.Err(); !errors.Is(err, warren.ErrNotFound) {
				return fmt.Sprintf("Err: got %v", err)
			}
			return ""
		})
		wantAllSame(t, "Channel.Close", fromMany(t, "Channel.Close", func() error { return ch.Close(ctx) }), warren.ErrNotFound)
		wantErrIs(t, "Publish after Close", ch.Publish(ctx, "", "nowhere", warren.Publishing{}), warren.ErrNotFound)
		wantOpenChannels(t, ctx, "after Channel.Close", c, 0)
	})

	t.Run("Channel while another goroutine's operation is running", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		r := newFaultRig(t)
		c := r.dial()
		ch := openChannel(t, ctx, c)
		// The broker's replies are held back: the other goroutine's
		// QueueDeclare runs until they are let through.
		r.proxy.Stall(faultproxy.ServerToClient)
		opDone := make(chan error, 1)
		go func() {
			for {
				_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
				if !errors.Is(err, warren.ErrConcurrentUse) { // not a collision with the probe below
					opDone <- err
					return
				}
			}
		}()
		eventually(t, ctx, "the QueueDeclare holds the channel", func() string {
			if err := ch.Publish(ctx, "", "nowhere", warren.Publishing{}); !errors.Is(err, warren.ErrConcurrentUse) {
				return fmt.Sprintf("a probe Publish got %v, want ErrConcurrentUse", err)
			}
			return ""
		})
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := ch.Close(short)
		cancel()
		wantErrIs(t, "Channel.Close whose ctx ends while the operation runs", err, context.DeadlineExceeded)

		const resumeAfter = 300 * time.Millisecond
		resume := time.AfterFunc(resumeAfter, func() { r.proxy.Resume(faultproxy.ServerToClient) })
		defer resume.Stop()
		start := time.Now()
		errs := fromMany(t, "Channel.Close", func() error { return ch.Close(ctx) })
		took := time.Since(start)
		wantAllNil(t, "Channel.Close", errs)
		if took < resumeAfter*2/3 {
			t.Errorf("Channel.Close returned after %v, want it to wait for the running operation (held until %v)", took, resumeAfter)
		}
		select {
		case err := <-opDone:
			if err != nil {
				t.Errorf("the running QueueDeclare: got %v, want nil (Close must not cut it short)", err)
			}
		case <-time.After(closeAllLimit):
			t.Fatalf("the running QueueDeclare: not back %v after every Close returned", closeAllLimit)
		}
		wantErrIs(t, "Publish after Close", ch.Publish(ctx, "", "nowhere", warren.Publishing{}), warren.ErrChannelClosed)
		wantOpenChannels(t, ctx, "after Channel.Close", c, 0)
		roundTrip(t, ctx, c)
	})

	t.Run("Pool with leases coming back meanwhile", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		// The pool takes every channel number the client may pool: a
		// second one fits only once Close has given them back, and a
		// third never (unless Close gave them back twice).
		size := int(c.ChannelMax()) - 16
		p := newTestPool(t, ctx, c, warren.PoolOptions{Size: size, MinIdle: 2})
		var leases []warren.Channel
		for range 3 {
			leases = append(leases, poolAcquire(t, ctx, p))
		}
		var next atomic.Int64
		errs := fromMany(t, "Pool.Close", func() error {
			if i := int(next.Add(1)) - 1; i < len(leases) {
				p.Release(leases[i])
			}
			return p.Close(ctx)
		})
		wantAllNil(t, "Pool.Close", errs)
		if _, err := p.Acquire(ctx); !errors.Is(err, warren.ErrPoolClosed) {
			t.Errorf("Acquire after Close: got %v, want ErrPoolClosed", err)
		}
		if s := p.Stats(); s.Open != 0 || s.InUse != 0 || s.Idle != 0 {
			t.Errorf("Stats after Close: got Open %d, InUse %d, Idle %d, want 0, 0, 0", s.Open, s.InUse, s.Idle)
		}
		if got := c.OpenChannels(); got != 0 {
			t.Errorf("OpenChannels after Close returned: got %d, want 0", got)
		}
		again := newTestPool(t, ctx, c, warren.PoolOptions{Size: size})
		if extra, err := c.NewPool(ctx, warren.PoolOptions{Size: 1}); !errors.Is(err, warren.ErrInvalidArgument) {
			if extra != nil {
				_ = extra.Close(ctx)
			}
			t.Errorf("NewPool beyond channel_max after the closed pool was replaced: got %v, want ErrInvalidArgument (Close gave its channel numbers back more than once)", err)
		}
		_ = again
	})

	t.Run("Pool.Release of one lease", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2})
		ch := poolAcquire(t, ctx, p)
		id := ch.ID()
		fromMany(t, "Pool.Release", func() error { p.Release(ch); return nil })
		if s := p.Stats(); s.Open != 1 || s.InUse != 0 || s.Idle != 1 {
			t.Errorf("Stats after Release: got Open %d, InUse %d, Idle %d, want 1, 0, 1", s.Open, s.InUse, s.Idle)
		}
		wantErrIs(t, "Publish on the released handle", ch.Publish(ctx, "", "nowhere", warren.Publishing{}), warren.ErrReleased)
		again := poolAcquire(t, ctx, p)
		if again.ID() != id {
			t.Errorf("Acquire after Release: got channel %d, want %d reused", again.ID(), id)
		}
		if err := again.Publish(ctx, "", "nowhere", warren.Publishing{}); err != nil {
			t.Errorf("Publish on the new lease: %v", err)
		}
		p.Release(again)
	})

	t.Run("Publisher with publishes in flight", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		q := uniqueName(t, "q-")
		declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
		base := c.OpenChannels()
		pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 2})
		if err != nil {
			t.Fatalf("NewPublisher: %v", err)
		}
		var acked atomic.Int64
		var pubs errgroup.Group
		for range 8 {
			pubs.Go(func() error {
				for {
					err := pub.Publish(ctx, "", q, warren.Publishing{Body: []byte("x")})
					switch {
					case err == nil:
						acked.Add(1)
					case errors.Is(err, warren.ErrPublisherClosed):
						return nil
					default:
						return err
					}
				}
			})
		}
		eventually(t, ctx, "publishes are acked", func() string {
			if acked.Load() < 20 {
				return fmt.Sprintf("%d acked", acked.Load())
			}
			return ""
		})
		wantAllNil(t, "Publisher.Close", fromMany(t, "Publisher.Close", func() error { return pub.Close(ctx) }))
		if err := pubs.Wait(); err != nil {
			t.Errorf("Publish during Close: got %v, want nil (answered before Close returned) or ErrPublisherClosed", err)
		}
		wantErrIs(t, "Publish after Close", pub.Publish(ctx, "", q, warren.Publishing{}), warren.ErrPublisherClosed)
		if got := c.OpenChannels(); got != base {
			t.Errorf("OpenChannels after Close returned: got %d, want %d (the publisher's channels closed)", got, base)
		}
		waitDepth(t, ctx, b, q, int(acked.Load()))
	})

	t.Run("Tx.Rollback", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		q := uniqueName(t, "q-")
		declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
		base := c.OpenChannels()
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		if err := tx.Publish(ctx, "", q, warren.Publishing{Body: []byte("x")}); err != nil {
			t.Fatalf("Publish in the transaction: %v", err)
		}
		wantOneNilRestTxDone(t, "Tx.Rollback", fromMany(t, "Tx.Rollback", func() error { return tx.Rollback(ctx) }))
		wantTxDone(t, ctx, tx, q)
		if got := c.OpenChannels(); got != base {
			t.Errorf("OpenChannels after the rollback: got %d, want %d (the transaction's channel closed)", got, base)
		}
		if got := queueDepth(t, b, q); got != 0 {
			t.Errorf("queue after the rollback: got %d messages, want 0", got)
		}
	})

	t.Run("Tx.Commit with a deferred Rollback", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		q := uniqueName(t, "q-")
		declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
		base := c.OpenChannels()
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		if err := tx.Publish(ctx, "", q, warren.Publishing{Body: []byte("x")}); err != nil {
			t.Fatalf("Publish in the transaction: %v", err)
		}
		rollbacks := make([]error, closers)
		var next atomic.Int64
		commits := fromMany(t, "Tx.Commit then Tx.Rollback", func() error {
			i := next.Add(1) - 1
			err := tx.Commit(ctx)
			rollbacks[i] = tx.Rollback(ctx)
			return err
		})
		wantOneNilRestTxDone(t, "Tx.Commit", commits)
		for i, err := range rollbacks {
			if !errors.Is(err, warren.ErrTxDone) {
				t.Errorf("Tx.Rollback after Commit, caller %d: got %v, want ErrTxDone", i, err)
			}
		}
		if got := c.OpenChannels(); got != base {
			t.Errorf("OpenChannels after the commit: got %d, want %d (the transaction's channel closed)", got, base)
		}
		if got := queueDepth(t, b, q); got != 1 {
			t.Errorf("queue after the commit: got %d messages, want 1", got)
		}
	})

	t.Run("Consume stopped by its ctx", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		ch := openChannel(t, ctx, c)
		q := uniqueName(t, "q-")
		declareQueue(t, ctx, b, ch, q)
		base := c.OpenChannels()
		var handled atomic.Int64
		cctx, stop := context.WithCancel(ctx)
		defer stop()
		done := consumeAsync(cctx, c, q, func(context.Context, *warren.Delivery) error {
			handled.Add(1)
			return nil
		}, warren.ConsumeOptions{Workers: 4})
		for range 20 {
			if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("x")}); err != nil {
				t.Fatalf("Publish: %v", err)
			}
		}
		eventually(t, ctx, "every message is handled", func() string {
			if n := handled.Load(); n != 20 {
				return fmt.Sprintf("%d handled", n)
			}
			return ""
		})
		fromMany(t, "stopping Consume", func() error { stop(); return nil })
		wantErrIs(t, "Consume after its ctx ended", waitConsume(t, done, closeAllLimit), context.Canceled)
		wantOpenChannels(t, ctx, "after Consume returned", c, base)
		if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("after")}); err != nil {
			t.Fatalf("Publish after the stop: %v", err)
		}
		waitDepth(t, ctx, b, q, 1) // nobody consumes it
		qi, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatalf("QueueDeclare(passive): %v", err)
		}
		if qi.Consumers != 0 {
			t.Errorf("queue after the stop: got %d consumers, want 0", qi.Consumers)
		}
		if n := handled.Load(); n != 20 {
			t.Errorf("handled: got %d, want 20 (nothing after the stop)", n)
		}
	})

	t.Run("Client with channels, a pool and a publisher open", func(t *testing.T) {
		ctx := testCtx(t, opTimeout)
		c := dial(t, b.URL)
		ch := openChannel(t, ctx, c)
		p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2, MinIdle: 1})
		lease := poolAcquire(t, ctx, p)
		pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
		if err != nil {
			t.Fatalf("NewPublisher: %v", err)
		}
		t.Cleanup(func() { _ = pub.Close(context.Background()) })
		wantAllNil(t, "Client.Close", fromMany(t, "Client.Close", func() error { return c.Close(ctx) }))
		if _, err := c.Channel(ctx); !errors.Is(err, warren.ErrClientClosed) {
			t.Errorf("Channel after Close: got %v, want ErrClientClosed", err)
		}
		wantErrIs(t, "Publish on a channel after Client.Close", ch.Publish(ctx, "", "nowhere", warren.Publishing{}), warren.ErrClientClosed)
		wantErrIs(t, "Publish on a pool lease after Client.Close", lease.Publish(ctx, "", "nowhere", warren.Publishing{}), warren.ErrClientClosed)
		if err := pub.Publish(ctx, "", "nowhere", warren.Publishing{}); err == nil {
			t.Errorf("Publisher.Publish after Client.Close: got nil, want an error")
		}
		p.Release(lease)
		if err := c.Close(ctx); err != nil {
			t.Errorf("Client.Close once more: got %v, want nil", err)
		}
	})
}

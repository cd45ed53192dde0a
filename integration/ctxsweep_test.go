package integration

// A call refused by its ctx before anything was sent leaves its object as
// if it had not been called (issue 17's sweep): every ctx-taking method of
// Channel, Delivery, Tx, Pool, Publisher, Confirmation and Client is called
// with an already-cancelled ctx, which must return the ctx error and change
// nothing, and then again with a live ctx, which must work and have its
// effect exactly once.
//
// The Close methods (and Tx.Rollback, which ends the transaction by
// closing its work) are not in the table: a Close always closes, and ctx
// bounds only the wait (their docs say so; closeall_test.go covers them).

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/warrenmq/warren"
)

// sweepEnv is what each case of the sweep gets: a client, a channel of its
// own, and an exclusive queue on the client's connection.
type sweepEnv struct {
	t      *testing.T
	ctx    context.Context // live
	client *warren.Client
	ch     warren.Channel
	queue  string
}

// depth returns how many messages are ready in the queue, counted on
// e.ch (after everything published on e.ch before).
func (e *sweepEnv) depth() int {
	e.t.Helper()
	q, err := e.ch.QueueDeclare(e.ctx, e.queue, warren.QueueOptions{Passive: true})
	if err != nil {
		e.t.Fatalf("passive QueueDeclare(%q): %v", e.queue, err)
	}
	return q.Messages
}

// publish puts one message in the queue, on a confirm channel of its own:
// once Publish returns, the message is in the queue.
func (e *sweepEnv) publish(body string) {
	e.t.Helper()
	ch := openChannel(e.t, e.ctx, e.client)
	if err := ch.SetMode(e.ctx, warren.ModeConfirm); err != nil {
		e.t.Fatalf("SetMode: %v", err)
	}
	if err := ch.Publish(e.ctx, "", e.queue, warren.Publishing{Body: []byte(body)}); err != nil {
		e.t.Fatalf("Publish: %v", err)
	}
	if err := ch.Close(e.ctx); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
}

// expect takes messages off the queue (auto-ack) until it has len(want),
// and checks they are want, in order. Messages published before the last
// of want on one channel arrive before it, so a message a refused call
// sent would show up here.
func (e *sweepEnv) expect(want ...string) {
	e.t.Helper()
	var got []string
	for len(got) < len(want) {
		d, ok, err := e.ch.Get(e.ctx, e.queue, warren.GetOptions{AutoAck: true})
		if err != nil {
			e.t.Fatalf("Get: %v", err)
		}
		if !ok {
			select {
			case <-e.ctx.Done():
				e.t.Fatalf("got messages %q before %v, want %q", got, e.ctx.Err(), want)
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		got = append(got, string(d.Body))
	}
	if !slices.Equal(got, want) {
		e.t.Fatalf("got messages %q, want %q", got, want)
	}
	if n := e.depth(); n != 0 {
		e.t.Fatalf("%d more messages after %q", n, want)
	}
}

// wantCanceled checks that err is the cancelled ctx's error.
func wantCanceled(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("%s with a cancelled ctx: got %v, want an error wrapping context.Canceled", what, err)
	}
}

// wantNil checks that a call with a live ctx worked.
func wantNil(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s with a live ctx after a cancelled one: got %v, want nil", what, err)
	}
}

// wantUsable checks that ch was not poisoned or closed by a refused call.
func wantUsable(t *testing.T, what string, ch warren.Channel) {
	t.Helper()
	if err := ch.Err(); err != nil {
		t.Fatalf("after %s with a cancelled ctx: channel Err() = %v, want nil (nothing was sent)", what, err)
	}
}

func TestACallRefusedByItsCtxChangesNothingAndCanBeRetried(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	dead, cancel := context.WithCancel(ctx)
	cancel()

	cases := []struct {
		name string
		run  func(e *sweepEnv, dead context.Context)
	}{
		{"Channel.QueueDeclare", func(e *sweepEnv, dead context.Context) {
			name := uniqueName(e.t, "sweep-")
			_, err := e.ch.QueueDeclare(dead, name, warren.QueueOptions{Exclusive: true})
			wantCanceled(e.t, "QueueDeclare", err)
			wantUsable(e.t, "QueueDeclare", e.ch)
			_, err = e.ch.QueueDeclare(e.ctx, name, warren.QueueOptions{Passive: true})
			if !errors.Is(err, warren.ErrNotFound) {
				e.t.Fatalf("the refused QueueDeclare declared the queue: passive declare got %v, want ErrNotFound", err)
			}
			ch2 := openChannel(e.t, e.ctx, e.client)
			_, err = ch2.QueueDeclare(e.ctx, name, warren.QueueOptions{Exclusive: true})
			wantNil(e.t, "QueueDeclare", err)
		}},
		{"Channel.ExchangeDeclare/Bind/Unbind/Delete and QueueBind/Unbind/Purge/Delete", func(e *sweepEnv, dead context.Context) {
			x := uniqueName(e.t, "sweep-x-")
			wantCanceled(e.t, "ExchangeDeclare", e.ch.ExchangeDeclare(dead, x, "direct", warren.ExchangeOptions{AutoDelete: true}))
			wantUsable(e.t, "ExchangeDeclare", e.ch)
			wantNil(e.t, "ExchangeDeclare", e.ch.ExchangeDeclare(e.ctx, x, "direct", warren.ExchangeOptions{AutoDelete: true}))
			wantCanceled(e.t, "ExchangeBind", e.ch.ExchangeBind(dead, x, "k", "amq.direct", nil))
			wantNil(e.t, "ExchangeBind", e.ch.ExchangeBind(e.ctx, x, "k", "amq.direct", nil))
			wantCanceled(e.t, "ExchangeUnbind", e.ch.ExchangeUnbind(dead, x, "k", "amq.direct", nil))
			wantNil(e.t, "ExchangeUnbind", e.ch.ExchangeUnbind(e.ctx, x, "k", "amq.direct", nil))
			wantCanceled(e.t, "QueueBind", e.ch.QueueBind(dead, e.queue, "k", x, nil))
			wantNil(e.t, "QueueBind", e.ch.QueueBind(e.ctx, e.queue, "k", x, nil))
			wantCanceled(e.t, "QueueUnbind", e.ch.QueueUnbind(dead, e.queue, "k", x, nil))
			wantNil(e.t, "QueueUnbind", e.ch.QueueUnbind(e.ctx, e.queue, "k", x, nil))
			wantCanceled(e.t, "ExchangeDelete", e.ch.ExchangeDelete(dead, x, warren.ExchangeDeleteOptions{}))
			wantNil(e.t, "ExchangeDelete", e.ch.ExchangeDelete(e.ctx, x, warren.ExchangeDeleteOptions{}))
			e.publish("a")
			_, err := e.ch.QueuePurge(dead, e.queue)
			wantCanceled(e.t, "QueuePurge", err)
			if n := e.depth(); n != 1 {
				e.t.Fatalf("the refused QueuePurge purged: %d messages, want 1", n)
			}
			n, err := e.ch.QueuePurge(e.ctx, e.queue)
			wantNil(e.t, "QueuePurge", err)
			if n != 1 {
				e.t.Fatalf("QueuePurge purged %d, want 1", n)
			}
			_, err = e.ch.QueueDelete(dead, e.queue, warren.QueueDeleteOptions{})
			wantCanceled(e.t, "QueueDelete", err)
			if n := e.depth(); n != 0 { // the queue still exists
				e.t.Fatalf("depth %d, want 0", n)
			}
			_, err = e.ch.QueueDelete(e.ctx, e.queue, warren.QueueDeleteOptions{})
			wantNil(e.t, "QueueDelete", err)
		}},
		{"Channel.Qos and SetMode", func(e *sweepEnv, dead context.Context) {
			wantCanceled(e.t, "Qos", e.ch.Qos(dead, warren.QosOptions{PrefetchCount: 5}))
			wantNil(e.t, "Qos", e.ch.Qos(e.ctx, warren.QosOptions{PrefetchCount: 5}))
			wantCanceled(e.t, "SetMode", e.ch.SetMode(dead, warren.ModeConfirm))
			wantUsable(e.t, "SetMode", e.ch)
			if m := e.ch.Mode(); m != warren.ModePlain {
				e.t.Fatalf("the refused SetMode changed the mode to %v", m)
			}
			wantNil(e.t, "SetMode", e.ch.SetMode(e.ctx, warren.ModeConfirm))
		}},
		{"Channel.Publish/PublishMessage/PublishBatch", func(e *sweepEnv, dead context.Context) {
			msg := warren.Publishing{Body: []byte("refused")}
			wantCanceled(e.t, "Publish", e.ch.Publish(dead, "", e.queue, msg))
			wantCanceled(e.t, "PublishMessage", e.ch.PublishMessage(dead, warren.Message{Key: e.queue, Publishing: msg}))
			for i, err := range e.ch.PublishBatch(dead, []warren.Message{{Key: e.queue, Publishing: msg}, {Key: e.queue, Publishing: msg}}) {
				if !errors.Is(err, context.Canceled) {
					e.t.Fatalf("PublishBatch with a cancelled ctx: message %d: got %v, want context.Canceled", i, err)
				}
			}
			wantUsable(e.t, "Publish", e.ch)
			wantNil(e.t, "Publish", e.ch.Publish(e.ctx, "", e.queue, warren.Publishing{Body: []byte("live")}))
			e.expect("live")
		}},
		{"Channel.PublishDeferred and Confirmation.Wait", func(e *sweepEnv, dead context.Context) {
			wantNil(e.t, "SetMode", e.ch.SetMode(e.ctx, warren.ModeConfirm))
			_, err := e.ch.PublishDeferred(dead, warren.Message{Key: e.queue, Publishing: warren.Publishing{Body: []byte("refused")}})
			wantCanceled(e.t, "PublishDeferred", err)
			c, err := e.ch.PublishDeferred(e.ctx, warren.Message{Key: e.queue, Publishing: warren.Publishing{Body: []byte("d")}})
			wantNil(e.t, "PublishDeferred", err)
			// Already resolved, Wait may report the outcome even with a
			// cancelled ctx; either way the outcome stays for the next.
			if err := c.Wait(dead); err != nil && !errors.Is(err, context.Canceled) {
				e.t.Fatalf("Confirmation.Wait with a cancelled ctx: got %v, want nil or context.Canceled", err)
			}
			wantNil(e.t, "Confirmation.Wait", c.Wait(e.ctx))
			e.expect("d")
		}},
		{"Channel.Get", func(e *sweepEnv, dead context.Context) {
			e.publish("a")
			_, _, err := e.ch.Get(dead, e.queue, warren.GetOptions{AutoAck: true})
			wantCanceled(e.t, "Get", err)
			if n := e.depth(); n != 1 {
				e.t.Fatalf("the refused Get took the message: depth %d, want 1", n)
			}
			d := getOne(e.t, e.ctx, e.ch, e.queue)
			wantNil(e.t, "Ack", d.Ack(e.ctx))
		}},
		{"Channel.Ack/Nack/Reject", func(e *sweepEnv, dead context.Context) {
			e.publish("a")
			d := getOne(e.t, e.ctx, e.ch, e.queue)
			wantCanceled(e.t, "Channel.Ack", e.ch.Ack(dead, d.DeliveryTag, false))
			wantCanceled(e.t, "Channel.Nack", e.ch.Nack(dead, d.DeliveryTag, false, true))
			wantCanceled(e.t, "Channel.Reject", e.ch.Reject(dead, d.DeliveryTag, true))
			wantUsable(e.t, "Channel.Ack", e.ch)
			wantNil(e.t, "Channel.Reject", e.ch.Reject(e.ctx, d.DeliveryTag, true))
			d = getOne(e.t, e.ctx, e.ch, e.queue)
			wantNil(e.t, "Channel.Ack", e.ch.Ack(e.ctx, d.DeliveryTag, false))
		}},
		// FIXED BUG (issue 17, defect 3): a settle refused by its ctx
		// marked the delivery settled, so the retry got ErrAlreadySettled
		// and the message stayed unacked for the channel's life.
		{"Delivery.Ack/Nack/Reject", func(e *sweepEnv, dead context.Context) {
			e.publish("a")
			d := getOne(e.t, e.ctx, e.ch, e.queue)
			wantCanceled(e.t, "Delivery.Ack", d.Ack(dead))
			wantCanceled(e.t, "Delivery.Nack", d.Nack(dead, true))
			wantCanceled(e.t, "Delivery.Reject", d.Reject(dead, true))
			wantNil(e.t, "Delivery.Nack", d.Nack(e.ctx, true))
			if err := d.Ack(e.ctx); !errors.Is(err, warren.ErrAlreadySettled) {
				e.t.Fatalf("second settlement: got %v, want ErrAlreadySettled", err)
			}
			d = getOne(e.t, e.ctx, e.ch, e.queue)
			wantCanceled(e.t, "Delivery.Ack", d.Ack(dead))
			wantNil(e.t, "Delivery.Ack", d.Ack(e.ctx))
			// Acked for real: nothing comes back when the channel closes.
			wantNil(e.t, "Close", e.ch.Close(e.ctx))
			e.ch = openChannel(e.t, e.ctx, e.client)
			if n := e.depth(); n != 0 {
				e.t.Fatalf("after the retried Ack and a channel close: depth %d, want 0 (the ack never reached the broker)", n)
			}
		}},
		{"Client.Channel/NewPool/NewPublisher/Begin/Tx/Consume", func(e *sweepEnv, dead context.Context) {
			before := e.client.Stats()
			_, err := e.client.Channel(dead)
			wantCanceled(e.t, "Client.Channel", err)
			_, err = e.client.NewPool(dead, warren.PoolOptions{Size: 2, MinIdle: 1})
			wantCanceled(e.t, "Client.NewPool", err)
			_, err = e.client.NewPool(dead, warren.PoolOptions{Size: 2})
			wantCanceled(e.t, "Client.NewPool without MinIdle", err)
			_, err = e.client.NewPublisher(dead, warren.PublisherOptions{})
			wantCanceled(e.t, "Client.NewPublisher", err)
			_, err = e.client.Begin(dead)
			wantCanceled(e.t, "Client.Begin", err)
			ran := false
			wantCanceled(e.t, "Client.Tx", e.client.Tx(dead, func(*warren.Tx) error { ran = true; return nil }))
			if ran {
				e.t.Fatal("Client.Tx with a cancelled ctx ran its function")
			}
			handled := 0
			wantCanceled(e.t, "Client.Consume", e.client.Consume(dead, e.queue, func(context.Context, *warren.Delivery) error { handled++; return nil }, warren.ConsumeOptions{}))
			after := e.client.Stats()
			if after.ChannelsOpened != before.ChannelsOpened || after.OpenChannels != before.OpenChannels {
				e.t.Fatalf("refused calls opened channels: stats before %+v, after %+v", before, after)
			}
			wantNil(e.t, "Client.Tx", e.client.Tx(e.ctx, func(*warren.Tx) error { return nil }))
			p, err := e.client.NewPool(e.ctx, warren.PoolOptions{Size: 2, MinIdle: 1})
			wantNil(e.t, "Client.NewPool", err)
			wantNil(e.t, "Pool.Close", p.Close(e.ctx))
		}},
		{"Pool.Acquire/TryAcquire/Do/Begin/Tx", func(e *sweepEnv, dead context.Context) {
			// MinIdle 1: a channel is idle, so nothing but the ctx check
			// stops the refused calls (database/sql's rule).
			p, err := e.client.NewPool(e.ctx, warren.PoolOptions{Size: 1, MinIdle: 1, Mode: warren.ModeTx})
			wantNil(e.t, "NewPool", err)
			defer p.Close(e.ctx)
			_, err = p.Acquire(dead)
			wantCanceled(e.t, "Pool.Acquire", err)
			_, err = p.TryAcquire(dead)
			wantCanceled(e.t, "Pool.TryAcquire", err)
			ran := false
			wantCanceled(e.t, "Pool.Do", p.Do(dead, func(warren.Channel) error { ran = true; return nil }))
			_, err = p.Begin(dead)
			wantCanceled(e.t, "Pool.Begin", err)
			wantCanceled(e.t, "Pool.Tx", p.Tx(dead, func(*warren.Tx) error { ran = true; return nil }))
			if ran {
				e.t.Fatal("Pool.Do or Pool.Tx with a cancelled ctx ran its function")
			}
			if st := p.Stats(); st.InUse != 0 {
				e.t.Fatalf("refused acquires left %d channels in use", st.InUse)
			}
			ch, err := p.TryAcquire(e.ctx)
			wantNil(e.t, "Pool.TryAcquire", err)
			p.Release(ch)
			wantNil(e.t, "Pool.Tx", p.Tx(e.ctx, func(tx *warren.Tx) error {
				return tx.Publish(e.ctx, "", e.queue, warren.Publishing{Body: []byte("t")})
			}))
			e.expect("t")
		}},
		{"Tx.Publish/Get/Commit", func(e *sweepEnv, dead context.Context) {
			e.publish("a")
			tx, err := e.client.Begin(e.ctx)
			wantNil(e.t, "Begin", err)
			defer tx.Rollback(e.ctx)
			msg := warren.Publishing{Body: []byte("refused")}
			wantCanceled(e.t, "Tx.Publish", tx.Publish(dead, "", e.queue, msg))
			wantCanceled(e.t, "Tx.PublishMessage", tx.PublishMessage(dead, warren.Message{Key: e.queue, Publishing: msg}))
			_, _, err = tx.Get(dead, e.queue, warren.GetOptions{})
			wantCanceled(e.t, "Tx.Get", err)
			wantNil(e.t, "Tx.Publish", tx.Publish(e.ctx, "", e.queue, warren.Publishing{Body: []byte("t")}))
			d := getOne(e.t, e.ctx, tx.Channel(), e.queue)
			wantCanceled(e.t, "Delivery.Ack in a tx", d.Ack(dead))
			wantNil(e.t, "Delivery.Ack in a tx", d.Ack(e.ctx))
			wantCanceled(e.t, "Tx.Commit", tx.Commit(dead))
			wantNil(e.t, "Tx.Commit", tx.Commit(e.ctx))
			// Committed: the fetched message is acked, the published one
			// routed, exactly once.
			e.expect("t")
		}},
		{"Publisher.Publish/PublishMessage/PublishBatch", func(e *sweepEnv, dead context.Context) {
			p, err := e.client.NewPublisher(e.ctx, warren.PublisherOptions{})
			wantNil(e.t, "NewPublisher", err)
			defer p.Close(e.ctx)
			msg := warren.Publishing{Body: []byte("refused")}
			wantCanceled(e.t, "Publisher.Publish", p.Publish(dead, "", e.queue, msg))
			wantCanceled(e.t, "Publisher.PublishMessage", p.PublishMessage(dead, warren.Message{Key: e.queue, Publishing: msg}))
			for i, err := range p.PublishBatch(dead, []warren.Message{{Key: e.queue, Publishing: msg}}) {
				if !errors.Is(err, context.Canceled) {
					e.t.Fatalf("Publisher.PublishBatch with a cancelled ctx: message %d: got %v, want context.Canceled", i, err)
				}
			}
			if st := p.Stats(); st.Acked+st.Unknown != 0 || st.NotPublished != 3 {
				e.t.Fatalf("refused publishes: stats %+v, want 3 not published, none acked or unknown", st)
			}
			wantNil(e.t, "Publisher.Publish", p.Publish(e.ctx, "", e.queue, warren.Publishing{Body: []byte("p")}))
			e.expect("p")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, broker.URL)
			ch := openChannel(t, ctx, c)
			q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
			if err != nil {
				t.Fatalf("QueueDeclare: %v", err)
			}
			tc.run(&sweepEnv{t: t, ctx: ctx, client: c, ch: ch, queue: q.Name}, dead)
		})
	}
}

// FIXED BUG (issue 17, defect 3): inside Consume with prefetch 1, a
// handler whose Ack was refused by a cancelled ctx left the delivery
// marked settled: warren did not settle it either, and the consumer
// stalled for good after the first message.
func TestConsumerGoesOnWhenAHandlersAckIsRefusedByItsCtx(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	c := dial(t, broker.URL)
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	const n = 3
	for i := 0; i < n; i++ {
		if err := ch.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte("m")}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	dead, cancel := context.WithCancel(ctx)
	cancel()
	handled := make(chan struct{}, n)
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, q.Name, func(_ context.Context, d *warren.Delivery) error {
			if err := d.Ack(dead); !errors.Is(err, context.Canceled) {
				t.Errorf("Ack with a cancelled ctx: got %v, want context.Canceled", err)
			}
			handled <- struct{}{}
			return nil // warren acks it
		}, warren.ConsumeOptions{Prefetch: 1})
	}()
	for i := 0; i < n; i++ {
		select {
		case <-handled:
		case <-ctx.Done():
			t.Fatalf("handled %d of %d messages before %v: the consumer stalled", i, n, ctx.Err())
		}
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume: got %v, want context.Canceled", err)
	}
	if n := (&sweepEnv{t: t, ctx: ctx, ch: ch, queue: q.Name}).depth(); n != 0 {
		t.Fatalf("after the consumer: %d messages left, want 0", n)
	}
}

// A settlement rolled back with its transaction never took effect: the
// delivery is unsettled again, so a later settlement is judged by the
// channel (closed with the transaction), not refused as a second one.
func TestARolledBackAckLeavesTheDeliveryUnsettled(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	c := dial(t, broker.URL)
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	e := &sweepEnv{t: t, ctx: ctx, client: c, ch: ch, queue: q.Name}
	e.publish("a")
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	d := getOne(t, ctx, tx.Channel(), q.Name)
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("Ack in the tx: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	err = d.Ack(ctx)
	if err == nil || errors.Is(err, warren.ErrAlreadySettled) {
		t.Fatalf("Ack after the rollback: got %v, want the error of the transaction's ended channel", err)
	}
	e.expect("a") // back in the queue: the ack was rolled back
}

// A multiple ack through the Channel settles every Delivery it covers: a
// later settlement of one of them is refused (ErrAlreadySettled) instead
// of reaching the broker, whose 406 would close the channel.
func TestAMultipleChannelAckSettlesTheDeliveriesItCovers(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	c := dial(t, broker.URL)
	ch := openChannel(t, ctx, c)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	e := &sweepEnv{t: t, ctx: ctx, client: c, ch: ch, queue: q.Name}
	e.publish("a")
	e.publish("b")
	a := getOne(t, ctx, ch, q.Name)
	b := getOne(t, ctx, ch, q.Name)
	if err := ch.Ack(ctx, b.DeliveryTag, true); err != nil {
		t.Fatalf("multiple Ack: %v", err)
	}
	if err := a.Ack(ctx); !errors.Is(err, warren.ErrAlreadySettled) {
		t.Fatalf("Delivery.Ack after a multiple ack covering it: got %v, want ErrAlreadySettled", err)
	}
	if err := ch.Err(); err != nil {
		t.Fatalf("the channel after: %v, want nil (no 406)", err)
	}
	e.expect() // both acked
}

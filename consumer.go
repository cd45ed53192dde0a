package warren

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Handler processes one delivery. Returning nil acks it; returning an error
// rejects it (basic.reject: requeued unless ConsumeOptions.DeadLetterOnError),
// which counts as a failed delivery on every RabbitMQ version, so a quorum
// queue's DeliveryLimit ends a poison message's loop (see
// Delivery.DeliveryCount). A handler
// may settle the delivery itself (Ack, Nack, Reject); warren then leaves
// it alone. A panic is recovered and treated as an error.
//
// ctx is not Consume's ctx: it stays valid while Consume shuts down, so an
// in-flight handler can finish, and ends at the shutdown bound. It ends at
// once when the consumer's channel or connection is lost, or the broker
// cancels or times out the consumer: the broker has returned the delivery
// to the queue, and Ack, Nack and Reject return an error wrapping
// ErrDeliveryVoid. (With WithReconnect the consumer subscribes again at
// once; it does not wait for such handlers.)
//
// Delivery is at least once: a message whose ack did not reach the broker
// (the handler was still running at the shutdown bound, the connection
// died) is delivered again, with Redelivered set. Handlers must be
// idempotent, or deduplicate on a message id.
type Handler func(ctx context.Context, d *Delivery) error

// ConsumeOptions configure Consume. The zero value consumes with a
// prefetch of 200, one handler at a time, manual acks, and a 30 s shutdown
// bound.
type ConsumeOptions struct {
	// Prefetch is how many unacknowledged deliveries the broker may have
	// sent at once (basic.qos; default 200, within RabbitMQ's recommended
	// 100–300). It bounds the consumer's memory and should be at least
	// Workers. Ignored with AutoAck, where nothing bounds the flow.
	Prefetch int
	// Workers is how many handlers run at once (default 1: in order).
	Workers int
	// Tag is the consumer tag the broker shows (default "warren-<pid>-<n>").
	Tag string
	// Exclusive asks to be the queue's only consumer (403 if it has others).
	// (basic.consume's no-local flag has no counterpart: RabbitMQ does not
	// implement it and ignores it.)
	Exclusive bool
	// Priority is the consumer's priority (x-priority, a 32-bit signed
	// integer; default 0): while a higher-priority consumer of the queue
	// can take messages (its prefetch is not full), lower ones get none.
	Priority int
	// StreamOffset is where a consumer of a stream queue starts (see
	// StreamOffset; the zero value is the broker's default, next). A
	// stream consumer needs manual acks and a prefetch: AutoAck is refused
	// with it.
	StreamOffset StreamOffset
	// Args are other optional arguments of basic.consume. Setting one
	// that a field above also sets is refused.
	Args Table
	// AutoAck makes the broker consider every message acknowledged once
	// sent: a message whose handler fails or is interrupted is lost, and
	// nothing bounds how many the broker pushes (Prefetch does not apply).
	// At shutdown the workers handle what was already delivered, up to
	// ShutdownTimeout; what is left then is lost too.
	AutoAck bool
	// DeadLetterOnError rejects a failed message without requeueing it, so
	// the broker drops it or dead-letters it at once. By default it is
	// requeued, and on a quorum queue dead-lettered once it exceeds the
	// queue's DeliveryLimit (RabbitMQ 4.x has a default limit of 20).
	DeadLetterOnError bool
	// ShutdownTimeout bounds how long in-flight handlers may run after ctx
	// ends (default 30 s); then their ctx is cancelled and the channel is
	// closed, returning their messages to the queue. When the consumer
	// ends for another reason (lost channel or connection, broker cancel),
	// the handlers' ctx is cancelled at once, and Consume waits at most
	// this long for them before it returns.
	ShutdownTimeout time.Duration
	// OnPanic, if set, is called (on the worker) with what a handler
	// panicked with and the stack; the panic is also logged.
	OnPanic func(d *Delivery, v any, stack []byte)
	// AckTimeout, if set, is how long the broker waits for the ack of a
	// delivery before it gives up on the consumer (the consumer argument
	// x-consumer-timeout, whole milliseconds; default: the broker's
	// consumer_timeout, 30 minutes). Consume then ends with an error
	// matching ErrAckTimeout, and with WithReconnect the Client subscribes
	// again at once. RabbitMQ honours it from 3.11.15; warren refuses it
	// before sending on an older broker, which would ignore it. RabbitMQ
	// 4.x accepts it on quorum queues only: a classic queue refuses it
	// with 406 PRECONDITION_FAILED (its timeout is the broker's).
	AckTimeout time.Duration
}

const (
	defaultPrefetch        = 200
	defaultShutdownTimeout = 30 * time.Second
)

var consumerSeq atomic.Uint64

// Consume: see Client.Consume. fl holds the handlers of every subscription
// of one Client.Consume.
func (c *session) Consume(ctx context.Context, queue string, h Handler, opts ConsumeOptions, fl *flight) error {
	const op = "basic.consume"
	if err := opts.fill(queue, h); err != nil {
		return err
	}
	prefetch := opts.Prefetch
	if opts.AutoAck {
		prefetch = 0
	}
	args, err := c.consumeArgs(op, queue, opts.Tag, consumerArgs{
		Exclusive: opts.Exclusive, AutoAck: opts.AutoAck, Priority: opts.Priority,
		Stream: opts.StreamOffset, AckTimeout: opts.AckTimeout, Args: opts.Args, Prefetch: prefetch,
	})
	if err != nil {
		return err
	}
	opts.Args = args // with warren's own arguments, in a copy
	st, err := c.openChannel(ctx)
	if err != nil {
		return err
	}
	cs := &consumer{c: c, st: st, queue: queue, h: h, opts: opts, flight: fl,
		cancels: make(chan string, 4), stop: make(chan struct{})}
	defer cs.closeChannel()

	ch := Channel{s: st}
	if !opts.AutoAck {
		if err := ch.Qos(ctx, QosOptions{PrefetchCount: opts.Prefetch}); err != nil {
			return err
		}
	}
	st.ch.NotifyCancel(cs.cancels)
	// A listener of the consumer's own: the end of the channel must be
	// seen even while every worker is busy in a handler.
	cs.closed = st.ch.NotifyClose(make(chan *amqp.Error, 1))
	var deliveries <-chan amqp.Delivery
	err = ch.call(ctx, op, func() (err error) {
		deliveries, err = st.ch.Consume(queue, opts.Tag, opts.AutoAck, opts.Exclusive, false, false, amqp.Table(opts.Args))
		return err
	})
	if err != nil {
		return err
	}
	return cs.run(ctx, deliveries)
}

// fill applies defaults and checks the options.
func (o *ConsumeOptions) fill(queue string, h Handler) error {
	const op = "basic.consume"
	if h == nil {
		return fmt.Errorf("%w: %s: nil handler", ErrInvalidArgument, op)
	}
	if o.Prefetch == 0 {
		o.Prefetch = defaultPrefetch
	}
	if o.Workers == 0 {
		o.Workers = 1
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = defaultShutdownTimeout
	}
	if o.Tag == "" {
		o.Tag = fmt.Sprintf("warren-%d-%d", os.Getpid(), consumerSeq.Add(1))
	}
	switch {
	case o.Prefetch < 0 || o.Prefetch > 65535:
		return fmt.Errorf("%w: %s: Prefetch %d outside 0..65535", ErrInvalidArgument, op, o.Prefetch)
	case o.Workers < 0:
		return fmt.Errorf("%w: %s: negative Workers", ErrInvalidArgument, op)
	case o.ShutdownTimeout < 0:
		return fmt.Errorf("%w: %s: negative ShutdownTimeout", ErrInvalidArgument, op)
	}
	return nil
}

// consumer is one running Consume.
type consumer struct {
	c     *session
	st    *channel
	queue string
	h     Handler
	opts  ConsumeOptions

	// mu serialises every operation on the channel once workers run: their
	// acks, and the cancel at shutdown.
	mu     sync.Mutex
	flight *flight // the handlers of the Client.Consume this subscription belongs to
	// For telling the broker's consumer-timeout cancel from others: when
	// each of this subscription's workers took its current delivery
	// (UnixNano, 0 while idle), and when one last finished a delivery.
	started    []atomic.Int64
	lastSettle atomic.Int64
	cancels    chan string // the broker's basic.cancel, from amqp091-go
	closed     chan *amqp.Error
	stop       chan struct{} // closed (by halt) when no new deliveries may be taken
	halted     sync.Once
}

// flight is the handlers of one Client.Consume, across its subscriptions.
// A subscription whose channel or connection is gone returns at once, its
// handlers' ctx cancelled (their deliveries are void: the broker has
// returned them to the queue); only the end of Client.Consume waits for
// handlers still running, bounded by ShutdownTimeout.
type flight struct {
	wg      sync.WaitGroup
	running atomic.Int64 // handlers running now
	gaveUp  atomic.Bool  // a wait reached its bound: later waits return at once
}

// wait waits at most d for every handler to return, and reports how many
// were still running when it gave up (0: all returned).
func (f *flight) wait(d time.Duration) int64 {
	if f.gaveUp.Load() {
		return f.running.Load()
	}
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return 0
	case <-t.C:
		f.gaveUp.Store(true)
		return f.running.Load()
	}
}

func (cs *consumer) run(ctx context.Context, deliveries <-chan amqp.Delivery) error {
	// Handlers get a ctx that survives Consume's ctx, so that in-flight
	// work can finish at shutdown; it ends at the shutdown bound, or at
	// once when the subscription is lost.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	fl := cs.flight
	running := &fl.running
	// ended and workersDone are this subscription's.
	var wg sync.WaitGroup
	ended := make(chan struct{}) // closed by the first worker to see the deliveries end
	var endOnce sync.Once
	// The workers are not the client's goroutines: Client.Close must not
	// wait on a handler that ignores its ctx.
	cs.started = make([]atomic.Int64, cs.opts.Workers)
	cs.lastSettle.Store(time.Now().UnixNano())
	for i := 0; i < cs.opts.Workers; i++ {
		wg.Add(1)
		fl.wg.Add(1)
		go func() {
			defer fl.wg.Done()
			defer wg.Done()
			if cs.work(hctx, deliveries, running, &cs.started[i]) {
				endOnce.Do(func() { close(ended) })
			}
		}()
	}

	var err error
	select {
	case tag := <-cs.cancels:
		cs.halt()
		err = cs.cancelled(tag, deliveries, running)
	case <-cs.closed:
		cs.halt()
		err = cs.st.awaitCause("basic.consume")
	case <-ended:
		// The deliveries ended without our cancel: the broker cancelled
		// the consumer, or the channel or connection closed.
		cs.halt()
		err = cs.endReason(deliveries, running)
	case <-ctx.Done():
		// Shutdown: take nothing new, cancel, let in-flight handlers
		// finish. With manual acks, deliveries not yet started stay
		// unacked and return to the queue when the channel closes. With
		// AutoAck the broker already counts them as delivered: the workers
		// go on handling them until the buffer is empty (or the bound).
		if !cs.opts.AutoAck {
			cs.halt()
		}
		cctx, ccancel := context.WithTimeout(context.Background(), cs.opts.ShutdownTimeout)
		cs.mu.Lock()
		_ = Channel{s: cs.st}.call(cctx, "basic.cancel", func() error { return cs.st.ch.Cancel(cs.opts.Tag, false) })
		cs.mu.Unlock()
		ccancel()
		err = fmt.Errorf("warren: consume %q: stopped: %w", cs.queue, ctx.Err())
	}
	if ctx.Err() == nil {
		// Lost: the channel or connection is gone, the broker cancelled
		// the consumer, or timed it out. The broker has the unacked
		// messages back (or will once the channel closes, next): the
		// handlers' acks can no longer count, so their ctx ends now and
		// nothing waits for them here (see flight).
		cs.halt()
		hcancel()
		return err
	}
	if n := fl.wait(cs.opts.ShutdownTimeout); n > 0 {
		if cs.opts.AutoAck {
			cs.halt() // whatever is still buffered is lost: AutoAck
		}
		hcancel()
		// The channel closes next; the unfinished handlers' messages go
		// back to the queue. Their later acks fail harmlessly.
		err = fmt.Errorf("%w; %d handlers still running (%w), their messages return to the queue", err, n, ErrShutdownTimeout)
	}
	return err
}

// halt makes the workers take no new deliveries.
func (cs *consumer) halt() { cs.halted.Do(func() { close(cs.stop) }) }

// endReason says why the deliveries ended when Consume's ctx did not.
func (cs *consumer) endReason(deliveries <-chan amqp.Delivery, running *atomic.Int64) error {
	select {
	case tag := <-cs.cancels:
		return cs.cancelled(tag, deliveries, running)
	default:
	}
	if err := cs.st.awaitCause("basic.consume"); err != nil {
		return err
	}
	return fmt.Errorf("warren: consume %q: deliveries ended", cs.queue)
}

// cancelled returns the error for the broker's basic.cancel of the
// consumer: ErrAckTimeout as well as ErrConsumerCancelled when it was the
// broker's consumer timeout (RabbitMQ 4.3+ on quorum queues cancels the
// consumer rather than closing the channel). AMQP's basic.cancel carries no
// reason; with AckTimeout set, warren takes a cancel for a timeout when
// this subscription held a delivery about that long (a handler has run that
// long on one, or deliveries waited while none was finished for that long)
// and the queue still exists.
func (cs *consumer) cancelled(tag string, deliveries <-chan amqp.Delivery, _ *atomic.Int64) error {
	if cs.opts.AckTimeout > 0 && !cs.opts.AutoAck && cs.heldPastAckTimeout(deliveries) && cs.queueExists() {
		return fmt.Errorf("warren: consume %q: %w: the broker cancelled the consumer (tag %q) after a delivery went unacknowledged for AckTimeout %v (%w); its unacked messages return to the queue",
			cs.queue, ErrAckTimeout, tag, cs.opts.AckTimeout, ErrConsumerCancelled)
	}
	return fmt.Errorf("warren: consume %q: %w (consumer tag %q)", cs.queue, ErrConsumerCancelled, tag)
}

// heldPastAckTimeout reports whether this subscription has held an
// unacknowledged delivery for about AckTimeout (nine tenths of it, for the
// broker's timer and ours): a handler running that long on one, or
// deliveries buffered while no handler finished one for that long.
func (cs *consumer) heldPastAckTimeout(deliveries <-chan amqp.Delivery) bool {
	now := time.Now().UnixNano()
	bound := int64(cs.opts.AckTimeout) * 9 / 10
	for i := range cs.started {
		if s := cs.started[i].Load(); s != 0 && now-s >= bound {
			return true
		}
	}
	return len(deliveries) > 0 && now-cs.lastSettle.Load() >= bound
}

// queueExists checks, on a channel of its own, that the consumer's queue is
// still there.
func (cs *consumer) queueExists() bool {
	ctx, cancel := context.WithTimeout(context.Background(), cs.c.opts.closeTimeout)
	defer cancel()
	st, err := cs.c.openChannel(ctx)
	if err != nil {
		return false
	}
	ch := Channel{s: st}
	defer ch.Close(ctx)
	_, err = ch.QueueDeclare(ctx, cs.queue, QueueOptions{Passive: true})
	return err == nil
}

// work runs handlers for deliveries until they end (it then returns true)
// or stop is closed.
func (cs *consumer) work(ctx context.Context, deliveries <-chan amqp.Delivery, running *atomic.Int64, started *atomic.Int64) bool {
	for {
		select {
		case <-cs.stop:
			return false
		case ad, ok := <-deliveries:
			if !ok {
				return true
			}
			select {
			case <-cs.stop:
				return false // taken as shutdown began: left unacked, it returns to the queue
			default:
			}
			running.Add(1)
			started.Store(time.Now().UnixNano())
			cs.handle(ctx, ad)
			started.Store(0)
			cs.lastSettle.Store(time.Now().UnixNano())
			running.Add(-1)
		}
	}
}

// handle runs the handler for one delivery and settles it.
func (cs *consumer) handle(ctx context.Context, ad amqp.Delivery) {
	ad.Acknowledger = nil
	d := &Delivery{Delivery: ad, ch: Channel{s: cs.st}, lock: &cs.mu}
	if cs.opts.AutoAck {
		d.settled.Store(settled)
	}
	err := cs.call(ctx, d)
	if d.settled.Load() == settled {
		return
	}
	// Settled without a caller's ctx: an ack is a frame write, and a
	// ctx ending mid-write would cost the connection.
	bg := context.Background()
	if err == nil {
		_ = d.Ack(bg)
	} else {
		// Reject, not Nack: from RabbitMQ 4.3 only a reject counts as a
		// failed delivery, and only failures trip a delivery limit.
		_ = d.Reject(bg, !cs.opts.DeadLetterOnError)
	}
}

// call runs the handler, turning a panic into an error.
func (cs *consumer) call(ctx context.Context, d *Delivery) (err error) {
	defer func() {
		if v := recover(); v != nil {
			stack := debug.Stack()
			cs.c.opts.logger.Error("warren: consumer handler panicked; the message is rejected and the consumer goes on",
				"queue", cs.queue, "consumer_tag", cs.opts.Tag, "delivery_tag", d.DeliveryTag, "panic", v, "stack", string(stack))
			if cs.opts.OnPanic != nil {
				cs.opts.OnPanic(d, v, stack)
			}
			err = fmt.Errorf("warren: handler panicked: %v", v)
		}
	}()
	return cs.h(ctx, d)
}

// closeChannel closes the consumer's channel: unacked messages return to
// the queue, and amqp091-go's delivery buffer goroutine ends.
func (cs *consumer) closeChannel() {
	ctx, cancel := context.WithTimeout(context.Background(), cs.c.opts.closeTimeout)
	defer cancel()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	_ = cs.st.close(ctx, 0)
}

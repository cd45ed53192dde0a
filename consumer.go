package warren

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
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
// ctx is not Consume's (or StartConsumer's) ctx, though it carries its
// values: it stays valid while the consumer shuts down (Consume's ctx
// ended, Consumer.Cancel), so an in-flight handler can finish, and ends at
// the shutdown bound. It ends at once when the consumer's channel or
// connection is lost (Client.Close included), or the broker cancels or
// times out the consumer: the broker has returned the delivery to the
// queue, and Ack, Nack and Reject return an error wrapping
// ErrDeliveryVoid. (With WithReconnect the consumer subscribes again at
// once; it does not wait for such handlers.)
//
// Delivery is at least once: a message whose ack did not reach the broker
// (the handler was still running at the shutdown bound, the connection
// died) is delivered again, with Redelivered set. Handlers must be
// idempotent, or deduplicate on a message id.
type Handler func(ctx context.Context, d *Delivery) error

// ConsumeOptions configure Consume and StartConsumer (and, within
// BatchOptions, StartBatchConsumer). The zero value consumes with a
// prefetch of 200, one handler at a time, manual acks, and a 30 s shutdown
// bound. Negative Prefetch, Workers or ShutdownTimeout, and a Prefetch
// above 65535, are refused with ErrInvalidArgument before anything is
// sent.
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
	// ShutdownTimeout bounds how long in-flight handlers may run after
	// Consume's ctx ends or Consumer.Cancel (default 30 s); then their ctx
	// is cancelled and the channel is closed, returning their messages to
	// the queue. When the consumer ends for another reason (lost channel
	// or connection, Client.Close, broker cancel), the handlers' ctx is
	// cancelled at once, and Consume waits at most this long for them
	// before it returns (a Consumer's Done is closed after that wait).
	ShutdownTimeout time.Duration
	// OnPanic, if set, is called (on the worker) with what a handler
	// panicked with and the stack; the panic is also logged.
	OnPanic func(d *Delivery, v any, stack []byte)
	// CoalesceAcks lets warren ack the deliveries whose handler returned
	// nil together, with one multiple basic.ack, instead of one ack each:
	// while the next delivery is already waiting, the ack of the one just
	// handled is held back. The held acks go out once no delivery is
	// waiting (before the worker would wait), every Prefetch/4
	// deliveries, at most 5 ms after the first was held (a long handler
	// does not keep them back), and before the worker ends (Pause,
	// Cancel, the end of the subscription; Cancel and Client.Consume send
	// them before the channel closes). At high rates this saves a frame
	// and a socket write per message.
	//
	// It is opt-in because it changes when a handler's nil reaches the
	// broker: up to 5 ms later, together with others. A connection lost
	// in that window loses those acks, and the broker delivers the
	// messages again (at least once, as after any lost ack, but for more
	// of them); Stats.Acked counts them once sent. The Delivery counts as
	// settled from the handler's return (a later Ack of it returns
	// ErrAlreadySettled, as without coalescing). A multiple ack never
	// covers a delivery that is not settled: one a handler left being
	// settled by a goroutine of its own, one whose settlement failed, or
	// one still being handled by a worker of an earlier subscription round
	// (after Pause and Resume); warren then acks one by one.
	//
	// It needs Workers 1 (handlers settle in delivery order) and manual
	// acks: with more Workers or AutoAck it is refused. A batch consumer
	// ignores it (each batch is acked with one multiple ack already), and
	// so does a Client with a tracer (every ack keeps its span).
	CoalesceAcks bool
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

// fill applies defaults and checks the options.
func (o *ConsumeOptions) fill() error {
	const op = "basic.consume"
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
	case o.CoalesceAcks && o.Workers > 1:
		return fmt.Errorf("%w: %s: CoalesceAcks needs Workers 1 (got %d): handlers must settle in delivery order", ErrInvalidArgument, op, o.Workers)
	case o.CoalesceAcks && o.AutoAck:
		return fmt.Errorf("%w: %s: CoalesceAcks with AutoAck: nothing is acked", ErrInvalidArgument, op)
	}
	return nil
}

// consumer is one subscription of a Consumer: its channel, on which one
// basic.consume at a time is active (a round; Pause cancels it, Resume
// starts the next on the same channel).
type consumer struct {
	c     *session
	st    *channel
	k     *Consumer
	queue string
	opts  ConsumeOptions

	// mu serialises every operation on the channel once workers run: their
	// acks, and the consumer's own basic.cancel and basic.consume.
	mu sync.Mutex
	// Handlers get a ctx that survives the consumer's stop, so that
	// in-flight work can finish at shutdown; it ends at the shutdown
	// bound, or at once when the subscription is lost.
	hctx    context.Context
	hcancel context.CancelFunc
	// For telling the broker's consumer-timeout cancel from others: when
	// one last finished a delivery (monoNow; kept only when timed).
	lastSettle atomic.Int64
	cancels    chan string // the broker's basic.cancel, from amqp091-go
	closed     chan *amqp.Error
	stop       chan struct{} // closed (by halt) when no new deliveries may be taken
	halting    atomic.Bool   // set by halt before it closes stop
	halted     sync.Once
	cur        *round // the active basic.consume; nil while paused (the run loop's)
	// brokerCancelled: the subscription was lost to the broker's
	// basic.cancel (the run loop's; counted once Ready is re-armed).
	brokerCancelled bool
	batches         *batchBook // the outstanding batches (batch consumers)

	// Ack coalescing (CoalesceAcks): workers counts the subscription's
	// workers still running, of every round (a multiple ack is sent only
	// by the only one); elsewhere, under mu, holds deliveries a handler
	// returned from without their being settled (a settlement still being
	// sent by another goroutine, or one that failed): no multiple ack may
	// cover them until they are.
	coalesce  bool
	workers   atomic.Int32
	elsewhere []*Delivery
}

// round is one basic.consume of a subscription and its workers.
type round struct {
	deliveries <-chan amqp.Delivery
	ended      chan struct{} // closed by the first worker to see the deliveries end
	endOnce    sync.Once
	// when each worker took its current delivery or batch (monoNow, 0
	// while idle)
	started []atomic.Int64
}

func (r *round) end() { r.endOnce.Do(func() { close(r.ended) }) }

// flight is the handlers of one Consumer, across its subscriptions. A
// subscription whose channel or connection is gone ends at once, its
// handlers' ctx cancelled (their deliveries are void: the broker has
// returned them to the queue); only the end of the Consumer waits for
// handlers still running, bounded by ShutdownTimeout.
type flight struct {
	wg      sync.WaitGroup // the workers
	running atomic.Int64   // handlers running now
	gaveUp  atomic.Bool    // a wait reached its bound: later waits return at once

	// A wait told that every subscription is halted ends as soon as no
	// handler runs (a halted per-message worker starts none): idle is
	// closed then by the handler that brings running to 0.
	waiting atomic.Bool
	mu      sync.Mutex
	idle    chan struct{}
}

// handlerDone records that a handler returned (or was not started).
func (f *flight) handlerDone() {
	if f.running.Add(-1) == 0 && f.waiting.Load() {
		f.mu.Lock()
		if f.idle != nil {
			close(f.idle)
			f.idle = nil
		}
		f.mu.Unlock()
	}
}

// wait waits at most d, and not after hurry is closed, for every handler
// to return, and reports how many were still running when it gave up (0:
// all returned). It waits for the workers to end, unless halted says that
// every subscription is halted and its workers handle deliveries one at a
// time (per-message workers, which check the halt after counting
// themselves running): then no handler running is enough, and a worker
// waiting for a delivery that will not come (its basic.cancel failed) is
// not waited for.
func (f *flight) wait(d time.Duration, hurry <-chan struct{}, halted bool) int64 {
	if f.gaveUp.Load() {
		return f.running.Load()
	}
	var idle chan struct{}
	if halted {
		idle = make(chan struct{})
		f.mu.Lock()
		f.idle = idle
		f.mu.Unlock()
		f.waiting.Store(true)
		if f.running.Load() == 0 {
			return 0
		}
	}
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return 0
	case <-idle:
		return 0
	case <-t.C:
	case <-hurry:
	}
	f.gaveUp.Store(true)
	return f.running.Load()
}

// subscribe opens a channel on c, sets its prefetch and starts consuming
// on it for k: the subscription is consuming once it returns.
func (c *session) subscribe(ctx context.Context, k *Consumer) (*consumer, error) {
	opts := k.opts
	prefetch := opts.Prefetch
	if opts.AutoAck {
		prefetch = 0
	}
	args, err := c.consumeArgs("basic.consume", k.queue, opts.Tag, consumerArgs{
		Exclusive: opts.Exclusive, AutoAck: opts.AutoAck, Priority: opts.Priority,
		Stream: opts.StreamOffset, AckTimeout: opts.AckTimeout, Args: opts.Args, Prefetch: prefetch,
	})
	if err != nil {
		return nil, err
	}
	opts.Args = args // with warren's own arguments, in a copy
	st, err := c.openChannel(ctx)
	if err != nil {
		return nil, err
	}
	cs := &consumer{c: c, st: st, k: k, queue: k.queue, opts: opts,
		cancels: make(chan string, 4), stop: make(chan struct{}),
		coalesce: opts.CoalesceAcks && k.batch == nil && c.opts.tracer == nil}
	if k.batch != nil {
		cs.batches = new(batchBook)
	}
	cs.hctx, cs.hcancel = context.WithCancel(k.vals)
	ch := Channel{s: st}
	if !opts.AutoAck {
		if err := ch.Qos(ctx, QosOptions{PrefetchCount: opts.Prefetch}); err != nil {
			cs.end()
			return nil, err
		}
	}
	st.ch.NotifyCancel(cs.cancels)
	// A listener of the consumer's own: the end of the channel must be
	// seen even while every worker is busy in a handler.
	cs.closed = st.ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := cs.consume(ctx); err != nil {
		cs.end()
		return nil, err
	}
	return cs, nil
}

// consume sends basic.consume on the subscription's channel and starts the
// workers of the new round.
func (cs *consumer) consume(ctx context.Context) error {
	var deliveries <-chan amqp.Delivery
	cs.mu.Lock()
	err := Channel{s: cs.st}.call(ctx, "basic.consume", func() (err error) {
		deliveries, err = cs.st.ch.Consume(cs.queue, cs.opts.Tag, cs.opts.AutoAck, cs.opts.Exclusive, false, false, amqp.Table(cs.opts.Args))
		return err
	})
	cs.mu.Unlock()
	if err != nil {
		return err
	}
	r := &round{deliveries: deliveries, ended: make(chan struct{}), started: make([]atomic.Int64, cs.opts.Workers)}
	cs.lastSettle.Store(monoNow())
	cs.cur = r
	if cs.k.batch != nil {
		cs.startBatchWorkers(r)
	} else {
		cs.startWorkers(r)
	}
	return nil
}

// startWorkers starts the round's workers. They are not the client's
// goroutines: Client.Close must not wait on a handler that ignores its
// ctx.
func (cs *consumer) startWorkers(r *round) {
	fl := cs.k.fl
	for i := 0; i < cs.opts.Workers; i++ {
		fl.wg.Add(1)
		cs.workers.Add(1)
		go func() {
			defer fl.wg.Done()
			defer cs.workers.Add(-1)
			if cs.work(r, &r.started[i]) {
				r.end()
			}
		}()
	}
}

// cancel sends basic.cancel for the active round, bounded by ctx. The
// round's workers go on with what was delivered before the cancel-ok.
func (cs *consumer) cancel(ctx context.Context) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.cur = nil
	return Channel{s: cs.st}.call(ctx, "basic.cancel", func() error { return cs.st.ch.Cancel(cs.opts.Tag, false) })
}

// halt makes the workers take no new deliveries.
func (cs *consumer) halt() {
	cs.halted.Do(func() {
		cs.halting.Store(true)
		close(cs.stop)
	})
}

// end halts the subscription, cancels its handlers' ctx and closes its
// channel: unacked messages return to the queue, and amqp091-go's
// delivery buffer goroutine ends.
func (cs *consumer) end() {
	cs.halt()
	cs.hcancel()
	cs.closeChannel()
}

// endReason says why the active round's deliveries ended.
func (cs *consumer) endReason(r *round) error {
	select {
	case tag := <-cs.cancels:
		cs.brokerCancelled = true
		return cs.cancelled(tag, r)
	default:
	}
	if err := cs.closedCause(); err != nil {
		return err
	}
	return fmt.Errorf("warren: consume %q: deliveries ended", cs.queue)
}

// closedCause returns why the subscription's channel closed (nil if it
// cannot tell).
func (cs *consumer) closedCause() error {
	if cs.c.isClosing() {
		// Client.Close: amqp091-go may hand the channel the end of the
		// socket (501 FRAME_ERROR - EOF, once the broker has answered
		// connection.close) before warren records the close as the
		// client's.
		return fmt.Errorf("warren: consume %q: %w", cs.queue, ErrClientClosed)
	}
	return cs.st.awaitCause("basic.consume")
}

// cancelled returns the error for the broker's basic.cancel of the
// consumer: ErrAckTimeout as well as ErrConsumerCancelled when it was the
// broker's consumer timeout (RabbitMQ 4.3+ on quorum queues cancels the
// consumer rather than closing the channel). AMQP's basic.cancel carries no
// reason; with AckTimeout set, warren takes a cancel for a timeout when
// this subscription held a delivery about that long (a handler has run that
// long on one, or deliveries waited while none was finished for that long)
// and the queue still exists.
func (cs *consumer) cancelled(tag string, r *round) error {
	if cs.opts.AckTimeout > 0 && !cs.opts.AutoAck && cs.heldPastAckTimeout(r) && cs.queueExists() {
		return fmt.Errorf("warren: consume %q: %w: the broker cancelled the consumer (tag %q) after a delivery went unacknowledged for AckTimeout %v (%w); its unacked messages return to the queue",
			cs.queue, ErrAckTimeout, tag, cs.opts.AckTimeout, ErrConsumerCancelled)
	}
	return fmt.Errorf("warren: consume %q: %w (consumer tag %q)", cs.queue, ErrConsumerCancelled, tag)
}

// heldPastAckTimeout reports whether this subscription has held an
// unacknowledged delivery for about AckTimeout (nine tenths of it, for the
// broker's timer and ours): a handler running that long on one, or
// deliveries buffered while no handler finished one for that long.
func (cs *consumer) heldPastAckTimeout(r *round) bool {
	now := monoNow()
	bound := int64(cs.opts.AckTimeout) * 9 / 10
	for i := range r.started {
		if s := r.started[i].Load(); s != 0 && now-s >= bound {
			return true
		}
	}
	return len(r.deliveries) > 0 && now-cs.lastSettle.Load() >= bound
}

// queueExists checks, on a channel of its own, that the consumer's queue is
// still there.
func (cs *consumer) queueExists() bool {
	ok, _ := cs.c.queueExists(cs.queue)
	return ok
}

// queueExists checks with a passive declare, on a channel of its own (a
// missing queue costs that channel), that queue exists. err is set when
// the check could not be made.
func (c *session) queueExists(queue string) (ok bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.closeTimeout)
	defer cancel()
	st, err := c.openChannel(ctx)
	if err != nil {
		return false, err
	}
	ch := Channel{s: st}
	defer ch.Close(ctx)
	_, err = ch.QueueDeclare(ctx, queue, QueueOptions{Passive: true})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// work runs handlers for the round's deliveries until they end (it then
// returns true) or stop is closed.
//
// A delivery is taken with a plain receive, without a select: first
// without waiting, and only when none is ready (and held acks have gone
// out) waiting for one. A delivery taken after the halt
// (halting) is left unacked: it returns to the queue. With coalescing, the
// acks held back go out before the worker would wait, every Prefetch/4
// deliveries, maxAckDelay after the first was held, and before it
// returns.
func (cs *consumer) work(r *round, started *atomic.Int64) bool {
	fl := cs.k.fl
	timed := cs.timed()
	var held *ackHold
	if cs.coalesce {
		held = &ackHold{cs: cs, max: max(1, cs.opts.Prefetch/4)}
		defer held.flush()
	}
	for {
		var ad amqp.Delivery
		var ok bool
		ready := true
		select {
		case ad, ok = <-r.deliveries:
		default:
			ready = false
		}
		if !ready && held.any() {
			// Let amqp091-go's buffer goroutine offer what it holds (it
			// may not have run since the last receive) before the held
			// acks go out.
			runtime.Gosched()
			select {
			case ad, ok = <-r.deliveries:
				ready = true
			default:
				held.flush()
			}
		}
		if !ready {
			// A plain receive: a halt is always followed by the end of
			// the deliveries (basic.cancel, or the channel's close), and
			// the Consumer's wait does not wait for a worker waiting here
			// (see flight.wait).
			ad, ok = <-r.deliveries
		}
		if !ok {
			return true
		}
		// Counted running before the halt is checked, so that a wait
		// that saw no handler running after the halt was right.
		fl.running.Add(1)
		if cs.halting.Load() {
			fl.handlerDone()
			return false // taken as shutdown began: left unacked, it returns to the queue
		}
		cs.k.st.inFlight.Add(1)
		if timed {
			started.Store(monoNow())
		}
		if d := cs.handle(&ad); d != nil {
			held.add(d)
		}
		if timed {
			started.Store(0)
			cs.lastSettle.Store(monoNow())
		}
		cs.k.st.inFlight.Add(-1)
		fl.handlerDone()
	}
}

// maxAckDelay bounds how long a coalesced ack is held back.
const maxAckDelay = 5 * time.Millisecond

// ackHold is one worker's acks held back (CoalesceAcks): deliveries whose
// handler returned nil, heldAck, in tag order. Its timer sends them
// maxAckDelay after the first was held, should the worker not have sent
// them by then (a long handler).
type ackHold struct {
	cs  *consumer
	max int // flush at this many

	mu    sync.Mutex
	ds    []*Delivery
	t     *time.Timer
	armed bool
}

// any reports whether acks are held back. (A nil ackHold holds none.)
func (h *ackHold) any() bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ds) > 0
}

// add holds back the ack of d; at max held they go out.
func (h *ackHold) add(d *Delivery) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ds = append(h.ds, d)
	if len(h.ds) >= h.max {
		h.flushLocked()
		return
	}
	if !h.armed {
		if h.t == nil {
			h.t = time.AfterFunc(maxAckDelay, h.flush)
		} else {
			h.t.Reset(maxAckDelay)
		}
		h.armed = true
	}
}

// flush sends the acks held back.
func (h *ackHold) flush() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.flushLocked()
}

// flushLocked sends the acks held back: one multiple ack up to the last
// when that covers nothing else unsettled (no other worker of the
// subscription runs, no delivery is left being settled elsewhere), else
// one ack each. h.mu is held.
func (h *ackHold) flushLocked() {
	if h.armed {
		h.t.Stop()
		h.armed = false
	}
	held, cs := h.ds, h.cs
	if len(held) == 0 {
		return
	}
	bg := context.Background() // as handle's: a ctx ending mid-write would cost the connection
	cs.mu.Lock()
	if len(held) > 1 && cs.workers.Load() == 1 && cs.noneElsewhere() {
		err := Channel{s: cs.st}.Ack(bg, held[len(held)-1].DeliveryTag, true)
		cs.mu.Unlock()
		state := unsettled
		if err == nil {
			state = settled
			cs.k.st.tally[tallyAck].Add(uint64(len(held)))
		}
		for _, d := range held {
			d.settled.Store(state)
		}
	} else {
		cs.mu.Unlock()
		for _, d := range held {
			d.settled.Store(unsettled)
			_ = d.Ack(bg)
		}
	}
	clear(held)
	h.ds = held[:0]
}

// noneElsewhere reports whether every delivery in elsewhere has been
// settled since, forgetting those. mu is held.
func (cs *consumer) noneElsewhere() bool {
	cs.elsewhere = slices.DeleteFunc(cs.elsewhere, func(d *Delivery) bool { return d.settled.Load() == settled })
	return len(cs.elsewhere) == 0
}

// timed reports whether the workers keep the times heldPastAckTimeout
// looks at: only with an AckTimeout.
func (cs *consumer) timed() bool { return cs.opts.AckTimeout > 0 && !cs.opts.AutoAck }

// monoBase is the origin of monoNow.
var monoBase = time.Now()

// monoNow is a monotonic clock in nanoseconds, never 0: one clock read
// (time.Now reads two).
func monoNow() int64 { return int64(time.Since(monoBase)) + 1 }

// delivery wraps ad for a handler.
func (cs *consumer) delivery(ad *amqp.Delivery) *Delivery {
	d := &Delivery{Delivery: *ad, ch: Channel{s: cs.st}, lock: &cs.mu, tally: &cs.k.st.tally}
	d.Acknowledger = nil
	if cs.opts.AutoAck {
		d.settled.Store(settled)
	}
	cs.k.st.delivered.Add(1)
	return d
}

// handle runs the handler for one delivery and settles it. With
// coalescing, a delivery whose handler returned nil is not acked: handle
// returns it, heldAck, for the worker to ack later (see ackHold).
func (cs *consumer) handle(ad *amqp.Delivery) (hold *Delivery) {
	d := cs.delivery(ad)
	ctx, err := cs.hctx, error(nil)
	if t := cs.c.opts.tracer; t != nil {
		var end func(error)
		ctx, end = t.startProcess(ctx, cs, d)
		defer func() { end(err) }()
	}
	err = cs.call(ctx, d)
	if err != nil {
		cs.k.st.handlerErrors.Add(1)
	}
	if d.settled.Load() == settled {
		return nil
	}
	if cs.coalesce {
		if err == nil && d.settled.CompareAndSwap(unsettled, heldAck) {
			return d
		}
		defer cs.unlessSettled(d)
	}
	// Settled without a caller's ctx: an ack is a frame write, and a
	// ctx ending mid-write would cost the connection.
	bg := d.ownCtx()
	if err == nil {
		_ = d.Ack(bg)
	} else {
		// Reject, not Nack: from RabbitMQ 4.3 only a reject counts as a
		// failed delivery, and only failures trip a delivery limit.
		_ = d.Reject(bg, !cs.opts.DeadLetterOnError)
	}
	return nil
}

// unlessSettled keeps d from being covered by a multiple ack while it is
// not settled (coalescing).
func (cs *consumer) unlessSettled(d *Delivery) {
	if d.settled.Load() == settled {
		return
	}
	cs.mu.Lock()
	cs.elsewhere = append(cs.elsewhere, d)
	cs.mu.Unlock()
}

// call runs the handler, turning a panic into an error.
func (cs *consumer) call(ctx context.Context, d *Delivery) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = cs.panicked(d, v)
		}
	}()
	return cs.k.h(ctx, d)
}

// panicked logs and reports a handler's panic, and returns it as an error.
func (cs *consumer) panicked(d *Delivery, v any) error {
	stack := debug.Stack()
	cs.k.st.panics.Add(1)
	cs.c.opts.logger.Error("warren: consumer handler panicked; the message is rejected and the consumer goes on",
		"queue", cs.queue, "consumer_tag", cs.opts.Tag, "delivery_tag", d.DeliveryTag, "panic", v, "stack", string(stack))
	if cs.opts.OnPanic != nil {
		cs.opts.OnPanic(d, v, stack)
	}
	return fmt.Errorf("warren: handler panicked: %v", v)
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

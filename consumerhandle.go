package warren

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Consumer is a consumer started by Client.StartConsumer or
// Client.StartBatchConsumer. It consumes its queue on a channel of its own
// until Cancel, the end of its Client (Close, or a lost connection without
// WithReconnect), or an error it cannot recover from; Done is closed then,
// and Err says why.
//
// The ctx given to StartConsumer bounds only the start (like a dial's);
// the Consumer does not stop when it ends. Its handlers' ctx carries that
// ctx's values.
//
// A subscription is the Consumer's channel and the basic.consume on it.
// When it is lost (the channel or connection closed, the broker cancelled
// the consumer or timed it out) the handlers' ctx is cancelled at once and
// their deliveries are void (the broker has returned them to the queue;
// see Handler). With WithReconnect the Consumer then subscribes again on a
// new channel, with the same consumer tag:
//
//   - after a lost connection, on the next connection, as soon as it is
//     up (a queue missing then, 404, ends the Consumer: an exclusive or
//     server-named queue does not come back);
//   - after the broker's consumer timeout (ErrAckTimeout), at once;
//   - after any other basic.cancel from the broker (the queue was deleted,
//     a queue leader moved or failed over), once the queue exists again:
//     it checks with a passive queue.declare on a channel of its own
//     (never a basic.consume, which would cost its channel a 404), first
//     at once and then after each failed check waiting the backoff of the
//     Client's ReconnectPolicy (MinBackoff doubling up to MaxBackoff, with
//     jitter), until the queue is there, Cancel, or the Client ends. Ready
//     stays open meanwhile, and Stats().QueueChecks counts the checks.
//
// Without WithReconnect a lost subscription ends the Consumer, with the
// typed cause in Err: an error matching ErrConsumerCancelled for the
// broker's cancel (and ErrAckTimeout as well for its consumer timeout),
// the *ChannelError or *ConnectionError of a closed channel or connection,
// ErrClientClosed after Client.Close. With WithReconnect a subscription
// lost for another reason (a *ChannelError: the broker closed the channel,
// for instance 406 for a double ack) ends it too.
//
// A Consumer is safe for concurrent use: every method may be called from
// any goroutine, at any time, also after it has ended.
//
// A Consumer not made by StartConsumer or StartBatchConsumer (a nil
// *Consumer, a zero Consumer{}) does not panic: Pause, Resume and Cancel
// return an error matching ErrInvalidArgument, Done is closed, Err
// returns that error, Ready is never closed, Stats is zero, and Tag and
// Queue are empty.
type Consumer struct {
	c     *Client
	queue string
	opts  ConsumeOptions // filled
	h     Handler        // nil for a batch consumer
	batch *batchSpec     // nil for a per-message consumer
	fl    *flight
	st    consumerCounters
	vals  context.Context // StartConsumer's ctx without its cancel: handlers' ctx carry its values
	// resubscribeOnCancel: with WithReconnect, a broker's basic.cancel
	// (other than its consumer timeout) is followed by a resubscription
	// once the queue exists (StartConsumer), rather than ending the
	// consumer (Client.Consume, as documented there).
	resubscribeOnCancel bool

	wake      chan struct{} // size 1: Pause or Resume changed paused
	stopping  chan struct{} // closed once a stop is asked for (Cancel, Client.Consume's ctx)
	stopOnce  sync.Once
	stopCause error              // why: nil for Cancel; written before stopping is closed
	endLife   context.CancelFunc // ends the run loop's waits (resubscribing) at a stop
	hurry     chan struct{}      // closed when a Cancel's ctx ended: stop waiting for handlers
	hurryOnce sync.Once

	mu          sync.Mutex // guards following
	paused      bool
	resumed     chan struct{} // closed by the Resume that ends the current pause
	ready       chan struct{} // closed while a basic.consume is active
	readyClosed bool
	quiet       chan struct{} // closed while no basic.consume is active or being sent
	quietClosed bool

	done    chan struct{}
	err     error // why the consumer ended; valid once done is closed
	stopErr error // the stop's result (Cancel's); valid once done is closed
}

// consumerCounters are a Consumer's counters (see ConsumerStats).
type consumerCounters struct {
	tally           settleTally
	delivered       atomic.Uint64
	handlerErrors   atomic.Uint64
	panics          atomic.Uint64
	resubscriptions atomic.Uint64
	queueChecks     atomic.Uint64
	brokerCancels   atomic.Uint64
	inFlight        atomic.Int64
}

// ConsumerStats is a snapshot of a Consumer's counters, added up over all
// its subscriptions (see Consumer.Stats).
type ConsumerStats struct {
	// Delivered counts deliveries handed to the handler (each delivery of
	// a batch counts one). Deliveries the broker sent but no handler took
	// before a shutdown or a lost subscription are not counted: they
	// return to the queue.
	Delivered uint64
	// Acked, Nacked and Rejected count settlements sent for the
	// consumer's deliveries, by warren (a handler's nil or error) or by
	// the handler through the Delivery's Ack, Nack and Reject. A batch's
	// multiple ack counts each delivery it covers. A settlement that
	// failed (ErrDeliveryVoid, ErrAlreadySettled, ...) is not counted;
	// with AutoAck nothing is.
	Acked, Nacked, Rejected uint64
	// HandlerErrors counts handler calls that returned an error or
	// panicked; Panics counts the panics among them.
	HandlerErrors, Panics uint64
	// InFlight is how many deliveries handlers hold now (a running batch
	// counts its size).
	InFlight int
	// Resubscriptions counts the subscriptions made after the first to
	// replace one lost while it was active (the channel or connection
	// lost, the broker's cancel). The subscription a Resume makes after
	// Pause is not counted, even when the channel or connection was lost
	// while the Consumer was paused and Resume subscribes on a new one
	// (with WithReconnect, on the new connection), or when Resume found
	// the queue deleted and the Consumer waited for it to exist again.
	// Each is counted before Ready is closed for it.
	Resubscriptions uint64
	// BrokerCancels counts basic.cancel sent by the broker (queue deleted,
	// leader moved, consumer timeout on RabbitMQ 4.x quorum queues); each
	// is counted after the lost subscription's channel was closed and
	// Ready re-armed: once the count has gone up, Ready returns a new
	// channel, open until the next subscription (if any) is made.
	BrokerCancels uint64
	// QueueChecks counts the passive declares made to see whether the
	// queue exists again before resubscribing after a broker cancel.
	QueueChecks uint64
}

// StartConsumer starts consuming queue on a channel of its own, running h
// for each delivery on opts.Workers goroutines (see Handler for the
// settlement rules and ConsumeOptions for the defaults). It returns once
// the broker has answered basic.consume with basic.consume-ok: Ready is
// then already closed. If consuming cannot start it returns the typed
// error of basic.qos or basic.consume (for instance a *ChannelError
// matching ErrNotFound for a missing queue) and nothing is left running;
// bad options and a nil h are refused with ErrInvalidArgument before
// anything is sent. A ctx that has ended fails the start with its error
// (wrapped), and a Client that has ended with its error (ErrClientClosed
// after Close).
//
// ctx bounds the start only (with WithReconnect, a start that finds the
// connection lost waits for the next one, bounded by ctx); the Consumer
// runs until Cancel, the end of the Client, or an error it cannot
// recover from (see Consumer). Client.Close ends every Consumer of the
// Client: its channel closes with the connection, its handlers' ctx is
// cancelled, Err becomes ErrClientClosed, and Done is closed once its
// handlers have returned (at most ShutdownTimeout later; Close does not
// wait for them).
//
// Unlike Client.Consume, a Consumer started here resubscribes, with
// WithReconnect, after the broker cancelled it (see Consumer).
func (c *Client) StartConsumer(ctx context.Context, queue string, h Handler, opts ConsumeOptions) (*Consumer, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: basic.consume: nil handler", ErrInvalidArgument)
	}
	return c.startConsumer(ctx, queue, opts, true, func(k *Consumer) { k.h = h })
}

// startConsumer makes a Consumer (setup sets its handler), subscribes it
// and starts its run loop.
func (c *Client) startConsumer(ctx context.Context, queue string, opts ConsumeOptions, onCancel bool, setup func(*Consumer)) (*Consumer, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	k := &Consumer{c: c, queue: queue, opts: opts, fl: new(flight), vals: context.WithoutCancel(ctx),
		resubscribeOnCancel: onCancel, wake: make(chan struct{}, 1), stopping: make(chan struct{}),
		hurry: make(chan struct{}), resumed: make(chan struct{}), ready: make(chan struct{}),
		quiet: make(chan struct{}), quietClosed: true, done: make(chan struct{})}
	setup(k)
	var sub *consumer
	for {
		s, err := c.live(ctx)
		if err != nil {
			return nil, err
		}
		k.beginConsume()
		sub, err = s.subscribe(ctx, k)
		if err == nil {
			break
		}
		k.setIdle()
		if ctx.Err() != nil || c.opts.reconnect == nil || !IsConnectionLevel(err) || errors.Is(err, ErrClientClosed) {
			return nil, err
		}
		select {
		case <-s.dead: // the connection error was seen before the session noted its end
		case <-ctx.Done():
			return nil, err
		}
	}
	k.setConsuming()
	life, endLife := context.WithCancel(context.Background())
	k.endLife = endLife
	go k.run(life, sub)
	return k, nil
}

// Tag returns the consumer tag (ConsumeOptions.Tag, or the one warren
// made up), the same for every subscription of the Consumer.
func (k *Consumer) Tag() string {
	if !k.valid() {
		return ""
	}
	return k.opts.Tag
}

// Queue returns the name of the queue the Consumer consumes.
func (k *Consumer) Queue() string {
	if !k.valid() {
		return ""
	}
	return k.queue
}

// valid reports whether k was made by StartConsumer or
// StartBatchConsumer.
func (k *Consumer) valid() bool { return k != nil && k.done != nil }

// errNotMade is the error of an operation on a Consumer that
// StartConsumer did not make.
func errNotMade(op string) error {
	return fmt.Errorf("%w: %s of a Consumer not made by Client.StartConsumer or StartBatchConsumer", ErrInvalidArgument, op)
}

// closedChan is a closed channel: the Done of a Consumer not made by
// StartConsumer.
var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// neverChan is never closed: the Ready of a Consumer not made by
// StartConsumer.
var neverChan = make(chan struct{})

// Ready returns a channel that is closed while the consumer is subscribed:
// once the broker's basic.consume-ok has arrived. When the subscription is
// lost (a cut connection, a closed channel, the broker's basic.cancel) or
// paused, Ready returns a new, open channel, which is closed when the next
// subscription's basic.consume-ok arrives (a resubscription, or Resume).
// So Ready is re-armed after every loss and can be observed again for
// every resubscription: call it again after each wait, not once.
//
// After the Consumer has ended, the channel Ready returns is never closed;
// wait on Done as well.
func (k *Consumer) Ready() <-chan struct{} {
	if !k.valid() {
		return neverChan
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ready
}

// Done returns a channel that is closed when the Consumer has ended (Cancel,
// the end of its Client, an error it cannot recover from) and its handlers
// have returned (or ShutdownTimeout passed).
func (k *Consumer) Done() <-chan struct{} {
	if !k.valid() {
		return closedChan
	}
	return k.done
}

// Err returns nil while the Consumer runs and after it ended by Cancel;
// otherwise, once Done is closed, why it ended (see Consumer), wrapping
// ErrShutdownTimeout as well when handlers were still running
// ShutdownTimeout after that.
func (k *Consumer) Err() error {
	if !k.valid() {
		return errNotMade("Err")
	}
	select {
	case <-k.done:
		return k.err
	default:
		return nil
	}
}

// Stats returns a snapshot of the Consumer's counters.
func (k *Consumer) Stats() ConsumerStats {
	if !k.valid() {
		return ConsumerStats{}
	}
	return ConsumerStats{
		Delivered:       k.st.delivered.Load(),
		Acked:           k.st.tally[tallyAck].Load(),
		Nacked:          k.st.tally[tallyNack].Load(),
		Rejected:        k.st.tally[tallyReject].Load(),
		HandlerErrors:   k.st.handlerErrors.Load(),
		Panics:          k.st.panics.Load(),
		InFlight:        int(k.st.inFlight.Load()),
		Resubscriptions: k.st.resubscriptions.Load(),
		BrokerCancels:   k.st.brokerCancels.Load(),
		QueueChecks:     k.st.queueChecks.Load(),
	}
}

// Pause stops the flow of new deliveries: it cancels the consumer's
// basic.consume (basic.cancel) and keeps its channel open. It returns once
// the broker's basic.cancel-ok has arrived, after which the broker sends
// nothing more; deliveries it sent before are still handled, and
// unacknowledged deliveries keep their meaning: in-flight handlers finish
// and settle on the same channel. Ready is re-armed (open) while paused.
//
// (warren does not pause with channel.flow: RabbitMQ does not implement a
// client's channel.flow with active=false and closes the connection with
// 540 NOT_IMPLEMENTED.)
//
// A paused Consumer stays paused across a lost subscription or a
// reconnect: it subscribes again only on Resume. Pause on a paused
// Consumer returns nil at once. If ctx ends first, Pause returns its
// error, and the pause still takes effect. After the Consumer has ended,
// Pause returns an error matching ErrConsumerEnded.
func (k *Consumer) Pause(ctx context.Context) error {
	if !k.valid() {
		return errNotMade("Pause")
	}
	select {
	case <-k.done:
		return k.ended("pause")
	default:
	}
	k.mu.Lock()
	if !k.paused {
		k.paused = true
		k.resumed = make(chan struct{})
	}
	quiet, resumed := k.quiet, k.resumed
	k.mu.Unlock()
	k.poke()
	select {
	case <-quiet:
	case <-resumed: // a Resume came first
	case <-k.done:
		return k.ended("pause")
	case <-ctx.Done():
		return fmt.Errorf("warren: consumer %q: pause: %w", k.opts.Tag, ctx.Err())
	}
	return nil
}

// Resume starts the flow of deliveries again after Pause: a new
// basic.consume, on the same channel when it is still open, else on a new
// one (bounded by ctx, with WithReconnect on the next connection). It
// returns once the broker's basic.consume-ok has arrived (Ready is then
// closed), or when ctx ends: the Consumer then goes on trying to subscribe
// (Pause stops it). Resume on a Consumer that is not paused waits for
// Ready the same way. After the Consumer has ended, Resume returns an
// error matching ErrConsumerEnded (and why it ended).
//
// A queue deleted while the Consumer was paused is found by Resume's
// basic.consume (404), and handled like the broker's cancel for a deleted
// queue: with WithReconnect the Consumer subscribes again once the queue
// exists again (Resume waits for that, bounded by ctx); without, it ends,
// Err matching ErrConsumerCancelled and ErrNotFound.
func (k *Consumer) Resume(ctx context.Context) error {
	if !k.valid() {
		return errNotMade("Resume")
	}
	select {
	case <-k.done:
		return k.ended("resume")
	default:
	}
	k.mu.Lock()
	if k.paused {
		k.paused = false
		close(k.resumed)
	}
	ready := k.ready
	k.mu.Unlock()
	k.poke()
	select {
	case <-ready:
		return nil
	case <-k.done:
		return k.ended("resume")
	case <-ctx.Done():
		return fmt.Errorf("warren: consumer %q: resume: %w", k.opts.Tag, ctx.Err())
	}
}

// ended is the error of an operation on an ended Consumer.
func (k *Consumer) ended(op string) error {
	if k.err != nil {
		return fmt.Errorf("warren: consumer %q: %s: %w (%w)", k.opts.Tag, op, ErrConsumerEnded, k.err)
	}
	return fmt.Errorf("warren: consumer %q: %s: %w", k.opts.Tag, op, ErrConsumerEnded)
}

// Cancel stops the Consumer gracefully: it takes no new deliveries and
// sends basic.cancel, lets in-flight handlers finish (they settle as usual:
// nil acks, an error rejects), then closes the channel, which returns
// every delivery no handler started to the queue. With AutoAck the
// handlers also get what was already delivered, which the broker counts as
// acknowledged.
//
// The wait for handlers is bounded by ctx and by ShutdownTimeout; when
// either ends first, the handlers' ctx is cancelled, the channel is closed
// (their messages return to the queue, their later acks fail with
// ErrDeliveryVoid) and Cancel returns an error wrapping ErrShutdownTimeout
// (and ctx's error when ctx ended). It returns nil otherwise.
//
// Cancel is idempotent and safe from many goroutines: every call returns
// once the Consumer has ended, with the result of the stop (nil, or the
// ErrShutdownTimeout error above); a call whose own ctx ends first hurries
// the stop as above, and adds its ctx's error to an ErrShutdownTimeout
// result. A Cancel made before Done is closed wins over any other end that
// races it (a lost subscription, Client.Close): Err then returns nil. On a
// Consumer that had already ended (Done closed) Cancel returns nil, and
// Err keeps why it ended.
//
// Cancel waits for the Consumer's handlers: called from one of them, it
// waits for that handler too, until ctx or ShutdownTimeout ends, and
// reports ErrShutdownTimeout. A handler that wants to stop its Consumer
// calls Cancel on a goroutine of its own.
func (k *Consumer) Cancel(ctx context.Context) error {
	if !k.valid() {
		return errNotMade("Cancel")
	}
	k.stop(nil)
	select {
	case <-k.done:
		return k.stopErr
	case <-ctx.Done():
	}
	k.hurryOnce.Do(func() { close(k.hurry) })
	<-k.done // bounded: the run loop stops waiting and closes the channel
	if k.stopErr != nil {
		return fmt.Errorf("%w (%w)", k.stopErr, ctx.Err())
	}
	return nil
}

// stop asks the run loop to stop, for cause (nil: Cancel).
func (k *Consumer) stop(cause error) {
	k.stopOnce.Do(func() {
		k.mu.Lock()
		k.stopCause = cause
		close(k.stopping)
		k.mu.Unlock()
		k.endLife()
	})
}

// poke wakes the run loop: paused changed.
func (k *Consumer) poke() {
	select {
	case k.wake <- struct{}{}:
	default: // a wake-up is pending
	}
}

// beginConsume records that a basic.consume is about to be sent, unless
// the Consumer is paused (it then returns false).
func (k *Consumer) beginConsume() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.paused {
		return false
	}
	if k.quietClosed {
		k.quiet, k.quietClosed = make(chan struct{}), false
	}
	return true
}

// setConsuming records that a basic.consume-ok arrived.
func (k *Consumer) setConsuming() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.readyClosed {
		close(k.ready)
		k.readyClosed = true
	}
}

// setIdle records that no basic.consume is active or being sent.
func (k *Consumer) setIdle() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.readyClosed {
		k.ready, k.readyClosed = make(chan struct{}), false
	}
	if !k.quietClosed {
		close(k.quiet)
		k.quietClosed = true
	}
}

func (k *Consumer) isPaused() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.paused
}

// run is the Consumer's goroutine: it serves sub, resubscribes when a
// subscription is lost, and ends the Consumer. life ends at a stop.
func (k *Consumer) run(life context.Context, sub *consumer) {
	var err error
	for {
		if sub == nil {
			break
		}
		lost := k.serve(sub)
		if lost == nil {
			break // stopping
		}
		// Lost while paused (or while Resume's basic.consume failed): the
		// next subscription is the one Resume asks for, not counted.
		pausedLoss := sub.cur == nil
		// Lost: the broker has the unacked messages back (or will once
		// the channel closes, next): the handlers' acks can no longer
		// count, so their ctx ends now and nothing waits for them here
		// (see flight).
		from := sub.c
		sub.end()
		k.setIdle()
		// Counted once Ready is re-armed: whoever sees the count sees
		// the new, open Ready.
		if sub.brokerCancelled {
			k.st.brokerCancels.Add(1)
		}
		sub = nil
		if !k.again(lost) {
			err = lost
			break
		}
		k.c.opts.logger.Warn("warren: consumer subscription lost; subscribing again", "queue", k.queue, "consumer_tag", k.opts.Tag, "err", lost)
		sub, err = k.resubscribe(life, lost, !pausedLoss, from)
		if err != nil {
			break
		}
	}
	stopped := false
	select {
	case <-k.stopping:
		stopped = true
	default:
	}
	var n int64 // handlers still running at the bound
	if stopped {
		n = k.shutdown(sub)
	} else {
		// Every subscription has ended (halted).
		n = k.fl.wait(k.opts.ShutdownTimeout, k.hurry, k.batch == nil)
	}
	k.endLife()
	k.setIdle()
	k.mu.Lock()
	defer k.mu.Unlock()
	select {
	case <-k.stopping:
		// A stop asked for before the end wins over a loss or failure
		// that raced it, or that came first and whose handlers were
		// still awaited: after a Cancel made before Done is closed, Err
		// is nil. (stop closes stopping under mu: it comes before this
		// or after done is closed.)
		if n > 0 {
			k.stopErr = fmt.Errorf("warren: consumer %q: cancel: %d handlers still running (%w), their messages return to the queue", k.opts.Tag, n, ErrShutdownTimeout)
		}
		err = nil
		if k.stopCause != nil {
			err = fmt.Errorf("warren: consume %q: stopped: %w", k.queue, k.stopCause)
			if k.stopErr != nil {
				err = fmt.Errorf("%w; %w", err, k.stopErr)
			}
		}
	default:
		if n > 0 && err != nil {
			err = fmt.Errorf("%w; %d handlers still running (%w)", err, n, ErrShutdownTimeout)
		}
	}
	k.err = err
	close(k.done)
}

// again says whether a subscription lost for err is followed by another.
func (k *Consumer) again(err error) bool {
	select {
	case <-k.stopping:
		return false
	default:
	}
	switch {
	case k.c.opts.reconnect == nil:
		return false
	case errors.Is(err, ErrAckTimeout):
		return true // the broker gave up on a slow handler: the connection is fine
	case errors.Is(err, ErrConsumerCancelled):
		return k.resubscribeOnCancel
	}
	return IsConnectionLevel(err) && !errors.Is(err, ErrClientClosed)
}

// serve runs the subscription until it is lost (it returns why) or the
// Consumer is stopped (it returns nil), pausing and resuming it on the
// way.
func (k *Consumer) serve(sub *consumer) error {
	if err := k.apply(sub); err != nil {
		return k.applyFailed(err)
	}
	for {
		var ended <-chan struct{}
		if sub.cur != nil {
			ended = sub.cur.ended
		}
		select {
		case tag := <-sub.cancels:
			if sub.cur == nil {
				continue // not ours to count: nothing is subscribed
			}
			sub.brokerCancelled = true
			return sub.cancelled(tag, sub.cur)
		case <-sub.closed:
			if err := sub.closedCause(); err != nil {
				return err
			}
			return fmt.Errorf("warren: consume %q: channel closed", k.queue)
		case <-ended:
			// The deliveries ended without our cancel: the broker
			// cancelled the consumer, or the channel or connection closed.
			return sub.endReason(sub.cur)
		case <-k.wake:
			if err := k.apply(sub); err != nil {
				return k.applyFailed(err)
			}
		case <-k.stopping:
			return nil
		}
	}
}

// applyFailed is the loss of the subscription when a pause or resume
// failed with err. A resume's basic.consume refused with 404 (the queue
// was deleted while the Consumer was paused, which no consumer's cancel
// reports) is a broker's cancel of a deleted queue: with WithReconnect a
// Consumer that resubscribes after one waits for the queue to exist again.
func (k *Consumer) applyFailed(err error) error {
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("warren: consume %q: %w: resume: %w", k.queue, ErrConsumerCancelled, err)
	}
	return err
}

// apply pauses or resumes sub as paused says.
func (k *Consumer) apply(sub *consumer) error {
	ctx, cancel := context.WithTimeout(context.Background(), k.c.opts.closeTimeout)
	defer cancel()
	paused := k.isPaused()
	switch {
	case paused && sub.cur != nil:
		err := sub.cancel(ctx)
		k.setIdle()
		return err
	case !paused && sub.cur == nil:
		if !k.beginConsume() {
			return nil
		}
		if err := sub.consume(ctx); err != nil {
			k.setIdle()
			return err
		}
		k.setConsuming()
	}
	return nil
}

// resubscribe subscribes again after a subscription was lost for lost,
// counting it in Resubscriptions if count is set. It returns nil and no
// error when the Consumer is stopped meanwhile.
func (k *Consumer) resubscribe(life context.Context, lost error, count bool, from *session) (*consumer, error) {
	if IsConnectionLevel(lost) && from != nil {
		// The loss can be seen (the consumer's channel ends with the
		// connection's error) before the connection has noted its own
		// end: until it has, live would hand back that same connection,
		// and the next basic.consume would fail on it.
		select {
		case <-from.dead:
		case <-life.Done():
			return nil, nil
		case <-k.c.done:
		}
	}
	// After a broker cancel that was not its consumer timeout the queue
	// may be gone: check for it before each basic.consume.
	missing := errors.Is(lost, ErrConsumerCancelled) && !errors.Is(lost, ErrAckTimeout)
	failures := 0
	backoff := func() bool {
		failures++
		t := time.NewTimer(k.c.opts.reconnect.backoff(failures))
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-life.Done():
		case <-k.c.done:
		}
		return false
	}
	for {
		for k.isPaused() {
			select {
			case <-k.wake:
			case <-life.Done():
				return nil, nil
			case <-k.c.done:
				// Why the Client ended: ErrClientClosed after Close (its
				// Err may still be the lost connection's).
				_, err := k.c.live(life)
				if err == nil {
					err = ErrClientClosed
				}
				return nil, fmt.Errorf("%w (then: %w)", lost, err)
			}
		}
		s, err := k.c.live(life)
		if life.Err() != nil {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w (then: %w)", lost, err)
		}
		if missing {
			k.st.queueChecks.Add(1)
			if ok, _ := s.queueExists(k.queue); !ok {
				if !backoff() && life.Err() != nil {
					return nil, nil
				}
				continue // (a Client that ended meanwhile is found by live)
			}
		}
		if !k.beginConsume() {
			continue // paused meanwhile
		}
		sub, err := s.subscribe(life, k)
		if err == nil {
			if count {
				k.st.resubscriptions.Add(1) // counted by the time Ready is closed
			}
			k.setConsuming()
			return sub, nil
		}
		k.setIdle()
		if life.Err() != nil {
			return nil, nil
		}
		switch {
		case missing && errors.Is(err, ErrNotFound):
			// Deleted again between the check and basic.consume.
			if !backoff() && life.Err() != nil {
				return nil, nil
			}
			continue
		case IsConnectionLevel(err) && !errors.Is(err, ErrClientClosed):
			select {
			case <-s.dead:
				continue
			case <-life.Done():
				return nil, nil
			}
		}
		return nil, fmt.Errorf("%w (then: %w)", lost, err)
	}
}

// shutdown stops sub (nil when there is no subscription) gracefully: no
// new deliveries, basic.cancel, in-flight handlers finish (bounded by
// ShutdownTimeout, or at once on hurry), the channel closes. It returns
// how many handlers were still running at the bound.
func (k *Consumer) shutdown(sub *consumer) int64 {
	bound := k.opts.ShutdownTimeout
	if sub != nil {
		// With manual acks, deliveries not yet started stay unacked and
		// return to the queue when the channel closes. With AutoAck the
		// broker already counts them as delivered: the workers go on
		// handling them until the buffer is empty (or the bound).
		if !k.opts.AutoAck {
			sub.halt()
		}
		if sub.cur != nil {
			cctx, ccancel := context.WithTimeout(context.Background(), bound)
			stop := context.AfterFunc(closingCtx{k.hurry}, ccancel)
			_ = sub.cancel(cctx)
			stop()
			ccancel()
		}
	}
	// At the bound the channel closes next; the unfinished handlers'
	// messages go back to the queue. Their later acks fail harmlessly.
	// (With AutoAck the workers must be waited for: they go on.)
	n := k.fl.wait(bound, k.hurry, k.batch == nil && (sub == nil || !k.opts.AutoAck))
	if sub != nil {
		sub.end() // whatever is still buffered with AutoAck is lost
	}
	return n
}

package warren

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Return is a message the broker sent back with basic.return.
type Return = amqp.Return

// StampHeader is the header warren adds to a mandatory publish on a confirm
// channel. basic.return carries no delivery tag, so the header (the publish's
// delivery tag, an int64) is how a returned message is matched to its
// Confirmation, even when other publishes on the channel are still waiting
// for their acks. Consumers see it on mandatory messages; warren removes it
// from the Return it reports. The caller's Headers table is not modified.
const StampHeader = "x-warren-seq"

// Confirmation is the broker's answer to one publish on a confirm channel,
// delivered later. It resolves exactly once, to one of:
//
//   - nil: the broker acked the message;
//   - *NackedError (ErrNacked): the broker nacked it;
//   - *UnroutableError (ErrUnroutable): a mandatory message came back
//     unroutable (the broker acks it after returning it);
//   - *OutcomeUnknownError (ErrOutcomeUnknown): the channel or connection
//     closed before the broker answered; it wraps the typed cause.
type Confirmation struct {
	tag  uint64
	chID uint16
	done chan struct{}
	err  error                        // valid once done is closed
	ret  *amqp.Return                 // set by the drainer, under the tracker's lock
	hook func(Outcome, time.Duration) // MetricsHook.PublishConfirmed, if set
	span *pubSpan                     // the publish's trace (Tracer.Publish), if any
	sent time.Time                    // when the publish was written (only with hook)
	// to, if set, is told the outcome in place of done being closed: an
	// internal publish whose owner waits on a signal of its own (a
	// Publisher's request, which also gives back its window slot).
	to outcomeReceiver
}

// outcomeReceiver is told a Confirmation's outcome, once, on the goroutine
// that resolves it (the tracker's); it must not block.
type outcomeReceiver interface{ receive(err error) }

func newConfirmation() *Confirmation {
	return &Confirmation{done: make(chan struct{})}
}

// DeliveryTag returns the publish's sequence number on its channel (the tag
// the broker acks).
func (c *Confirmation) DeliveryTag() uint64 { return c.tag }

// ChannelID returns the number of the channel the message was published on.
func (c *Confirmation) ChannelID() uint16 { return c.chID }

// Done returns a channel that is closed once the outcome is known.
func (c *Confirmation) Done() <-chan struct{} { return c.done }

// Wait waits for the outcome and returns it (see Confirmation). If ctx ends
// first, Wait returns the context error and the confirmation stays pending:
// ctx ends the wait, not the publish, and Wait may be called again.
func (c *Confirmation) Wait(ctx context.Context) error {
	if err, ok := c.waitDone(ctx); ok {
		return err
	}
	return fmt.Errorf("warren: waiting for the confirmation of publish %d on channel %d: %w", c.tag, c.chID, ctx.Err())
}

// await is Wait for callers that will not wait again: a wait ended by ctx
// is an unknown outcome.
func (c *Confirmation) await(ctx context.Context) error {
	if err, ok := c.waitDone(ctx); ok {
		return err
	}
	return c.unknown(ctx.Err())
}

// waitDone waits for the outcome until ctx ends; an outcome already known
// wins over an ended ctx.
func (c *Confirmation) waitDone(ctx context.Context) (error, bool) {
	done := ctx.Done()
	if done == nil { // a ctx that never ends: a plain receive
		<-c.done
		return c.err, true
	}
	select {
	case <-c.done:
		return c.err, true
	case <-done:
	}
	select {
	case <-c.done:
		return c.err, true
	default:
		return nil, false
	}
}

func (c *Confirmation) resolve(err error) {
	c.err = err
	c.span.finish(err)
	if c.hook != nil {
		c.hook(outcomeOf(err), time.Since(c.sent))
	}
	if c.to != nil {
		c.to.receive(err)
		return
	}
	close(c.done)
}

func (c *Confirmation) unknown(cause error) *OutcomeUnknownError {
	return &OutcomeUnknownError{ChannelID: c.chID, DeliveryTag: c.tag, Op: "publish", Cause: cause}
}

// returnBuffer is the buffer of the basic.return listener. amqp091-go sends
// returns from its single frame reader and stalls it while a listener is
// full; the drainer empties it without blocking on anything but the
// tracker's short lock.
const returnBuffer = 64

// confirmTracker follows the publishes of one confirm channel.
//
// Acks and nacks are read off the wire (internal/wire reports them on
// amqp091-go's reader goroutine, before amqp091-go parses them), so no
// amqp091-go listener, timer or goroutine hop is paid per confirm. Returned
// messages come from amqp091-go's return listener, drained by run; the wire
// says when one is on its way, and acks read after it wait until it has been
// matched (RabbitMQ sends basic.return before the ack of the same message).
type confirmTracker struct {
	st   *channel
	rets chan amqp.Return

	last    uint64        // tag of the last publish written; touched only under the channel's serialisation point
	highest atomic.Uint64 // the highest tag a publish has been given: a confirm beyond it is bogus

	mu       sync.Mutex
	q        []*Confirmation // pending publishes for tags base, base+1, ...; nil once resolved out of order
	qmem     []*Confirmation // the memory q lives in (q is a window of it)
	base     uint64          // tag of q[0]
	sending  *Confirmation   // the publish being written, if any (last in q)
	returns  int             // basic.returns read off the wire and not yet delivered by amqp091-go
	deferred []wireConfirm   // confirms read while a return was on its way
	end      error           // why the channel ended; set once the drainer has stopped
}

type wireConfirm struct {
	tag           uint64
	multiple, ack bool
}

// newConfirmTracker registers the tracker for st's channel. It must run
// before confirm.select, so that no confirmation can arrive unheard.
func newConfirmTracker(st *channel) *confirmTracker {
	t := &confirmTracker{st: st, rets: make(chan amqp.Return, returnBuffer)}
	st.ch.NotifyReturn(t.rets)
	st.c.trackConfirms(st.id, t)
	return t
}

// publish writes a publish encoded as head (see encodePublish; stampAt is
// its stamp, or -1) with its body, and tracks it as c. It runs inside the
// channel's serialisation point. On error nothing was published and c is
// unresolved.
func (t *confirmTracker) publish(head []byte, stampAt int, body []byte, c *Confirmation) error {
	tag := t.last + 1
	t.highest.Store(tag) // before the write: the ack may come before it returns
	t.mu.Lock()
	if t.end != nil {
		t.mu.Unlock()
		return amqp.ErrClosed // mapped to the channel's cause by the caller
	}
	c.tag = tag
	c.chID = t.st.id
	if h := t.st.c.opts.metrics.PublishConfirmed; h != nil {
		c.hook, c.sent = h, time.Now()
	}
	if len(t.q) == 0 {
		t.base = tag
	}
	t.enqueueLocked(c)
	t.sending = c
	t.mu.Unlock()

	if stampAt >= 0 {
		putStamp(head, stampAt, tag)
	}
	err := t.st.writeContent(head, body)
	if err != nil && !errors.Is(err, amqp.ErrClosed) {
		// A failed write (not a closed channel, which sends nothing):
		// part of the frames may have reached the broker before the
		// socket failed, so the outcome is unknown, not "not published".
		// The connection is going down (the wire closed the socket);
		// c resolves now, with the connection's typed cause once
		// amqp091-go has noted the end, as every other publish pending on
		// it does.
		cause := fmt.Errorf("warren: writing the publish failed: %w", err)
		if cerr := t.st.c.dyingConn("basic.publish", err); cerr != nil {
			cause = fmt.Errorf("warren: writing the publish failed (%v): %w", err, cerr)
		}
		t.mu.Lock()
		t.sending = nil
		if n := len(t.q); n > 0 && t.q[n-1] == c {
			t.q[n-1] = nil
			t.q = t.q[:n-1]
			c.resolve(c.unknown(cause))
		}
		// t.last stays: the broker cannot have counted a publish whose
		// frames it did not all receive, and the channel is going down.
		t.mu.Unlock()
		return nil
	}

	t.mu.Lock()
	t.sending = nil
	// c is still queued unless its confirm has already been read (or the
	// channel ended); no later publish can be queued behind it yet.
	queued := len(t.q) > 0 && t.q[len(t.q)-1] == c
	if err != nil {
		if queued {
			t.q[len(t.q)-1] = nil
			t.q = t.q[:len(t.q)-1]
		}
		t.mu.Unlock()
		return err
	}
	t.last = tag
	if t.end != nil && queued {
		// The channel ended while the frames were being written; the
		// drainer left this publish to us.
		t.q = t.q[:len(t.q)-1]
		c.resolve(c.unknown(t.end))
	}
	t.mu.Unlock()
	return nil
}

// stampOf reads and removes the stamp header from a returned message.
func stampOf(r *amqp.Return) (uint64, bool) {
	v, ok := r.Headers[StampHeader]
	if !ok {
		return 0, false
	}
	delete(r.Headers, StampHeader)
	if len(r.Headers) == 0 {
		r.Headers = nil
	}
	switch n := v.(type) {
	case int64:
		return uint64(n), n > 0
	case int32:
		return uint64(n), n > 0
	case uint64:
		return n, n > 0
	case uint32:
		return uint64(n), n > 0
	}
	return 0, false
}

// confirmed handles a basic.ack or basic.nack read off the wire.
func (t *confirmTracker) confirmed(tag uint64, multiple, ack bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.returns > 0 {
		t.deferred = append(t.deferred, wireConfirm{tag, multiple, ack})
		return
	}
	t.settleLocked(tag, multiple, ack)
}

// settleLocked resolves the publishes a confirm covers. Resolving under the
// lock costs nothing that can block: closing a channel, and giving back a
// Publisher window token that is certainly there.
func (t *confirmTracker) settleLocked(tag uint64, multiple, ack bool) {
	n := 0
	if multiple {
		for len(t.q) > 0 && t.base <= tag {
			if c := t.q[0]; c != nil {
				t.settleOne(c, ack)
				n++
			}
			t.popLocked()
		}
	} else if i := tag - t.base; tag >= t.base && i < uint64(len(t.q)) && t.q[i] != nil {
		t.settleOne(t.q[i], ack)
		t.q[i] = nil
		n++
		for len(t.q) > 0 && t.q[0] == nil {
			t.popLocked()
		}
	}
	if n == 0 {
		t.st.c.cnt.strayConfirms.Add(1)
	}
}

func (t *confirmTracker) popLocked() {
	t.q[0] = nil
	t.q = t.q[1:]
	t.base++
	if len(t.q) == 0 {
		if cap(t.qmem) > keepQueue {
			t.qmem = nil // a backlog's memory (a big PublishBatch) is let go once it has drained
		}
		t.q = t.qmem[:0] // back to the start of the memory: no allocation for the next
	}
}

// keepQueue is the most queue memory (entries) a tracker keeps once its
// queue has emptied: enough for any Publisher window, not a long batch's.
const keepQueue = 8192

// enqueueLocked appends c to the queue. The queue creeps along its memory
// as confirms pop its head; it moves back to the start when it reaches the
// end with at least half the memory free, and moves to new memory twice
// its size otherwise (not append's growth, which would start from the
// window's capacity and could give memory no larger than the old, again
// and again).
func (t *confirmTracker) enqueueLocked(c *Confirmation) {
	if n := len(t.q); n == cap(t.q) && n > 0 {
		mem := t.qmem[:cap(t.qmem)]
		if n > len(mem)/2 {
			mem = make([]*Confirmation, 2*n)
			t.qmem = mem[:0]
		}
		copy(mem, t.q)
		clear(mem[n:])
		t.q = mem[:n]
	}
	t.q = append(t.q, c)
	if cap(t.q) > cap(t.qmem) {
		t.qmem = t.q[:0] // grown: new memory, starting at the queue's head
	}
}

func (t *confirmTracker) settleOne(c *Confirmation, ack bool) {
	switch {
	case !ack:
		c.resolve(&NackedError{ChannelID: c.chID, DeliveryTag: c.tag})
	case c.ret != nil:
		r := *c.ret
		c.resolve(&UnroutableError{ChannelID: c.chID, DeliveryTag: c.tag,
			Code: ReplyCode(r.ReplyCode), Reason: r.ReplyText, Return: r})
	default:
		c.resolve(nil)
	}
}

// returnSeen records that a basic.return was read off the wire.
func (t *confirmTracker) returnSeen() {
	t.mu.Lock()
	t.returns++
	t.mu.Unlock()
}

// returnDropped records that a return the wire saw will never be
// delivered (its content was cut short), and applies the confirms that
// waited for it.
func (t *confirmTracker) returnDropped() {
	t.mu.Lock()
	if t.returns > 0 {
		t.returns--
	}
	if t.returns == 0 {
		t.replayLocked()
	}
	t.mu.Unlock()
	t.st.c.cnt.strayReturns.Add(1)
}

// returned matches a returned message, delivered by amqp091-go, to its
// publish by the stamp header, and applies the confirms that waited for it.
func (t *confirmTracker) returned(r *amqp.Return) {
	tag, ok := stampOf(r)
	t.mu.Lock()
	matched := false
	if i := tag - t.base; ok && tag >= t.base && i < uint64(len(t.q)) && t.q[i] != nil {
		t.q[i].ret = r
		matched = true
	}
	if t.returns > 0 {
		t.returns--
	}
	if t.returns == 0 {
		t.replayLocked()
	}
	t.mu.Unlock()
	if !matched {
		t.st.c.cnt.strayReturns.Add(1)
		t.st.c.opts.logger.Warn("warren: basic.return matches no pending publish",
			"channel", t.st.id, "exchange", r.Exchange, "routing_key", r.RoutingKey, "code", r.ReplyCode)
	}
}

func (t *confirmTracker) replayLocked() {
	for _, a := range t.deferred {
		t.settleLocked(a.tag, a.multiple, a.ack)
	}
	t.deferred = t.deferred[:0]
}

// run is the channel's drainer: it matches returned messages to publishes
// until the channel ends, then resolves everything still pending as outcome
// unknown with the channel's cause.
func (t *confirmTracker) run() {
	for r := range t.rets {
		t.returned(&r)
	}
	// amqp091-go closes the listener when the channel ends. If returns the
	// wire saw were never delivered (the channel was shut down before
	// amqp091-go parsed them), the confirms that waited for them cannot
	// tell an unroutable message from a routed one: those publishes are
	// left to failAll, outcome unknown, rather than reported as acked.
	t.mu.Lock()
	if t.returns == 0 {
		t.replayLocked()
	}
	t.returns = 0
	t.deferred = t.deferred[:0]
	t.mu.Unlock()
	t.failAll(t.st.awaitCause("publish"))
	t.st.c.untrackConfirms(t.st.id, t)
}

// failAll resolves every pending publish as outcome unknown with cause,
// except one whose frames are still being written: publish resolves that.
func (t *confirmTracker) failAll(cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.end = cause
	var keep *Confirmation
	for _, c := range t.q {
		switch {
		case c == nil:
		case c == t.sending:
			keep = c
		default:
			c.resolve(c.unknown(cause))
		}
	}
	t.q = t.q[:0]
	if keep != nil {
		t.q = append(t.q, keep)
		t.base = keep.tag
	}
}

// pending returns how many publishes await the broker's answer.
func (t *confirmTracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.q {
		if c != nil {
			n++
		}
	}
	return n
}

// PendingConfirms returns how many publishes on a confirm channel await the
// broker's answer (0 on other channels).
func (ch Channel) PendingConfirms() int {
	if ch.s == nil || Mode(ch.s.mode.Load()) != ModeConfirm {
		return 0
	}
	return ch.s.confirm.pending()
}

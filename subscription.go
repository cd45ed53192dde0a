package warren

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ChannelConsumeOptions configure Channel.Consume. The zero value consumes
// with manual acknowledgements under a generated consumer tag, with no
// consumer arguments.
type ChannelConsumeOptions struct {
	// Tag is the consumer tag the broker shows (default
	// "warren-<pid>-<n>"). It must be unique on the channel: a tag of a
	// consumer still running on it is refused before sending (RabbitMQ
	// would close the whole connection, 530 NOT_ALLOWED).
	Tag string
	// AutoAck makes the broker consider every message acknowledged once
	// sent: a message not processed is lost, and no prefetch bounds how
	// many the broker pushes. Deliveries then need no settling (Ack
	// returns ErrAlreadySettled).
	AutoAck bool
	// Exclusive asks to be the queue's only consumer (403 ACCESS_REFUSED,
	// closing the channel, if it has others).
	Exclusive bool
	// Priority is the consumer's priority (x-priority, a 32-bit signed
	// integer; default 0): while a higher-priority consumer of the queue
	// can take messages, lower ones get none.
	Priority int
	// StreamOffset is where a consumer of a stream queue starts (see
	// StreamOffset; the zero value is the broker's default, next). A
	// stream consumer needs manual acks and a prefetch: with a
	// StreamOffset (or x-stream-offset in Args), AutoAck, or a channel on
	// which no Qos with a PrefetchCount above 0 (and not Global) succeeded,
	// is refused before sending.
	StreamOffset StreamOffset
	// AckTimeout, if set, is how long the broker waits for the ack of a
	// delivery before it gives up on the consumer (x-consumer-timeout,
	// whole milliseconds; see ConsumeOptions.AckTimeout for the brokers
	// that honour it). The broker then closes the channel (the stream ends
	// with its *ChannelError) or, for a quorum queue on RabbitMQ 4.3,
	// cancels the consumer (the stream ends with ErrConsumerCancelled).
	AckTimeout time.Duration
	// Args are other optional arguments of basic.consume. Setting one
	// that a field above also sets is refused.
	Args Table
}

// Subscription is a consumer started by Channel.Consume on a channel the
// caller owns. Its deliveries arrive on Deliveries until it ends: cancelled
// (Cancel, Channel.Cancel), cancelled by the broker, or its channel or
// connection closed; Err then says why.
//
// Deliveries, Tag and Err are safe for concurrent use. Cancel is an
// operation on the subscription's channel and follows the Channel's rule:
// one goroutine at a time uses the channel (Cancel from another goroutine
// while an Ack or Publish runs on it returns ErrConcurrentUse).
type Subscription struct {
	st      *channel
	gen     uint64 // the lease generation of the Channel it was started on
	queue   string
	tag     string
	autoAck bool

	out        chan *Delivery // unbuffered; closed when the subscription has ended
	done       chan struct{}  // closed with out, once err is set
	ended      chan struct{}  // closed once no more deliveries come from the broker
	cancelSent atomic.Bool    // our basic.cancel was sent
	err        error          // why it ended; written before done is closed
	endOnce    sync.Once
}

// Consume starts a consumer of queue on this channel and returns once the
// broker has confirmed it (basic.consume-ok). Deliveries then arrive on
// the Subscription's Deliveries channel; each is a *Delivery settled with
// its Ack, Nack or Reject (unless AutoAck), which go through this channel
// and its serialisation like any other operation on it: a settle that
// comes too late gets ErrAlreadySettled or ErrDeliveryVoid, never a
// channel error from the broker.
//
// The channel stays usable for everything else while the consumer runs:
// publish, declare, Get, more consumers. That is what RabbitMQ's direct
// reply-to needs: consume from "amq.rabbitmq.reply-to" with AutoAck, and
// publish requests with ReplyTo "amq.rabbitmq.reply-to" on the same
// channel.
//
// Prefetch: set it with Qos on the channel before Consume. RabbitMQ applies
// a PrefetchCount to each consumer started afterwards on the channel
// separately; with QosOptions.Global (RabbitMQ before 4.3 only) the count
// is shared by all the channel's consumers. Without a Qos nothing bounds
// how many unacknowledged deliveries the broker pushes. A stream queue's
// consumer needs a per-consumer PrefetchCount above 0 and manual acks:
// warren refuses it before sending otherwise.
//
// Every problem with queue and opts is reported at once before anything is
// sent, wrapping ErrInvalidArgument: a duplicate tag on the channel, a
// Priority outside 32 bits, an argument set twice, a bad StreamOffset, the
// stream rules above. The broker's refusals (no such queue, an exclusive
// consumer already there, a bad argument) close the channel as usual:
// Consume returns its *ChannelError.
//
// Deliveries are a receive-only Go channel rather than an iterator (iter.Seq2)
// because a consumer usually waits on more than its deliveries: a context,
// a timer, other subscriptions, replies it correlates (RPC). A channel
// composes with select; an iterator would need a goroutine per stream to do
// the same. The deliveries are buffered inside warren (and amqp091-go) without
// bound, so a slow reader never stalls the connection; the prefetch count
// bounds that buffer with manual acks.
//
// On a pooled channel, a Subscription that has not ended (not cancelled,
// or its last deliveries not yet received) makes Pool.Release close the
// channel instead of reusing it (PoolStats.Discarded.Consuming); the broker
// then requeues its unacknowledged messages and the stream ends with
// ErrChannelClosed. Cancel and read Deliveries until it closes to keep the
// channel.
func (ch Channel) Consume(ctx context.Context, queue string, opts ChannelConsumeOptions) (*Subscription, error) {
	const op = "basic.consume"
	st := ch.s
	if st == nil {
		return nil, errZeroChannel
	}
	if st.gen.Load() != ch.gen {
		return nil, fmt.Errorf("%w (channel %d, %s)", ErrReleased, st.id, op)
	}
	tag := opts.Tag
	if tag == "" {
		tag = fmt.Sprintf("warren-%d-%d", os.Getpid(), consumerSeq.Add(1))
	}
	args, err := st.c.consumeArgs(op, queue, tag, consumerArgs{
		Exclusive: opts.Exclusive, AutoAck: opts.AutoAck, Priority: opts.Priority,
		Stream: opts.StreamOffset, AckTimeout: opts.AckTimeout, Args: opts.Args,
		Prefetch: int(st.prefetch.Load()),
	})
	if err != nil {
		return nil, err
	}
	s := &Subscription{st: st, gen: ch.gen, queue: queue, tag: tag, autoAck: opts.AutoAck,
		out: make(chan *Delivery), done: make(chan struct{}), ended: make(chan struct{})}
	// The tag is reserved before sending: amqp091-go would silently end the
	// earlier consumer's stream, and RabbitMQ close the connection.
	st.mu.Lock()
	if _, dup := st.subs[tag]; dup {
		st.mu.Unlock()
		return nil, fmt.Errorf("%w: %s: consumer tag %q is already in use on channel %d", ErrInvalidArgument, op, tag, st.id)
	}
	if st.subs == nil {
		st.subs = make(map[string]*Subscription)
	}
	st.subs[tag] = s
	st.mu.Unlock()

	var in <-chan amqp.Delivery
	err = ch.call(ctx, op, func() (err error) {
		in, err = st.ch.Consume(queue, tag, opts.AutoAck, opts.Exclusive, false, false, amqp.Table(args))
		return err
	})
	if err != nil {
		s.untag()
		return nil, err // an abandoned call's goroutine may still write in
	}
	st.consuming.Add(1)
	if !st.c.goTracked(func() { s.run(in) }) {
		// The client is closing, and the channel with it.
		s.untag()
		st.consuming.Add(-1)
		return nil, st.c.connError(op)
	}
	return s, nil
}

// Cancel cancels the consumer with tag on this channel (basic.cancel) and
// returns once the broker confirmed it: see Subscription.Cancel. A tag with
// no consumer running on this channel (never started on it, or already
// ended) is refused with ErrInvalidArgument, and nothing is sent. A ctx
// that has already ended sends nothing and changes nothing (the consumer
// goes on running; the error wraps ctx's); a ctx that ends while waiting
// for basic.cancel-ok poisons and closes the channel, ending the consumer.
func (ch Channel) Cancel(ctx context.Context, tag string) error {
	const op = "basic.cancel"
	st := ch.s
	if st == nil {
		return errZeroChannel
	}
	if st.gen.Load() != ch.gen {
		return fmt.Errorf("%w (channel %d, %s)", ErrReleased, st.id, op)
	}
	st.mu.Lock()
	s := st.subs[tag]
	st.mu.Unlock()
	if s == nil {
		return fmt.Errorf("%w: %s: no consumer with tag %q runs on channel %d", ErrInvalidArgument, op, tag, st.id)
	}
	return s.cancel(ctx, ch)
}

// Deliveries returns the stream of the subscription's deliveries. It is
// closed when the subscription has ended and every delivery the broker sent
// before has been received from it (deliveries of a channel that closed
// are dropped: the broker requeues them). Read it until it is closed.
func (s *Subscription) Deliveries() <-chan *Delivery { return s.out }

// Tag returns the consumer tag.
func (s *Subscription) Tag() string { return s.tag }

// Queue returns the queue consumed from.
func (s *Subscription) Queue() string { return s.queue }

// Err returns nil while Deliveries is open. Once it is closed, Err says why
// the subscription ended: nil after Cancel (or Channel.Cancel); an error
// matching ErrConsumerCancelled when the broker cancelled the consumer (its
// queue was deleted, say); or, when the channel or its connection closed,
// the channel's cause — the broker's *ChannelError, the *ConnectionError,
// a *PoisonedError, or ErrChannelClosed when the channel was closed by the
// application (or a Pool released it).
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Cancel cancels the consumer (basic.cancel) and returns once the broker
// confirmed it. Deliveries the broker sent before its basic.cancel-ok still
// arrive on Deliveries, which is closed after the last; they can be settled
// as long as the channel is open. Err is then nil.
//
// Cancel of a subscription that has already ended sends nothing and
// returns nil (Err says why it ended).
//
// Like any call that sends nothing, a Cancel whose ctx has already ended
// changes nothing: it returns an error wrapping ctx's error, basic.cancel
// is not sent, the channel stays open and the consumer goes on running,
// Deliveries open (a loop that then reads Deliveries until it closes waits
// for ever: Cancel again with a live ctx, or close the channel). If ctx
// ends after basic.cancel was sent, before the broker's answer, the channel
// is poisoned and closed, as for any RPC (see Channel): Cancel returns an
// error matching ErrPoisoned and ctx's error, and the subscription ends
// (Deliveries closes, Err returns the *PoisonedError).
func (s *Subscription) Cancel(ctx context.Context) error {
	return s.cancel(ctx, Channel{s: s.st, gen: s.gen})
}

func (s *Subscription) cancel(ctx context.Context, ch Channel) error {
	const op = "basic.cancel"
	select {
	case <-s.ended:
		return nil
	default:
	}
	err := ch.call(ctx, op, func() error {
		s.cancelSent.Store(true)
		return s.st.ch.Cancel(s.tag, false)
	})
	if err != nil {
		return err
	}
	// amqp091-go has ended the consumer's stream; what it buffered reaches
	// run at once (run never blocks on it).
	select {
	case <-s.ended:
	case <-s.st.c.dead:
	case <-ctx.Done():
	}
	return nil
}

// run converts amqp091-go's deliveries into warren's and hands them to the
// application, until the consumer has ended and everything is handed over,
// or the channel or connection is gone. It never blocks amqp091-go's
// delivery buffer: what the application has not taken yet waits in queue.
func (s *Subscription) run(in <-chan amqp.Delivery) {
	st := s.st
	var queue []*Delivery
	for {
		var out chan<- *Delivery
		var next *Delivery
		if len(queue) > 0 {
			out, next = s.out, queue[0]
		}
		select {
		case ad, ok := <-in:
			if !ok {
				in = nil
				s.err = s.endReason()
				s.untag()
				if len(queue) == 0 {
					s.finish()
					return
				}
				s.endOnce.Do(func() { close(s.ended) })
				continue
			}
			queue = append(queue, s.wrap(ad))
		case out <- next:
			queue[0] = nil
			queue = queue[1:]
			if in == nil && len(queue) == 0 {
				s.finish()
				return
			}
		case <-st.gone:
			s.lost(in != nil)
			return
		case <-st.c.dead:
			s.lost(in != nil)
			return
		}
	}
}

// wrap makes a warren Delivery of ad, settled through the subscription's
// Channel handle.
func (s *Subscription) wrap(ad amqp.Delivery) *Delivery {
	ad.Acknowledger = nil // settle through warren only
	d := &Delivery{Delivery: ad, ch: Channel{s: s.st, gen: s.gen}, counted: !s.autoAck}
	if s.autoAck {
		d.settled.Store(settled)
	} else {
		s.st.unsettled.Add(1)
	}
	return d
}

// endReason says why amqp091-go ended the consumer's stream.
func (s *Subscription) endReason() error {
	const op = "basic.consume"
	st := s.st
	closed := st.ch.IsClosed() // set by amqp091-go before it ends the streams of a closing channel
	select {
	case <-st.gone:
		closed = true
	case <-st.c.dead:
		closed = true
	default:
	}
	switch {
	case closed:
		return st.awaitCause(op)
	case s.cancelSent.Load():
		return nil
	}
	return fmt.Errorf("warren: consume %q on channel %d: %w (consumer tag %q)", s.queue, st.id, ErrConsumerCancelled, s.tag)
}

// lost ends the subscription because its channel or connection is gone:
// deliveries not handed over yet are void (the broker requeues them).
// running says whether the consumer was still running (otherwise the reason
// is already recorded).
func (s *Subscription) lost(running bool) {
	if running {
		s.err = s.st.awaitCause("basic.consume")
		s.untag()
	}
	s.finish()
}

// untag frees the subscription's consumer tag on its channel.
func (s *Subscription) untag() {
	st := s.st
	st.mu.Lock()
	if st.subs[s.tag] == s {
		delete(st.subs, s.tag)
	}
	st.mu.Unlock()
}

// finish ends the subscription: err is set, nothing more will be handed
// over. The channel stops counting it as a live consumer first, so that a
// Release after Cancel (or after the stream closed) sees it gone.
func (s *Subscription) finish() {
	s.st.consuming.Add(-1)
	close(s.done) // before out: whoever sees out closed sees err
	close(s.out)
	s.endOnce.Do(func() { close(s.ended) })
}

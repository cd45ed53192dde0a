package warren

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/wire"
)

// Publish sends msg to exchange with routing key key.
//
// On a plain or tx channel it is fire-and-forget: a nil error means the
// frames were handed to the socket, not that the broker accepted them. On a
// confirm channel (SetMode(ctx, ModeConfirm), or a confirm Pool) it returns
// once the broker has answered, and nil means the broker acked; see
// PublishMessage, PublishDeferred and Publisher.
//
// If the exchange does not exist the broker closes the channel
// asynchronously: this call may still return nil, and the next operation on
// the channel, or its Close, returns the *ChannelError (errors.Is
// ErrNotFound, the text names the exchange).
//
// ctx is checked before anything is written. If it ends while the socket
// write is stalled (a blocked broker, a dead network), the connection is
// closed, because a partly written message cannot be taken back.
func (ch Channel) Publish(ctx context.Context, exchange, key string, msg Publishing) error {
	return ch.PublishMessage(ctx, Message{Exchange: exchange, Key: key, Publishing: msg})
}

// publish is the one publish path of a Channel. In confirm mode it tracks
// the message and returns its Confirmation; otherwise the Confirmation is
// nil. deferred demands confirm mode.
// conf, if not nil, is the Confirmation to track it as (see waitConf).
func (ch Channel) publish(ctx context.Context, m *Message, deferred bool, conf *Confirmation) (*Confirmation, error) {
	if ch.s != nil && ch.s.c.opts.tracer != nil {
		return ch.publishTraced(ctx, ch.s.c.opts.tracer, m, deferred, conf)
	}
	return ch.publishSpan(ctx, m, deferred, nil, conf)
}

// publishSpan is publish; span, if not nil, is the message's trace, ended
// by its Confirmation on a confirm channel.
func (ch Channel) publishSpan(ctx context.Context, m *Message, deferred bool, span *pubSpan, conf *Confirmation) (*Confirmation, error) {
	const op = "basic.publish"
	if ch.s == nil {
		return nil, errZeroChannel
	}
	// The frames are encoded (and m checked) before anything waits: a bad
	// message is refused at once, even while publishing is paused.
	var buf [headRoom]byte
	head, stampAt, err := encodePublish(buf[:0], op, ch.s.id, m, m.Mandatory, ch.s.c.maxPayload())
	if err != nil {
		return nil, err
	}
	if err := ch.s.publishableIn(Mode(ch.s.mode.Load()), m, deferred); err != nil {
		return nil, err
	}
	if err := ch.s.waitPublish(ctx, op); err != nil {
		return nil, err
	}
	seq, err := ch.s.beginSend(ctx, op, ch.gen)
	if err != nil {
		return nil, err
	}
	c, err := ch.s.write(m, head, stampAt, deferred, span, conf)
	if err = ch.s.endSend(ctx, op, seq, err); err != nil {
		return nil, err
	}
	return c, nil
}

// write writes m, encoded as head by encodePublish, inside the channel's
// serialisation point (see beginSend), and tracks it on a confirm channel.
// The mode is checked again here, where it can change: an untracked
// publish on a confirm channel would put every later outcome out of step.
func (ch *channel) write(m *Message, head []byte, stampAt int, deferred bool, span *pubSpan, conf *Confirmation) (*Confirmation, error) {
	mode := Mode(ch.mode.Load())
	if err := ch.publishableIn(mode, m, deferred); err != nil {
		return nil, err
	}
	switch mode {
	case ModeConfirm:
		c := conf
		if c == nil {
			c = newConfirmation()
		}
		c.span = span
		return c, ch.confirm.publish(head, stampAt, m.Body, c)
	case ModeTx:
		ch.txDirty.Store(true)
	}
	return nil, ch.writeContent(head, m.Body)
}

// writeContent writes an encoded publish and its body on the channel. An
// error wrapping amqp.ErrClosed means nothing was written (the channel or
// the connection is closed or closing); any other error is the socket's,
// after which the connection goes down and what reached the broker is not
// known.
func (ch *channel) writeContent(head, body []byte) error {
	err := ch.c.wire.WriteContent(ch.id, ch.wgen, head, body, ch.c.maxPayload())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, wire.ErrChannelClosed), errors.Is(err, wire.ErrWriterFailed):
		return amqp.ErrClosed
	}
	return err
}

// publishTracked writes m, already checked, on a confirm channel, tracked
// as conf: the Publisher's one way to the wire. On error m was not sent and
// conf is unresolved.
func (ch Channel) publishTracked(op string, m *Message, conf *Confirmation) error {
	var buf [headRoom]byte
	// m was checked when it was submitted; encoding it checks it against
	// this connection's frame_max.
	head, stampAt, err := encodePublish(buf[:0], op, ch.s.id, m, m.Mandatory, ch.s.c.maxPayload())
	if err != nil {
		return err
	}
	seq, err := ch.s.beginSend(context.Background(), op, ch.gen)
	if err != nil {
		return err
	}
	return ch.s.endSend(context.Background(), op, seq, ch.s.confirm.publish(head, stampAt, m.Body, conf))
}

// publishableIn refuses a publish the channel's mode cannot report on.
func (ch *channel) publishableIn(mode Mode, m *Message, deferred bool) error {
	if mode == ModeConfirm {
		return nil
	}
	if deferred {
		return fmt.Errorf("%w: channel %d is in %s mode; a deferred confirmation needs SetMode(ctx, ModeConfirm)", ErrNotConfirmMode, ch.id, mode)
	}
	if m.Mandatory {
		return fmt.Errorf("%w: basic.publish: a mandatory publish needs a confirm-mode channel to report its return (channel %d is in %s mode)", ErrInvalidArgument, ch.id, mode)
	}
	return nil
}

// PublishDeferred publishes m on a confirm-mode channel and returns its
// Confirmation without waiting for the broker. A non-nil error means the
// message was not published (ErrNotConfirmMode on a channel not in confirm
// mode, an invalid argument, or the channel's or connection's typed cause).
func (ch Channel) PublishDeferred(ctx context.Context, m Message) (*Confirmation, error) {
	return ch.publish(ctx, &m, true, nil)
}

// PublishMessage publishes m. On a confirm channel it returns once the
// broker has answered, with the Confirmation's outcome (nil only for an
// ack); if ctx ends while waiting, the outcome is unknown
// (*OutcomeUnknownError wrapping the context error). On a plain or tx
// channel it returns once the frames are handed to the socket, as Publish.
func (ch Channel) PublishMessage(ctx context.Context, m Message) error {
	w := waitConfs.Get().(*waitConf)
	c, err := ch.publish(ctx, &m, false, &w.c)
	switch {
	case err != nil:
		// w is left to the garbage collector: after some errors (a write
		// abandoned by ctx) the tracker still holds it.
		return err
	case c == nil: // not a confirm channel: w was not used
		w.recycle()
		return nil
	}
	if done := ctx.Done(); done == nil {
		<-w.sig
	} else {
		select {
		case <-w.sig:
		case <-done:
			select {
			case <-w.sig: // an outcome already known wins over an ended ctx
			default:
				return c.unknown(ctx.Err()) // the tracker still holds w
			}
		}
	}
	err = w.c.err
	w.recycle()
	return err
}

// waitConf is a Confirmation PublishMessage waits on and then reuses: the
// tracker tells it the outcome on a signal channel of its own, instead of
// closing a done channel made for each publish.
type waitConf struct {
	c   Confirmation
	sig chan struct{} // a buffer of one: signalled once c.err is final
}

var waitConfs = sync.Pool{New: func() any {
	w := &waitConf{sig: make(chan struct{}, 1)}
	w.c.to = w
	return w
}}

func (w *waitConf) receive(error) { w.sig <- struct{}{} }

// recycle returns w to the pool; the tracker must be done with it.
func (w *waitConf) recycle() {
	w.c = Confirmation{to: w}
	waitConfs.Put(w)
}

// PublishBatch publishes msgs in order and returns one result per message,
// in input order. On a confirm channel every message is published before
// any answer is awaited, and each result is that message's outcome (see
// Confirmation); a message not published because an earlier one failed, or
// ctx ended, carries that error. On a plain or tx channel each result says
// whether the message was handed to the socket.
func (ch Channel) PublishBatch(ctx context.Context, msgs []Message) []error {
	errs := make([]error, len(msgs))
	confs := make([]*Confirmation, len(msgs))
	var stop error
	for i := range msgs {
		if stop != nil {
			errs[i] = stop
			continue
		}
		c, err := ch.publish(ctx, &msgs[i], false, nil)
		switch {
		case err == nil:
			confs[i] = c
		case errors.Is(err, ErrInvalidArgument):
			errs[i] = err // this message only
		default:
			errs[i] = err
			stop = fmt.Errorf("warren: not published: an earlier message of the batch failed: %w", err)
		}
	}
	for i, c := range confs {
		if c != nil {
			errs[i] = c.await(ctx)
		}
	}
	return errs
}

// cork holds back the frames written on the channel's connection until the
// returned wire's Uncork, which writes them with one system call: a
// Publisher worker's burst of publishes costs one write. The caller must
// not wait for a reply while corked.
func (ch *channel) cork() *wire.Conn {
	ch.c.wire.Cork()
	return ch.c.wire
}

package warren

// The close cause: why a channel can no longer be used, in one place.
//
// A channel's cause is recorded once (setCause) and never replaced: the
// first reason it became unusable is the one every later operation, and
// Close, return. When it is first needed, it is taken from these sources,
// the first that has something winning:
//
//  1. a cause already recorded (a poisoning by an abandoned operation, a
//     protocol error, an earlier close seen through any source);
//  2. the broker's channel.close of this channel, as a *ChannelError: from
//     the channel's NotifyClose listener (amqp091-go's verdict), or, when
//     amqp091-go closed the listener without a value because its own Close
//     won the race, from the wire's record (brokerClose, read off the
//     socket by warren's walker). When the connection is gone as well, this
//     holds only for a close that is not the connection's own (amqp091-go
//     hands the connection's error to every channel's listener);
//  3. the connection gone: its *ConnectionError (connError, recorded by the
//     watcher before dead is closed), or ErrClientClosed once the
//     application closed it (whatever amqp091-go then hands the channel,
//     unless the wire saw the broker close this channel);
//  4. nothing: ErrChannelClosed (the application closed the channel).
//
// A socket error returned by amqp091-go before it has marked the
// connection closed is the connection's error once the connection is
// declared dead (dyingConn). unusable, classify, awaitCause and result are
// the only ways a cause is read or recorded; the watcher (session.watch)
// records the connection's.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/wire"
)

// protocolError is the cause recorded when the broker's reply broke the
// protocol but closed nothing.
type protocolError struct{ err error }

func (e *protocolError) Error() string { return e.err.Error() }

func (e *protocolError) Unwrap() error { return e.err }

// causeBox holds a recorded cause (atomic.Pointer needs a concrete type).
type causeBox struct{ err error }

// unusable returns why the channel cannot be used, as seen by op, or nil.
// It takes no lock: this is on every operation's path.
func (ch *channel) unusable(op string) error {
	if b := ch.cause.Load(); b != nil {
		return withOp(b.err, op)
	}
	select {
	case e, ok := <-ch.closes:
		return withOp(ch.setCause(ch.classify(e, ok)), op)
	default:
	}
	if ch.c.isDead.Load() {
		// The connection is gone; amqp091-go may not have told the
		// channel's listener yet.
		<-ch.c.dead
		return withOp(ch.setCause(ch.c.connError("")), op)
	}
	return nil
}

// suspect is a lock-free hint that the channel may be unusable: a cause is
// recorded, the broker's channel.close has been read off the wire, or the
// connection has ended.
func (ch *channel) suspect() bool {
	return ch.cause.Load() != nil || ch.brokerClose.Load() != nil || ch.c.isDead.Load()
}

// setCause records err as the reason the channel is unusable unless one is
// already recorded, and returns the recorded reason.
func (ch *channel) setCause(err error) error {
	ch.cause.CompareAndSwap(nil, &causeBox{err})
	return ch.cause.Load().err
}

// classify turns what the NotifyClose listener delivered into warren's error:
// the connection's *ConnectionError when the channel went down with its
// connection, a *ChannelError when the broker closed just this channel.
func (ch *channel) classify(e *amqp.Error, ok bool) error {
	if !ok || e == nil {
		// amqp091-go drops the broker's reason when its own Close wins
		// the race to shut the channel down; the wire kept it.
		if bc := ch.brokerClose.Load(); bc != nil {
			e, ok = bc, true
		}
	}
	if ok && e != nil && !ch.c.conn.IsClosed() {
		return channelCause(ch.id, "", e)
	}
	if ch.c.conn.IsClosed() {
		// amqp091-go marks the connection closed before it notifies;
		// warren's watcher records the cause before dead is closed.
		<-ch.c.dead
		if !ok || e == nil || e == ch.c.rawErr {
			return ch.c.connError("")
		}
		if ch.c.isClosing() && ch.brokerClose.Load() == nil {
			// The application closed the connection, and the broker
			// did not close this channel: what amqp091-go hands the
			// channel as the socket ends (a 501 FRAME_ERROR for the
			// EOF after close-ok) is the connection's end, not the
			// channel's.
			return ch.c.connError("")
		}
		return channelCause(ch.id, "", e)
	}
	return ErrChannelClosed
}

// awaitCause waits briefly for the close notification that must follow an
// amqp.ErrClosed from amqp091-go (it marks a channel closed as soon as the
// broker's channel.close is decoded, and notifies a moment later).
func (ch *channel) awaitCause(op string) error {
	if err := ch.unusable(op); err != nil {
		return err
	}
	t := time.NewTimer(ch.c.opts.closeTimeout)
	defer t.Stop()
	select {
	case e, ok := <-ch.closes:
		ch.setCause(ch.classify(e, ok))
	case <-ch.c.dead:
		ch.setCause(ch.c.connError(""))
	case <-t.C:
		return fmt.Errorf("warren: %s on channel %d: channel closed without a cause", op, ch.id)
	}
	return ch.unusable(op)
}

// result maps what amqp091-go returned from op to warren's errors.
func (ch *channel) result(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	switch {
	case errors.Is(err, amqp.ErrClosed):
		return ch.awaitCause(op)
	case errors.As(err, &ae) && !ae.Server && ch.brokerClose.Load() == nil && !ch.ch.IsClosed() && !ch.c.isDead.Load():
		// Not a close at all: amqp091-go refused a reply of the wrong
		// type (ErrCommandInvalid) and left the channel open, in a state
		// nobody knows. Every later operation gets this error; Close
		// still closes the channel, so that its id is freed.
		return ch.setCause(&protocolError{fmt.Errorf("warren: %s on channel %d: the broker's reply broke the protocol: %w", op, ch.id, err)})
	case errors.As(err, &ae):
		// The broker closed the channel (or the connection) while op
		// waited for its reply; the listener holds the same error.
		select {
		case e, ok := <-ch.closes:
			ch.setCause(ch.classify(e, ok))
		default:
			ch.setCause(ch.classify(ae, true))
		}
		return ch.unusable(op)
	}
	if cerr := ch.c.dyingConn(op, err); cerr != nil {
		return withOp(ch.setCause(cerr), op)
	}
	return fmt.Errorf("warren: %s on channel %d: %w", op, ch.id, err)
}

// withOp returns a copy of a recorded cause tagged with the operation that
// observed it.
func withOp(err error, op string) error {
	if op == "" {
		return err
	}
	switch e := err.(type) {
	case *ChannelError:
		cp := *e
		cp.Op = op
		return &cp
	case *ConnectionError:
		cp := *e
		cp.Op = op
		return &cp
	}
	return err
}

// markClientClosed records that the client closed the connection under the
// channel.
func (ch *channel) markClientClosed() {
	ch.setCause(ch.c.connError(""))
}

// connError returns the error operations should report once the connection
// is gone, tagged with op.
func (c *session) connError(op string) error {
	if e := c.connErr.Load(); e != nil {
		cp := *e
		cp.Op = op
		return &cp
	}
	return ErrClientClosed
}

// dyingConn returns the connection's error when err, from amqp091-go, is
// the connection failing under op: a socket error is returned to the
// caller at once, and amqp091-go marks the connection closed only a moment
// later, on a goroutine of its own. It waits for that (bounded by the close
// timeout), and returns nil when err is something else.
func (c *session) dyingConn(op string, err error) error {
	var ne net.Error
	if !errors.As(err, &ne) && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) &&
		!errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, wire.ErrMalformed) {
		return nil // not the socket: amqp091-go's own verdict on op
	}
	t := time.NewTimer(c.opts.closeTimeout)
	defer t.Stop()
	select {
	case <-c.dead:
		return c.connError(op)
	case <-t.C:
		return nil
	}
}

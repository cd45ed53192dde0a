package warren

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Channel is one AMQP channel on a Client's connection.
//
// A Channel belongs to one goroutine at a time. Every operation on it goes
// through one serialisation point, so frames of different operations never
// interleave and replies are never handed to the wrong caller; a goroutine
// that calls in while another call is in progress gets ErrConcurrentUse
// instead of garbling the wire. Close is the exception: it may be called
// from any goroutine, waits for an operation in progress, and once it waits
// no new operation may start (they get ErrChannelClosed). Use a Pool to
// share channels between goroutines.
//
// Every blocking operation takes a context. An RPC abandoned because its
// context ended leaves the channel in an unknown state (the reply may still
// come), so warren closes the channel: the abandoned call returns the context
// error (also matching ErrPoisoned) and later calls return a *PoisonedError.
//
// When the broker closes the channel (a soft error such as publishing to an
// exchange that does not exist), every later operation and Close return the
// broker's error as a *ChannelError, matched by errors.Is against the
// reply-code sentinels such as ErrNotFound. When the connection ends, they
// return its *ConnectionError.
type Channel struct {
	s   *channel // nil for the zero Channel
	gen uint64   // lease generation this handle belongs to (0: not pooled)
}

// channel is the state shared by every handle of one AMQP channel.
type channel struct {
	c    *session
	ch   *amqp.Channel
	id   uint16
	wgen uint32 // the wire's OpenGen of this opening of id

	// gen counts leases: a pooled channel's handle is valid only while gen
	// equals the handle's; Release moves it on. Unpooled channels stay at 0.
	gen  atomic.Uint64
	pool *Pool // the pool that owns the channel, nil if none; set before first lease

	mode    atomic.Int32    // Mode; changed only by SetMode
	confirm *confirmTracker // set before mode becomes ModeConfirm
	txDirty atomic.Bool     // tx mode: work since the last commit or rollback
	// unsettled counts messages fetched with Get that still need a
	// settlement the broker has taken into account (in tx mode: committed);
	// txSettled counts settlements made in the open transaction.
	unsettled atomic.Int64
	txSettled atomic.Int64
	// settledThrough is the highest delivery tag settled by a multiple
	// Channel.Ack or Nack: every Delivery up to it is settled.
	settledThrough atomic.Uint64
	// prefetch is the PrefetchCount of the last successful per-consumer
	// (not Global) Qos: a stream consumer needs one above 0.
	prefetch atomic.Int32
	// consuming counts the channel's Subscriptions that have not ended
	// (their stream is still open): a pool does not reuse such a channel.
	consuming atomic.Int32
	flow      gate          // shut while the broker has the channel's flow off
	gone      chan struct{} // closed when the channel is closing or closed: flow waits end
	goneOnce  sync.Once
	flowDue   atomic.Int32  // channel.flow frames read whose flow-ok is not yet written
	flowWant  atomic.Bool   // the last channel.flow read said active
	busy      atomic.Bool   // the serialisation point: true while an operation runs
	closeWait atomic.Bool   // a Close waits for the running operation: no new one may start
	idle      chan struct{} // size 1: an operation ended while a Close waited (closeWait)
	writing   atomic.Uint64 // the sequence number of the send writing now, 0, or writeAborted: see send
	wseq      atomic.Uint64 // numbers sends
	wdone     atomic.Value  // <-chan struct{}: Done of the ctx of the latest send with one (see stall.go)
	wop       atomic.Uint32 // that send's operation, an index into sendOps
	stallSeq  uint64        // the stall watch's: the send it saw writing with its ctx ended...
	stallMark uint64        // ...and the connection's bytes written then

	closes      chan *amqp.Error           // buffered NotifyClose listener registered at open
	brokerClose atomic.Pointer[amqp.Error] // the broker's channel.close, as read off the wire

	cause atomic.Pointer[causeBox] // first reason the channel became unusable; never reset

	mu           sync.Mutex               // guards following
	txDeliveries []*Delivery              // settled in the open transaction (tx mode)
	subs         map[string]*Subscription // running consumers (Channel.Consume) by tag
	closed       bool                     // Close has been called
	closeErr     error                    // Close's result
	closeDone    chan struct{}
}

func newChannel(c *session, ach *amqp.Channel) *channel {
	ch := &channel{
		c:         c,
		ch:        ach,
		id:        channelID(ach),
		closes:    make(chan *amqp.Error, 1),
		idle:      make(chan struct{}, 1),
		gone:      make(chan struct{}),
		closeDone: make(chan struct{}),
	}
	ach.NotifyClose(ch.closes)
	// The opening this channel is on the wire: a frame of its written
	// after the id was closed and opened again is refused (see
	// wire.Conn.WriteContent).
	ch.wgen = c.wire.OpenGen(ch.id)
	return ch
}

// channelID reads the channel number amqp091-go allocated. amqp091-go does
// not export it; the field has been named id since streadway/amqp.
func channelID(ach *amqp.Channel) uint16 {
	f := reflect.ValueOf(ach).Elem().FieldByName("id")
	if !f.IsValid() || f.Kind() != reflect.Uint16 {
		return 0
	}
	return uint16(f.Uint())
}

// errZeroChannel is returned by every operation on the zero Channel.
var errZeroChannel = fmt.Errorf("%w: zero Channel (not opened by a Client or Pool)", ErrInvalidArgument)

// ID returns the channel number the broker sees (as in `rabbitmqctl
// list_channels number`). Numbers start at 1 and are handed out in order.
func (ch Channel) ID() uint16 {
	if ch.s == nil {
		return 0
	}
	return ch.s.id
}

// String describes the channel.
func (ch Channel) String() string {
	if ch.s == nil {
		return "warren.Channel(zero)"
	}
	return fmt.Sprintf("warren.Channel(%d on %s)", ch.s.id, ch.s.c.endpoint)
}

// Err returns nil while the channel is usable, or the reason it is not.
func (ch Channel) Err() error {
	if ch.s == nil {
		return errZeroChannel
	}
	if ch.s.gen.Load() != ch.gen {
		return ErrReleased
	}
	return ch.s.unusable("")
}

// call runs an RPC on the channel; see channel.call.
func (ch Channel) call(ctx context.Context, op string, fn func() error) error {
	if ch.s == nil {
		return errZeroChannel
	}
	return ch.s.call(ctx, op, ch.gen, fn)
}

// send runs a frame-only operation on the channel; see channel.send.
func (ch Channel) send(ctx context.Context, op string, fn func() error) error {
	if ch.s == nil {
		return errZeroChannel
	}
	return ch.s.send(ctx, op, ch.gen, fn)
}

// enter claims the serialisation point for op and checks that the channel
// is usable. Every successful enter is paired with exit.
func (ch *channel) enter(ctx context.Context, op string, gen uint64) error {
	if ch.gen.Load() != gen {
		// Checked before taking the serialisation point too, so that a
		// stale handle never makes the current lease holder see
		// ErrConcurrentUse. (A stale generation never becomes valid again.)
		return fmt.Errorf("%w (channel %d, %s)", ErrReleased, ch.id, op)
	}
	if !ch.busy.CompareAndSwap(false, true) {
		return fmt.Errorf("%w (channel %d, %s)", ErrConcurrentUse, ch.id, op)
	}
	if ch.gen.Load() != gen {
		ch.exit()
		return fmt.Errorf("%w (channel %d, %s)", ErrReleased, ch.id, op)
	}
	if ch.suspect() {
		if err := ch.unusable(op); err != nil {
			ch.exit()
			return err
		}
	}
	if ch.closeWait.Load() {
		// A Close is waiting for the channel: an operation started now
		// would make it wait for ever behind a busy goroutine. (Checked
		// after the recorded cause, which is what a closed channel
		// reports.)
		ch.exit()
		return fmt.Errorf("%w (channel %d, %s: a Close is waiting for the channel)", ErrChannelClosed, ch.id, op)
	}
	if err := ctx.Err(); err != nil {
		ch.exit()
		return fmt.Errorf("warren: %s on channel %d: %w", op, ch.id, err)
	}
	return nil
}

// reusable is the channel's verdict for a pool of mode m (database/sql's
// validateConnection): whether it may be leased out again, and if not why,
// as the pool's discard counter (discard*). A channel is reusable when no
// operation runs on it, nothing made it unusable (the broker, its
// connection, a poisoning, a Close), no consumer started on it with
// Consume is still running (or still handing over deliveries), it is still
// in mode m, and it holds no transaction work or fetched or consumed
// messages that still need settling.
func (ch *channel) reusable(m Mode) (reason int, ok bool) {
	if ch.busy.Load() {
		return discardBusy, false
	}
	if ch.closeWait.Load() {
		// A Close waited for the channel (through a handle whose lease
		// has since ended): it is closed, not reused.
		return discardClosed, false
	}
	if ch.suspect() {
		switch err := ch.unusable(""); {
		case err == nil:
		case errors.Is(err, ErrPoisoned):
			return discardPoisoned, false
		case errors.As(err, new(*ChannelError)):
			return discardBrokerClosed, false
		case errors.Is(err, ErrChannelClosed):
			return discardClosed, false
		default:
			return discardConnection, false
		}
	}
	switch {
	case ch.consuming.Load() > 0:
		return discardConsuming, false
	case Mode(ch.mode.Load()) != m:
		return discardMode, false
	case m == ModeTx && (ch.txDirty.Load() || ch.unsettled.Load() > 0):
		return discardTx, false
	case ch.unsettled.Load() > 0:
		return discardUnsettled, false
	}
	return 0, true
}

// exit releases the serialisation point, and wakes a Close waiting for it.
func (ch *channel) exit() {
	ch.busy.Store(false)
	if ch.closeWait.Load() {
		select {
		case ch.idle <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// markGone ends every wait for the channel's flow: the channel is closing.
func (ch *channel) markGone() { ch.goneOnce.Do(func() { close(ch.gone) }) }

// closeWhenIdle closes the channel (generation gen) once no operation is
// running on it, however long that takes: a pool discards a channel
// released mid-operation, and the operation must finish (or fail with the
// connection) first. It returns once the channel is closed (the close-ok
// wait is bounded by the close timeout) or gone with its connection.
func (ch *channel) closeWhenIdle(gen uint64) {
	_ = ch.closeIdle(context.Background(), gen)
}

// call runs the RPC fn as op. With a cancellable ctx, fn runs on a goroutine
// the client owns, and if ctx ends first the channel is poisoned.
func (ch *channel) call(ctx context.Context, op string, gen uint64, fn func() error) error {
	if err := ch.enter(ctx, op, gen); err != nil {
		return err
	}
	defer ch.exit()
	if ctx.Done() == nil {
		return ch.result(op, fn())
	}
	done := make(chan error, 1)
	if !ch.c.goTracked(func() { done <- fn() }) {
		return ch.c.connError(op)
	}
	select {
	case err := <-done:
		return ch.result(op, err)
	case <-ctx.Done():
		ch.poison(op, ctx.Err(), done)
		return fmt.Errorf("warren: %s on channel %d abandoned: %w (%w: channel closed)", op, ch.id, ctx.Err(), ErrPoisoned)
	}
}

// poison records that op was abandoned and closes the channel once the
// abandoned RPC has come back, so no reply can reach a later caller.
func (ch *channel) poison(op string, cause error, pending <-chan error) {
	ch.setCause(&PoisonedError{ChannelID: ch.id, Op: op, Cause: cause})
	ch.markGone() // its consumers' streams end now: their deliveries are void
	ch.c.goTracked(func() {
		select {
		case <-pending:
		case <-ch.c.dead:
		}
		_ = ch.ch.Close()
		ch.c.forget(ch)
	})
}

// send runs fn, an operation that writes frames without waiting for a reply
// (publish, ack). Socket writes cannot be interrupted. If ctx ends
// while the write is in progress, the session's stall watch (stall.go)
// looks at it: a write that completes is left alone, whatever ctx says, but
// one that makes no progress for a whole stallGrace (a blocked broker, a
// dead network) is stalled, and warren fails the connection's pending
// writes: a partly written frame cannot be taken back, so the connection
// ends with a *ConnectionError.
func (ch *channel) send(ctx context.Context, op string, gen uint64, fn func() error) error {
	seq, err := ch.beginSend(ctx, op, gen)
	if err != nil {
		return err
	}
	return ch.endSend(ctx, op, seq, fn())
}

// beginSend claims the serialisation point for a frame-only operation (see
// send) and shows its write to the stall watch; the caller writes, then
// hands the write's error to endSend, whatever happens. seq is 0 when ctx
// can never end (nothing for the stall watch to look at).
func (ch *channel) beginSend(ctx context.Context, op string, gen uint64) (seq uint64, err error) {
	if err := ch.enter(ctx, op, gen); err != nil {
		return 0, err
	}
	done := ctx.Done()
	if done == nil {
		return 0, nil
	}
	seq = ch.wseq.Add(1)
	ch.wdone.Store(done)
	ch.wop.Store(sendOp(op))
	ch.writing.Store(seq)
	return seq, nil
}

// endSend ends the operation beginSend began, whose write returned err:
// it releases the serialisation point and says what the write came to.
func (ch *channel) endSend(ctx context.Context, op string, seq uint64, err error) error {
	defer ch.exit()
	if seq == 0 || ch.writing.CompareAndSwap(seq, 0) {
		return ch.result(op, err)
	}
	ch.writing.Store(0)
	<-ch.c.dead
	ch.setCause(ch.c.connError(""))
	if err == nil {
		// Every frame was handed to the socket before it was cut:
		// the broker may or may not have the message.
		return &OutcomeUnknownError{ChannelID: ch.id, Op: op,
			Cause: fmt.Errorf("%w (the connection was closed because a write stalled)", ctx.Err())}
	}
	return fmt.Errorf("warren: %s on channel %d abandoned during a stalled write: %w (connection closed)", op, ch.id, ctx.Err())
}

// Close closes the channel. It is idempotent and safe while the broker is
// closing the same channel (the simultaneous-close race): it never hangs,
// and it returns nil for a clean close or the reason the channel had
// already ended — the broker's *ChannelError, the *ConnectionError, or the
// *PoisonedError.
//
// Close is safe to call from any goroutine, any number of times at once:
// the first call closes the channel and every call returns that close's
// result, or its own context error if its ctx ends while the close is still
// in progress. Unlike the channel's other operations, Close never returns
// ErrConcurrentUse: like database/sql's Conn.Close, a Close that finds
// another goroutine's operation running on the channel waits for it to end
// (an AMQP channel cannot be closed under a running operation without
// garbling the wire), and then closes the channel; cancel that operation's
// ctx to make it end sooner. If ctx ends while the operation is still
// running, Close returns the context error and the channel is closed in the
// background as soon as the operation ends.
//
// ctx bounds Close, the wait for the broker's close-ok included (default
// 10 s without a deadline, see WithCloseTimeout); if it ends first, Close
// returns the context error and the channel finishes closing in the
// background.
func (ch Channel) Close(ctx context.Context) error {
	if ch.s == nil {
		return errZeroChannel
	}
	return ch.s.close(ctx, ch.gen)
}

// close: see Channel.Close.
func (ch *channel) close(ctx context.Context, gen uint64) error {
	ctx, cancel := withDefaultTimeout(ctx, ch.c.opts.closeTimeout)
	defer cancel()
	return ch.closeIdle(ctx, gen)
}

// closeIdle closes the channel (for a handle of generation gen) as soon as
// no operation is running on it, or waits for the close already under way,
// bounded by ctx. If ctx ends while another goroutine's operation still
// runs, the close is left to a goroutine of the client's (closeWhenIdle).
func (ch *channel) closeIdle(ctx context.Context, gen uint64) error {
	if done, err := ch.tryClose(ctx, gen); done {
		return err
	}
	// No new operation may overtake this Close; the running one wakes it
	// when it ends (exit), as does another Close finishing or the
	// connection ending. (Set before the next try, so that an operation
	// ending in between is seen.)
	ch.closeWait.Store(true)
	for {
		if done, err := ch.tryClose(ctx, gen); done {
			return err
		}
		select {
		case <-ch.idle:
		case <-ch.closeDone: // another Close finished: tryClose returns its result
		case <-ch.c.dead: // tryClose finishes now: nothing is left to send
		case <-ctx.Done():
			// Unreachable from closeWhenIdle: its ctx never ends.
			ch.c.goTracked(func() { ch.closeWhenIdle(gen) }) // or the connection is closing, and the channel with it
			return fmt.Errorf("warren: close of channel %d: waiting for an operation in progress: %w", ch.id, ctx.Err())
		}
	}
}

// tryClose makes one attempt to close the channel for a handle of
// generation gen: it closes it if no operation is running, or waits
// (bounded by ctx) for the result of a close already under way. done is
// false when another goroutine's operation (not a Close) holds the channel.
//
// A close is claimed (closed set) only by the goroutine holding the
// serialisation point, so a pool sees a closing channel as busy and never
// hands it out again; the exception is a channel whose connection has
// ended, where nothing is left to send.
func (ch *channel) tryClose(ctx context.Context, gen uint64) (done bool, err error) {
	if ch.gen.Load() != gen {
		return true, fmt.Errorf("%w (channel %d, close)", ErrReleased, ch.id)
	}
	if ch.busy.CompareAndSwap(false, true) {
		if ch.gen.Load() != gen {
			ch.exit()
			return true, fmt.Errorf("%w (channel %d, close)", ErrReleased, ch.id)
		}
		ch.mu.Lock()
		claimed := !ch.closed
		ch.closed = true
		ch.mu.Unlock()
		if claimed {
			defer ch.exit()
			return true, ch.closeClaimed(ctx)
		}
		ch.exit()
		return true, ch.closeResult(ctx)
	}
	ch.mu.Lock()
	if ch.closed {
		ch.mu.Unlock()
		return true, ch.closeResult(ctx) // another Close holds the channel
	}
	if ch.c.isDead.Load() {
		ch.closed = true
		ch.mu.Unlock()
		return true, ch.closeClaimed(ctx)
	}
	ch.mu.Unlock()
	return false, nil
}

// closeResult waits for the close under way, bounded by ctx, and returns
// its result.
func (ch *channel) closeResult(ctx context.Context) error {
	select {
	case <-ch.closeDone:
	default:
		select {
		case <-ch.closeDone:
		case <-ctx.Done():
			return fmt.Errorf("warren: close of channel %d: waiting for the close in progress: %w", ch.id, ctx.Err())
		}
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.closeErr
}

// closeClaimed closes the channel for the caller that claimed the close,
// records the result and wakes every other Close.
func (ch *channel) closeClaimed(ctx context.Context) error {
	ch.markGone() // nothing waits for the flow of a closed channel

	err := ch.unusable("close")
	var pe *protocolError
	switch {
	case err == nil:
		err = ch.closeWithin(ctx)
	case errors.As(err, &pe):
		_ = ch.closeWithin(ctx) // the channel is still open on both sides
	}
	if errors.Is(err, ErrChannelClosed) {
		err = nil
	}
	ch.c.forget(ch)
	ch.setCause(ErrChannelClosed)
	ch.mu.Lock()
	ch.closeErr = err
	ch.mu.Unlock()
	close(ch.closeDone)
	return err
}

// closeWithin runs the close handshake bounded by ctx.
func (ch *channel) closeWithin(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, ch.c.opts.closeTimeout)
	defer cancel()
	done := make(chan error, 1)
	if !ch.c.goTracked(func() { done <- ch.ch.Close() }) {
		return ch.c.connError("close")
	}
	select {
	case err := <-done:
		if err != nil {
			return ch.result("close", err)
		}
		// nil means either that our channel.close was answered (amqp091-go
		// then closed the listener without a value before returning) or
		// that the broker had closed the channel first and nothing was
		// sent (its error is on the listener, or about to be).
		select {
		case e, ok := <-ch.closes:
			if !ok {
				if ch.cause.Load() != nil {
					// Another reader of the listener (a Subscription's
					// goroutine, Err) took what it held and recorded it.
					return ch.unusable("close")
				}
				return nil
			}
			ch.setCause(ch.classify(e, ok))
			return ch.unusable("close")
		default:
			return ch.awaitCause("close")
		}
	case <-ctx.Done():
		ch.setCause(&PoisonedError{ChannelID: ch.id, Op: "close", Cause: ctx.Err()})
		return fmt.Errorf("warren: close of channel %d: no close-ok: %w", ch.id, ctx.Err())
	}
}

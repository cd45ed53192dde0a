package warren

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/wire"
)

// Version is reported to the broker in the client properties.
const Version = "0.1.0"

// session is one AMQP connection and the channels opened on it: everything
// a Client does goes through its session.
type session struct {
	conn       *amqp.Connection
	wire       *wire.Conn
	opts       options
	endpoint   string // redacted URL: never holds a password
	channelMax uint16

	// openLock serialises channel opens, so that the ids amqp091-go hands
	// out are observed in order, and an open abandoned by its ctx finishes
	// before the next one starts. A waiter gives up when its ctx ends: an
	// abandoned open may never be answered.
	openLock ctxLock

	mu       sync.Mutex // guards following
	channels map[uint16]*channel
	// earlyFlow holds a channel.flow read for a channel id not registered
	// yet (sent right after channel.open-ok).
	earlyFlow map[uint16]bool
	closing   bool  // Close has begun: no new channels or goroutines
	closeErr  error // Close's result, valid once closeDone is closed

	connErr   atomic.Pointer[ConnectionError] // why the connection ended; set before dead closes
	rawErr    *amqp.Error                     // amqp091-go's pointer for connErr; read after dead closes
	dead      chan struct{}                   // closed when the connection is gone, for any reason
	isDead    atomic.Bool                     // set just before dead is closed (cheaper to poll)
	closeDone chan struct{}                   // closed when Close has finished
	wg        sync.WaitGroup                  // every goroutine warren starts for this client

	blockGate gate // shut while blocked: publishes wait on it (see FlowPolicy)

	// confirmers holds, by channel id, the tracker of each confirm channel:
	// the wire reports acks and nacks by id on amqp091-go's reader.
	confirmers atomic.Pointer[[]atomic.Pointer[confirmTracker]]

	cnt *counters // the Client's, shared by all its connections (see ClientStats)

	// secretLock serialises connection.update-secret (see updateSecret);
	// cred is the life of the credentials the connection logged in with
	// or was last refreshed with (nil without WithCredentials).
	secretLock ctxLock
	cred       atomic.Pointer[credLife]

	abortReason atomic.Pointer[string]     // why warren cut the socket, if it did
	wireClose   atomic.Pointer[amqp.Error] // connection.close as read off the wire
}

// sawClose records a channel.close or connection.close as it is read off
// the wire, on amqp091-go's reader goroutine: amqp091-go can lose the
// reply when a close races its own, warren does not.
func (c *session) sawClose(id uint16, code uint16, text string) {
	e := &amqp.Error{Code: int(code), Reason: text, Server: true}
	if id == 0 {
		c.wireClose.CompareAndSwap(nil, e)
		return
	}
	c.mu.Lock()
	ch := c.channels[id]
	c.mu.Unlock()
	if ch != nil {
		ch.brokerClose.CompareAndSwap(nil, e)
		ch.markGone() // publishes waiting for flow see the close instead
	}
}

// tracker returns the confirm tracker of channel id, or nil.
func (c *session) tracker(id uint16) *confirmTracker {
	ts := c.confirmers.Load()
	if ts == nil || int(id) >= len(*ts) {
		return nil
	}
	return (*ts)[id].Load()
}

// trackConfirms registers t as the tracker of channel id.
func (c *session) trackConfirms(id uint16, t *confirmTracker) {
	if ts := c.confirmers.Load(); ts != nil && int(id) < len(*ts) {
		(*ts)[id].Store(t)
	}
}

// untrackConfirms removes t, if it is still channel id's tracker.
func (c *session) untrackConfirms(id uint16, t *confirmTracker) {
	if ts := c.confirmers.Load(); ts != nil && int(id) < len(*ts) {
		(*ts)[id].CompareAndSwap(t, nil)
	}
}

// sawConfirm hands a basic.ack or basic.nack read off the wire to its
// channel's tracker (on amqp091-go's reader goroutine), and says whether
// amqp091-go may see it.
func (c *session) sawConfirm(id uint16, tag uint64, multiple, ack bool) bool {
	t := c.tracker(id)
	if t == nil {
		c.cnt.strayConfirms.Add(1)
		return true // not a confirm channel: amqp091-go ignores it
	}
	// The tracker is the only record of the channel's publishes (warren
	// writes them itself, so amqp091-go has none): the confirm is never
	// passed on.
	if tag > t.highest.Load() {
		// A confirm for a tag never published: a broken broker.
		c.cnt.strayConfirms.Add(1)
		return false
	}
	t.confirmed(tag, multiple, ack)
	return false
}

// sawReturnDropped tells channel id's tracker that a returned message will
// not come after all.
func (c *session) sawReturnDropped(id uint16) {
	if t := c.tracker(id); t != nil {
		t.returnDropped()
	}
}

// sawReturn tells channel id's tracker that a returned message is coming.
func (c *session) sawReturn(id uint16) {
	if t := c.tracker(id); t != nil {
		t.returnSeen()
	}
}

// parseOptions applies opts to the defaults.
func parseOptions(opts []Option) (options, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// watch is the connection's watcher (one of its two long-lived goroutines,
// with the stall watch): it records why the connection ended and drains
// connection.blocked notifications so that amqp091-go's reader never waits
// on warren.
func (c *session) watch(closes <-chan *amqp.Error, blocks <-chan amqp.Blocking) {
	defer c.wg.Done()
	for {
		select {
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			c.blockGate.set(b.Active)
			if b.Active {
				c.opts.logger.Warn("warren: broker blocked publishing", "endpoint", c.endpoint, "reason", b.Reason)
			} else {
				c.opts.logger.Info("warren: broker unblocked publishing", "endpoint", c.endpoint)
			}
		case e, ok := <-closes:
			closing := c.isClosing()
			if (!ok || e == nil) && !closing {
				// amqp091-go closed the listener without a value; the
				// wire may still have seen the broker's reason.
				e, ok = c.wireClose.Load(), true
			}
			if ok && e != nil && !closing {
				// (Once Close has begun, how the socket ended is Close's
				// business: Err reports ErrClientClosed.)
				c.rawErr = e
				ce := connectionCause("", e)
				if r := c.abortReason.Load(); r != nil && !e.Server {
					ce.Reason = *r
				}
				c.connErr.Store(ce)
				c.opts.logger.Warn("warren: connection closed", "endpoint", c.endpoint, "code", e.Code, "reason", e.Reason, "server", e.Server)
			}
			c.isDead.Store(true)
			close(c.dead)
			// amqp091-go closes the blocked listener during shutdown;
			// drain it so nothing is left behind.
			if blocks != nil {
				for range blocks {
				}
			}
			return
		}
	}
}

func (c *session) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// String: see Client.String.
func (c *session) String() string { return "warren.Client(" + c.endpoint + ")" }

// ChannelMax: see Client.ChannelMax.
func (c *session) ChannelMax() uint16 { return c.channelMax }

// Blocked: see Client.Blocked.
func (c *session) Blocked() bool { return c.blockGate.shut.Load() }

// Err: see Client.Err.
func (c *session) Err() error {
	select {
	case <-c.dead:
	default:
		return nil
	}
	if e := c.connErr.Load(); e != nil {
		return e
	}
	return ErrClientClosed
}

// Done: see Client.Done.
func (c *session) Done() <-chan struct{} { return c.dead }

// abortWrites ends the connection because op on channel id was abandoned
// by its context in the middle of a socket write: a partly written frame
// cannot be taken back. Closing the socket fails the stalled write and makes
// amqp091-go's reader shut the connection down.
func (c *session) abortWrites(op string, id uint16) {
	r := fmt.Sprintf("%s on channel %d was abandoned by its context during a stalled socket write", op, id)
	c.abortReason.CompareAndSwap(nil, &r)
	_ = c.wire.Close()
}

// goTracked starts fn on a goroutine the client owns, unless Close has begun.
func (c *session) goTracked(fn func()) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// Channel: see Client.Channel.
func (c *session) Channel(ctx context.Context) (Channel, error) {
	st, err := c.openChannel(ctx)
	if err != nil {
		return Channel{}, err
	}
	return Channel{s: st}, nil
}

// openChannel opens an AMQP channel and registers its state.
func (c *session) openChannel(ctx context.Context) (*channel, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		return nil, ErrClientClosed
	}
	if c.Err() != nil {
		return nil, c.connError("channel.open")
	}

	if err := c.openLock.lock(ctx, c.dead); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("warren: channel.open: waiting for an earlier open: %w", err)
		}
		return nil, c.connError("channel.open")
	}
	unlock := c.openLock.unlock
	var (
		ach *amqp.Channel
		err error
	)
	done := make(chan struct{})
	if !c.goTracked(func() {
		defer close(done)
		ach, err = c.conn.Channel()
	}) {
		unlock()
		return nil, ErrClientClosed
	}
	select {
	case <-done:
		unlock()
	case <-ctx.Done():
		// The open may still complete. Hand the lock to a goroutine that
		// waits for it and closes what it yields, so no other open
		// overtakes it.
		reap := func() {
			<-done
			if ach != nil {
				_ = ach.Close()
			}
			unlock()
		}
		if !c.goTracked(reap) {
			reap() // Close has begun: the open ends with the connection
		}
		return nil, fmt.Errorf("warren: channel.open abandoned: %w", ctx.Err())
	}
	if err != nil {
		return nil, c.openError(err)
	}
	ch := newChannel(c, ach)
	c.mu.Lock()
	c.channels[ch.id] = ch
	active, early := c.earlyFlow[ch.id]
	delete(c.earlyFlow, ch.id)
	c.mu.Unlock()
	if early {
		ch.flow.set(!active) // a channel.flow read before the channel was registered
	}
	c.cnt.opened.Add(1)
	if h := c.opts.metrics.ChannelOpened; h != nil {
		h(ch.id)
	}
	return ch, nil
}

func (c *session) openError(err error) error {
	if errors.Is(err, amqp.ErrChannelMax) {
		return &ChannelMaxError{Max: c.channelMax}
	}
	if c.conn.IsClosed() {
		<-c.dead
		return c.connError("channel.open")
	}
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Server && ReplyCode(ae.Code).Level() == LevelChannel {
		return channelCause(0, "channel.open", ae)
	}
	if err := c.dyingConn("channel.open", err); err != nil {
		return err
	}
	return fmt.Errorf("warren: channel.open: %w", err)
}

// forget removes a closed channel from the registry.
func (c *session) forget(ch *channel) {
	c.mu.Lock()
	forgotten := c.channels[ch.id] == ch
	if forgotten {
		delete(c.channels, ch.id)
	}
	c.mu.Unlock()
	if forgotten {
		c.cnt.closed.Add(1)
		if h := c.opts.metrics.ChannelClosed; h != nil {
			h(ch.id)
		}
	}
}

// OpenChannels: see Client.OpenChannels.
func (c *session) OpenChannels() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.channels)
}

// Close: see Client.Close.
func (c *session) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		select {
		case <-c.closeDone:
			return c.closeErr
		case <-ctx.Done():
			return fmt.Errorf("warren: close: %w", ctx.Err())
		}
	}
	c.closing = true
	chans := make([]*channel, 0, len(c.channels))
	for _, ch := range c.channels {
		chans = append(chans, ch)
	}
	c.mu.Unlock()

	ctx, cancel := withDefaultTimeout(ctx, c.opts.closeTimeout)
	defer cancel()

	var err error
	select {
	case <-c.dead:
		err = c.Err()
		if err == ErrClientClosed {
			err = nil
		}
	default:
		// Bound the close handshake by ctx: on expiry, fail pending I/O.
		var aborted atomic.Bool
		stop := context.AfterFunc(ctx, func() {
			aborted.Store(true)
			_ = c.wire.SetDeadline(time.Unix(1, 0))
		})
		_ = c.conn.Close()
		stop()
		<-c.dead
		if aborted.Load() {
			err = fmt.Errorf("warren: close: no close-ok from the broker in time, socket closed: %w", ctx.Err())
		}
	}
	_ = c.wire.Close()
	for _, ch := range chans {
		ch.markClientClosed()
	}
	c.wg.Wait()

	c.mu.Lock()
	c.closeErr = err
	c.mu.Unlock()
	close(c.closeDone)
	c.opts.logger.Info("warren: client closed", "endpoint", c.endpoint)
	return err
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

package warren

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// ReconnectPolicy makes a Client dial a new connection when its connection
// is lost (see WithReconnect). Attempts are spaced by exponential backoff
// with full jitter: after n failed attempts it waits a random time up to
// min(MaxBackoff, MinBackoff·2ⁿ⁻¹). With several endpoints (DialCluster)
// each attempt dials the next endpoint, the first one the endpoint after
// the lost connection's; the wait comes only after a whole round of them
// has failed, n counting rounds. MaxAttempts counts dials.
//
// A connection that is lost before it has been up for StableAfter, or that
// the broker closes for a limit (530 NOT_ALLOWED: a per-node or per-user
// channel limit, a connection limit), counts as a failure too: the next
// reconnect waits the backoff of the failures so far instead of dialling at
// once (after a limit's close at least a second, doubling for each further
// one in a row, so that the broker has released the lost connection's
// channels), so a broker that accepts
// connections and then closes them is not hammered with handshakes (the
// churn RabbitMQ's guides warn against). The
// backoff starts again from MinBackoff only after a connection has stayed
// up for StableAfter.
type ReconnectPolicy struct {
	MinBackoff  time.Duration // default 100 ms
	MaxBackoff  time.Duration // default 30 s
	MaxAttempts int           // consecutive failed dials before the Client gives up (0: never)
	DialTimeout time.Duration // bound on one dial (default 30 s)
	// StableAfter is how long a connection must stay up before a loss
	// counts as a fresh start (default 10 s: far beyond the few
	// milliseconds in which a limit closes a new connection, and within
	// the time an operator expects a flapping link to be noticed).
	StableAfter time.Duration
}

// limitPause is the least a reconnect waits after the broker closed the
// connection for a limit (530 NOT_ALLOWED); see redial.
const limitPause = time.Second

// defaultStableAfter: see ReconnectPolicy.StableAfter.
const defaultStableAfter = 10 * time.Second

// defaultDialTimeout bounds one dial of several endpoints when there is no
// ReconnectPolicy to say otherwise.
const defaultDialTimeout = 30 * time.Second

// backoff returns the wait before attempt n+1, after n failed attempts.
func (p *ReconnectPolicy) backoff(n int) time.Duration {
	d := p.MaxBackoff
	if n < 32 {
		if b := p.MinBackoff << (n - 1); b > 0 && b < d {
			d = b
		}
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

// declareTopology runs the WithTopology function on s.
func (c *Client) declareTopology(s *session) error {
	if c.opts.topology == nil {
		return nil
	}
	d := 30 * time.Second
	if c.opts.reconnect != nil {
		d = c.opts.reconnect.DialTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	stop := context.AfterFunc(closingCtx{c.closing}, cancel) // Close does not wait for it
	defer stop()
	ch, err := s.Channel(ctx)
	if err != nil {
		return fmt.Errorf("warren: topology: %w", err)
	}
	defer ch.Close(ctx)
	if err := c.opts.topology(ctx, ch); err != nil {
		return fmt.Errorf("warren: topology: %w", err)
	}
	return nil
}

// State is a Client's connection state, as reported to WithStateCallback.
type State int

const (
	StateConnected    State = iota // the first connection is open
	StateDisconnected              // the connection was lost (Err says why)
	StateReconnected               // a new connection is open (Attempt says after how many dials)
	StateClosed                    // the Client has ended: Close, or it gave up (Err)

	// StateCredentialsRefreshed: the refresher (WithCredentialRefresh)
	// got new credentials from the provider and the broker accepted their
	// secret on the live connection; ValidUntil is their expiry. The
	// connection state itself does not change.
	StateCredentialsRefreshed
	// StateCredentialsRefreshFailed: a refresh failed (Err says why: the
	// provider, ErrSecretRefused, a lost connection); Attempt counts the
	// failed attempts in a row. The refresher retries with backoff.
	StateCredentialsRefreshFailed
)

// String returns "connected", "disconnected", "reconnected", "closed",
// "credentials refreshed" or "credentials refresh failed".
func (s State) String() string {
	switch s {
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	case StateReconnected:
		return "reconnected"
	case StateClosed:
		return "closed"
	case StateCredentialsRefreshed:
		return "credentials refreshed"
	case StateCredentialsRefreshFailed:
		return "credentials refresh failed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StateEvent is one change of a Client's connection state, or a
// credential refresh (see WithCredentialRefresh). It never holds a secret.
type StateEvent struct {
	State    State
	Err      error  // why the connection was lost, why the Client ended (nil for Close), for StateReconnected why WithTopology failed, for StateCredentialsRefreshFailed why the refresh failed
	Attempt  int    // StateReconnected: the dial that succeeded (1 = the first); StateCredentialsRefreshFailed: failed refreshes in a row
	Endpoint string // the broker, without credentials
	At       time.Time
	// ValidUntil is, for StateCredentialsRefreshed, when the new
	// credentials expire (zero: never); zero for the other states.
	ValidUntil time.Time
}

// dispatcher delivers events to fn in order on its own goroutine, without
// ever blocking the sender.
type dispatcher struct {
	fns   []func(StateEvent) // called in order for each event
	mu    sync.Mutex
	queue []StateEvent
	wake  chan struct{}
	done  chan struct{} // closed once StateClosed has been delivered
}

func newDispatcher(fns []func(StateEvent)) *dispatcher {
	d := &dispatcher{fns: fns, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go d.run()
	return d
}

func (d *dispatcher) send(e StateEvent) {
	d.mu.Lock()
	d.queue = append(d.queue, e)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) run() {
	defer close(d.done)
	for range d.wake {
		for {
			d.mu.Lock()
			if len(d.queue) == 0 {
				d.mu.Unlock()
				break
			}
			e := d.queue[0]
			d.queue = d.queue[1:]
			d.mu.Unlock()
			for _, fn := range d.fns {
				fn(e)
			}
			if e.State == StateClosed {
				return
			}
		}
	}
}

// emit reports a state change.
func (c *Client) emit(e StateEvent) {
	e.At = time.Now()
	if e.Endpoint == "" {
		e.Endpoint = c.s().endpoint
	}
	switch e.State {
	case StateDisconnected:
		c.opts.logger.Warn("warren: connection lost", "endpoint", e.Endpoint, "err", e.Err)
	case StateReconnected:
		c.opts.logger.Info("warren: reconnected", "endpoint", e.Endpoint, "attempt", e.Attempt)
	case StateCredentialsRefreshed:
		c.opts.logger.Info("warren: credentials refreshed", "endpoint", e.Endpoint, "valid_until", e.ValidUntil)
	case StateCredentialsRefreshFailed:
		c.opts.logger.Warn("warren: credential refresh failed", "endpoint", e.Endpoint, "attempt", e.Attempt, "err", e.Err)
	}
	if c.events != nil {
		c.events.send(e)
	}
}

type errBox struct{ err error }

// finish ends the Client once: Done is closed and StateClosed reported.
func (c *Client) finish(err error) {
	if c.endErr.CompareAndSwap(nil, &errBox{err}) {
		perr := err
		if perr == nil {
			perr = ErrClientClosed
		}
		c.failPools(perr) // (those lost with a connection have their error already)
		c.emit(StateEvent{State: StateClosed, Err: err})
		close(c.done)
	}
}

// supervise watches the current connection and, when it is lost, reconnects
// per the policy or ends the Client.
func (c *Client) supervise() {
	defer close(c.loopDone)
	c.startRefresher()
	up := time.Now() // when the current connection was put in place
	unstable := 0    // connections in a row lost before they were stable
	limited := 0     // connections in a row closed by the broker for a limit
	for {
		s := c.s()
		select {
		case <-s.dead:
		case <-c.closing:
			return
		}
		select {
		case <-c.closing:
			return // Close ended it
		default:
		}
		cause := s.Err()
		lost := time.Now()
		c.emit(StateEvent{State: StateDisconnected, Err: cause})
		if c.opts.reconnect == nil {
			c.failPools(s.connError("pool.acquire"))
			c.finish(cause)
			return
		}
		if time.Since(up) < c.opts.reconnect.StableAfter || errors.Is(cause, ErrNotAllowed) {
			unstable++
		} else {
			unstable = 0
		}
		if errors.Is(cause, ErrNotAllowed) {
			limited++
		} else {
			limited = 0
		}
		ns, attempt, err := c.redial(unstable, limited)
		if err != nil {
			select {
			case <-c.closing:
				return // Close ends the Client (StateClosed with a nil Err)
			default:
			}
			c.finish(err)
			return
		}
		terr := c.declareTopology(ns)
		c.fitPools(ns)
		c.swap(ns)
		up = time.Now()
		select {
		case <-c.closing:
			// Close began while the dial finished: it closes c.s(),
			// which is now ns.
			return
		default:
		}
		if h := c.opts.metrics.Reconnected; h != nil {
			h(attempt, time.Since(lost))
		}
		c.emit(StateEvent{State: StateReconnected, Attempt: attempt, Endpoint: ns.endpoint, Err: terr})
	}
}

// swap installs ns as the current connection and wakes those waiting for
// it.
func (c *Client) swap(ns *session) {
	c.swapMu.Lock()
	c.past.addWire(c.s().Stats())
	c.past.Reconnects++
	c.cur.Store(ns)
	close(c.swapped)
	c.swapped = make(chan struct{})
	c.swapMu.Unlock()
}

// live returns the current connection once it is usable: at once when it
// is, after the reconnect in progress when it is not (bounded by ctx), or
// the error that ended the Client.
func (c *Client) live(ctx context.Context) (*session, error) {
	for {
		c.swapMu.Lock()
		s, next := c.s(), c.swapped
		c.swapMu.Unlock()
		if !s.isDead.Load() {
			return s, nil
		}
		if c.opts.reconnect == nil {
			return nil, s.connError("")
		}
		select {
		case <-next:
		case <-c.done:
			if b := c.endErr.Load(); b != nil && b.err != nil {
				return nil, b.err
			}
			return nil, ErrClientClosed
		case <-c.closing:
			// No connection comes after a Close: waiting for c.done
			// would wait for this caller too, if the Close waits for
			// it (a pool warming its channels, a Publisher's worker).
			return nil, ErrClientClosed
		case <-ctx.Done():
			return nil, fmt.Errorf("warren: waiting for the connection to be re-established: %w (last cause: %w)", ctx.Err(), s.Err())
		}
	}
}

// redial dials until it succeeds, Close begins, or the policy gives up.
// After unstable connections in a row that did not last (see
// ReconnectPolicy), it waits their backoff before the first dial, and
// counts them in every later backoff.
//
// After limited closes in a row for a broker limit, the first dial also
// waits at least limitPause doubled for each earlier one (up to
// MaxBackoff, plus up to half again of jitter): the broker releases a
// closed connection's channels from its per-user and per-node counts some
// time after the close (seconds, measured on RabbitMQ 3.10), and a
// connection made sooner meets the limit again.
func (c *Client) redial(unstable, limited int) (*session, int, error) {
	p := c.opts.reconnect
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-c.closing:
			cancel()
		case <-stop:
		}
	}()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	first := time.Duration(0)
	if unstable > 0 {
		first = p.backoff(unstable)
	}
	if limited > 0 {
		pause := p.MaxBackoff
		if limited < 32 {
			pause = min(limitPause<<(limited-1), p.MaxBackoff)
		}
		pause += time.Duration(rand.Int64N(int64(pause)/2 + 1))
		first = max(first, pause)
	}
	if first > 0 && !wait(first) {
		return nil, 0, ErrClientClosed
	}
	n := len(c.endpoints)
	for attempt := 1; ; attempt++ {
		s, err := c.dialNext(ctx, p.DialTimeout)
		if err == nil {
			return s, attempt, nil
		}
		if ctx.Err() != nil {
			return nil, attempt, ErrClientClosed
		}
		c.opts.logger.Warn("warren: reconnect attempt failed", "attempt", attempt, "err", err)
		if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
			return nil, attempt, fmt.Errorf("warren: reconnect: gave up after %d attempts: %w", attempt, err)
		}
		if attempt%n != 0 {
			continue // the next endpoint at once; the backoff waits after a whole round
		}
		if !wait(p.backoff(attempt/n + unstable)) {
			return nil, attempt, ErrClientClosed
		}
	}
}

// closingCtx is a context that is done when its channel is closed (a
// Client's closing), for context.AfterFunc.
type closingCtx struct{ done <-chan struct{} }

func (closingCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c closingCtx) Done() <-chan struct{}     { return c.done }
func (c closingCtx) Err() error {
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}
func (closingCtx) Value(any) any { return nil }

package warren

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/internal/chanpool"
)

// PoolOptions configure a Pool. The zero value is a pool of 8 plain
// channels opened on demand.
type PoolOptions struct {
	// Size is the most channels the pool holds open at once (default 8).
	// Size plus Headroom, plus the sizes of the client's other pools, must
	// fit in the negotiated channel_max.
	Size int
	// MinIdle channels are opened when the pool is made and kept open
	// (default 0: every channel opens on first use).
	MinIdle int
	// Mode of the pool's channels: ModePlain (default), ModeConfirm or
	// ModeTx. A leased channel switched to another mode is closed on
	// release. A tx channel released with uncommitted work, or holding
	// fetched messages it did not settle, is closed too (which discards
	// the work and returns the messages to their queues).
	Mode Mode
	// Headroom is how many channel numbers stay free for channels opened
	// outside pools (default 16).
	Headroom int
}

const (
	defaultPoolSize     = 8
	defaultPoolHeadroom = 16
)

// DiscardStats counts channels a Pool closed instead of reusing, by reason.
type DiscardStats struct {
	BrokerClosed int64 // the broker closed the channel (a *ChannelError)
	Poisoned     int64 // an operation on it was abandoned by its context
	Closed       int64 // the lease holder closed it
	Busy         int64 // released while an operation on it was still running
	ModeChanged  int64 // switched away from the pool's mode (confirm, tx)
	Connection   int64 // the connection ended
	TxUnfinished int64 // a tx channel released with uncommitted work or unsettled messages
	Unsettled    int64 // released holding fetched or consumed messages it never settled (closing it requeues them)
	Consuming    int64 // released with a consumer of Channel.Consume still running, or its stream not yet drained (closing it requeues its unacked messages)
}

// PoolStats is a snapshot of a Pool, like database/sql's DBStats: gauges
// and cumulative counters.
type PoolStats struct {
	Mode    Mode
	Max     int // Size, or fewer once the pool keeps below a broker's channel limit (see Acquire)
	Open    int // channels open, leased or idle (and opens in progress)
	InUse   int // leased
	Idle    int
	Waiting int // Acquire calls waiting now

	WaitCount       int64         // Acquire calls that had to wait
	WaitDuration    time.Duration // total time spent waiting
	AcquireTimeouts int64         // waits ended by their context
	Opened          int64         // channels opened since the pool was made (churn)
	Discarded       DiscardStats
}

// Pool is a bounded pool of channels on one Client that gives each goroutine
// a channel of its own: Acquire leases one exclusively, Release returns it.
// Waiters are served in arrival order. A leased Channel is a handle valid
// until its Release; using it afterwards returns ErrReleased.
//
// A channel that the broker closed, that an abandoned operation poisoned,
// that changed mode, that is released while still in use, or while a
// consumer started on it with Channel.Consume still runs, is closed
// instead of reused, and replaced on demand.
//
// A Pool is safe for concurrent use, Close included. Close stops new leases
// and closes the channels.
type Pool struct {
	client *Client // the pool's: its channels open on the Client's live connection
	opts   PoolOptions
	core   *chanpool.Pool[*channel]

	discards [9]atomic.Int64 // indexed by discard*
	closed   atomic.Bool
	warming  atomic.Bool
}

const (
	discardBrokerClosed = iota
	discardPoisoned
	discardClosed
	discardBusy
	discardMode
	discardConnection
	discardTx
	discardUnsettled
	discardConsuming
)

// newPool makes a pool of c's: it opens its channels on the Client's live
// connection, whichever that is, and its channel numbers are budgeted on
// the Client (see Client.fitPools).
func (c *Client) newPool(ctx context.Context, opts PoolOptions) (*Pool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("warren: pool: %w", err)
	}
	if opts.Size == 0 {
		opts.Size = defaultPoolSize
	}
	if opts.Headroom == 0 {
		opts.Headroom = defaultPoolHeadroom
	}
	switch {
	case opts.Size < 0 || opts.MinIdle < 0 || opts.Headroom < 0:
		return nil, fmt.Errorf("%w: pool: negative Size, MinIdle or Headroom", ErrInvalidArgument)
	case opts.MinIdle > opts.Size:
		return nil, fmt.Errorf("%w: pool: MinIdle %d exceeds Size %d", ErrInvalidArgument, opts.MinIdle, opts.Size)
	case opts.Mode != ModePlain && opts.Mode != ModeConfirm && opts.Mode != ModeTx:
		return nil, fmt.Errorf("%w: pool: unknown mode %s", ErrInvalidArgument, opts.Mode)
	}
	s, err := c.live(ctx)
	if err != nil {
		return nil, err
	}
	p := &Pool{client: c, opts: opts}
	p.core = chanpool.New(chanpool.Config[*channel]{
		Max:     opts.Size,
		Open:    p.open,
		Destroy: p.destroy,
		Drained: p.unregister,
	})

	c.poolMu.Lock()
	select {
	case <-c.closing:
		c.poolMu.Unlock()
		return nil, ErrClientClosed
	default:
	}
	if c.pooled+opts.Size+opts.Headroom > int(s.channelMax) {
		other := c.pooled
		c.poolMu.Unlock()
		return nil, fmt.Errorf("%w: pool: Size %d + Headroom %d + %d channels of other pools exceeds the negotiated channel_max %d (%w)",
			ErrInvalidArgument, opts.Size, opts.Headroom, other, s.channelMax, ErrChannelMax)
	}
	c.pooled += opts.Size
	c.pools = append(c.pools, p)
	c.poolMu.Unlock()

	if c.opts.reconnect == nil && s.isDead.Load() {
		p.fail(s.connError("pool.acquire"))
	}
	if opts.MinIdle > 0 {
		if err := p.core.Warm(ctx, opts.MinIdle); err != nil {
			_ = p.Close(context.Background())
			return nil, fmt.Errorf("warren: pool: opening %d channels: %w", opts.MinIdle, p.mapErr(err))
		}
	}
	return p, nil
}

// open opens one channel in the pool's mode.
func (p *Pool) open(ctx context.Context) (*channel, error) {
	s, err := p.live(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.openChannel(ctx)
	if err != nil {
		if errors.Is(err, ErrNotAllowed) && IsConnectionLevel(err) {
			p.keepBelowBrokerLimit(s, err)
		}
		return nil, err
	}
	if p.opts.Mode != ModePlain {
		if err := (Channel{s: st}).SetMode(ctx, p.opts.Mode); err != nil {
			_ = st.close(context.Background(), 0)
			return nil, err
		}
	}
	st.pool = p
	st.gen.Store(1) // generation 0 is for channels outside pools
	return st, nil
}

// keepBelowBrokerLimit makes the pool keep to the channels it had open when
// the broker refused one more by closing the connection for a limit (530
// NOT_ALLOWED: a per-node or per-user channel limit that channel_max does
// not show): on the next connection it opens no more than that, and its
// other Acquire calls wait for a release, instead of hitting the limit, and
// costing the connection, again and again.
func (p *Pool) keepBelowBrokerLimit(s *session, cause error) {
	n := 0 // the pool's channels the broker had accepted on s
	s.mu.Lock()
	for _, ch := range s.channels {
		if ch.pool == p {
			n++
		}
	}
	s.mu.Unlock()
	n = max(1, n)
	if n >= p.core.Stats().Max {
		return
	}
	p.core.Limit(n)
	p.client.opts.logger.Warn("warren: pool keeps below the broker's channel limit", "mode", p.opts.Mode.String(), "size", p.opts.Size, "limit", n, "err", cause)
}

// destroy closes a channel the pool no longer holds. It returns once the
// channel is closed, so that a replacement never makes the broker see more
// than Size pooled channels. (A channel the broker or the connection already
// closed, or that a poisoning already closes, costs no round-trip.)
func (p *Pool) destroy(st *channel) {
	gen := st.gen.Add(1) // any handle still out is now stale
	st.closeWhenIdle(gen)
}

// fail makes every current and later Acquire return err at once: the
// Client has ended, or the pool no longer fits its connection.
func (p *Pool) fail(err error) { p.core.Fail(err) }

// live returns the connection to open channels on: the Client's live one
// (after a reconnect in progress, bounded by ctx).
func (p *Pool) live(ctx context.Context) (*session, error) { return p.client.live(ctx) }

// sess returns the connection whose goroutines the pool's background work
// belongs to.
func (p *Pool) sess() *session { return p.client.s() }

// Acquire leases a channel: an idle one, a new one if fewer than Size are
// open, or else the next one released, waiting in arrival order until ctx
// ends. The lease holds until Release.
//
// When the connection has ended, Acquire returns its *ConnectionError at
// once; for a pool of a Client made WithReconnect it waits for the new
// connection instead, and opens the channel there. When ctx ends first, the
// context error is returned wrapped with the pool's state; a channel handed
// over at that moment goes back to the pool.
//
// A broker may limit channels below channel_max (a per-node or per-user
// limit) and refuse one more by closing the connection: 530 NOT_ALLOWED,
// returned to the Acquire that hit it as a *ConnectionError matching
// ErrNotAllowed. The pool then keeps to the channels it had open (Stats'
// Max says how many), and later Acquire calls wait for a release rather
// than cost the connection again.
//
// A leased channel never has a consumer running on it: Release closes a
// channel whose Channel.Consume subscription has not ended.
func (p *Pool) Acquire(ctx context.Context) (Channel, error) {
	if err := ctx.Err(); err != nil {
		return Channel{}, fmt.Errorf("warren: pool.acquire: %w", err) // as database/sql: even with a channel idle
	}
	hook := p.client.opts.metrics.PoolAcquired
	var start time.Time
	if hook != nil {
		start = time.Now()
	}
	for {
		st, err := p.core.Acquire(ctx)
		if err != nil {
			return Channel{}, p.mapErr(err)
		}
		if ch, ok := p.lease(st); ok {
			if hook != nil {
				hook(p.opts.Mode, time.Since(start))
			}
			return ch, nil
		}
	}
}

// TryAcquire leases a channel if one is idle or may be opened (bounded by
// ctx), and returns ErrPoolExhausted instead of waiting.
func (p *Pool) TryAcquire(ctx context.Context) (Channel, error) {
	if err := ctx.Err(); err != nil {
		return Channel{}, fmt.Errorf("warren: pool.acquire: %w", err)
	}
	for {
		st, err := p.core.TryAcquire(ctx)
		if err != nil {
			return Channel{}, p.mapErr(err)
		}
		if ch, ok := p.lease(st); ok {
			return ch, nil
		}
	}
}

// lease hands out st unless it died while idle.
func (p *Pool) lease(st *channel) (Channel, bool) {
	if reason, ok := st.reusable(p.opts.Mode); !ok {
		p.discards[reason].Add(1)
		p.drop(st)
		return Channel{}, false
	}
	// The generation moves on at Release, not here: one atomic RMW per
	// lease instead of two.
	return Channel{s: st, gen: st.gen.Load()}, true
}

// Release ends the lease of ch and returns the channel to the pool, or
// closes it if it is no longer fit to reuse. Release is idempotent, and
// releasing a handle whose lease already ended does nothing.
//
// A channel released with a Subscription (Channel.Consume) that has not
// ended — not cancelled, or its Deliveries not yet drained to the close —
// is closed, never leased again (counted in PoolStats.Discarded.Consuming):
// the broker requeues the consumer's unacknowledged messages and the
// stream ends with ErrChannelClosed. So is one holding deliveries, fetched
// or consumed, that were never settled (Discarded.Unsettled).
func (p *Pool) Release(ch Channel) {
	st := ch.s
	if st == nil || st.pool != p || !st.gen.CompareAndSwap(ch.gen, ch.gen+1) {
		return // not this pool's, or this lease already ended
	}
	reason, ok := st.reusable(p.opts.Mode)
	switch {
	case ok:
		p.core.Release(st)
	case reason == discardBusy:
		// Released mid-operation: the channel can only be closed once the
		// operation ends. Do that off the caller's path; the slot stays
		// taken (Open, InUse) until the channel is closed, so the pool
		// never exceeds Size channels on the broker.
		p.discards[discardBusy].Add(1)
		if !p.sess().goTracked(func() { p.drop(st) }) {
			p.drop(st)
		}
	default:
		// A channel the broker, the connection or a poisoning already
		// closed costs no round-trip; one that changed mode, or holds a
		// transaction or unsettled messages, costs a channel.close.
		p.discards[reason].Add(1)
		p.drop(st)
	}
}

// drop closes st and then frees its slot.
func (p *Pool) drop(st *channel) {
	p.core.Discard(st)
	p.keepWarm()
}

// keepWarm reopens channels in the background while fewer than MinIdle
// are open.
func (p *Pool) keepWarm() {
	if p.opts.MinIdle == 0 || p.closed.Load() || !p.warming.CompareAndSwap(false, true) {
		return
	}
	if !p.sess().goTracked(func() {
		defer p.warming.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), p.client.opts.closeTimeout)
		defer cancel()
		_ = p.core.Warm(ctx, p.opts.MinIdle)
	}) {
		p.warming.Store(false)
	}
}

// Do leases a channel, runs fn with it, and releases it, also when fn
// panics (the panic then continues). It returns fn's error, or the error
// that prevented the lease.
func (p *Pool) Do(ctx context.Context, fn func(Channel) error) error {
	ch, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	defer p.Release(ch)
	return fn(ch)
}

// mapErr turns the core's errors into warren's.
func (p *Pool) mapErr(err error) error {
	switch {
	case errors.Is(err, chanpool.ErrClosed):
		return ErrPoolClosed
	case errors.Is(err, chanpool.ErrExhausted):
		return ErrPoolExhausted
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		s := p.core.Stats()
		return fmt.Errorf("warren: pool acquire: %w (%d of %d channels leased, %d waiting)", err, s.InUse, s.Max, s.Waiting)
	}
	return err
}

// Stats returns a snapshot of the pool's gauges and counters.
func (p *Pool) Stats() PoolStats {
	s := p.core.Stats()
	return PoolStats{
		Mode:            p.opts.Mode,
		Max:             s.Max,
		Open:            s.Open,
		InUse:           s.InUse,
		Idle:            s.Idle,
		Waiting:         s.Waiting,
		WaitCount:       s.WaitCount,
		WaitDuration:    s.WaitDuration,
		AcquireTimeouts: s.AcquireTimeout,
		Opened:          s.Opened,
		Discarded: DiscardStats{
			BrokerClosed: p.discards[discardBrokerClosed].Load(),
			Poisoned:     p.discards[discardPoisoned].Load(),
			Closed:       p.discards[discardClosed].Load(),
			Busy:         p.discards[discardBusy].Load(),
			ModeChanged:  p.discards[discardMode].Load(),
			Connection:   p.discards[discardConnection].Load(),
			TxUnfinished: p.discards[discardTx].Load(),
			Unsettled:    p.discards[discardUnsettled].Load(),
			Consuming:    p.discards[discardConsuming].Load(),
		},
	}
}

// Close makes new Acquire calls fail with ErrPoolClosed, waits up to ctx
// for leased channels to be released, and closes the pool's channels. It
// returns nil once every channel is closed and its number given back to the
// client; if ctx ends first, it returns the context error (wrapped, with
// how many channels are still leased) and the pool goes on closing each
// channel as it is released.
//
// Close is idempotent and safe to call from any number of goroutines at
// once: every call waits for the same work and returns nil when it is done,
// or its own context error if its ctx ends first.
func (p *Pool) Close(ctx context.Context) error {
	if p == nil || p.core == nil {
		return fmt.Errorf("%w: Close of a Pool not made by Client.NewPool", ErrInvalidArgument)
	}
	p.closed.Store(true)
	if err := p.core.Close(ctx); err != nil {
		st := p.core.Stats()
		return fmt.Errorf("warren: pool close: %d channels still leased, %d still closing: %w", st.InUse, st.Open-st.InUse, err)
	}
	return nil
}

// unregister gives the pool's channel numbers back to the client. The core
// calls it once, when the closed pool's last channel is closed (before any
// Close returns nil), also when every Close gave up waiting.
func (p *Pool) unregister() {
	c := p.client
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	if i := slices.Index(c.pools, p); i >= 0 {
		c.pools = slices.Delete(c.pools, i, i+1)
		c.pooled -= p.opts.Size
	}
}

// failPools makes every pool's Acquire return err: the Client has ended.
func (c *Client) failPools(err error) {
	c.poolMu.Lock()
	pools := slices.Clone(c.pools)
	c.poolMu.Unlock()
	for _, p := range pools {
		p.fail(err)
	}
}

// fitPools checks the pools' channel numbers against the channel_max of a
// new connection, which may be lower than the last one's (another node, a
// changed configuration): pools that no longer fit, the later ones first, fail
// with an error saying so (and give their numbers back), instead of opening
// channels the broker would refuse by closing the connection.
func (c *Client) fitPools(s *session) {
	// The rule NewPool applied, applied again in creation order: each pool
	// fits when the pools before it, its Size and its Headroom fit.
	c.poolMu.Lock()
	var unfit []*Pool
	kept, total := c.pools[:0], 0
	for _, p := range c.pools {
		if total+p.opts.Size+p.opts.Headroom > int(s.channelMax) {
			unfit = append(unfit, p)
			continue
		}
		total += p.opts.Size
		kept = append(kept, p)
	}
	clear(c.pools[len(kept):])
	c.pools, c.pooled = kept, total
	others := c.pooled
	c.poolMu.Unlock()
	for _, p := range unfit {
		p.fail(fmt.Errorf("warren: pool of %d channels (+%d headroom) no longer fits the channel_max %d of the connection to %s, with %d channels of other pools: %w",
			p.opts.Size, p.opts.Headroom, s.channelMax, s.endpoint, others, ErrChannelMax))
	}
}

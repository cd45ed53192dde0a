package warren

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Client owns one AMQP connection at a time and the channels opened on it.
// With WithReconnect it dials a new connection when one is lost; without,
// a lost connection ends the Client.
//
// A Client is safe for concurrent use. Its Channels are not: each belongs to
// one goroutine at a time (see Channel). Close closes the connection and
// with it every channel, and returns once warren's goroutines have exited.
type Client struct {
	cur       atomic.Pointer[session] // the connection now (or the lost one, while reconnecting)
	endpoints []endpoint              // in the order they are tried (see DialCluster)
	next      int                     // index into endpoints of the next to dial; Dial, then the supervisor only
	opts      options
	events    *dispatcher // state callbacks, in order, on one goroutine; nil without a callback

	closing   chan struct{} // closed when Close begins: stops reconnecting
	closeOnce sync.Once
	done      chan struct{} // closed when the Client has ended: Close, or no more reconnecting
	endErr    atomic.Pointer[errBox]
	loopDone  chan struct{} // the supervisor goroutine has exited

	poolMu sync.Mutex // guards pools and pooled
	pools  []*Pool    // live pools, oldest first: failed together when the Client ends
	pooled int        // channel numbers reserved by pools (see fitPools)

	swapMu  sync.Mutex
	swapped chan struct{} // closed when the next connection is in place
	past    ClientStats   // the counters of the lost connections (under swapMu)

	// The Client's own goroutines, which outlive a connection (a
	// Publisher's workers): Close waits for them, bounded by its ctx.
	bgMu     sync.Mutex
	bgClosed bool // set by Close: no new goroutine may start
	bg       sync.WaitGroup
}

// goTracked runs fn on a goroutine that Close waits for; false, and fn not
// run, once Close has begun.
func (c *Client) goTracked(fn func()) bool {
	c.bgMu.Lock()
	if c.bgClosed {
		c.bgMu.Unlock()
		return false
	}
	select {
	case <-c.closing:
		c.bgMu.Unlock()
		return false
	default:
	}
	c.bg.Add(1)
	c.bgMu.Unlock()
	go func() {
		defer c.bg.Done()
		fn()
	}()
	return true
}

// waitTracked waits, bounded by ctx, for the goroutines of goTracked, which
// Close has stopped.
func (c *Client) waitTracked(ctx context.Context) error {
	c.bgMu.Lock()
	c.bgClosed = true
	c.bgMu.Unlock()
	done := make(chan struct{})
	go func() { c.bg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("warren: close: the Client's goroutines had not ended: %w", ctx.Err())
	}
}

// s returns the current session.
func (c *Client) s() *session { return c.cur.Load() }

// Dial opens one AMQP connection to rawURL (amqp:// or amqps://, see
// https://www.rabbitmq.com/uri-spec.html). ctx bounds the TCP connect, the
// TLS handshake and the whole AMQP handshake; it is not kept after Dial
// returns.
//
// The user and password in rawURL must be percent-encoded (url.UserPassword
// does it). A URL in which an '@' follows the host is refused: that is the
// shape of a user or password holding an unescaped '/', '?' or '#', which
// net/url would split into the port, vhost or query (an '@' in the vhost
// or a query parameter is written %40). Every problem with the URL, and
// WithTLS with an amqp:// URL, is found before anything is dialled and
// reported as an ErrInvalidArgument that says what is wrong in words of
// its own, quoting no part of the URL.
//
// No error, log record or printed value that warren makes holds the
// password: neither String nor fmt with any verb (%#v included) of a
// Client, by pointer or by value, or of any other warren value shows it;
// Endpoint gives the URL without it. A refused login is a
// *ConnectionError with errors.Is(err, ErrAccessRefused).
func Dial(ctx context.Context, rawURL string, opts ...Option) (*Client, error) {
	o, err := parseOptions(opts)
	if err != nil {
		return nil, err
	}
	return dialClient(ctx, []string{rawURL}, o)
}

// endpoint is one URL a Client dials, held where fmt cannot print it: the
// URL may hold a password. fmt prints a Client by reflection for %#v
// (which does not call String) and for any verb on a dereferenced *Client,
// and then shows every string it reaches, even one inside a struct behind
// a pointer (a verb that does not fit a pointer, such as %s, makes fmt
// print the struct it points to). It prints a func as an address whatever
// the verb, so the URL lives in a closure.
type endpoint struct {
	url func() string
}

func newEndpoint(rawURL string) endpoint {
	return endpoint{url: func() string { return rawURL }}
}

// dialClient makes a Client for urls, tried in the order given.
func dialClient(ctx context.Context, urls []string, o options) (*Client, error) {
	o.counters = new(counters)
	endpoints := make([]endpoint, len(urls))
	for i, u := range urls {
		endpoints[i] = newEndpoint(u)
	}
	c := &Client{endpoints: endpoints, opts: o, closing: make(chan struct{}), done: make(chan struct{}),
		loopDone: make(chan struct{}), swapped: make(chan struct{})}
	var per time.Duration // one endpoint: ctx alone bounds the dial
	if len(endpoints) > 1 {
		per = defaultDialTimeout
		if o.reconnect != nil {
			per = o.reconnect.DialTimeout
		}
	}
	s, err := c.dialRound(ctx, per)
	if err != nil {
		return nil, err
	}
	c.cur.Store(s)
	if err := c.declareTopology(s); err != nil {
		_ = s.Close(ctx)
		return nil, err
	}
	if o.onState != nil {
		c.events = newDispatcher(o.onState)
	}
	c.emit(StateEvent{State: StateConnected, Endpoint: s.endpoint})
	go c.supervise()
	return c, nil
}

// String describes the client without credentials.
func (c *Client) String() string {
	return c.s().String()
}

// ChannelMax returns the channel_max negotiated with the broker: the highest
// channel number this connection may use.
func (c *Client) ChannelMax() uint16 {
	return c.s().ChannelMax()
}

// Blocked reports whether the broker has blocked this connection's
// publishers (connection.blocked: a memory or disk alarm). It is
// Stats().Blocked at the cost of one atomic load, for a publishing hot path
// that wants to shed load before it waits.
func (c *Client) Blocked() bool {
	return c.s().Blocked()
}

// Err returns nil while the connection is open, the *ConnectionError that
// ended it, or ErrClientClosed after Close.
func (c *Client) Err() error {
	return c.s().Err()
}

// Done returns a channel that is closed when the Client has ended: by
// Close, by the loss of its connection when it does not reconnect, or when
// reconnecting gives up. Err then says why.
func (c *Client) Done() <-chan struct{} {
	return c.done
}

// Channel opens a new channel in plain mode. Channel numbers are handed out
// sequentially from 1; ch.ID() is the number the broker sees. When
// ChannelMax channels are open it returns a *ChannelMaxError (errors.Is
// ErrChannelMax) and the connection is unaffected.
//
// With WithReconnect, Channel during a reconnect waits for the new
// connection (bounded by ctx) and opens the channel there.
func (c *Client) Channel(ctx context.Context) (Channel, error) {
	var ch Channel
	err := c.onLive(ctx, func(s *session) (err error) {
		ch, err = s.Channel(ctx)
		return err
	})
	return ch, err
}

// onLive runs open, which opens something on a connection, on the live
// one. With WithReconnect, when open fails because that connection went
// down under it, it runs again on the next connection (bounded by ctx).
func (c *Client) onLive(ctx context.Context, open func(*session) error) error {
	for {
		s, err := c.live(ctx)
		if err != nil {
			return err
		}
		err = open(s)
		if err == nil || ctx.Err() != nil || c.opts.reconnect == nil || !IsConnectionLevel(err) {
			return err
		}
		select {
		case <-s.dead:
		case <-ctx.Done():
			return err
		}
	}
}

// OpenChannels returns how many channels warren has open on the connection:
// Stats().OpenChannels without the rest of the snapshot.
func (c *Client) OpenChannels() int {
	return c.s().OpenChannels()
}

// Close closes the connection, and with it every channel, and waits for
// warren's goroutines to exit. It is bounded by ctx, or by the close timeout
// (WithCloseTimeout, default 10 s) when ctx has no deadline; when the
// broker does not answer in time the socket is closed anyway.
//
// Close is idempotent: every call returns the first call's result, which is
// nil for a clean close or the *ConnectionError that had already ended the
// connection.
func (c *Client) Close(ctx context.Context) error {
	c.closeOnce.Do(func() { close(c.closing) })
	// The supervisor stops at once (a dial in progress is cancelled), so
	// the session closed below is the last one.
	<-c.loopDone
	s := c.s()
	err := s.Close(ctx)
	if werr := c.waitTracked(ctx); werr != nil && err == nil {
		err = werr
	}
	select {
	case <-s.closeDone:
		c.finish(nil)
	default:
		// This caller's ctx ended while another Close is still closing
		// the connection: that Close ends the Client.
		return err
	}
	if c.events != nil {
		select {
		case <-c.events.done: // StateClosed delivered
		case <-ctx.Done():
		}
	}
	return err
}

// Stats returns a snapshot of the client's gauges (of the connection in
// use) and counters (added up over every connection the Client has had).
func (c *Client) Stats() ClientStats {
	c.swapMu.Lock()
	s, past := c.s(), c.past
	c.swapMu.Unlock()
	st := s.Stats()
	st.addWire(past)
	st.Reconnects = past.Reconnects
	return st
}

// NewPool makes a pool of channels on c. It opens opts.MinIdle channels
// before returning (bounded by ctx). A size that cannot fit in the
// negotiated channel_max, beside the Client's other pools (see
// PoolOptions.Size), is refused with an error that says why and matches
// both ErrInvalidArgument and ErrChannelMax.
func (c *Client) NewPool(ctx context.Context, opts PoolOptions) (*Pool, error) {
	return c.newPool(ctx, opts)
}

// NewPublisher makes a Publisher on c and opens its channels (bounded by
// ctx).
func (c *Client) NewPublisher(ctx context.Context, opts PublisherOptions) (*Publisher, error) {
	return c.newPublisher(ctx, opts)
}

// Consume consumes queue on a channel of its own, running h for each
// delivery on opts.Workers goroutines, until ctx ends or the consumer
// cannot go on. It returns:
//
//   - when ctx ends: no new deliveries are taken (basic.cancel), in-flight
//     handlers finish (bounded by ShutdownTimeout), their messages are acked
//     or nacked, everything unstarted returns to the queue; the error wraps
//     ctx.Err() (and ErrShutdownTimeout if handlers were still running);
//   - ErrConsumerCancelled (wrapped) when the broker cancelled the consumer;
//   - an error matching ErrAckTimeout when the broker gave up waiting for
//     an ack (see ErrAckTimeout for its two shapes);
//   - the typed cause (*ChannelError, *ConnectionError) when the channel or
//     connection closed under it; unacked messages return to the queue;
//   - the typed error of basic.qos or basic.consume if consuming could not
//     start (e.g. ErrNotFound for a missing queue).
//
// Acks, nacks and rejects from the workers are serialised on the channel;
// a second settlement of one delivery is refused (ErrAlreadySettled, or
// ErrConcurrentUse while the first is still being sent).
//
// With WithReconnect, a consumer whose connection is lost subscribes again
// on the next connection (its unacked messages were returned to the queue
// by the broker and are delivered again, Redelivered set), until ctx ends or
// the Client does. So does a consumer the broker gave up on for an ack
// timeout (ErrAckTimeout: AckTimeout or the broker's consumer_timeout),
// at once on the same connection; without WithReconnect, Consume returns
// that error.
func (c *Client) Consume(ctx context.Context, queue string, h Handler, opts ConsumeOptions) (err error) {
	defer func() {
		if cerr := ctx.Err(); cerr != nil && err != nil && !errors.Is(err, cerr) {
			// ctx ended as the subscription was lost: the documented
			// result of a ctx that ends is its error.
			err = fmt.Errorf("warren: consume %q: stopped: %w (the subscription had ended: %w)", queue, cerr, err)
		}
	}()
	if h == nil {
		return fmt.Errorf("%w: basic.consume: nil handler", ErrInvalidArgument)
	}
	// One implementation: a Consumer whose stop is ctx's end, and which
	// ends at a broker's basic.cancel (see Consumer.resubscribeOnCancel).
	k, err := c.startConsumer(ctx, queue, opts, false, func(k *Consumer) { k.h = h })
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { k.stop(ctx.Err()) })
	defer stop()
	<-k.done
	return k.err
}

// Begin starts a transaction on a new channel of its own, closed when the
// transaction ends (which also returns any message the transaction fetched
// but did not ack to its queue). For many short transactions, a Pool with
// Mode ModeTx reuses channels (Pool.Begin).
func (c *Client) Begin(ctx context.Context) (*Tx, error) {
	var tx *Tx
	err := c.onLive(ctx, func(s *session) (err error) {
		tx, err = s.Begin(ctx)
		return err
	})
	return tx, err
}

// Tx runs fn in a transaction on a new channel: it commits when fn returns
// nil, and rolls back when fn returns an error or panics (the panic then
// continues). It returns fn's error, or Commit's.
func (c *Client) Tx(ctx context.Context, fn func(*Tx) error) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	return tx.run(ctx, fn)
}

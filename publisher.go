package warren

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren/internal/wire"
)

// PublisherOptions configure a Publisher. The zero value is up to 4
// channels with a window of 256 unconfirmed messages each.
type PublisherOptions struct {
	// Channels is how many confirm channels the publisher pipelines over,
	// each driven by one goroutine (default 4). They are filled in order:
	// the first takes every message while it keeps up, and the others
	// share what it cannot take at once, so a few callers batch on one
	// channel and many spread over all. They are leased from a pool of the
	// publisher's own, counted against channel_max.
	Channels int
	// Window is the most messages a channel may have published and not yet
	// confirmed (default 256). A full window makes the next publish on that
	// channel wait for an answer: memory stays bounded while the broker is
	// slow.
	Window int
	// RepublishUnknown makes a publish whose outcome became unknown
	// because its channel or connection was lost publish the message
	// again (on a new channel, after a reconnect with WithReconnect), until
	// the broker answers or the caller's ctx ends: at-least-once. The
	// broker may then hold the message twice; consumers must tolerate
	// duplicates (PublisherStats.Republished counts the second sends). An
	// unknown outcome because the caller's own ctx ended is not retried.
	RepublishUnknown bool
	// Headroom is passed to the publisher's pool (see PoolOptions).
	Headroom int
}

const (
	defaultPublisherChannels = 4
	defaultPublisherWindow   = 256
)

// PublisherStats counts a Publisher's outcomes since it was made.
type PublisherStats struct {
	Acked        int64 // broker acked (Publish returned nil)
	Nacked       int64 // broker nacked (ErrNacked)
	Unroutable   int64 // mandatory and returned (ErrUnroutable)
	Unknown      int64 // outcome unknown (ErrOutcomeUnknown)
	NotPublished int64 // failed before anything was sent (bad argument, closed, ctx)
	Republished  int64 // sent again after an unknown outcome (RepublishUnknown)
	Renewed      int64 // channels replaced after a run of nacks (see Publisher)
	Pending      int   // Publish calls waiting now
}

// Publisher publishes with confirms from any number of goroutines: Publish
// returns once the broker has answered for that message. Internally the
// publishes are pipelined over a few confirm channels, each driven by one
// goroutine with a bounded window of unconfirmed messages, so many callers
// share a few round-trips instead of paying one each.
//
// Outcomes are those of a Confirmation: nil only for an ack, *NackedError,
// *UnroutableError for a mandatory message that came back, and
// *OutcomeUnknownError when the channel or connection died (or the caller's
// ctx ended) after the message was sent. Any other error means the message
// was not published.
//
// A channel on which the broker has nacked 32 publishes in a row is
// replaced by a new one (at most once a second, PublisherStats.Renewed):
// RabbitMQ 3.10 can leave a channel that began publishing to a quorum queue
// during a leader election nacking every later publish to that queue, while
// a new channel's are acked.
//
// The channels are shared by every caller: a message the broker answers by
// closing its channel (a missing exchange, 404; an Expiration or user id it
// refuses, 406) makes the other messages in flight on that channel
// outcome unknown too (ErrOutcomeUnknown, wrapping that close). Declare
// the exchanges a Publisher sends to beforehand.
//
// A message is never published twice, unless
// PublisherOptions.RepublishUnknown asks for it: a publish that could not
// be sent because its channel had died is retried once on a fresh channel,
// one that was sent is not (with RepublishUnknown, one whose outcome is
// unknown is sent again, and may then arrive twice).
type Publisher struct {
	client *Client
	opts   PublisherOptions
	pool   *Pool

	queue   chan *pubReq  // the first channel's requests
	spill   chan *pubReq  // the other channels' requests: used once the first is saturated
	closing chan struct{} // closed when no new requests are taken
	abort   chan struct{} // closed when Close's ctx ended: give up on confirms
	once    sync.Once
	mu      sync.RWMutex // held shared while sending on queue; exclusively to close it
	closed  bool

	workers     atomic.Int32  // worker goroutines not yet ended
	workersDone chan struct{} // closed when the last worker ends

	closeStarted atomic.Bool   // set by the first Close
	closeDone    chan struct{} // closed when the first Close has finished
	closeErr     error         // the first Close's result, written before closeDone is closed

	pending                                                                atomic.Int64
	acked, nacked, unroutable, unknown, notPublished, republished, renewed atomic.Int64
}

// pubReq is one Publish call on its way through a worker.
type pubReq struct {
	ctx   context.Context
	m     Message
	state atomic.Int32  // reqQueued, reqTaken, reqCancelled
	conf  Confirmation  // conf.err is the outcome, also "not published" (never sent)
	done  chan struct{} // a buffer of one: signalled once conf.err is final
	w     *pubWorker    // the worker whose window r holds a slot of, while it does
}

// receive is told r's outcome by the tracker: it ends r's run in the
// worker's window (counting a nack towards a channel renewal) and signals
// r's caller.
func (r *pubReq) receive(err error) {
	if w := r.w; w != nil {
		switch err.(type) {
		case nil:
			w.nacks.Store(0)
		case *NackedError: // as the tracker resolves a nack: not wrapped
			w.nacks.Add(1)
		}
		<-w.slots
	}
	r.done <- struct{}{}
}

const (
	reqQueued int32 = iota
	reqTaken
	reqCancelled
	reqDone // the worker has finished with the request
)

// newPublisher makes a Publisher of c's: its channels open on the Client's
// live connection, whichever that is.
func (c *Client) newPublisher(ctx context.Context, opts PublisherOptions) (*Publisher, error) {
	if opts.Channels == 0 {
		opts.Channels = defaultPublisherChannels
	}
	if opts.Window == 0 {
		opts.Window = defaultPublisherWindow
	}
	if opts.Channels < 0 || opts.Window < 0 {
		return nil, fmt.Errorf("%w: publisher: negative Channels or Window", ErrInvalidArgument)
	}
	pool, err := c.newPool(ctx, PoolOptions{Size: opts.Channels, MinIdle: opts.Channels, Mode: ModeConfirm, Headroom: opts.Headroom})
	if err != nil {
		return nil, fmt.Errorf("warren: publisher: %w", err)
	}
	p := &Publisher{
		client:  c,
		opts:    opts,
		pool:    pool,
		queue:   make(chan *pubReq, opts.Window),
		closing: make(chan struct{}),
		abort:   make(chan struct{}),

		workersDone: make(chan struct{}),
		closeDone:   make(chan struct{}),
	}
	if opts.Channels > 1 {
		p.spill = make(chan *pubReq, (opts.Channels-1)*opts.Window)
	}
	p.workers.Store(int32(opts.Channels))
	for i := 0; i < opts.Channels; i++ {
		q := p.queue
		if i > 0 {
			q = p.spill
		}
		if !p.client.goTracked(func() { p.work(q) }) {
			p.workersEnded(int32(opts.Channels - i)) // this one and the ones never started
			p.shutdown()
			_ = pool.Close(context.Background())
			return nil, ErrClientClosed
		}
	}
	return p, nil
}

// Publish publishes msg to exchange with routing key key and returns once the
// broker has answered; see Publisher for the outcomes.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg Publishing) error {
	return p.PublishMessage(ctx, Message{Exchange: exchange, Key: key, Publishing: msg})
}

// PublishMessage publishes m and returns once the broker has answered.
func (p *Publisher) PublishMessage(ctx context.Context, m Message) (err error) {
	if t := p.client.opts.tracer; t != nil {
		span := t.publisherMessage(ctx, p.client.s(), &m)
		defer func() { span.finish(err) }()
	}
	for {
		r, err := p.submit(ctx, &m)
		if err != nil {
			p.notPublished.Add(1)
			return err
		}
		err = p.wait(ctx, r)
		if !p.republish(ctx, err) {
			return err
		}
	}
}

// republish reports whether a publish that ended with err is sent again:
// RepublishUnknown is set, the outcome is unknown because the channel or
// connection was lost (not because ctx ended), and ctx still allows it.
func (p *Publisher) republish(ctx context.Context, err error) bool {
	if !p.opts.RepublishUnknown || !errors.Is(err, ErrOutcomeUnknown) || ctx.Err() != nil ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	p.republished.Add(1)
	return true
}

// PublishBatch publishes msgs, pipelined, and returns one outcome per
// message in input order, once every message has been answered.
func (p *Publisher) PublishBatch(ctx context.Context, msgs []Message) []error {
	errs := make([]error, len(msgs))
	if t := p.client.opts.tracer; t != nil {
		var spans []*pubSpan
		msgs, spans = p.traceMessages(ctx, t, msgs)
		defer endSpans(spans, errs)
	}
	reqs := make([]*pubReq, len(msgs))
	for i := range msgs {
		reqs[i], errs[i] = p.submit(ctx, &msgs[i])
		if errs[i] != nil {
			p.notPublished.Add(1)
		}
	}
	for i, r := range reqs {
		if r != nil {
			errs[i] = p.wait(ctx, r)
			for p.republish(ctx, errs[i]) {
				if r, errs[i] = p.submit(ctx, &msgs[i]); errs[i] == nil {
					errs[i] = p.wait(ctx, r)
				}
			}
		}
	}
	return errs
}

// submit checks m and hands it to a worker.
func (p *Publisher) submit(ctx context.Context, m *Message) (*pubReq, error) {
	const op = "publisher.publish"
	if err := checkMessage(op, m); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("warren: %s: not published: %w", op, err)
	}
	if p.client.opts.reconnect == nil {
		if s := p.client.s(); s.isDead.Load() {
			return nil, s.connError(op)
		}
	}
	r := reqPool.Get().(*pubReq)
	r.ctx, r.m = ctx, *m
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		r.recycle()
		return nil, ErrPublisherClosed
	}
	// Fill first: the first channel takes every message while it keeps up
	// (its queue has room); the others share the overflow. A few callers
	// thus batch on one channel, many spread over all of them.
	select {
	case p.queue <- r:
		p.pending.Add(1)
		return r, nil
	default:
	}
	select {
	case p.queue <- r:
		p.pending.Add(1)
		return r, nil
	case p.spill <- r: // nil, never ready, with one channel
		p.pending.Add(1)
		return r, nil
	case <-p.closing:
		r.recycle()
		return nil, ErrPublisherClosed
	case <-ctx.Done():
		r.recycle()
		return nil, fmt.Errorf("warren: %s: not published: %w", op, ctx.Err())
	}
}

// reqPool recycles requests, with their signal channels, once their callers
// have received the outcome: the worker and the tracker are done with a
// request before they signal it.
var reqPool = sync.Pool{New: func() any {
	r := &pubReq{done: make(chan struct{}, 1)}
	r.conf.to = r
	return r
}}

// recycle clears r and returns it to the pool. Only a request that was
// never queued, or whose outcome was received after its worker was done
// with it (state reqDone), may be recycled.
func (r *pubReq) recycle() {
	done := r.done
	*r = pubReq{done: done}
	r.conf.to = r
	reqPool.Put(r)
}

// wait waits for r's outcome and counts it.
func (p *Publisher) wait(ctx context.Context, r *pubReq) error {
	defer p.pending.Add(-1)
	var err error
	select {
	case <-r.done:
		err = r.conf.err
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqQueued, reqCancelled) {
			// The worker will skip r; it still holds it, so r is left to
			// the garbage collector rather than recycled.
			p.notPublished.Add(1)
			return fmt.Errorf("warren: publisher.publish: not published: %w", ctx.Err())
		}
		select {
		case <-r.done:
			err = r.conf.err
		default:
			// Sent or being sent; the worker still owns r, so its tag
			// and channel are not read here.
			p.unknown.Add(1)
			return &OutcomeUnknownError{Op: "publish", Cause: ctx.Err()}
		}
	}
	if r.state.Load() == reqDone {
		r.recycle()
	}
	switch {
	case err == nil:
		p.acked.Add(1)
	case errors.Is(err, ErrOutcomeUnknown):
		p.unknown.Add(1)
	case errors.Is(err, ErrNacked):
		p.nacked.Add(1)
	case errors.Is(err, ErrUnroutable):
		p.unroutable.Add(1)
	default:
		p.notPublished.Add(1)
	}
	return err
}

// fail resolves a request that was not published.
func (r *pubReq) fail(err error) {
	r.conf.err = err
	r.done <- struct{}{}
}

// pubWorker is the state of one worker goroutine: its channel, and the
// window of messages sent on it and not yet answered.
type pubWorker struct {
	p      *Publisher
	ch     Channel
	slots  chan struct{} // one token per unanswered message; the tracker takes them back
	corked *wire.Conn    // the wire holding back this worker's burst, if any
	nacks  atomic.Int32  // nacks in a row on ch (reset by an ack)
	since  time.Time     // when ch was leased
}

// A channel whose last nackRun confirms were all nacks is replaced by a new
// one, at most once per renewEvery. RabbitMQ 3.10 can leave a channel that
// began publishing to a quorum queue during a leader election nacking
// every later publish to it, while a new channel's are acked
// (integration/cluster_test.go found it: a killed node); under legitimate
// nacks (a full queue with reject-publish) the new channel is nacked too
// and costs one channel.open a second.
const (
	nackRun    = 32
	renewEvery = time.Second
	// renewWait bounds the wait for a renewed channel's last answers;
	// those still missing then resolve outcome unknown.
	renewWait = 5 * time.Second
)

// work drives one channel: it takes requests in arrival order, publishes
// them while the window has room, and leaves the answers to the channel's
// tracker. Requests already queued behind the first are published as one
// burst: one socket write for all of them.
func (p *Publisher) work(queue chan *pubReq) {
	defer p.workersEnded(1)
	w := &pubWorker{p: p, slots: make(chan struct{}, p.opts.Window)}
	// The Client's end (without WithReconnect, its connection's), or its
	// Close beginning: Close waits for this goroutine before the Client
	// is done.
	closing, done := p.client.closing, p.client.done
	for {
		var r *pubReq
		select {
		case r = <-queue:
		case <-closing:
		case <-done:
		}
		if r == nil && (closing != nil && isClosed(closing) || done != nil && isClosed(done)) {
			// Take no more requests and fail the queued ones (Acquire
			// returns the connection's error).
			closing, done = nil, nil
			p.shutdown()
			continue
		}
		if r == nil {
			break // queue closed and drained
		}
		if len(queue) == 0 {
			// Callers woken by the same multiple ack are about to queue
			// their next messages: let them, and send all in one write.
			runtime.Gosched()
		}
		if len(queue) > 0 {
			w.cork()
		}
		w.take(r)
		n := 1
		for round := 0; round < 4 && n < cap(w.slots); round++ {
			took := 0
			for ; n < cap(w.slots); n++ {
				var more *pubReq
				select {
				case more = <-queue:
				default:
				}
				if more == nil {
					break // none queued, or the queue is closed: the outer loop sees which
				}
				w.cork()
				w.take(more)
				took++
			}
			if took == 0 {
				break
			}
			runtime.Gosched() // more callers may be waking: let them queue
		}
		w.uncork()
	}
	// Wait until every message this worker sent has been answered: the
	// window's tokens all come back.
	for i := 0; i < cap(w.slots); i++ {
		select {
		case w.slots <- struct{}{}:
		case <-p.abort:
			if w.ch.s != nil {
				// Close gave up waiting: closing the channel resolves
				// what is left as outcome unknown.
				_ = w.ch.Close(context.Background())
			}
			w.slots <- struct{}{}
		}
	}
	if w.ch.s != nil {
		p.pool.Release(w.ch)
	}
}

func (w *pubWorker) cork() {
	if w.corked == nil && w.ch.s != nil {
		w.corked = w.ch.s.cork()
	}
}

// uncork writes the burst held back so far. It must precede anything that
// waits: a reply, a window token, or another goroutine.
func (w *pubWorker) uncork() {
	if w.corked != nil {
		_ = w.corked.Uncork() // a failed write fails the connection, and with it the burst's confirms
		w.corked = nil
	}
}

// take publishes r unless its caller has given up.
func (w *pubWorker) take(r *pubReq) {
	s := w.p.pool.sess()
	if w.ch.s != nil {
		s = w.ch.s.c
	}
	if s.paused(w.ch.s) {
		// The broker has paused publishing: let the burst out, then wait
		// (bounded by the caller's ctx) before the request counts as taken,
		// so that a caller who gives up meanwhile knows it was not sent.
		w.uncork()
		wctx, done := w.p.abortable(r.ctx)
		err := s.waitPublish(wctx, w.ch.s, "publisher.publish")
		done()
		if err != nil {
			if r.state.CompareAndSwap(reqQueued, reqTaken) {
				r.fail(err)
				r.state.Store(reqDone)
			}
			return
		}
	}
	if r.state.CompareAndSwap(reqQueued, reqTaken) {
		w.publish(r)
		// The broker's answer may have reached the caller already; this
		// store tells it the worker is done with r, so r may be recycled.
		r.state.Store(reqDone)
	}
}

// publish sends r on the worker's channel, replacing a dead channel once.
func (w *pubWorker) publish(r *pubReq) {
	const op = "basic.publish"
	p := w.p
	for attempt := 0; ; attempt++ {
		if w.ch.s != nil && w.nacks.Load() >= nackRun && time.Since(w.since) >= renewEvery {
			w.renew()
		}
		if w.ch.s == nil {
			w.uncork() // channel.open is an RPC
			actx, done := p.abortable(r.ctx)
			c, err := p.pool.Acquire(actx)
			done()
			if err != nil {
				r.fail(err)
				return
			}
			w.ch = c
			w.nacks.Store(0)
			w.since = time.Now()
		}
		select {
		case w.slots <- struct{}{}:
		default:
			w.uncork() // the window is full: let the burst out, then wait
			select {
			case w.slots <- struct{}{}:
			case <-r.ctx.Done():
				r.fail(fmt.Errorf("warren: publisher.publish: not published: %w", r.ctx.Err()))
				return
			case <-p.abort:
				r.fail(fmt.Errorf("warren: publisher.publish: not published: %w", ErrPublisherClosed))
				return
			}
		}
		r.w = w
		ch := w.ch
		err := ch.publishTracked(op, &r.m, &r.conf)
		if err == nil {
			return // the tracker resolves r
		}
		r.w = nil
		<-w.slots
		w.uncork()
		if ch.Err() != nil {
			// The channel died before this message went out: it was
			// not sent. Give the channel back (the pool discards it).
			p.pool.Release(ch)
			w.ch = Channel{}
			// Not sent: retry on a fresh channel, once; with a
			// reconnecting client also after a connection loss (the
			// pool waits for the new connection, bounded by r.ctx).
			if attempt == 0 && (!IsConnectionLevel(err) || p.client.opts.reconnect != nil) {
				continue
			}
		}
		r.fail(err)
		return
	}
}

// renew gives up the worker's channel after a run of nacks: it waits
// (bounded by renewWait and Close, never by one caller's ctx: the answers
// due are other callers' too) for the answers still due on it, closes it,
// and leaves the worker to lease a new one.
func (w *pubWorker) renew() {
	w.uncork()
	t := time.NewTimer(renewWait)
	defer t.Stop()
	held := 0 // window tokens taken: all of them once every answer is in
wait:
	for ; held < cap(w.slots); held++ {
		select {
		case w.slots <- struct{}{}:
		case <-t.C:
			break wait
		case <-w.p.abort:
			break wait
		}
	}
	_ = w.ch.Close(context.Background()) // answers still missing: outcome unknown
	w.p.pool.Release(w.ch)
	w.ch = Channel{}
	w.p.renewed.Add(1)
	for ; held > 0; held-- {
		<-w.slots
	}
}

// abortable returns ctx, also cancelled if Close gives up waiting (for the
// rare waits a worker does on a caller's ctx: a blocked broker, a channel
// being opened).
func (p *Publisher) abortable(ctx context.Context) (context.Context, func()) {
	actx, cancel := context.WithCancel(ctx)
	stop := make(chan struct{})
	go func() {
		select {
		case <-p.abort:
			cancel()
		case <-stop:
		}
	}()
	return actx, func() { close(stop); cancel() }
}

// shutdown stops taking requests; the workers publish what is queued.
func (p *Publisher) shutdown() {
	p.once.Do(func() {
		close(p.closing)
		p.mu.Lock()
		p.closed = true
		close(p.queue)
		if p.spill != nil {
			close(p.spill)
		}
		p.mu.Unlock()
	})
}

// workersEnded counts n workers out; the last one closes workersDone.
func (p *Publisher) workersEnded(n int32) {
	if p.workers.Add(-n) == 0 {
		close(p.workersDone)
	}
}

// Close stops taking new messages, publishes the ones already queued, waits
// until every sent message has been answered, and closes the publisher's
// channels. If ctx ends first, the channels are closed at once and the
// unanswered messages resolve as outcome unknown; Close then returns the
// context error.
//
// Close is idempotent and safe to call from any number of goroutines at
// once: the first call closes the publisher, bounded by its ctx, and every
// call returns the first call's result. A call whose ctx ends while that
// close is still in progress returns its own context error; the close goes
// on, bounded by the first call's ctx.
func (p *Publisher) Close(ctx context.Context) error {
	if p == nil || p.pool == nil {
		return fmt.Errorf("%w: Close of a Publisher not made by Client.NewPublisher", ErrInvalidArgument)
	}
	if !p.closeStarted.CompareAndSwap(false, true) {
		select {
		case <-p.closeDone:
		default:
			select {
			case <-p.closeDone:
			case <-ctx.Done():
				return fmt.Errorf("warren: publisher close: waiting for the close in progress: %w", ctx.Err())
			}
		}
		return p.closeErr
	}
	p.closeErr = p.close(ctx)
	close(p.closeDone)
	return p.closeErr
}

// close is the first Close's work.
func (p *Publisher) close(ctx context.Context) error {
	p.shutdown()
	var err error
	select {
	case <-p.workersDone:
	case <-ctx.Done():
		err = fmt.Errorf("warren: publisher close: unanswered messages resolved as outcome unknown: %w", ctx.Err())
		close(p.abort)
		// A worker stuck in a socket write (a blocked broker) ends with
		// the connection; do not wait for it longer than a close may take.
		t := time.NewTimer(p.client.opts.closeTimeout)
		defer t.Stop()
		select {
		case <-p.workersDone:
		case <-t.C:
			// Close the pool once the workers have released their
			// channels. If the client is closing, the channels end with
			// its connection.
			pool := p.pool
			p.client.goTracked(func() {
				<-p.workersDone
				_ = pool.Close(context.Background())
			})
			return err
		}
	}
	// The pool's close is bounded by the same ctx; channels still closing
	// when it ends finish in the background.
	if perr := p.pool.Close(ctx); perr != nil && err == nil {
		err = perr
	}
	return err
}

// Stats returns the publisher's counters.
func (p *Publisher) Stats() PublisherStats {
	return PublisherStats{
		Acked:        p.acked.Load(),
		Nacked:       p.nacked.Load(),
		Unroutable:   p.unroutable.Load(),
		Unknown:      p.unknown.Load(),
		NotPublished: p.notPublished.Load(),
		Republished:  p.republished.Load(),
		Renewed:      p.renewed.Load(),
		Pending:      int(p.pending.Load()),
	}
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

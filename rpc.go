package warren

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DirectReplyTo is RabbitMQ's direct reply-to pseudo-queue: a request
// published with ReplyTo set to it on a channel that consumes it (with
// auto-ack) gets its reply straight back on that channel, through no queue.
// See https://www.rabbitmq.com/docs/direct-reply-to.
const DirectReplyTo = "amq.rabbitmq.reply-to"

// RPCErrorHeader is the header with which Serve reports a handler's error
// (or panic) to the caller: its value is the error's text. An RPCClient's
// Call returns a reply carrying it as a *RemoteError.
const RPCErrorHeader = "x-warren-error"

// ErrRPCClientClosed is returned by an RPCClient's Call after Close, and by
// the calls Close interrupted.
var ErrRPCClientClosed = errors.New("warren: rpc client closed")

// RemoteError is returned by RPCClient.Call when the server answered with
// an error instead of a result: Serve's handler returned an error or
// panicked (the reply carries RPCErrorHeader). The request was acked by the
// server: it is not delivered again.
type RemoteError struct {
	Message string    // the server's error text (RPCErrorHeader)
	Reply   *Delivery // the reply as received
}

func (e *RemoteError) Error() string {
	return "warren: rpc: the server's handler failed: " + e.Message
}

// RPCOptions configure an RPCClient. The zero value multiplexes every call
// over one channel.
type RPCOptions struct {
	// Channels is how many channels the client spreads calls over, each
	// with its own reply consumer (default 1). One channel carries
	// thousands of calls at once; more channels only add throughput when
	// one channel's publishes are the bottleneck.
	Channels int
}

// RPCStats counts an RPCClient's calls and replies since it was made.
type RPCStats struct {
	Calls          int64 // Call invocations that passed the argument checks while the client was open
	Replies        int64 // replies handed to their caller (RemoteErrors included)
	RemoteErrors   int64 // replies that carried RPCErrorHeader (*RemoteError)
	Unroutable     int64 // calls whose request came back unroutable (ErrUnroutable)
	TimedOut       int64 // calls whose ctx ended (deadline or cancel) before the reply
	Failed         int64 // calls that failed otherwise: publish refused or failed, channel or connection lost, Close
	LateReplies    int64 // replies for calls that had already ended (timed out, failed, or answered): dropped
	UnknownReplies int64 // replies with a correlation id this client never issued: dropped
	InFlight       int   // calls waiting for their reply now
}

// RPCClient makes request/reply calls over RabbitMQ's direct reply-to
// (DirectReplyTo). Each of its channels has one reply consumer (auto-ack,
// as direct reply-to requires) and carries the requests whose replies it
// expects; any number of concurrent calls are multiplexed over them, each
// matched to its reply by a correlation id the client generates.
//
// Requests are published mandatory: a request no queue takes (an unbound
// routing key, a missing server queue) comes back on basic.return and its
// Call fails at once with an *UnroutableError (errors.Is ErrUnroutable)
// rather than waiting for its deadline. Requests are not published with
// confirms: the broker sends a return before anything else about the
// message, and the reply itself proves the request arrived, so a confirm
// would only add a round trip. A request that was routed but whose server
// never answers ends with its ctx.
//
// An RPCClient is safe for concurrent use. It survives reconnection
// (WithReconnect): when a channel or the connection is lost, every call
// waiting on it fails at once with the typed cause (a *ConnectionError,
// IsConnectionLevel, or a *ChannelError), and the next call opens a new
// channel on the live connection. Close ends it. Client.Close ends its
// channels too: calls then fail with ErrClientClosed (IsConnectionLevel),
// and Close is still safe to call.
type RPCClient struct {
	c       *Client
	prefix  string        // correlation ids are prefix + base-36 sequence number
	seq     atomic.Uint64 // the last sequence number issued
	lanes   []rpcLane
	next    atomic.Uint32
	closing chan struct{} // closed when Close begins
	once    sync.Once

	calls, replies, remote, unroutable, timedOut, failed, late, unknown atomic.Int64
	inFlight                                                            atomic.Int64
}

// rpcLane is one of an RPCClient's channels, reopened when it is lost.
type rpcLane struct {
	lock ctxLock                 // held while (re)opening
	cur  atomic.Pointer[rpcChan] // nil until first used
}

// rpcChan is one open channel of an RPCClient with its reply consumer.
type rpcChan struct {
	r    *RPCClient
	st   *channel
	send ctxLock // serialises the publishes of concurrent calls on st

	mu      sync.Mutex                  // guards following
	waiters map[uint64]chan<- rpcResult // by sequence number; nil once ended
	endErr  error                       // why the channel ended, once waiters is nil

	ended      atomic.Bool           // waiters has been failed
	reason     atomic.Pointer[error] // set by Close before it closes the channel
	readerDone chan struct{}
}

type rpcResult struct {
	d   *Delivery
	err error
}

// NewRPCClient makes an RPCClient on c and opens its channels and reply
// consumers (bounded by ctx).
func (c *Client) NewRPCClient(ctx context.Context, opts RPCOptions) (*RPCClient, error) {
	if opts.Channels < 0 {
		return nil, fmt.Errorf("%w: rpc client: negative Channels", ErrInvalidArgument)
	}
	if opts.Channels == 0 {
		opts.Channels = 1
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("warren: rpc client: %w", err)
	}
	r := &RPCClient{c: c, prefix: hex.EncodeToString(b[:]) + "-", lanes: make([]rpcLane, opts.Channels),
		closing: make(chan struct{})}
	for i := range r.lanes {
		if _, err := r.lanes[i].get(ctx, r); err != nil {
			_ = r.Close(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return r, nil
}

// Call publishes req to exchange with routing key key and waits for the
// reply, which it returns as a Delivery (already settled: the reply
// consumer auto-acks, so its Ack, Nack and Reject return
// ErrAlreadySettled).
//
// Call sets req's CorrelationId and ReplyTo itself; a req with either
// already set is refused (ErrInvalidArgument), as is any req a publish
// would refuse (see Publishing), before anything is sent. It returns:
//
//   - the reply, nil error;
//   - a *RemoteError (holding the reply) when the server reported an
//     error (see Serve);
//   - an *UnroutableError (ErrUnroutable) when no queue took the request;
//   - an error matching ctx.Err() (context.DeadlineExceeded for a
//     deadline) when ctx ends first; a reply arriving later is dropped
//     and counted (RPCStats.LateReplies);
//   - the typed cause when the channel or connection was lost while it
//     waited (IsConnectionLevel for the connection): the request may or
//     may not have been handled. A request to an exchange that does not
//     exist is one way to lose the channel: the broker closes it (a
//     *ChannelError matching ErrNotFound), and every call waiting on that
//     channel fails with it; the next call opens a new one;
//   - ErrRPCClientClosed after Close, or when Close interrupted it.
//
// A Call without a deadline waits until one of these happens.
func (r *RPCClient) Call(ctx context.Context, exchange, key string, req Publishing) (d *Delivery, err error) {
	const op = "rpc call"
	if req.CorrelationId != "" || req.ReplyTo != "" {
		return nil, fmt.Errorf("%w: %s: CorrelationId and ReplyTo are set by the RPC client; leave them empty (MessageId is free for an id of the caller's)", ErrInvalidArgument, op)
	}
	// Checked with the properties Call sets: their length counts.
	req.CorrelationId, req.ReplyTo = r.prefix+strconv.FormatUint(1<<63, 36), DirectReplyTo
	if r.c != nil && r.c.opts.tracer != nil {
		span := r.c.opts.tracer.traceRPC(ctx, r.c.s(), exchange, key, &req)
		defer func() { span.finish(err) }()
	}
	// Checked here, before a lane is taken; the frame_max check, and
	// ints outside int32 sent as int64, come with the encoding
	// (encodePublish).
	if _, _, err := checkPublishing(op, exchange, key, &req); err != nil {
		return nil, err
	}
	if r.isClosed() {
		return nil, ErrRPCClientClosed
	}
	r.calls.Add(1)
	d, err = r.call(ctx, op, exchange, key, req)
	if err != nil {
		switch {
		case errors.Is(err, ErrUnroutable):
			r.unroutable.Add(1)
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			r.timedOut.Add(1)
		case errors.As(err, new(*RemoteError)):
		default:
			r.failed.Add(1)
			if r.isClosed() && !errors.Is(err, ErrRPCClientClosed) {
				err = fmt.Errorf("%w (%w)", ErrRPCClientClosed, err)
			}
		}
	}
	return d, err
}

func (r *RPCClient) call(ctx context.Context, op, exchange, key string, req Publishing) (*Delivery, error) {
	lane := &r.lanes[r.next.Add(1)%uint32(len(r.lanes))]
	rc, err := lane.get(ctx, r)
	if err != nil {
		return nil, err
	}
	seq := r.seq.Add(1)
	req.CorrelationId = r.prefix + strconv.FormatUint(seq, 36)
	w := make(chan rpcResult, 1)
	if err := rc.register(seq, w); err != nil {
		return nil, err
	}
	r.inFlight.Add(1)
	defer r.inFlight.Add(-1)
	if err := rc.publish(ctx, op, exchange, key, req); err != nil {
		if !rc.unregister(seq) {
			<-w // answered or failed meanwhile: the publish's error says more
		}
		return nil, err
	}
	var res rpcResult
	select {
	case res = <-w:
	case <-ctx.Done():
		if rc.unregister(seq) {
			return nil, fmt.Errorf("warren: %s %q on channel %d: no reply: %w", op, key, rc.st.id, ctx.Err())
		}
		res = <-w // it came as ctx ended
	}
	if res.err != nil {
		return nil, res.err
	}
	return res.d, nil
}

// Stats returns the client's counters.
func (r *RPCClient) Stats() RPCStats {
	return RPCStats{
		Calls: r.calls.Load(), Replies: r.replies.Load(), RemoteErrors: r.remote.Load(),
		Unroutable: r.unroutable.Load(), TimedOut: r.timedOut.Load(), Failed: r.failed.Load(),
		LateReplies: r.late.Load(), UnknownReplies: r.unknown.Load(), InFlight: int(r.inFlight.Load()),
	}
}

// Close closes the client's channels; calls still waiting fail with
// ErrRPCClientClosed, and later calls get it at once. It waits for the
// client's goroutines, bounded by ctx. Close is idempotent and safe to
// call from any goroutine; it returns nil, or ctx's error if ctx ended
// first (the channels then finish closing in the background).
func (r *RPCClient) Close(ctx context.Context) error {
	r.once.Do(func() { close(r.closing) })
	for i := range r.lanes {
		l := &r.lanes[i]
		// An open in progress finishes (or gives up on closing) first.
		if err := l.lock.lock(ctx, nil); err != nil {
			return fmt.Errorf("warren: rpc client close: %w", err)
		}
		rc := l.cur.Load()
		l.lock.unlock()
		if rc == nil {
			continue
		}
		reason := ErrRPCClientClosed
		rc.reason.CompareAndSwap(nil, &reason)
		_ = rc.st.close(ctx, 0)
		select {
		case <-rc.readerDone:
		case <-ctx.Done():
			return fmt.Errorf("warren: rpc client close: %w", ctx.Err())
		}
	}
	return nil
}

func (r *RPCClient) isClosed() bool {
	select {
	case <-r.closing:
		return true
	default:
		return false
	}
}

// parse returns the sequence number of a correlation id: ok is false for
// an id this client never issued.
func (r *RPCClient) parse(id string) (seq uint64, ok bool) {
	s, found := strings.CutPrefix(id, r.prefix)
	if !found {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 36, 64)
	if err != nil || seq == 0 || seq > r.seq.Load() {
		return 0, false
	}
	return seq, true
}

// get returns the lane's channel, opening one when it has none or it was
// lost.
func (l *rpcLane) get(ctx context.Context, r *RPCClient) (*rpcChan, error) {
	if rc := l.cur.Load(); rc != nil && rc.usable() {
		return rc, nil
	}
	if err := l.lock.lock(ctx, r.closing); err != nil {
		if errors.Is(err, errLockAbandoned) {
			return nil, ErrRPCClientClosed
		}
		return nil, fmt.Errorf("warren: rpc: waiting for a channel: %w", err)
	}
	defer l.lock.unlock()
	if r.isClosed() {
		return nil, ErrRPCClientClosed
	}
	if rc := l.cur.Load(); rc != nil && rc.usable() {
		return rc, nil
	}
	// Close ends a wait for the connection, so that it need not wait
	// for this open.
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.closing:
			cancel()
		case <-octx.Done():
		}
	}()
	ctx = octx
	rc, err := r.open(ctx)
	if err != nil {
		if r.isClosed() {
			return nil, fmt.Errorf("%w (%w)", ErrRPCClientClosed, err)
		}
		return nil, err
	}
	l.cur.Store(rc)
	return rc, nil
}

// usable reports whether calls may go on rc.
func (rc *rpcChan) usable() bool {
	return !rc.ended.Load() && !rc.st.suspect()
}

// open opens a channel on the live connection and starts its reply
// consumer and reader.
func (r *RPCClient) open(ctx context.Context) (*rpcChan, error) {
	var rc *rpcChan
	err := r.c.onLive(ctx, func(s *session) error {
		st, err := s.openChannel(ctx)
		if err != nil {
			return err
		}
		// Returns are sent from amqp091-go's reader, which waits while
		// the listener is full: the reader below drains it at once.
		rets := st.ch.NotifyReturn(make(chan amqp.Return, returnBuffer))
		tag := fmt.Sprintf("warren-rpc-%d-%d", os.Getpid(), consumerSeq.Add(1))
		var deliveries <-chan amqp.Delivery
		err = Channel{s: st}.call(ctx, "basic.consume", func() (err error) {
			deliveries, err = st.ch.Consume(DirectReplyTo, tag, true, false, false, false, nil)
			return err
		})
		if err != nil {
			cctx, cancel := withDefaultTimeout(context.WithoutCancel(ctx), s.opts.closeTimeout)
			_ = st.close(cctx, 0)
			cancel()
			return err
		}
		c := &rpcChan{r: r, st: st, waiters: make(map[uint64]chan<- rpcResult), readerDone: make(chan struct{})}
		if !s.goTracked(func() { c.read(deliveries, rets) }) {
			return ErrClientClosed
		}
		rc = c
		return nil
	})
	return rc, err
}

// register adds the waiter w for the call seq.
func (rc *rpcChan) register(seq uint64, w chan<- rpcResult) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.waiters == nil {
		return rc.endErr
	}
	rc.waiters[seq] = w
	return nil
}

// unregister removes the waiter of call seq and reports whether it was
// still there (false: a result has been or is being sent to it).
func (rc *rpcChan) unregister(seq uint64) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if _, ok := rc.waiters[seq]; !ok {
		return false
	}
	delete(rc.waiters, seq)
	return true
}

// take removes and returns the waiter of call seq, or nil.
func (rc *rpcChan) take(seq uint64) chan<- rpcResult {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	w := rc.waiters[seq]
	if w != nil {
		delete(rc.waiters, seq)
	}
	return w
}

// publish writes one request, serialised with the other calls' on the
// channel. It is mandatory, and not confirmed (see RPCClient).
func (rc *rpcChan) publish(ctx context.Context, op, exchange, key string, msg Publishing) error {
	var buf [headRoom]byte
	m := Message{Exchange: exchange, Key: key, Mandatory: true, Publishing: msg}
	head, _, err := encodePublish(buf[:0], op, rc.st.id, &m, false, rc.st.c.maxPayload())
	if err != nil {
		return err
	}
	if err := rc.st.waitPublish(ctx, op); err != nil {
		return err
	}
	if err := rc.send.lock(ctx, nil); err != nil {
		return fmt.Errorf("warren: %s on channel %d: %w", op, rc.st.id, err)
	}
	defer rc.send.unlock()
	return Channel{s: rc.st}.send(ctx, op, func() error {
		return rc.st.writeContent(head, msg.Body)
	})
}

// read is the channel's reader: it hands each reply and each returned
// request to its caller, and when the channel ends fails every call still
// waiting. It runs on a goroutine of the session's, so Client.Close waits
// for it.
func (rc *rpcChan) read(deliveries <-chan amqp.Delivery, rets <-chan amqp.Return) {
	defer close(rc.readerDone)
	r := rc.r
	for deliveries != nil {
		select {
		case d, ok := <-deliveries:
			if !ok {
				deliveries = nil
				continue
			}
			rc.reply(d)
		case ret, ok := <-rets:
			if !ok {
				rets = nil // the channel is gone; its deliveries end next
				continue
			}
			rc.returned(ret)
		}
	}
	// The deliveries ended: the channel is closed (or the broker cancelled
	// the reply consumer). Returns already read still count.
	for drained := false; rets != nil && !drained; {
		select {
		case ret, ok := <-rets:
			if !ok {
				rets = nil
				continue
			}
			rc.returned(ret)
		default:
			drained = true
		}
	}
	var err error
	if p := rc.reason.Load(); p != nil {
		err = *p
	} else if err = rc.st.unusable("rpc reply"); err == nil && !rc.st.ch.IsClosed() {
		err = fmt.Errorf("warren: rpc: the reply consumer on channel %d: %w", rc.st.id, ErrConsumerCancelled)
	} else if err == nil {
		err = rc.st.awaitCause("rpc reply")
	}
	rc.mu.Lock()
	waiters := rc.waiters
	rc.waiters, rc.endErr = nil, err
	rc.ended.Store(true)
	rc.mu.Unlock()
	for _, w := range waiters {
		w <- rpcResult{err: err}
	}
	// amqp091-go may be waiting to send a return while the channel
	// closes: drain the listener until the close ends it.
	drained := make(chan struct{})
	drain := func() {
		defer close(drained)
		if rets != nil {
			for range rets {
			}
		}
	}
	if !rc.st.c.goTracked(drain) {
		close(drained) // the connection is closing, and the listener with it
		rets = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.c.opts.closeTimeout)
	_ = rc.st.close(ctx, 0)
	cancel()
	if rets == nil {
		return
	}
	select {
	case <-drained:
	case <-rc.st.c.dead:
	}
}

// reply hands a reply to its caller, or counts and drops it.
func (rc *rpcChan) reply(ad amqp.Delivery) {
	r := rc.r
	seq, ok := r.parse(ad.CorrelationId)
	if !ok {
		r.unknown.Add(1)
		return
	}
	w := rc.take(seq)
	if w == nil {
		r.late.Add(1)
		return
	}
	ad.Acknowledger = nil
	d := &Delivery{Delivery: ad, ch: Channel{s: rc.st}}
	d.settled.Store(settled) // auto-ack
	r.replies.Add(1)
	res := rpcResult{d: d}
	if v, ok := ad.Headers[RPCErrorHeader]; ok {
		r.remote.Add(1)
		res.err = &RemoteError{Message: headerText(v), Reply: d}
	}
	w <- res
}

// returned fails the call whose request came back unroutable.
func (rc *rpcChan) returned(ret amqp.Return) {
	seq, ok := rc.r.parse(ret.CorrelationId)
	if !ok {
		return
	}
	if w := rc.take(seq); w != nil {
		w <- rpcResult{err: &UnroutableError{ChannelID: rc.st.id, Code: ReplyCode(ret.ReplyCode), Reason: ret.ReplyText, Return: ret}}
	}
}

// headerText renders a header value as text.
func headerText(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	}
	return fmt.Sprint(v)
}

package warren

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"sync/atomic"
)

// Tracer is a set of optional hooks through which a tracing library (the
// otelwarren module adapts it to OpenTelemetry) follows messages: it can
// read and add message headers before a publish is encoded, learn each
// publish's outcome, and wrap the handling and settlement of deliveries.
// Install it with WithTracer. warren itself depends on no tracing library.
//
// Every field may be nil. Hooks are called concurrently from every
// goroutine that publishes or consumes, so they must be safe for
// concurrent use. A hook is called on the goroutine of the operation it
// traces, except that the end of a confirmed publish's trace
// may be called on amqp091-go's frame reader or a goroutine of warren's:
// hooks must be cheap and must not block. Every start is matched by exactly
// one call of the end function it returns, unless the hook returned a nil
// end function. With no Tracer installed, each traced path costs one nil
// check.
type Tracer struct {
	// Publish is called once per message published through a Channel
	// (Publish, PublishMessage, PublishDeferred, PublishBatch, and so a
	// Pool's or a Tx's channels), a Publisher (each call, not each retry
	// of RepublishUnknown), or an RPCClient's Call, before the message is
	// checked and encoded. It may add headers with PublishInfo.SetHeader.
	//
	// end is called once with the outcome: nil when the broker acked the
	// message (PublishInfo.Confirmed) or when its frames were handed to
	// the socket (not confirmed: a plain or tx channel); a *NackedError,
	// *UnroutableError or *OutcomeUnknownError from the broker's answer;
	// any other error when the message was not sent (an invalid argument,
	// a closed channel, ctx ended first). For an RPCClient's Call (see
	// PublishInfo.RPC) end gets the Call's result: nil when a reply came.
	Publish func(ctx context.Context, p *PublishInfo) (end func(err error))

	// Process wraps the handler call for each delivery of Client.Consume,
	// Client.StartConsumer and Client.Serve. The ctx it returns is the
	// handler's; end is called with the handler's error after warren
	// settled the delivery (when the handler did not), so the settlement's
	// own trace (Settle) can be a child of the processing. Deliveries of
	// a Subscription (Channel.Consume) are handled by the caller's own
	// loop, which warren does not wrap: call Process there if wanted.
	Process func(ctx context.Context, c *ConsumeInfo, d *Delivery) (context.Context, func(err error))

	// ProcessBatch is Process for a batch consumer
	// (Client.StartBatchConsumer): it wraps each call of the batch
	// handler, and warren's settlement of what the handler left
	// unsettled (a multiple ack of a run of the batch's deliveries is one
	// basic.ack, not traced by Settle; the others are). batch must not be
	// kept or modified.
	ProcessBatch func(ctx context.Context, c *ConsumeInfo, batch []*Delivery) (context.Context, func(err error))

	// Receive wraps Channel.Get (and Tx.Get): end gets the message (nil
	// when the queue was empty or on error) and the error.
	Receive func(ctx context.Context, c *ConsumeInfo) (end func(d *Delivery, err error))

	// Settle wraps Delivery.Ack, Nack and Reject, including warren's own
	// settlement after a handler returns (its ctx is then the handler's,
	// without its cancellation). end gets the settlement's result.
	Settle func(ctx context.Context, op SettleOp, d *Delivery) (end func(err error))
}

// WithTracer installs t (see Tracer). Without it, or with a Tracer whose
// fields are all nil, nothing is traced, at the cost of one nil check per
// traced operation.
func WithTracer(t Tracer) Option {
	return func(o *options) error {
		if t.Publish == nil && t.Process == nil && t.ProcessBatch == nil && t.Receive == nil && t.Settle == nil {
			o.tracer = nil
			return nil
		}
		o.tracer = &tracing{Tracer: t}
		return nil
	}
}

// PublishInfo is what a Tracer's Publish hook is told of one message, and
// its way to add headers to it. It is valid only during the hook's call,
// and is not safe for concurrent use.
type PublishInfo struct {
	// Message is the message as it is about to be sent: the hook must not
	// modify it (its Headers table is the caller's); add headers with
	// SetHeader.
	Message
	// Confirmed is true when the outcome passed to end is the broker's
	// answer (a confirm channel, a Publisher); false when it only says
	// whether the message was handed to the socket (a plain or tx
	// channel, an RPC request).
	Confirmed bool
	// RPC is true for the request of an RPCClient's Call. Its
	// CorrelationId is empty here: the RPC client sets it as it sends.
	RPC bool
	// ServerAddress and ServerPort are the broker's host and port as
	// dialled ("" and 0 when not known).
	ServerAddress string
	ServerPort    int

	owned bool // Headers is a copy of the caller's table, warren's own
}

// SetHeader sets the message header key to value, unless the message
// already has a header key (the caller's value is never replaced), and
// reports whether it did. The caller's Headers table is not modified:
// the first header added copies it. A key AMQP cannot carry (over 255
// bytes, or not UTF-8), or a header beyond the 8192 a table may hold, is
// refused: SetHeader returns false. The message with the added headers is
// checked as the caller's would be (see Publishing): a header that made
// its properties too large for a frame fails the publish.
func (p *PublishInfo) SetHeader(key, value string) bool {
	if _, ok := p.Headers[key]; ok || shortstrProblem(key) != "" || len(p.Headers) >= maxTableEntries {
		return false
	}
	if !p.owned {
		h := make(Table, len(p.Headers)+3)
		for k, v := range p.Headers {
			h[k] = v
		}
		p.Headers, p.owned = h, true
	}
	p.Headers[key] = value
	return true
}

// ConsumeInfo is what a Tracer's Process, ProcessBatch and Receive hooks
// are told of where deliveries come from.
type ConsumeInfo struct {
	Queue string // the queue consumed or fetched from
	// ServerAddress and ServerPort are the broker's host and port as
	// dialled ("" and 0 when not known).
	ServerAddress string
	ServerPort    int
}

// SettleOp is how a delivery is settled, for a Tracer's Settle hook.
type SettleOp int

// The settlements a Tracer's Settle hook is told of.
const (
	SettleAck    SettleOp = iota // Delivery.Ack
	SettleNack                   // Delivery.Nack
	SettleReject                 // Delivery.Reject
)

// String returns "ack", "nack" or "reject".
func (o SettleOp) String() string {
	switch o {
	case SettleAck:
		return "ack"
	case SettleNack:
		return "nack"
	case SettleReject:
		return "reject"
	}
	return fmt.Sprintf("SettleOp(%d)", int(o))
}

// tracing is an installed Tracer, with what its hooks are told that does
// not change from one call to the next.
type tracing struct {
	Tracer
	server atomic.Pointer[serverAddr] // the endpoint last parsed
}

// serverAddr is an endpoint URL's host and port.
type serverAddr struct {
	endpoint string
	host     string
	port     int
}

// serverOf splits a session's redacted endpoint URL into host and port,
// parsing it only when it changed (a reconnect to another node).
func (t *tracing) serverOf(s *session) (string, int) {
	if s == nil {
		return "", 0
	}
	if a := t.server.Load(); a != nil && a.endpoint == s.endpoint {
		return a.host, a.port
	}
	a := &serverAddr{endpoint: s.endpoint}
	if u, err := url.Parse(s.endpoint); err == nil {
		a.host = u.Hostname()
		a.port, _ = strconv.Atoi(u.Port())
	}
	t.server.Store(a)
	return a.host, a.port
}

// pubSpan is the end of one publish's trace, called once: a confirmed
// publish can end both by its Confirmation and by its caller's error.
type pubSpan struct {
	end  func(error)
	done atomic.Bool
}

func (s *pubSpan) finish(err error) {
	if s != nil && s.end != nil && s.done.CompareAndSwap(false, true) {
		s.end(err)
	}
}

// startPublish calls the Publish hook for m and returns the message to
// send (m, or a copy with the headers the hook added) and the trace's end
// (nil without a Publish hook).
func (t *tracing) startPublish(ctx context.Context, s *session, m *Message, confirmed, rpc bool) (*Message, *pubSpan) {
	if t.Publish == nil {
		return m, nil
	}
	p := &PublishInfo{Message: *m, Confirmed: confirmed, RPC: rpc}
	p.ServerAddress, p.ServerPort = t.serverOf(s)
	end := t.Publish(ctx, p)
	if end == nil {
		end = func(error) {}
	}
	if p.owned {
		m = &Message{Exchange: m.Exchange, Key: m.Key, Mandatory: m.Mandatory, Publishing: m.Publishing}
		m.Headers = p.Headers
	}
	return m, &pubSpan{end: end}
}

// publishTraced is Channel.publish with a Tracer installed.
func (ch Channel) publishTraced(ctx context.Context, t *tracing, m *Message, deferred bool, conf *Confirmation) (*Confirmation, error) {
	m, span := t.startPublish(ctx, ch.s.c, m, Mode(ch.s.mode.Load()) == ModeConfirm, false)
	c, err := ch.publishSpan(ctx, m, deferred, span, conf)
	if err != nil || c == nil {
		span.finish(err)
	}
	return c, err
}

// traceMessages is what a Publisher's PublishBatch sends with a Tracer
// installed: copies of the messages with the hook's headers,
// and each one's trace end.
func (p *Publisher) traceMessages(ctx context.Context, t *tracing, msgs []Message) ([]Message, []*pubSpan) {
	if t.Publish == nil {
		return msgs, nil
	}
	s := p.client.s()
	out := make([]Message, len(msgs))
	spans := make([]*pubSpan, len(msgs))
	for i := range msgs {
		m, span := t.startPublish(ctx, s, &msgs[i], true, false)
		out[i], spans[i] = *m, span
	}
	return out, spans
}

// publisherMessage calls the Publish hook for m, a Publisher's own copy,
// and adds the headers it set to m.
func (t *tracing) publisherMessage(ctx context.Context, s *session, m *Message) *pubSpan {
	out, span := t.startPublish(ctx, s, m, true, false)
	m.Headers = out.Headers
	return span
}

// endSpans ends each publish's trace with its outcome, once errs holds
// them all (it is deferred before they are known).
func endSpans(spans []*pubSpan, errs []error) {
	for i, s := range spans {
		s.finish(errs[i])
	}
}

// traceRPC calls the Publish hook for an RPC request and adds the headers
// it set to req.
func (t *tracing) traceRPC(ctx context.Context, s *session, exchange, key string, req *Publishing) *pubSpan {
	if t.Publish == nil {
		return nil
	}
	m := Message{Exchange: exchange, Key: key, Mandatory: true, Publishing: *req}
	m.CorrelationId = ""
	out, span := t.startPublish(ctx, s, &m, false, true)
	req.Headers = out.Headers
	return span
}

// consumeInfo describes queue on session s.
func (t *tracing) consumeInfo(s *session, queue string) *ConsumeInfo {
	c := &ConsumeInfo{Queue: queue}
	c.ServerAddress, c.ServerPort = t.serverOf(s)
	return c
}

// startProcess calls the Process hook for d, consumed from cs's queue, and
// returns the handler's ctx and the end of the trace (never nil). d
// remembers the trace's ctx for warren's own settlement.
func (t *tracing) startProcess(ctx context.Context, cs *consumer, d *Delivery) (context.Context, func(error)) {
	if t.Process == nil {
		return ctx, func(error) {}
	}
	ctx, end := t.Process(ctx, t.consumeInfo(cs.c, cs.queue), d)
	d.tctx = context.WithoutCancel(ctx)
	if end == nil {
		end = func(error) {}
	}
	return ctx, end
}

// startBatch is startProcess for a batch.
func (t *tracing) startBatch(ctx context.Context, cs *consumer, ds []*Delivery) (context.Context, func(error)) {
	if t.ProcessBatch == nil {
		return ctx, func(error) {}
	}
	ctx, end := t.ProcessBatch(ctx, t.consumeInfo(cs.c, cs.queue), ds)
	tctx := context.WithoutCancel(ctx)
	for _, d := range ds {
		d.tctx = tctx
	}
	if end == nil {
		end = func(error) {}
	}
	return ctx, end
}

// startReceive calls the Receive hook for a basic.get from queue.
func (t *tracing) startReceive(ctx context.Context, s *session, queue string) func(*Delivery, error) {
	if t.Receive == nil {
		return func(*Delivery, error) {}
	}
	end := t.Receive(ctx, t.consumeInfo(s, queue))
	if end == nil {
		end = func(*Delivery, error) {}
	}
	return end
}

// startSettle calls the Settle hook for a settlement of d of kind (a
// tally index).
func (t *tracing) startSettle(ctx context.Context, kind int, d *Delivery) func(error) {
	if t.Settle == nil {
		return func(error) {}
	}
	op := SettleAck
	switch kind {
	case tallyNack:
		op = SettleNack
	case tallyReject:
		op = SettleReject
	}
	end := t.Settle(ctx, op, d)
	if end == nil {
		end = func(error) {}
	}
	return end
}

// ownCtx is the ctx of warren's own settlement of d after its handler:
// the processing trace's, without cancellation, or Background.
func (d *Delivery) ownCtx() context.Context {
	if d.tctx != nil {
		return d.tctx
	}
	return context.Background()
}

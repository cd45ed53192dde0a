package otelwarren

import (
	"context"
	"errors"
	"fmt"

	"github.com/warrenmq/warren"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope name of the spans NewTracer's
// Tracer records.
const ScopeName = "github.com/warrenmq/warren/otelwarren"

// TracerOption configures NewTracer.
type TracerOption func(*tracerConfig)

type tracerConfig struct {
	provider       trace.TracerProvider
	propagator     propagation.TextMapPropagator
	routingKeyName bool
	parentChild    bool
	settle         bool
}

// WithTracerProvider sets the TracerProvider spans are recorded with
// (default otel.GetTracerProvider(), the global one). nil keeps the
// default.
func WithTracerProvider(tp trace.TracerProvider) TracerOption {
	return func(c *tracerConfig) {
		if tp != nil {
			c.provider = tp
		}
	}
}

// WithPropagator sets the propagator that writes the trace context and
// baggage into published messages' headers and reads them from delivered
// ones. nil keeps the default: the global propagator
// (otel.GetTextMapPropagator(), as it is at each publish or delivery), or,
// while the global one is OpenTelemetry's no-op default (it has no
// fields), W3C trace context and baggage (propagation.TraceContext{} and
// propagation.Baggage{}: traceparent, tracestate and baggage headers), so
// that messages carry their trace without further setup.
func WithPropagator(p propagation.TextMapPropagator) TracerOption {
	return func(c *tracerConfig) {
		if p != nil {
			c.propagator = p
		}
	}
}

// WithRoutingKeyInSpanName names spans after the full destination,
// routing key included ("publish orders:eu.created"), when on is true.
// By default span names leave the routing key out ("publish orders"),
// because routing keys are often of high cardinality (ids, tenant names),
// which span names must not be; the routing key is always recorded in the
// messaging.rabbitmq.destination.routing_key and messaging.destination.name
// attributes.
func WithRoutingKeyInSpanName(on bool) TracerOption {
	return func(c *tracerConfig) { c.routingKeyName = on }
}

// WithProducerAsParent makes a consumer's process span a child of the
// producer's span, in the producer's trace, when on is true. A Get's
// receive span is not affected: it starts in the caller's context (the
// message is not known until the reply arrives) and always links to the
// producer's span. By default, as the OpenTelemetry
// messaging conventions recommend, the process span starts in the
// handler's own context (a new trace, unless that context carries one)
// and links to the producer's span. A batch's span always links (one link
// per message).
func WithProducerAsParent(on bool) TracerOption {
	return func(c *tracerConfig) { c.parentChild = on }
}

// WithSettleSpans records a CLIENT span for every Delivery.Ack, Nack and
// Reject ("ack {destination}", messaging.operation.type=settle) when on is
// true; by default settlements are not traced.
func WithSettleSpans(on bool) TracerOption {
	return func(c *tracerConfig) { c.settle = on }
}

// NewTracer returns a warren.Tracer that records OpenTelemetry spans
// following the OpenTelemetry semantic conventions for RabbitMQ (semconv
// v1.43.0), and propagates the trace context through message headers.
// Install it with warren.WithTracer:
//
//	client, err := warren.Dial(ctx, url, warren.WithTracer(otelwarren.NewTracer()))
//
// Spans recorded:
//
//   - "publish {exchange}" ("publish amq.default" for the default
//     exchange; "publish {exchange}:{routing key}" with
//     WithRoutingKeyInSpanName), PRODUCER, for each message published
//     (Channel, Pool, Tx, Publisher, batches) and each RPC request; it
//     ends with the publish's outcome: the broker's ack (or the write,
//     on a plain or tx channel), or an error status with error.type
//     "nacked", "unroutable", "outcome_unknown", ... (see ErrorType). The
//     propagator writes the span's context and the ctx's baggage into the
//     message's headers (traceparent, tracestate, baggage with the W3C
//     propagators), unless the message already has a traceparent header,
//     which is left as it is (and nothing else is injected). The caller's
//     Headers table is never modified.
//   - "process {destination}", CONSUMER, around each handler call of
//     Consume, StartConsumer and Serve, linked to the producer's span
//     (or its child, WithProducerAsParent); the handler's ctx holds the
//     span and the message's baggage.
//   - "process {destination}", CONSUMER, around each batch handler call,
//     with messaging.batch.message_count and one link per message.
//   - "receive {queue}", CLIENT, for each Channel.Get, linked to the
//     message's producer span.
//   - "ack|nack|reject {destination}", CLIENT, with WithSettleSpans.
//
// Header values are read as strings or byte arrays (other clients write
// byte arrays).
func NewTracer(opts ...TracerOption) warren.Tracer {
	c := tracerConfig{provider: otel.GetTracerProvider()}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	t := &tracer{cfg: c, tr: c.provider.Tracer(ScopeName,
		trace.WithInstrumentationVersion(warren.Version), trace.WithSchemaURL(semconv.SchemaURL))}
	wt := warren.Tracer{Publish: t.publish, Process: t.process, ProcessBatch: t.processBatch, Receive: t.receive}
	if c.settle {
		wt.Settle = t.settleSpan
	}
	return wt
}

type tracer struct {
	cfg tracerConfig
	tr  trace.Tracer
}

// w3c is the propagator used while no other is configured.
var w3c = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// propagator returns the configured propagator: WithPropagator's, else
// the global one unless it is the no-op default, else w3c.
func (t *tracer) propagator() propagation.TextMapPropagator {
	if t.cfg.propagator != nil {
		return t.cfg.propagator
	}
	if g := otel.GetTextMapPropagator(); len(g.Fields()) > 0 {
		return g
	}
	return w3c
}

// traceparent is the W3C trace context header.
const traceparent = "traceparent"

func (t *tracer) publish(ctx context.Context, p *warren.PublishInfo) func(error) {
	dest := destination(p.Exchange, p.Key, "")
	name := dest
	if !t.cfg.routingKeyName {
		name = destination(p.Exchange, "", "")
	}
	attrs := make([]attribute.KeyValue, 0, 11)
	attrs = append(attrs, semconv.MessagingSystemRabbitMQ, semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"), semconv.MessagingDestinationName(dest),
		semconv.MessagingMessageBodySize(len(p.Body)))
	attrs = messageAttrs(attrs, p.Key, p.MessageId, p.CorrelationId)
	attrs = serverAttrs(attrs, p.ServerAddress, p.ServerPort)
	ctx, span := t.tr.Start(ctx, "publish "+name, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	if _, set := p.Headers[traceparent]; !set {
		t.propagator().Inject(ctx, publishCarrier{p})
	}
	return func(err error) { end(span, err) }
}

func (t *tracer) process(ctx context.Context, c *warren.ConsumeInfo, d *warren.Delivery) (context.Context, func(error)) {
	pctx := t.propagator().Extract(ctx, deliveryCarrier(d.Headers))
	producer := trace.SpanContextFromContext(pctx)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(t.deliveryAttrs(semconv.MessagingOperationTypeProcess, "process", c, d)...)}
	parent := pctx
	if !t.cfg.parentChild {
		parent = ctx
		if b := baggage.FromContext(pctx); b.Len() > 0 {
			parent = baggage.ContextWithBaggage(ctx, b)
		}
		if producer.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: producer}))
		}
	}
	ctx, span := t.tr.Start(parent, "process "+t.consumerName(d.Exchange, d.RoutingKey, c.Queue), opts...)
	return ctx, func(err error) { end(span, err) }
}

func (t *tracer) processBatch(ctx context.Context, c *warren.ConsumeInfo, batch []*warren.Delivery) (context.Context, func(error)) {
	links := make([]trace.Link, 0, len(batch))
	for _, d := range batch {
		sc := trace.SpanContextFromContext(t.propagator().Extract(ctx, deliveryCarrier(d.Headers)))
		if sc.IsValid() {
			l := trace.Link{SpanContext: sc}
			if d.MessageId != "" {
				l.Attributes = []attribute.KeyValue{semconv.MessagingMessageID(d.MessageId)}
			}
			links = append(links, l)
		}
	}
	// One destination when every message has the same exchange and
	// routing key; the queue alone otherwise.
	ex, key := batch[0].Exchange, batch[0].RoutingKey
	for _, d := range batch[1:] {
		if d.Exchange != ex || d.RoutingKey != key {
			ex, key = "", ""
			break
		}
	}
	attrs := []attribute.KeyValue{semconv.MessagingSystemRabbitMQ, semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"), semconv.MessagingDestinationName(destination(ex, key, c.Queue)),
		semconv.MessagingBatchMessageCount(len(batch))}
	if key != "" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(key))
	}
	attrs = serverAttrs(attrs, c.ServerAddress, c.ServerPort)
	ctx, span := t.tr.Start(ctx, "process "+t.consumerName(ex, key, c.Queue), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attrs...), trace.WithLinks(links...))
	return ctx, func(err error) { end(span, err) }
}

func (t *tracer) receive(ctx context.Context, c *warren.ConsumeInfo) func(*warren.Delivery, error) {
	attrs := []attribute.KeyValue{semconv.MessagingSystemRabbitMQ, semconv.MessagingOperationTypeReceive,
		semconv.MessagingOperationName("receive"), semconv.MessagingDestinationName(c.Queue)}
	attrs = serverAttrs(attrs, c.ServerAddress, c.ServerPort)
	name := "receive"
	if c.Queue != "" {
		name += " " + c.Queue
	}
	_, span := t.tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return func(d *warren.Delivery, err error) {
		if d != nil {
			span.SetAttributes(t.deliveryAttrs(semconv.MessagingOperationTypeReceive, "receive", c, d)...)
			sc := trace.SpanContextFromContext(t.propagator().Extract(ctx, deliveryCarrier(d.Headers)))
			if sc.IsValid() {
				span.AddLink(trace.Link{SpanContext: sc})
			}
		}
		end(span, err)
	}
}

func (t *tracer) settleSpan(ctx context.Context, op warren.SettleOp, d *warren.Delivery) func(error) {
	dest := destination(d.Exchange, d.RoutingKey, "")
	name := dest
	if !t.cfg.routingKeyName {
		name = destination(d.Exchange, "", "")
	}
	attrs := []attribute.KeyValue{semconv.MessagingSystemRabbitMQ, semconv.MessagingOperationTypeSettle,
		semconv.MessagingOperationName(op.String()), semconv.MessagingDestinationName(dest),
		semconv.MessagingRabbitMQMessageDeliveryTag(int(d.DeliveryTag))}
	attrs = messageAttrs(attrs, d.RoutingKey, d.MessageId, "")
	_, span := t.tr.Start(ctx, op.String()+" "+name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return func(err error) { end(span, err) }
}

// deliveryAttrs are the attributes of a span about d, consumed from c.
func (t *tracer) deliveryAttrs(opType attribute.KeyValue, opName string, c *warren.ConsumeInfo, d *warren.Delivery) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 12)
	attrs = append(attrs, semconv.MessagingSystemRabbitMQ, opType, semconv.MessagingOperationName(opName),
		semconv.MessagingDestinationName(destination(d.Exchange, d.RoutingKey, c.Queue)),
		semconv.MessagingMessageBodySize(len(d.Body)), semconv.MessagingRabbitMQMessageDeliveryTag(int(d.DeliveryTag)))
	attrs = messageAttrs(attrs, d.RoutingKey, d.MessageId, d.CorrelationId)
	return serverAttrs(attrs, c.ServerAddress, c.ServerPort)
}

// consumerName is the destination in a consumer-side span name.
func (t *tracer) consumerName(exchange, key, queue string) string {
	if !t.cfg.routingKeyName {
		key = ""
	}
	return destination(exchange, key, queue)
}

func messageAttrs(attrs []attribute.KeyValue, key, id, correlation string) []attribute.KeyValue {
	if key != "" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(key))
	}
	if id != "" {
		attrs = append(attrs, semconv.MessagingMessageID(id))
	}
	if correlation != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationID(correlation))
	}
	return attrs
}

func serverAttrs(attrs []attribute.KeyValue, addr string, port int) []attribute.KeyValue {
	if addr != "" {
		attrs = append(attrs, semconv.ServerAddress(addr))
	}
	if port > 0 {
		attrs = append(attrs, semconv.ServerPort(port))
	}
	return attrs
}

// destination is messaging.destination.name by the RabbitMQ convention:
// the non-empty ones of exchange, routing key and (consumer side) queue,
// joined by ':', the routing key left out when it equals the queue;
// "amq.default" when all are empty.
func destination(exchange, key, queue string) string {
	if key == queue {
		queue = ""
	}
	s := exchange
	for _, part := range [2]string{key, queue} {
		if part == "" {
			continue
		}
		if s != "" {
			s += ":"
		}
		s += part
	}
	if s == "" {
		return "amq.default"
	}
	return s
}

// end ends span with err's status.
func end(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(ErrorType(err)))
	}
	span.End()
}

// ErrorType is the error.type attribute NewTracer's spans record for err: a
// short, low-cardinality name of warren's typed errors ("nacked",
// "unroutable", "outcome_unknown", "remote_error", "invalid_argument",
// "timeout", "canceled", "channel_closed", "connection_closed",
// "client_closed", "publisher_closed", "rpc_client_closed", "blocked",
// "already_settled", "delivery_void", "concurrent_use"), or else the Go
// type name of err ("*mypkg.MyError"); "" for nil.
func ErrorType(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, warren.ErrNacked):
		return "nacked"
	case errors.Is(err, warren.ErrUnroutable):
		return "unroutable"
	case errors.Is(err, warren.ErrOutcomeUnknown):
		return "outcome_unknown"
	case errors.As(err, new(*warren.RemoteError)):
		return "remote_error"
	case errors.Is(err, warren.ErrInvalidArgument):
		return "invalid_argument"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, warren.ErrRPCClientClosed):
		return "rpc_client_closed"
	case errors.Is(err, warren.ErrPublisherClosed):
		return "publisher_closed"
	case errors.Is(err, warren.ErrClientClosed):
		return "client_closed"
	case errors.As(err, new(*warren.ConnectionError)):
		return "connection_closed"
	case errors.As(err, new(*warren.ChannelError)), errors.Is(err, warren.ErrChannelClosed):
		return "channel_closed"
	case errors.Is(err, warren.ErrBlocked):
		return "blocked"
	case errors.Is(err, warren.ErrAlreadySettled):
		return "already_settled"
	case errors.Is(err, warren.ErrDeliveryVoid):
		return "delivery_void"
	case errors.Is(err, warren.ErrConcurrentUse):
		return "concurrent_use"
	}
	return fmt.Sprintf("%T", err)
}

// publishCarrier writes a propagator's headers through
// PublishInfo.SetHeader.
type publishCarrier struct{ p *warren.PublishInfo }

func (c publishCarrier) Get(key string) string  { return headerString(c.p.Headers[key]) }
func (c publishCarrier) Set(key, value string)  { c.p.SetHeader(key, value) }
func (c publishCarrier) Keys() []string         { return tableKeys(c.p.Headers) }
func (c deliveryCarrier) Get(key string) string { return headerString(c[key]) }
func (c deliveryCarrier) Set(key, value string) {} // read-only: a delivery is not modified
func (c deliveryCarrier) Keys() []string        { return tableKeys(warren.Table(c)) }
func tableKeys(t warren.Table) (keys []string) {
	for k := range t {
		keys = append(keys, k)
	}
	return keys
}

// deliveryCarrier reads a propagator's headers from a delivery.
type deliveryCarrier warren.Table

// headerString reads a header written as a string or as bytes.
func headerString(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	}
	return ""
}

package otelwarren_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/otelwarren"
)

// traced is a client with a tracer recording into rec.
type traced struct {
	c   *warren.Client
	rec *tracetest.SpanRecorder
	tp  *sdktrace.TracerProvider
}

var w3cProp = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func dialTraced(t *testing.T, ctx context.Context, opts ...otelwarren.TracerOption) *traced {
	t.Helper()
	b := brokertest.Need(t, broker)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	opts = append([]otelwarren.TracerOption{otelwarren.WithTracerProvider(tp), otelwarren.WithPropagator(w3cProp)}, opts...)
	c, err := warren.Dial(ctx, b.URL, warren.WithTracer(otelwarren.NewTracer(opts...)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return &traced{c: c, rec: rec, tp: tp}
}

// channel opens a channel in mode m, closed when the test ends.
func (tc *traced) channel(t *testing.T, ctx context.Context, m warren.Mode) warren.Channel {
	t.Helper()
	ch, err := tc.c.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close(context.Background()) })
	if m != warren.ModePlain {
		if err := ch.SetMode(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	return ch
}

// queue declares an exclusive server-named queue.
func queue(t *testing.T, ctx context.Context, ch warren.Channel, args warren.Table) string {
	t.Helper()
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	return q.Name
}

// spans waits until the recorder has ended at least n spans named with
// prefix, and returns them.
func (tc *traced) spans(t *testing.T, ctx context.Context, prefix string, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	for {
		var out []sdktrace.ReadOnlySpan
		for _, s := range tc.rec.Ended() {
			if strings.HasPrefix(s.Name(), prefix) {
				out = append(out, s)
			}
		}
		if len(out) >= n {
			return out
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d spans named %q… ended, want %d (all: %v)", len(out), prefix, n, names(tc.rec.Ended()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, a := range s.Attributes() {
		if a.Key == k {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t *testing.T, s sdktrace.ReadOnlySpan, want attribute.KeyValue) {
	t.Helper()
	got, ok := attr(s, want.Key)
	if !ok {
		t.Errorf("span %q: no attribute %s, want %s", s.Name(), want.Key, want.Value.String())
		return
	}
	if got != want.Value {
		t.Errorf("span %q: %s = %s, want %s", s.Name(), want.Key, got.String(), want.Value.String())
	}
}

func wantError(t *testing.T, s sdktrace.ReadOnlySpan, errType string) {
	t.Helper()
	if s.Status().Code != codes.Error {
		t.Errorf("span %q: status %v, want Error", s.Name(), s.Status().Code)
	}
	wantAttr(t, s, semconv.ErrorTypeKey.String(errType))
}

func linkedTo(s sdktrace.ReadOnlySpan, sc trace.SpanContext) bool {
	for _, l := range s.Links() {
		if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
			return true
		}
	}
	return false
}

// consumeOne starts a consumer on q whose handler reports its ctx and
// delivery, and returns them for the first message.
func consumeOne(t *testing.T, ctx context.Context, c *warren.Client, q string) (context.Context, *warren.Delivery) {
	t.Helper()
	type got struct {
		ctx context.Context
		d   *warren.Delivery
	}
	ch := make(chan got, 1)
	k, err := c.StartConsumer(ctx, q, func(hctx context.Context, d *warren.Delivery) error {
		select {
		case ch <- got{hctx, d}:
		default:
		}
		return nil
	}, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = k.Cancel(ctx)
	})
	select {
	case g := <-ch:
		return g.ctx, g.d
	case <-ctx.Done():
		t.Fatal("no delivery")
	}
	return nil, nil
}

// parent returns ctx with a root span of tp and a baggage member.
func parent(t *testing.T, ctx context.Context, tp trace.TracerProvider) (context.Context, trace.Span) {
	t.Helper()
	m, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	b, err := baggage.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return tp.Tracer("test").Start(baggage.ContextWithBaggage(ctx, b), "request")
}

func TestTracingPublishThenConsumeLinksTheProcessSpanToThePublishSpan(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx)
	ch := tc.channel(t, ctx, warren.ModeConfirm)
	q := queue(t, ctx, ch, nil)

	pctx, root := parent(t, ctx, tc.tp)
	headers := warren.Table{"app": "x"}
	err := ch.Publish(pctx, "", q, warren.Publishing{MessageId: "m-1", CorrelationId: "c-1", Headers: headers, Body: []byte("hello")})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	if len(headers) != 1 {
		t.Errorf("the caller's headers were modified: %v", headers)
	}
	hctx, d := consumeOne(t, ctx, tc.c, q)

	pub := tc.spans(t, ctx, "publish", 1)[0]
	proc := tc.spans(t, ctx, "process", 1)[0]
	if pub.Name() != "publish amq.default" || pub.SpanKind() != trace.SpanKindProducer {
		t.Errorf("publish span %q kind %v, want \"publish amq.default\" kind producer", pub.Name(), pub.SpanKind())
	}
	if pub.Parent().SpanID() != root.SpanContext().SpanID() {
		t.Errorf("publish span's parent %v, want the caller's span %v", pub.Parent().SpanID(), root.SpanContext().SpanID())
	}
	if pub.Status().Code != codes.Unset {
		t.Errorf("acked publish span status %v, want Unset", pub.Status())
	}
	for _, a := range []attribute.KeyValue{semconv.MessagingSystemRabbitMQ, semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationName("publish"), semconv.MessagingDestinationName(q),
		semconv.MessagingRabbitMQDestinationRoutingKey(q), semconv.MessagingMessageID("m-1"),
		semconv.MessagingMessageConversationID("c-1"), semconv.MessagingMessageBodySize(5),
		semconv.ServerAddress("127.0.0.1")} {
		wantAttr(t, pub, a)
	}
	if _, ok := attr(pub, semconv.ServerPortKey); !ok {
		t.Errorf("publish span has no %s", semconv.ServerPortKey)
	}

	if want := "process " + q; proc.Name() != want || proc.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("process span %q kind %v, want %q kind consumer", proc.Name(), proc.SpanKind(), want)
	}
	if !linkedTo(proc, pub.SpanContext()) {
		t.Errorf("process span links %v, want a link to the publish span %v", proc.Links(), pub.SpanContext())
	}
	if proc.Parent().IsValid() {
		t.Errorf("process span has parent %v, want none (a link by default)", proc.Parent())
	}
	wantAttr(t, proc, semconv.MessagingOperationTypeProcess)
	wantAttr(t, proc, semconv.MessagingDestinationName(q))
	wantAttr(t, proc, semconv.MessagingMessageID("m-1"))
	if got := trace.SpanContextFromContext(hctx); got.SpanID() != proc.SpanContext().SpanID() {
		t.Errorf("handler's ctx holds span %v, want the process span %v", got.SpanID(), proc.SpanContext().SpanID())
	}
	if got := baggage.FromContext(hctx).Member("tenant").Value(); got != "acme" {
		t.Errorf("handler's baggage tenant = %q, want %q", got, "acme")
	}
	tp, _ := d.Headers["traceparent"].(string)
	if !strings.Contains(tp, pub.SpanContext().SpanID().String()) {
		t.Errorf("delivered traceparent %q, want the publish span %v", tp, pub.SpanContext().SpanID())
	}
}

func TestTracingWithProducerAsParentPutsProcessInTheProducersTrace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx, otelwarren.WithProducerAsParent(true), otelwarren.WithRoutingKeyInSpanName(true))
	ch := tc.channel(t, ctx, warren.ModePlain)
	q := queue(t, ctx, ch, nil)
	pctx, root := parent(t, ctx, tc.tp)
	err := ch.Publish(pctx, "", q, warren.Publishing{Body: []byte("x")})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	hctx, _ := consumeOne(t, ctx, tc.c, q)
	pub := tc.spans(t, ctx, "publish", 1)[0]
	proc := tc.spans(t, ctx, "process", 1)[0]
	if pub.Name() != "publish "+q {
		t.Errorf("publish span %q, want %q (routing key in the name)", pub.Name(), "publish "+q)
	}
	if proc.SpanContext().TraceID() != pub.SpanContext().TraceID() || proc.Parent().SpanID() != pub.SpanContext().SpanID() {
		t.Errorf("process span in trace %v with parent %v, want the publish span's trace %v and the publish span %v as parent",
			proc.SpanContext().TraceID(), proc.Parent().SpanID(), pub.SpanContext().TraceID(), pub.SpanContext().SpanID())
	}
	if got := baggage.FromContext(hctx).Member("tenant").Value(); got != "acme" {
		t.Errorf("handler's baggage tenant = %q, want %q", got, "acme")
	}
}

func TestTracingNeverOverwritesATraceparentAndReadsOneWrittenAsBytes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx)
	ch := tc.channel(t, ctx, warren.ModeConfirm)
	q := queue(t, ctx, ch, nil)
	const preset = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	presetSC := trace.SpanContextFromContext(w3cProp.Extract(ctx, propagation.MapCarrier{"traceparent": preset}))
	for i, v := range []any{preset, []byte(preset)} {
		if err := ch.Publish(ctx, "", q, warren.Publishing{Headers: warren.Table{"traceparent": v}}); err != nil {
			t.Fatal(err)
		}
		d, ok, err := ch.Get(ctx, q, warren.GetOptions{AutoAck: true})
		if err != nil || !ok {
			t.Fatalf("Get: %v, %v", ok, err)
		}
		if got := fmt.Sprintf("%s", d.Headers["traceparent"]); got != preset {
			t.Errorf("message %d: traceparent %q arrived, want the caller's %q", i, got, preset)
		}
		rcv := tc.spans(t, ctx, "receive", i+1)[i]
		if rcv.Name() != "receive "+q || rcv.SpanKind() != trace.SpanKindClient {
			t.Errorf("receive span %q kind %v, want %q kind client", rcv.Name(), rcv.SpanKind(), "receive "+q)
		}
		wantAttr(t, rcv, semconv.MessagingOperationTypeReceive)
		if !linkedTo(rcv, presetSC) {
			t.Errorf("message %d (%T): receive span links %v, want a link to the traceparent's span", i, v, rcv.Links())
		}
	}
}

func TestTracingNackedAndUnroutablePublishesEndWithAnError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx)
	ch := tc.channel(t, ctx, warren.ModeConfirm)
	full := queue(t, ctx, ch, warren.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})

	err := ch.Publish(ctx, "", full, warren.Publishing{Body: []byte("x")})
	if !errors.Is(err, warren.ErrNacked) {
		t.Fatalf("publish to a full queue: %v, want ErrNacked", err)
	}
	wantError(t, tc.spans(t, ctx, "publish", 1)[0], "nacked")

	pub, err := tc.c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	err = pub.PublishMessage(ctx, warren.Message{Key: "warren-no-such-queue", Mandatory: true})
	if !errors.Is(err, warren.ErrUnroutable) {
		t.Fatalf("mandatory publish with no route: %v, want ErrUnroutable", err)
	}
	s := tc.spans(t, ctx, "publish", 2)[1]
	wantError(t, s, "unroutable")
	wantAttr(t, s, semconv.MessagingDestinationName("warren-no-such-queue"))
}

func TestTracingBatchConsumerSpanLinksEveryMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx)
	ch := tc.channel(t, ctx, warren.ModeConfirm)
	q := queue(t, ctx, ch, nil)
	msgs := make([]warren.Message, 3)
	for i := range msgs {
		msgs[i] = warren.Message{Key: q, Publishing: warren.Publishing{MessageId: fmt.Sprint(i)}}
	}
	for i, err := range ch.PublishBatch(ctx, msgs) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	for i := range msgs {
		if msgs[i].Headers != nil {
			t.Errorf("message %d: the caller's message was given headers %v", i, msgs[i].Headers)
		}
	}
	got := make(chan int, 1)
	k, err := tc.c.StartBatchConsumer(ctx, q, func(_ context.Context, b []*warren.Delivery) error {
		got <- len(b)
		return nil
	}, warren.BatchOptions{Size: 3, MaxWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Cancel(ctx)
	select {
	case n := <-got:
		if n != 3 {
			t.Fatalf("batch of %d, want 3", n)
		}
	case <-ctx.Done():
		t.Fatal("no batch")
	}
	pubs := tc.spans(t, ctx, "publish", 3)
	batch := tc.spans(t, ctx, "process", 1)[0]
	wantAttr(t, batch, semconv.MessagingBatchMessageCount(3))
	wantAttr(t, batch, semconv.MessagingOperationTypeProcess)
	if len(batch.Links()) != 3 {
		t.Errorf("batch span has %d links, want 3", len(batch.Links()))
	}
	for i, p := range pubs {
		if !linkedTo(batch, p.SpanContext()) {
			t.Errorf("batch span does not link publish span %d", i)
		}
	}
}

func TestTracingRPCCallIsTracedToTheServerAndBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx, otelwarren.WithProducerAsParent(true))
	ch := tc.channel(t, ctx, warren.ModePlain)
	q := queue(t, ctx, ch, nil)
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = tc.c.Serve(sctx, q, func(_ context.Context, d *warren.Delivery) (warren.Publishing, error) {
			return warren.Publishing{Body: append([]byte("re: "), d.Body...)}, nil
		}, warren.ServeOptions{})
	}()
	defer wg.Wait()
	defer stop()
	rc, err := tc.c.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	pctx, root := parent(t, ctx, tc.tp)
	reply, err := rc.Call(pctx, "", q, warren.Publishing{Body: []byte("ping")})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Body) != "re: ping" {
		t.Fatalf("reply %q", reply.Body)
	}
	pubs := tc.spans(t, ctx, "publish", 2)
	proc := tc.spans(t, ctx, "process", 1)[0]
	var call, back sdktrace.ReadOnlySpan
	for _, s := range pubs {
		if v, _ := attr(s, semconv.MessagingRabbitMQDestinationRoutingKeyKey); v.AsString() == q {
			call = s
		} else {
			back = s
		}
	}
	if call == nil || back == nil {
		t.Fatalf("publish spans %v, want the request's and the reply's", names(pubs))
	}
	traceID := root.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{call, proc, back} {
		if s.SpanContext().TraceID() != traceID {
			t.Errorf("span %q in trace %v, want the caller's %v", s.Name(), s.SpanContext().TraceID(), traceID)
		}
	}
	if call.Parent().SpanID() != root.SpanContext().SpanID() || proc.Parent().SpanID() != call.SpanContext().SpanID() ||
		back.Parent().SpanID() != proc.SpanContext().SpanID() {
		t.Errorf("want request publish → process → reply publish, got parents %v → %v → %v",
			call.Parent().SpanID(), proc.Parent().SpanID(), back.Parent().SpanID())
	}
	if call.Status().Code != codes.Unset {
		t.Errorf("call span status %v, want Unset", call.Status())
	}
}

func TestTracingSettleSpansAreChildrenOfTheProcessSpan(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx, otelwarren.WithSettleSpans(true))
	ch := tc.channel(t, ctx, warren.ModePlain)
	q := queue(t, ctx, ch, nil)
	if err := ch.Publish(ctx, "", q, warren.Publishing{}); err != nil {
		t.Fatal(err)
	}
	consumeOne(t, ctx, tc.c, q)
	ack := tc.spans(t, ctx, "ack", 1)[0]
	proc := tc.spans(t, ctx, "process", 1)[0]
	if ack.Parent().SpanID() != proc.SpanContext().SpanID() || ack.SpanKind() != trace.SpanKindClient {
		t.Errorf("ack span: parent %v kind %v, want the process span %v, kind client", ack.Parent().SpanID(), ack.SpanKind(), proc.SpanContext().SpanID())
	}
	wantAttr(t, ack, semconv.MessagingOperationTypeSettle)
	wantAttr(t, ack, semconv.MessagingOperationName("ack"))
}

func TestTracingEveryPublishPathRecordsOneSpanPerMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tc := dialTraced(t, ctx)
	ch := tc.channel(t, ctx, warren.ModePlain)
	q := queue(t, ctx, ch, nil)
	msg := func(via string) warren.Message {
		return warren.Message{Key: q, Publishing: warren.Publishing{MessageId: via}}
	}
	pool, err := tc.c.NewPool(ctx, warren.PoolOptions{Size: 1, Mode: warren.ModeConfirm})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close(ctx)
	pub, err := tc.c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	steps := []func() error{
		func() error { return ch.PublishMessage(ctx, msg("channel")) },
		func() error {
			return pool.Do(ctx, func(c warren.Channel) error { return c.PublishMessage(ctx, msg("pool")) })
		},
		func() error {
			return tc.c.Tx(ctx, func(tx *warren.Tx) error { return tx.PublishMessage(ctx, msg("tx")) })
		},
		func() error { return pub.PublishMessage(ctx, msg("publisher")) },
		func() error {
			return errors.Join(pub.PublishBatch(ctx, []warren.Message{msg("publisher-batch"), msg("publisher-batch")})...)
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	spans := tc.spans(t, ctx, "publish", 6)
	count := map[string]int{}
	for _, s := range spans {
		v, _ := attr(s, semconv.MessagingMessageIDKey)
		count[v.AsString()]++
	}
	want := map[string]int{"channel": 1, "pool": 1, "tx": 1, "publisher": 1, "publisher-batch": 2}
	if fmt.Sprint(count) != fmt.Sprint(want) {
		t.Errorf("publish spans by message id %v, want %v", count, want)
	}
	// Every message arrives with its own trace context.
	for range 6 {
		d, ok, err := ch.Get(ctx, q, warren.GetOptions{AutoAck: true})
		if err != nil || !ok {
			t.Fatalf("Get: %v %v", ok, err)
		}
		if _, ok := d.Headers["traceparent"].(string); !ok {
			t.Errorf("message %q arrived without a traceparent: %v", d.MessageId, d.Headers)
		}
	}
}

func TestErrorTypeNamesWarrensErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&warren.NackedError{}, "nacked"},
		{fmt.Errorf("x: %w", warren.ErrUnroutable), "unroutable"},
		{&warren.OutcomeUnknownError{Cause: context.DeadlineExceeded}, "outcome_unknown"},
		{fmt.Errorf("bad: %w", warren.ErrInvalidArgument), "invalid_argument"},
		{context.DeadlineExceeded, "timeout"},
		{warren.ErrPublisherClosed, "publisher_closed"},
		{errors.New("plain"), "*errors.errorString"},
	} {
		if got := otelwarren.ErrorType(c.err); got != c.want {
			t.Errorf("ErrorType(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestTracingWithoutAPropagatorWritesW3CHeaders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := brokertest.Need(t, broker)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	// The global propagator is OpenTelemetry's no-op default here.
	c, err := warren.Dial(ctx, b.URL, warren.WithTracer(otelwarren.NewTracer(otelwarren.WithTracerProvider(tp))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	tc := &traced{c: c, rec: rec, tp: tp}
	ch := tc.channel(t, ctx, warren.ModePlain)
	q := queue(t, ctx, ch, nil)
	pctx, root := parent(t, ctx, tp)
	err = ch.Publish(pctx, "", q, warren.Publishing{})
	root.End()
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := ch.Get(ctx, q, warren.GetOptions{AutoAck: true})
	if err != nil || !ok {
		t.Fatalf("Get: %v %v", ok, err)
	}
	pub := tc.spans(t, ctx, "publish", 1)[0]
	if tp, _ := d.Headers["traceparent"].(string); !strings.Contains(tp, pub.SpanContext().SpanID().String()) {
		t.Errorf("traceparent %q, want the publish span %v", tp, pub.SpanContext().SpanID())
	}
	if bg, _ := d.Headers["baggage"].(string); bg != "tenant=acme" {
		t.Errorf("baggage header %q, want %q", bg, "tenant=acme")
	}
}

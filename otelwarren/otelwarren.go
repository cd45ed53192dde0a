// Package otelwarren reports warren's figures to OpenTelemetry metrics, and
// traces messages with OpenTelemetry spans (see NewTracer). It is a module
// of its own, so that warren itself depends on nothing but amqp091-go.
//
// Tracing, with the trace context and baggage in message headers (W3C
// traceparent, tracestate and baggage unless another propagator is set):
//
//	client, err := warren.Dial(ctx, url, warren.WithTracer(otelwarren.NewTracer()))
//
// Metrics:
//
//	meter := otel.Meter("billing")
//	hook, err := otelwarren.Hook(meter)
//	client, err := warren.Dial(ctx, url, warren.WithMetrics(hook))
//	reg, err := otelwarren.ObserveClient(meter, client)
//	defer reg.Unregister()
//
// Instruments (attribute keys in brackets):
//
//	warren.publish.confirm.duration   histogram, s   publish to broker answer [outcome]
//	warren.pool.acquire.duration      histogram, s   time Pool.Acquire waited [mode]
//	warren.channel.opened             counter        channels opened (churn)
//	warren.channel.closed             counter        channels closed (churn)
//	warren.connection.reconnects      counter        reconnects (WithReconnect)
//	warren.connection.downtime        histogram, s   time without a connection per reconnect
//	warren.channel.open               gauge          channels open now
//	warren.connection.blocked         gauge          1 while connection.blocked
//	warren.pool.channels              gauge          [pool, state=in_use|idle]
//	warren.pool.waiting               gauge          Acquire calls waiting now [pool]
//	warren.pool.discarded             counter        channels discarded [pool, reason]
//	warren.publisher.outcomes         counter        Publisher results [publisher, outcome]
package otelwarren

import (
	"context"
	"time"

	"github.com/warrenmq/warren"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Hook returns a warren.MetricsHook that records into meter. Pass it to
// warren.Dial with warren.WithMetrics.
func Hook(meter metric.Meter) (warren.MetricsHook, error) {
	confirm, err := meter.Float64Histogram("warren.publish.confirm.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a publish on a confirm channel to the broker's answer, by outcome."))
	if err != nil {
		return warren.MetricsHook{}, err
	}
	acquire, err := meter.Float64Histogram("warren.pool.acquire.duration", metric.WithUnit("s"),
		metric.WithDescription("Time Pool.Acquire waited for a channel, by pool mode."))
	if err != nil {
		return warren.MetricsHook{}, err
	}
	opened, err := meter.Int64Counter("warren.channel.opened", metric.WithDescription("Channels opened (churn)."))
	if err != nil {
		return warren.MetricsHook{}, err
	}
	closed, err := meter.Int64Counter("warren.channel.closed", metric.WithDescription("Channels closed (churn)."))
	if err != nil {
		return warren.MetricsHook{}, err
	}
	reconnects, err := meter.Int64Counter("warren.connection.reconnects", metric.WithDescription("Reconnects after a lost connection."))
	if err != nil {
		return warren.MetricsHook{}, err
	}
	downtime, err := meter.Float64Histogram("warren.connection.downtime", metric.WithUnit("s"),
		metric.WithDescription("Time without a connection, per reconnect."))
	if err != nil {
		return warren.MetricsHook{}, err
	}
	// Attribute sets are built once: the hooks run on hot paths.
	outcomes := map[warren.Outcome]metric.MeasurementOption{}
	for _, o := range []warren.Outcome{warren.OutcomeAcked, warren.OutcomeNacked, warren.OutcomeUnroutable, warren.OutcomeUnknown} {
		outcomes[o] = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", o.String())))
	}
	modes := map[warren.Mode]metric.MeasurementOption{}
	for _, m := range []warren.Mode{warren.ModePlain, warren.ModeConfirm, warren.ModeTx} {
		modes[m] = metric.WithAttributeSet(attribute.NewSet(attribute.String("mode", m.String())))
	}
	ctx := context.Background()
	return warren.MetricsHook{
		PublishConfirmed: func(o warren.Outcome, d time.Duration) { confirm.Record(ctx, d.Seconds(), outcomes[o]) },
		PoolAcquired:     func(m warren.Mode, d time.Duration) { acquire.Record(ctx, d.Seconds(), modes[m]) },
		ChannelOpened:    func(uint16) { opened.Add(ctx, 1) },
		ChannelClosed:    func(uint16) { closed.Add(ctx, 1) },
		Reconnected: func(_ int, d time.Duration) {
			reconnects.Add(ctx, 1)
			downtime.Record(ctx, d.Seconds())
		},
	}, nil
}

// ObserveClient registers gauges read from c.Stats() at each collection.
func ObserveClient(meter metric.Meter, c *warren.Client) (metric.Registration, error) {
	open, err := meter.Int64ObservableGauge("warren.channel.open", metric.WithDescription("Channels open on the connection."))
	if err != nil {
		return nil, err
	}
	blocked, err := meter.Int64ObservableGauge("warren.connection.blocked", metric.WithDescription("1 while the broker blocks the connection (connection.blocked)."))
	if err != nil {
		return nil, err
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := c.Stats()
		o.ObserveInt64(open, int64(s.OpenChannels))
		b := int64(0)
		if s.Blocked {
			b = 1
		}
		o.ObserveInt64(blocked, b)
		return nil
	}, open, blocked)
}

// ObservePool registers gauges and counters read from p.Stats(), labelled
// pool=name.
func ObservePool(meter metric.Meter, name string, p *warren.Pool) (metric.Registration, error) {
	chans, err := meter.Int64ObservableGauge("warren.pool.channels", metric.WithDescription("Pool channels by state (in_use, idle)."))
	if err != nil {
		return nil, err
	}
	waiting, err := meter.Int64ObservableGauge("warren.pool.waiting", metric.WithDescription("Acquire calls waiting now."))
	if err != nil {
		return nil, err
	}
	discarded, err := meter.Int64ObservableCounter("warren.pool.discarded", metric.WithDescription("Channels the pool closed instead of reusing, by reason."))
	if err != nil {
		return nil, err
	}
	pool := attribute.String("pool", name)
	inUse := metric.WithAttributes(pool, attribute.String("state", "in_use"))
	idle := metric.WithAttributes(pool, attribute.String("state", "idle"))
	byPool := metric.WithAttributes(pool)
	reason := func(r string) metric.ObserveOption {
		return metric.WithAttributes(pool, attribute.String("reason", r))
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := p.Stats()
		o.ObserveInt64(chans, int64(s.InUse), inUse)
		o.ObserveInt64(chans, int64(s.Idle), idle)
		o.ObserveInt64(waiting, int64(s.Waiting), byPool)
		d := s.Discarded
		for r, n := range map[string]int64{"broker_closed": d.BrokerClosed, "poisoned": d.Poisoned, "closed": d.Closed,
			"busy": d.Busy, "mode_changed": d.ModeChanged, "connection": d.Connection, "tx_unfinished": d.TxUnfinished} {
			o.ObserveInt64(discarded, n, reason(r))
		}
		return nil
	}, chans, waiting, discarded)
}

// ObservePublisher registers a counter of p's outcomes, labelled
// publisher=name.
func ObservePublisher(meter metric.Meter, name string, p *warren.Publisher) (metric.Registration, error) {
	outcomes, err := meter.Int64ObservableCounter("warren.publisher.outcomes", metric.WithDescription("Publisher.Publish results by outcome."))
	if err != nil {
		return nil, err
	}
	pub := attribute.String("publisher", name)
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := p.Stats()
		for outcome, n := range map[string]int64{"acked": s.Acked, "nacked": s.Nacked, "unroutable": s.Unroutable,
			"unknown": s.Unknown, "not_published": s.NotPublished} {
			o.ObserveInt64(outcomes, n, metric.WithAttributes(pub, attribute.String("outcome", outcome)))
		}
		return nil
	}, outcomes)
}

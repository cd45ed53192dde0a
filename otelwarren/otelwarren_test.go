package otelwarren_test

import (
	"context"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/otelwarren"
)

var broker *brokertest.Broker

func TestMain(m *testing.M) {
	os.Exit(brokertest.RunMain(m, &broker, brokertest.Options{TryLocalDefault: true}))
}

// find returns the metric named name from rm.
func find(t *testing.T, rm metricdata.ResourceMetrics, name string) metricdata.Aggregation {
	t.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data
			}
		}
	}
	t.Fatalf("no metric %q collected", name)
	return nil
}

func TestHookAndObserversReportWhatHappened(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reader := sdkmetric.NewManualReader()
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test")

	hook, err := otelwarren.Hook(meter)
	if err != nil {
		t.Fatal(err)
	}
	c, err := warren.Dial(ctx, b.URL, warren.WithMetrics(hook))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := otelwarren.ObserveClient(meter, c); err != nil {
		t.Fatal(err)
	}
	pool, err := c.NewPool(ctx, warren.PoolOptions{Size: 2, Mode: warren.ModeConfirm})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close(ctx)
	if _, err := otelwarren.ObservePool(meter, "jobs", pool); err != nil {
		t.Fatal(err)
	}
	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	if _, err := otelwarren.ObservePublisher(meter, "events", pub); err != nil {
		t.Fatal(err)
	}

	var q warren.Queue
	err = pool.Do(ctx, func(ch warren.Channel) error {
		if q, err = ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true}); err != nil {
			return err
		}
		for i := 0; i < 5; i++ {
			if err := ch.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte("x")}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, "", q.Name, warren.Publishing{Body: []byte("y")}); err != nil {
		t.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	hist := find(t, rm, "warren.publish.confirm.duration").(metricdata.Histogram[float64])
	var acked uint64
	for _, dp := range hist.DataPoints {
		if v, _ := dp.Attributes.Value(attribute.Key("outcome")); v.AsString() == "acked" {
			acked += dp.Count
		}
	}
	if acked != 6 {
		t.Errorf("confirm duration histogram: %d acked, want 6 (5 on the pool channel, 1 through the Publisher)", acked)
	}
	// One lease by pool.Do, one by the Publisher's worker from its own pool.
	if n := find(t, rm, "warren.pool.acquire.duration").(metricdata.Histogram[float64]).DataPoints[0].Count; n != 2 {
		t.Errorf("pool acquire histogram: %d acquires, want 2", n)
	}
	if v := find(t, rm, "warren.channel.opened").(metricdata.Sum[int64]).DataPoints[0].Value; v < 2 {
		t.Errorf("channels opened: %d, want at least 2 (pool and publisher)", v)
	}
	if v := find(t, rm, "warren.channel.open").(metricdata.Gauge[int64]).DataPoints[0].Value; v != int64(c.Stats().OpenChannels) {
		t.Errorf("open channels gauge: %d, want %d", v, c.Stats().OpenChannels)
	}
	var pubAcked int64
	for _, dp := range find(t, rm, "warren.publisher.outcomes").(metricdata.Sum[int64]).DataPoints {
		if v, _ := dp.Attributes.Value(attribute.Key("outcome")); v.AsString() == "acked" {
			pubAcked = dp.Value
		}
	}
	if pubAcked != 1 {
		t.Errorf("publisher outcomes: %d acked, want 1", pubAcked)
	}
}

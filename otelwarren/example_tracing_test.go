package otelwarren_test

import (
	"context"
	"log"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/otelwarren"
)

// A producer and a consumer traced end to end: the publish span's context
// travels in the message's headers, and the handler's ctx holds a process
// span linked to it.
func ExampleNewTracer() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tp := sdktrace.NewTracerProvider() // with an exporter, in a real program
	defer tp.Shutdown(ctx)

	client, err := warren.Dial(ctx, "amqp://guest:guest@localhost:5672/",
		warren.WithTracer(otelwarren.NewTracer(
			otelwarren.WithTracerProvider(tp),
			otelwarren.WithSettleSpans(true), // ack/nack/reject spans too
		)))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)

	ch, err := client.Channel(ctx)
	if err != nil {
		log.Fatal(err)
	}
	// A "publish amq.default" PRODUCER span, child of any span in ctx.
	if err := ch.Publish(ctx, "", "jobs", warren.Publishing{Body: []byte("hello")}); err != nil {
		log.Fatal(err)
	}
	// A "process jobs" CONSUMER span around each handler call.
	err = client.Consume(ctx, "jobs", func(ctx context.Context, d *warren.Delivery) error {
		log.Printf("handling %s", d.Body) // ctx carries the span and the message's baggage
		return nil
	}, warren.ConsumeOptions{})
	if err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

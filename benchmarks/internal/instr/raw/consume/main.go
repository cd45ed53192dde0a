// Command consume is the raw amqp091-go program of the scenario "consume,
// ack each": ch.Qos(-prefetch), ch.Consume with manual acks and a range
// loop acking each delivery; it stops after the -n-th (the driver filled
// the queue with exactly -n messages) and closes the channel.
package main

import (
	"context"
	"fmt"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/raw"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		conn, ch, err := raw.Dial(p, "instrbench-raw-consume", false)
		if err != nil {
			return nil, err
		}
		if err := ch.Qos(p.Prefetch, 0, false); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("basic.qos: %w", err)
		}
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				deliveries, err := ch.Consume(p.Queue, "", false, false, false, false, nil)
				if err != nil {
					return fmt.Errorf("basic.consume: %w", err)
				}
				// The range ends only when deliveries is closed: closing
				// the channel when ctx ends makes the timeout work.
				stop := context.AfterFunc(ctx, func() { _ = ch.Close() })
				defer stop()
				got := 0
				for d := range deliveries {
					if d.Redelivered {
						return fmt.Errorf("delivery %d was a redelivery", got+1)
					}
					if err := d.Ack(false); err != nil {
						return fmt.Errorf("basic.ack: %w", err)
					}
					if got++; got == p.N {
						return ch.Close()
					}
				}
				return fmt.Errorf("deliveries ended after %d of %d messages: %w", got, p.N, context.Cause(ctx))
			},
			Close: func(ctx context.Context) error { return raw.Close(ctx, conn) },
		}, nil
	})
}

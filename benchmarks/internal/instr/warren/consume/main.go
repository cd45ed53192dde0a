// Command consume is the warren program of the scenario "consume, ack
// each": Client.Consume with Prefetch -prefetch and one worker whose
// handler returns nil (warren acks); at the -n-th message (the driver
// filled the queue with exactly -n) it cancels Consume's ctx, so Consume
// cancels the consumer, lets the handler finish and closes its channel.
package main

import (
	"context"
	"errors"
	"fmt"

	wr "github.com/warrenmq/warren"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/warren"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		c, err := warren.Dial(ctx, p, "instrbench-warren-consume")
		if err != nil {
			return nil, err
		}
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				cctx, done := context.WithCancel(ctx)
				defer done()
				got, redelivered := 0, 0
				h := func(_ context.Context, d *wr.Delivery) error {
					if d.Redelivered { // Workers: 1, so one handler at a time
						redelivered++
					}
					if got++; got == p.N {
						done()
					}
					return nil
				}
				err := c.Consume(cctx, p.Queue, h, wr.ConsumeOptions{Prefetch: p.Prefetch, Workers: 1})
				switch {
				case redelivered != 0:
					return fmt.Errorf("%d of the %d deliveries were redeliveries", redelivered, got)
				case got == p.N && ctx.Err() == nil && errors.Is(err, context.Canceled):
					return nil // stopped by the handler at the n-th message
				case err == nil:
					return fmt.Errorf("warren Consume returned nil after %d of %d messages", got, p.N)
				default:
					return fmt.Errorf("consuming stopped after %d of %d messages: %w", got, p.N, err)
				}
			},
			Close: c.Close,
		}, nil
	})
}

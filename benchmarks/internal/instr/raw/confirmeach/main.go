// Command confirmeach is the raw amqp091-go program of the scenario
// "confirmed, wait for each": a channel in confirm mode,
// PublishWithDeferredConfirmWithContext then dc.WaitContext, -n times.
package main

import (
	"context"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/raw"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		conn, ch, err := raw.Dial(p, "instrbench-raw-confirmeach", true)
		if err != nil {
			return nil, err
		}
		msg := raw.Message(p)
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				for range p.N {
					dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", p.Queue, false, false, msg)
					if err != nil {
						return err
					}
					ok, err := dc.WaitContext(ctx)
					if err != nil {
						return err
					}
					if !ok {
						return raw.ErrNacked
					}
				}
				return nil
			},
			Close: func(ctx context.Context) error { return raw.Close(ctx, conn) },
		}, nil
	})
}

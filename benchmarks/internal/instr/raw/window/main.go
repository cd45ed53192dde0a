// Command window is the raw amqp091-go program of the scenario "confirmed,
// window": a channel in confirm mode, -window deferred confirmations
// published, then all waited for, until -n messages were confirmed (the
// last window may be short).
package main

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/raw"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		conn, ch, err := raw.Dial(p, "instrbench-raw-window", true)
		if err != nil {
			return nil, err
		}
		msg := raw.Message(p)
		dcs := make([]*amqp.DeferredConfirmation, 0, p.Window)
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				for sent := 0; sent < p.N; {
					dcs = dcs[:0]
					for ; sent < p.N && len(dcs) < cap(dcs); sent++ {
						dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", p.Queue, false, false, msg)
						if err != nil {
							return err
						}
						dcs = append(dcs, dc)
					}
					for _, dc := range dcs {
						ok, err := dc.WaitContext(ctx)
						if err != nil {
							return err
						}
						if !ok {
							return raw.ErrNacked
						}
					}
				}
				return nil
			},
			Close: func(ctx context.Context) error { return raw.Close(ctx, conn) },
		}, nil
	})
}

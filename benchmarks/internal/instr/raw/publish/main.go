// Command publish is the raw amqp091-go program of the scenario "publish,
// no confirms": ch.PublishWithContext on a plain channel, -n times.
package main

import (
	"context"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/raw"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		conn, ch, err := raw.Dial(p, "instrbench-raw-publish", false)
		if err != nil {
			return nil, err
		}
		msg := raw.Message(p)
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				for range p.N {
					if err := ch.PublishWithContext(ctx, "", p.Queue, false, false, msg); err != nil {
						return err
					}
				}
				return nil
			},
			Close: func(ctx context.Context) error { return raw.Close(ctx, conn) },
		}, nil
	})
}

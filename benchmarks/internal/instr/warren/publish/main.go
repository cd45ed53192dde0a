// Command publish is the warren program of the scenario "publish, no
// confirms": Channel.Publish on a plain Channel from Client.Channel, -n
// times.
package main

import (
	"context"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/warren"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		c, ch, err := warren.Channel(ctx, p, "instrbench-warren-publish", false)
		if err != nil {
			return nil, err
		}
		msg := warren.Message(p)
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				for range p.N {
					if err := ch.Publish(ctx, "", p.Queue, msg); err != nil {
						return err
					}
				}
				return nil
			},
			Close: c.Close,
		}, nil
	})
}

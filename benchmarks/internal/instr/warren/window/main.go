// Command window is the warren program of the scenario "confirmed,
// window": Channel.PublishDeferred on a Channel in ModeConfirm, -window
// Confirmations outstanding, then all waited for, until -n messages were
// confirmed (the last window may be short).
package main

import (
	"context"

	wr "github.com/warrenmq/warren"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/warren"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		c, ch, err := warren.Channel(ctx, p, "instrbench-warren-window", true)
		if err != nil {
			return nil, err
		}
		m := wr.Message{Key: p.Queue, Publishing: warren.Message(p)}
		confs := make([]*wr.Confirmation, 0, p.Window)
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				for sent := 0; sent < p.N; {
					confs = confs[:0]
					for ; sent < p.N && len(confs) < cap(confs); sent++ {
						conf, err := ch.PublishDeferred(ctx, m)
						if err != nil {
							return err
						}
						confs = append(confs, conf)
					}
					for _, conf := range confs {
						if err := conf.Wait(ctx); err != nil {
							return err
						}
					}
				}
				return nil
			},
			Close: c.Close,
		}, nil
	})
}

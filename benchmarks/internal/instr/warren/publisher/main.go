// Command publisher is the warren program of the scenario "Publisher,
// many callers": one Publisher with its default options (Client.NewPublisher)
// shared by -callers goroutines, each calling Publish (which returns once
// the broker acked) until -n messages were published between them.
package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	wr "github.com/warrenmq/warren"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
	"github.com/warrenmq/warren/benchmarks/internal/instr/warren"
)

func main() {
	instr.Main(func(ctx context.Context, p instr.Params) (*instr.Run, error) {
		c, err := warren.Dial(ctx, p, "instrbench-warren-publisher")
		if err != nil {
			return nil, err
		}
		pub, err := c.NewPublisher(ctx, wr.PublisherOptions{})
		if err != nil {
			_ = c.Close(ctx)
			return nil, err
		}
		msg := warren.Message(p)
		return &instr.Run{
			Loop: func(ctx context.Context) error {
				var tickets atomic.Int64 // messages claimed by the callers
				errs := make([]error, p.Callers)
				var wg sync.WaitGroup
				for i := range p.Callers {
					wg.Go(func() {
						for tickets.Add(1) <= int64(p.N) {
							if err := pub.Publish(ctx, "", p.Queue, msg); err != nil {
								errs[i] = err
								return
							}
						}
					})
				}
				wg.Wait()
				return errors.Join(errs...)
			},
			Close: func(ctx context.Context) error {
				var err error
				if s := pub.Stats(); s.Nacked+s.Unroutable+s.Unknown+s.NotPublished != 0 {
					err = fmt.Errorf("publisher: %+v, want every message acked", s)
				}
				return errors.Join(err, pub.Close(ctx), c.Close(ctx))
			},
		}, nil
	})
}

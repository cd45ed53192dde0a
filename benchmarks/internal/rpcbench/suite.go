// Package rpcbench compares request/reply round trips over RabbitMQ's
// direct reply-to through warren's RPCClient with the hand-written
// amqp091-go idiom (one channel consuming amq.rabbitmq.reply-to, a map of
// correlation ids to waiters), from one goroutine and from 32.
package rpcbench

import (
	"context"
	"errors"
	"fmt"

	"time"

	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/peers"
)

// Contender names.
const (
	Raw    = "raw"    // amqp091-go: one channel, reply-to consumer, correlation map
	Warren = "warren" // warren: RPCClient with RPCOptions{} (one channel)
)

// Options configure the rpc suite. Zero fields take the defaults noted.
type Options struct {
	// BrokerURL is the RabbitMQ every contender calls through. Required.
	BrokerURL string
	// Contenders to run, in order (default Raw, Warren).
	Contenders []string
	// Duration of each measured pass (default 1 s).
	Duration time.Duration
	// Goroutines of the concurrent case (default 32).
	Goroutines int
	// BodySize is the size of every request and reply body (default 128 bytes).
	BodySize int
}

func (o *Options) defaults() {
	if o.Duration == 0 {
		o.Duration = time.Second
	}
	if o.Goroutines == 0 {
		o.Goroutines = 32
	}
	if o.BodySize == 0 {
		o.BodySize = 128
	}
}

// NewSuite dials the broker, starts the echo server and every selected
// contender, and returns the suite. Call its Close when done.
func NewSuite(ctx context.Context, opts Options) (*bench.Suite, error) {
	sel, err := peers.Select("rpc", opts.Contenders, []string{Raw, Warren})
	if err != nil {
		return nil, err
	}
	opts.Contenders = sel.Names
	opts.defaults()
	if opts.BrokerURL == "" {
		return nil, errors.New("no broker URL")
	}
	f, err := newFixture(ctx, opts)
	if err != nil {
		return nil, err
	}
	s := &bench.Suite{
		Name: "rpc",
		Doc: fmt.Sprintf("Request/reply round trips over direct reply-to (amq.rabbitmq.reply-to), %d-byte transient "+
			"bodies both ways; one msg is one call: request published, reply received and matched. The server is "+
			"the same for every contender: raw amqp091-go %s on a connection of its own, one auto-ack consumer of "+
			"an exclusive queue on one goroutine that publishes each reply (the request's body, its correlation id) "+
			"to the request's reply-to, without confirms, so the client side is what differs. raw: one connection, "+
			"one channel consuming amq.rabbitmq.reply-to with auto-ack, a reader goroutine handing each reply to "+
			"its caller through a mutex-guarded map of correlation id → size-1 chan, requests published mandatory "+
			"with PublishWithContext and a counter-based correlation id, returns drained. warren: Client.NewRPCClient(ctx, "+
			"RPCOptions{}) (one channel, the same idiom, plus warren's checks, typed errors, stats), RPCClient.Call "+
			"with the run's ctx. %s",
			opts.BodySize, bench.ModuleVersion("github.com/rabbitmq/amqp091-go"), bench.MsgMetricsDoc),
		Contenders: sel.Names,
		Baseline:   sel.Baseline,
		Subject:    Warren,
		Close:      f.close,
	}
	for _, g := range []int{1, opts.Goroutines} {
		s.Cases = append(s.Cases, &bench.Case{
			Name:    fmt.Sprintf("rpc/call-%d", g),
			Doc:     fmt.Sprintf("%d goroutine(s) each call and wait for the reply in a loop, sharing one client.", g),
			Metrics: bench.MsgMetrics,
			NotRun:  sel.NotRun,
			Run: func(ctx context.Context, who string) (bench.Result, error) {
				res, _, err := bench.RunLoops(ctx, opts.Duration, g, loopOf(f.contenders[who]))
				return res, err
			},
		})
	}
	if sel.Has(Raw, Warren) {
		s.Targets = func(r *bench.Report) []bench.Target {
			var ts []bench.Target
			for _, c := range s.Cases {
				ts = append(ts, bench.RatioTarget(r, c.Name+": warren ≥ 0.90× raw amqp091-go's calls/s", c.Name, Warren, Raw, bench.MsgRate, 0.90))
			}
			return append(ts, bench.CPUTargets(r, s, Warren, Raw, 1.25)...)
		}
	}
	return s, nil
}

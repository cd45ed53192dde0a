// Package publishbench compares publishing without confirms (fire and
// forget) from one goroutine through warren, raw amqp091-go and
// go-rabbitmq.
package publishbench

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
	Raw        = "raw"            // amqp091-go: Channel.PublishWithContext on a plain channel
	Warren     = "warren"         // warren: Channel.Publish on a plain Channel
	GoRabbitMQ = peers.GoRabbitMQ // go-rabbitmq: Publisher (no confirm mode) PublishWithContext
)

// Options configure the publish suite. Zero fields take the defaults noted.
type Options struct {
	// BrokerURL is the RabbitMQ every contender publishes to. Required.
	BrokerURL string
	// Contenders to run, in order (default Raw, Warren, GoRabbitMQ).
	Contenders []string
	// Duration of each measured pass (default 1 s).
	Duration time.Duration
	// BodySize is the size of every message body (default 64 bytes).
	BodySize int
}

func (o *Options) defaults() {
	if o.Duration == 0 {
		o.Duration = time.Second
	}
	if o.BodySize == 0 {
		o.BodySize = 64
	}
}

// NewSuite dials the broker for every selected contender, declares the
// exchange and returns the suite. Call its Close when done.
func NewSuite(ctx context.Context, opts Options) (*bench.Suite, error) {
	sel, err := peers.Select("publish", opts.Contenders, []string{Raw, Warren, GoRabbitMQ})
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
		Name: "publish",
		Doc: fmt.Sprintf("Publishing without confirms, %d-byte transient bodies, to a direct exchange of the suite's "+
			"own that has no binding: the broker reads, parses and drops every message (unroutable, not mandatory). "+
			"Why not a queue: the client's work per message is the same whatever the broker does with it, and with "+
			"nothing stored the broker spends the least of the two shared cores and nothing builds up, so no memory "+
			"alarm or queue flow control can throttle one contender and not the next. Each contender has its own "+
			"connection and one channel, opened before the rounds; the message is built once. A pass publishes for "+
			"%v, then opens and closes one more channel on the same connection: its reply proves the broker has read "+
			"every byte written before it, so messages still sitting in socket buffers are not counted as sent. "+
			"msg/s is the messages over the wall time until then. raw: amqp091-go %s, "+
			"Channel.PublishWithContext(ctx, exchange, key, false, false, msg). warren: Channel.Publish(ctx, "+
			"exchange, key, msg) on a plain (not confirm) Channel of one Client. go-rabbitmq %s: a Publisher "+
			"without confirm mode, PublishWithContext(ctx, body, []string{key}, WithPublishOptionsExchange(exchange)) "+
			"(the option built once). %s %s",
			opts.BodySize, opts.Duration, bench.ModuleVersion("github.com/rabbitmq/amqp091-go"),
			bench.ModuleVersion("github.com/wagslane/go-rabbitmq"), peers.AmqpxDoc, bench.MsgMetricsDoc),
		Contenders: sel.Names,
		Baseline:   sel.Baseline,
		Subject:    Warren,
		Peers:      []string{GoRabbitMQ},
		Close:      f.close,
	}
	const caseName = "publish/no-confirm-1"
	s.Cases = []*bench.Case{{
		Name:    caseName,
		Doc:     "One goroutine publishes in a loop on one channel, waiting for nothing.",
		Metrics: bench.MsgMetrics,
		NotRun:  sel.NotRun,
		Run: func(ctx context.Context, who string) (bench.Result, error) {
			res, _, err := bench.RunLoops(ctx, opts.Duration, 1, loopOf(f.contenders[who]))
			return res, err
		},
	}}
	if sel.Has(Raw, Warren) {
		s.Targets = func(r *bench.Report) []bench.Target {
			return append([]bench.Target{
				bench.RatioTarget(r, caseName+": warren ≥ 0.95× raw amqp091-go's msg/s", caseName, Warren, Raw, bench.MsgRate, 0.95),
				bench.RatioTarget(r, caseName+": warren ≥ 1.00× raw amqp091-go's msg/s (issue 22)", caseName, Warren, Raw, bench.MsgRate, 1),
			}, bench.CPUTargets(r, s, Warren, Raw, 1.15)...)
		}
	}
	return s, nil
}

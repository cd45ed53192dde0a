// Package consumebench compares consuming with manual acks through warren's
// Client.Consume with amqp091-go's documented idiom (a channel with
// basic.qos, Channel.Consume and a range loop acking each delivery) and
// go-rabbitmq's Consumer, at several prefetch counts, one handler at a time.
package consumebench

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
	Raw        = "raw"            // amqp091-go: Qos, Consume, for d := range deliveries { d.Ack(false) }
	Warren     = "warren"         // warren: Client.Consume with Prefetch n, Workers 1
	GoRabbitMQ = peers.GoRabbitMQ // go-rabbitmq: NewConsumer with QOSPrefetch n, Run, Close
	// WarrenHandle is warren's Client.StartConsumer with Prefetch n,
	// Workers 1, stopped by Consumer.Cancel: the handle's overhead over
	// Client.Consume.
	WarrenHandle = "warren-handle"
	// WarrenBatch is warren's Client.StartBatchConsumer with Size
	// min(50, n), Prefetch n, Workers 1: a batch handler's throughput
	// against the per-message handler.
	WarrenBatch = "warren-batch-50"
)

// batchSize is WarrenBatch's batch size (N), where the prefetch allows.
const batchSize = 50

// Options configure the consume suite. Zero fields take the defaults noted.
type Options struct {
	// BrokerURL is the RabbitMQ every contender consumes from. Required.
	BrokerURL string
	// Contenders to run, in order (default Raw, Warren, GoRabbitMQ).
	Contenders []string
	// Prefetches are the prefetch counts, one case each (default 1, 50
	// and 300).
	Prefetches []int
	// Messages is how many messages a pass pre-fills and consumes when the
	// prefetch is above 1 (default 20,000).
	Messages int
	// SingleMessages is the same for prefetch 1, where every delivery
	// waits for the previous ack to reach the broker (default 6,000).
	SingleMessages int
	// Window of unconfirmed messages while pre-filling (default 2,000).
	FillWindow int
	// BodySize is the size of every message body (default 128 bytes).
	BodySize int
	// PassTimeout bounds one pass's consuming; a pass that has not consumed
	// every message by then fails (default 1 minute).
	PassTimeout time.Duration
}

func (o *Options) defaults() {
	if o.Prefetches == nil {
		o.Prefetches = []int{1, 50, 300}
	}
	if o.Messages == 0 {
		o.Messages = 20_000
	}
	if o.SingleMessages == 0 {
		o.SingleMessages = 6_000
	}
	if o.FillWindow == 0 {
		o.FillWindow = 2_000
	}
	if o.BodySize == 0 {
		o.BodySize = 128
	}
	if o.PassTimeout == 0 {
		o.PassTimeout = time.Minute
	}
}

// messages returns how many messages a pass at prefetch p consumes.
func (o *Options) messages(p int) int {
	if p <= 1 {
		return o.SingleMessages
	}
	return o.Messages
}

// NewSuite dials the broker for the filler and every selected contender,
// declares the queue and returns the suite. Call its Close when done.
func NewSuite(ctx context.Context, opts Options) (*bench.Suite, error) {
	sel, err := peers.Select("consume", opts.Contenders, []string{Raw, Warren, GoRabbitMQ, WarrenHandle, WarrenBatch})
	if err != nil {
		return nil, err
	}
	opts.Contenders = sel.Names
	opts.defaults()
	if opts.BrokerURL == "" {
		return nil, errors.New("no broker URL")
	}
	for _, p := range opts.Prefetches {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("consume: prefetch %d outside 1..65535", p)
		}
	}
	f, err := newFixture(ctx, opts, sel.Names)
	if err != nil {
		return nil, err
	}
	s := &bench.Suite{
		Name: "consume",
		Doc: fmt.Sprintf("Consuming with manual acks, one handler at a time that only counts, %d-byte transient "+
			"bodies, from one classic queue. Each pass first pre-fills the queue (not timed: a separate connection "+
			"publishes with confirms in windows of %d, then a passive queue.declare must show exactly that many "+
			"ready messages and no consumer), then times the contender consuming all of them: from opening its "+
			"channel until the last delivery is acked and the channel closed again. raw: amqp091-go %s on its "+
			"own connection; per pass Connection.Channel, Qos(n, 0, false), Consume(queue, \"\", false, false, "+
			"false, false, nil), `for d := range deliveries { count; d.Ack(false) }` until the last one, then "+
			"Channel.Close. warren: one Client; per pass Client.Consume(ctx, queue, handler, "+
			"ConsumeOptions{Prefetch: n, Workers: 1}), the handler counting and returning nil (warren acks), "+
			"cancelling ctx at the last message, so Consume cancels the consumer and closes its channel. "+
			"go-rabbitmq %s: one Conn; per pass NewConsumer(conn, queue, WithConsumerOptionsQOSPrefetch(n), "+
			"WithConsumerOptionsQueueNoDeclare) (Concurrency 1, its default), Run with a handler that counts and "+
			"returns rabbitmq.Ack, then Close (waits for the handler, closes the channel). "+
			"warren-handle: the same Client; per pass Client.StartConsumer(ctx, queue, handler, ConsumeOptions{Prefetch: n, "+
			"Workers: 1}) and, once the handler saw the last message, Consumer.Cancel (waits for the handler's ack, "+
			"closes the channel). warren-batch-50: the same Client; per pass Client.StartBatchConsumer(ctx, queue, "+
			"handler, BatchOptions{Size: min(50, n), Prefetch: n, Workers: 1}), the batch handler counting and returning "+
			"nil (warren acks each batch with one multiple ack), then Consumer.Cancel. %s "+
			"After the pass a purge must find the queue empty. %s",
			opts.BodySize, opts.FillWindow, bench.ModuleVersion("github.com/rabbitmq/amqp091-go"),
			bench.ModuleVersion("github.com/wagslane/go-rabbitmq"), peers.AmqpxDoc, bench.MsgMetricsDoc),
		Contenders: sel.Names,
		Baseline:   sel.Baseline,
		Subject:    Warren,
		Peers:      []string{GoRabbitMQ},
		Close:      f.close,
	}
	consumers := map[string]consumeFunc{}
	if f.raw != nil {
		consumers[Raw] = f.raw.consume
	}
	if f.warren != nil {
		consumers[Warren] = f.warren.consume
	}
	if f.goRabbit != nil {
		consumers[GoRabbitMQ] = f.goRabbit.consume
	}
	if f.warren != nil {
		consumers[WarrenHandle] = f.warren.consumeHandle
		consumers[WarrenBatch] = f.warren.consumeBatch
	}
	for _, p := range opts.Prefetches {
		n := opts.messages(p)
		doc := fmt.Sprintf("Prefetch %d: at most %d unacked deliveries; %d messages per pass.", p, p, n)
		if p == 1 {
			doc = fmt.Sprintf("Prefetch 1: the broker sends the next delivery only once the previous ack arrived, "+
				"so every message costs a round trip; %d messages per pass.", n)
		}
		s.Cases = append(s.Cases, &bench.Case{
			Name:    fmt.Sprintf("consume/prefetch-%d", p),
			Doc:     doc,
			Metrics: bench.MsgMetrics,
			NotRun:  sel.NotRun,
			Run: func(ctx context.Context, who string) (bench.Result, error) {
				return f.trial(ctx, p, n, consumers[who])
			},
		})
	}
	s.Targets = func(r *bench.Report) []bench.Target {
		var ts []bench.Target
		if sel.Has(Raw, Warren) {
			ts = append(ts, bench.CPUTargets(r, s, Warren, Raw, 1.15)...)
		}
		if sel.Has(Warren, WarrenHandle) {
			ts = append(ts, bench.CPUTargets(r, s, WarrenHandle, Warren, 1.05)...)
		}
		return ts
	}
	return s, nil
}

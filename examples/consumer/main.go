// Command consumer shows a worker-pool consumer: Client.Consume runs a
// handler on 8 workers with a prefetch of 50 and shuts down gracefully.
//
// It pre-publishes 200 messages to a queue of its own, then consumes them.
// One handler call returns an error and one panics (recovered by warren and
// reported to OnPanic): both messages are nacked, requeued, and delivered
// again with Redelivered set, and then handled.
//
// Consume stops, gracefully (no new deliveries, in-flight handlers finish
// and are acked, everything else stays in the queue), when the first of
// these happens:
//
//   - SIGINT (Ctrl-C) or SIGTERM arrives (signal.NotifyContext);
//   - 10 seconds have passed, so the example always finishes on its own;
//   - every pre-published message has been handled: the normal end.
//
// It then prints why Consume returned, the handler counts, and checks that
// no message was lost: handled + still in the queue = published.
//
// It finds a broker as examples/quickstart does (AMQP_URL, the local default
// broker on 127.0.0.1:5672, or a private node it starts and stops). Its
// queue is exclusive and server-named: the broker deletes it at exit.
//
//	go run ./examples/consumer
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	messages = 200
	runFor   = 10 * time.Second
	failID   = "7"  // this message's first handling returns an error
	panicID  = "13" // this message's first handling panics
)

func main() {
	if err := run(); err != nil {
		log.Printf("consumer: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	b, stopBroker, err := brokertest.ForProgram(ctx, "consumer")
	if err != nil {
		return err
	}
	defer stopBroker()

	client, err := warren.Dial(ctx, b.URL, warren.WithName("warren-example-consumer"))
	if err != nil {
		return err
	}
	defer client.Close(ctx)

	ch, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close(ctx)
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}
	if err := prepublish(ctx, ch, q.Name); err != nil {
		return err
	}

	// Stop on a signal, after runFor, or once every message is handled.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancelTimer := context.WithTimeoutCause(ctx, runFor, fmt.Errorf("%v time limit reached", runFor))
	defer cancelTimer()
	ctx, finish := context.WithCancelCause(ctx)
	defer finish(nil)

	var handled, failed, panicked, redelivered atomic.Int64
	handler := func(ctx context.Context, d *warren.Delivery) error {
		if d.Redelivered {
			redelivered.Add(1)
			fmt.Printf("message %s delivered again (Redelivered=%v)\n", d.MessageId, d.Redelivered)
		}
		switch {
		case d.MessageId == failID && !d.Redelivered:
			failed.Add(1)
			fmt.Printf("message %s: handler returns an error: nacked and requeued\n", d.MessageId)
			return errors.New("simulated transient failure")
		case d.MessageId == panicID && !d.Redelivered:
			panic("simulated bug")
		}
		select { // the work; a handler should honour its ctx
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		if handled.Add(1) == messages {
			finish(fmt.Errorf("all %d messages handled", messages))
		}
		return nil
	}
	opts := warren.ConsumeOptions{
		Workers:         8,
		Prefetch:        50,
		ShutdownTimeout: 5 * time.Second,
		OnPanic: func(d *warren.Delivery, v any, stack []byte) {
			panicked.Add(1)
			fmt.Printf("OnPanic: message %s (delivery tag %d) panicked with %q (%d-byte stack): nacked and requeued\n",
				d.MessageId, d.DeliveryTag, v, len(stack))
		},
	}
	start := time.Now()
	fmt.Printf("consuming %s with %d workers, prefetch %d\n", q.Name, opts.Workers, opts.Prefetch)
	err = client.Consume(ctx, q.Name, handler, opts)
	switch {
	case errors.Is(err, warren.ErrShutdownTimeout):
		return err // handlers ignored their ctx; their messages went back to the queue
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		fmt.Printf("Consume returned after %v: %v (stop cause: %v)\n",
			time.Since(start).Round(time.Millisecond), err, context.Cause(ctx))
	default: // ErrConsumerCancelled, *ChannelError, *ConnectionError
		return fmt.Errorf("consume: %w", err)
	}

	// ctx has ended; the check below gets a bound of its own.
	checkCtx, cancelCheck := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelCheck()
	left, err := ch.QueueDeclare(checkCtx, q.Name, warren.QueueOptions{Passive: true})
	if err != nil {
		return err
	}
	fmt.Printf("handled %d, failed %d, panicked %d, redelivered %d; %d left in the queue\n",
		handled.Load(), failed.Load(), panicked.Load(), redelivered.Load(), left.Messages)
	if n := handled.Load() + int64(left.Messages); n != messages {
		return fmt.Errorf("handled + left = %d, want %d", n, messages)
	}
	fmt.Printf("no message lost: %d handled + %d in the queue = %d published\n", handled.Load(), left.Messages, messages)
	return nil
}

// prepublish publishes the messages on a confirm channel: PublishBatch
// returns once the broker has acked them all.
func prepublish(ctx context.Context, ch warren.Channel, queue string) error {
	if err := ch.SetMode(ctx, warren.ModeConfirm); err != nil {
		return err
	}
	msgs := make([]warren.Message, messages)
	for i := range msgs {
		msgs[i] = warren.Message{Key: queue, Publishing: warren.Publishing{
			MessageId: strconv.Itoa(i),
			Body:      fmt.Appendf(nil, "job %d", i),
		}}
	}
	if err := errors.Join(ch.PublishBatch(ctx, msgs)...); err != nil {
		return err
	}
	fmt.Printf("published %d messages to %s (all acked)\n", messages, queue)
	return nil
}

package integration

// What differs between RabbitMQ versions, and what warren refuses so that
// no version can close the connection over it.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
)

// A transient non-exclusive queue is refused before sending on every
// version (RabbitMQ 4.3 denies it with a connection close), and arguments
// of features 4.0 removed are refused on 4.x brokers; the connection
// carries on either way. AllowTransient sends it as asked.
func TestDeprecatedQueueDeclarationsAreRefusedAndTheConnectionLives(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	c := dial(t, broker.URL)
	v := c.ServerVersion()
	if v == "" {
		t.Fatal("ServerVersion: empty, want the broker's version")
	}
	t.Logf("broker version %s", v)
	ch := openChannel(t, ctx, c)
	name := uniqueName(t, "transient-")
	_, err := ch.QueueDeclare(ctx, name, warren.QueueOptions{})
	if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "neither Durable nor Exclusive") {
		t.Fatalf("QueueDeclare with the zero QueueOptions: got %v, want ErrInvalidArgument about a transient non-exclusive queue", err)
	}
	// Opted in: sent as asked (Debian's builds of 3.10 and 4.3 permit it).
	allowed := uniqueName(t, "allowed-")
	if _, err := ch.QueueDeclare(ctx, allowed, warren.QueueOptions{AllowTransient: true}); err != nil {
		t.Fatalf("QueueDeclare with AllowTransient: got %v, want nil", err)
	}
	deleteQueueLater(t, broker, allowed)
	master := warren.QueueOptions{Durable: true, Args: warren.Table{"x-queue-master-locator": "min-masters"}}
	if strings.HasPrefix(v, "3.") {
		// 3.x has the feature: sent as given.
		if _, err := ch.QueueDeclare(ctx, name, master); err != nil {
			t.Fatalf("x-queue-master-locator on %s: got %v, want nil", v, err)
		}
		deleteQueueLater(t, broker, name)
	} else {
		_, err := ch.QueueDeclare(ctx, name, master)
		if !errors.Is(err, warren.ErrInvalidArgument) {
			t.Fatalf("x-queue-master-locator on %s: got %v, want ErrInvalidArgument before sending", v, err)
		}
		_, err = ch.QueueDeclare(ctx, name, warren.QueueOptions{Durable: true, Args: warren.Table{"x-queue-version": int32(1)}})
		if !errors.Is(err, warren.ErrInvalidArgument) {
			t.Fatalf("x-queue-version 1 on %s: got %v, want ErrInvalidArgument before sending", v, err)
		}
	}
	if err := ch.Err(); err != nil {
		t.Fatalf("the channel after refused declarations: %v, want nil", err)
	}
	roundTrip(t, ctx, c)
}

// setConsumerTimeout makes the broker time consumers out after ms
// milliseconds, checked every half second (RabbitMQ 3.x checks on the
// channel's tick, once a minute by default), until the test ends.
func setConsumerTimeout(t *testing.T, ms int) {
	t.Helper()
	needPrivate(t, broker)
	ctl(t, broker, "eval", fmt.Sprintf("application:set_env(rabbit, consumer_timeout, %d), application:set_env(rabbit, channel_tick_interval, 500).", ms))
	t.Cleanup(func() {
		ctl(t, broker, "eval", "application:set_env(rabbit, consumer_timeout, 1800000), application:set_env(rabbit, channel_tick_interval, 60000).")
	})
}

// A consumer whose handler holds a delivery past the broker's consumer
// timeout ends with an error matching ErrAckTimeout, whatever shape the
// broker gives it: up to 4.2 a 406 channel close, from 4.3 (quorum queue)
// a basic.cancel. The handler's ctx is cancelled at once; with
// WithReconnect the Client subscribes again and the message is handled.
func TestAConsumerTimedOutByTheBrokerEndsWithErrAckTimeout(t *testing.T) {
	ctx := testCtx(t, opTimeout)
	probe := dial(t, broker.URL)
	v := probe.ServerVersion()
	opts := warren.ConsumeOptions{Prefetch: 1, ShutdownTimeout: 10 * time.Second}
	legacy := strings.HasPrefix(v, "3.")
	if legacy {
		// 3.10 ignores x-consumer-timeout: warren refuses it, and the
		// broker-wide timeout is what applies.
		ch := openChannel(t, ctx, probe)
		q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
		if err != nil {
			t.Fatal(err)
		}
		err = probe.Consume(ctx, q.Name, func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{AckTimeout: 2 * time.Second})
		if !errors.Is(err, warren.ErrInvalidArgument) {
			t.Fatalf("AckTimeout on %s: got %v, want ErrInvalidArgument (the broker would ignore it)", v, err)
		}
		setConsumerTimeout(t, 2000)
	} else {
		opts.AckTimeout = 2 * time.Second
	}
	for _, reconnect := range []bool{false, true} {
		t.Run(fmt.Sprintf("reconnect=%v", reconnect), func(t *testing.T) {
			var copts []warren.Option
			if reconnect {
				copts = append(copts, warren.WithReconnect(warren.ReconnectPolicy{}))
			}
			c := dial(t, broker.URL, copts...)
			ch := openChannel(t, ctx, c)
			q := uniqueName(t, "qq-")
			if _, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Type: warren.QueueQuorum}); err != nil {
				t.Fatal(err)
			}
			deleteQueueLater(t, broker, q)
			if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("slow")}); err != nil {
				t.Fatal(err)
			}
			held := make(chan time.Duration, 1)
			handled := make(chan struct{})
			var calls atomic.Int32
			cctx, stop := context.WithCancel(ctx)
			defer stop()
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(cctx, q, func(hctx context.Context, d *warren.Delivery) error {
					if calls.Add(1) == 1 {
						start := time.Now()
						<-hctx.Done() // past the timeout: ended by warren
						held <- time.Since(start)
						return hctx.Err()
					}
					close(handled)
					return nil
				}, opts)
			}()
			var d time.Duration
			select {
			case d = <-held:
			case <-ctx.Done():
				t.Fatal("the handler's ctx was never cancelled after the broker's consumer timeout")
			}
			t.Logf("RabbitMQ %s: the handler's ctx ended %v after it got the delivery", v, d)
			if !reconnect {
				err := <-done
				if !errors.Is(err, warren.ErrAckTimeout) {
					t.Fatalf("Consume: got %v, want an error matching ErrAckTimeout", err)
				}
				if legacy && !errors.Is(err, warren.ErrPreconditionFailed) {
					t.Fatalf("Consume on %s: got %v, want the 406 channel close", v, err)
				}
				if !legacy && !errors.Is(err, warren.ErrConsumerCancelled) {
					t.Fatalf("Consume on %s: got %v, want the broker's cancel", v, err)
				}
				return
			}
			select {
			case <-handled: // subscribed again and got the requeued message
			case err := <-done:
				t.Fatalf("Consume with WithReconnect ended: %v, want it to subscribe again", err)
			case <-ctx.Done():
				t.Fatal("the message was not handled again after the timeout")
			}
			stop()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("Consume: got %v, want context.Canceled", err)
			}
		})
	}
}

// Command reconnect shows warren reconnecting: it puts a fault proxy between
// a Client and the broker, publishes through a Publisher from 8 goroutines,
// and cuts the connection twice while they do. It prints every state change
// the Client reports, and at the end how many publishes were acked, how many
// outcomes were unknown and sent again (RepublishUnknown), and that every
// acked message is in the queue.
//
// It finds a broker as examples/quickstart does (AMQP_URL, the local default
// broker on 127.0.0.1:5672, or a private node it starts and stops) and
// declares a queue of its own, deleted at exit.
//
//	go run ./examples/reconnect
package main

import (
	"context"
	"fmt"
	"log"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/internal/faultproxy"
)

func main() {
	if err := run(); err != nil {
		log.Printf("reconnect: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, stopBroker, err := brokertest.ForProgram(ctx, "reconnect")
	if err != nil {
		return err
	}
	defer stopBroker()

	proxy, err := faultproxy.New(b.Addr())
	if err != nil {
		return err
	}
	defer proxy.Close()
	u, err := url.Parse(b.URL)
	if err != nil {
		return err
	}
	u.Host = proxy.Addr()

	start := time.Now()
	client, err := warren.Dial(ctx, u.String(),
		warren.WithName("warren-example-reconnect"),
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			msg := fmt.Sprintf("%6.3fs  state %-12s", time.Since(start).Seconds(), e.State)
			if e.Attempt > 0 {
				msg += fmt.Sprintf(" after %d dial(s)", e.Attempt)
			}
			if e.Err != nil {
				msg += "  " + e.Err.Error()
			}
			fmt.Println(msg)
		}))
	if err != nil {
		return err
	}
	defer client.Close(context.Background())

	ch, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	// Durable: it outlives each cut (an exclusive queue would go with its
	// connection), and Expires deletes it if the example dies before its
	// own cleanup.
	q, err := ch.QueueDeclare(ctx, "warren-example-reconnect-"+strconv.FormatInt(time.Now().UnixNano(), 36),
		warren.QueueOptions{Durable: true, Expires: 10 * time.Minute})
	if err != nil {
		return err
	}
	_ = ch.Close(ctx)
	defer func() {
		// The declaring channel's connection may be gone: delete over a
		// direct connection.
		dctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		if c, err := warren.Dial(dctx, b.URL); err == nil {
			if dch, err := c.Channel(dctx); err == nil {
				_, _ = dch.QueueDelete(dctx, q.Name, warren.QueueDeleteOptions{})
			}
			_ = c.Close(dctx)
		}
	}()

	pub, err := client.NewPublisher(ctx, warren.PublisherOptions{RepublishUnknown: true})
	if err != nil {
		return err
	}
	defer pub.Close(ctx)

	const goroutines, each = 8, 4000
	var acked, failed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := pub.Publish(ctx, "", q.Name, warren.Publishing{Body: fmt.Appendf(nil, "%d-%d", g, i)}); err != nil {
					failed.Add(1)
					continue
				}
				acked.Add(1)
			}
		}()
	}
	for cut := 1; cut <= 2; cut++ {
		time.Sleep(200 * time.Millisecond)
		fmt.Printf("%6.3fs  cutting the connection (%d of 2), %d publishes acked so far\n", time.Since(start).Seconds(), cut, acked.Load())
		proxy.CutAll()
	}
	wg.Wait()

	st := pub.Stats()
	fmt.Printf("%d publishes from %d goroutines: %d acked, %d failed; %d outcomes unknown, all sent again (%d republished)\n",
		goroutines*each, goroutines, acked.Load(), failed.Load(), st.Unknown, st.Republished)
	ch, err = client.Channel(ctx)
	if err != nil {
		return err
	}
	got, err := ch.QueueDeclare(ctx, q.Name, warren.QueueOptions{Passive: true})
	if err != nil {
		return err
	}
	fmt.Printf("the queue holds %d messages: every acked publish is there (%d extra copies from republishing)\n",
		got.Messages, got.Messages-int(acked.Load()))
	if got.Messages < int(acked.Load()) {
		return fmt.Errorf("queue holds %d messages but %d publishes were acked", got.Messages, acked.Load())
	}
	return nil
}

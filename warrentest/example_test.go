package warrentest_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/warrentest"
)

// A consumer with WithReconnect keeps handling messages across a cut of its
// connection: its traffic goes through a Proxy, which the test cuts.
func Example_consumerAcrossAConnectionCut() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := warrentest.New(ctx) // in a test: b := warrentest.Start(t)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close(ctx)
	p, err := b.NewProxy() // in a test: p := b.Proxy(t)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	// The producer talks to the broker directly; the consumer through p.
	pub, err := warren.Dial(ctx, b.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)
	ch, err := pub.Channel(ctx)
	if err != nil {
		log.Fatal(err)
	}
	const queue = "warrentest-example"
	if _, err := ch.QueueDeclare(ctx, queue, warren.QueueOptions{Durable: true}); err != nil {
		log.Fatal(err)
	}
	defer ch.QueueDelete(ctx, queue, warren.QueueDeleteOptions{})

	c, err := warren.Dial(ctx, p.URL(), warren.WithReconnect(warren.ReconnectPolicy{}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	got := make(chan string, 10)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, queue, func(_ context.Context, d *warren.Delivery) error {
			got <- string(d.Body)
			return nil
		}, warren.ConsumeOptions{})
	}()

	// The test: a message is handled, the connection is cut, and the next
	// message is handled too.
	seen := map[string]bool{} // at least once: a message may come twice
	handled := func(body string) {
		if err := ch.Publish(ctx, "", queue, warren.Publishing{Body: []byte(body)}); err != nil {
			log.Fatal(err)
		}
		for !seen[body] {
			select {
			case m := <-got:
				seen[m] = true
			case err := <-done:
				log.Fatalf("%q was not handled: the consumer ended: %v", body, err)
			case <-ctx.Done():
				log.Fatalf("%q was not handled: %v", body, ctx.Err())
			}
		}
		fmt.Println("handled:", body)
	}
	handled("before the cut")
	p.Cut() // the consumer's connection dies; it reconnects through p
	handled("after the cut")
	stop()
	<-done
	// Output:
	// handled: before the cut
	// handled: after the cut
}

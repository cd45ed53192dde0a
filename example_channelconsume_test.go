package warren_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/warrenmq/warren"
)

// A consumer on a channel the caller owns: Qos first (the prefetch of each
// consumer started afterwards), then Consume, and a select loop that also
// watches a deadline. Cancel ends the subscription; the deliveries the
// broker sent before its cancel-ok still arrive, and Err is nil once the
// stream has closed.
func ExampleChannel_Consume() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	ch, err := client.Channel(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer ch.Close(ctx)
	if _, err := ch.QueueDeclare(ctx, "jobs", warren.QueueOptions{Durable: true}); err != nil {
		log.Fatal(err)
	}
	if err := ch.Qos(ctx, warren.QosOptions{PrefetchCount: 50}); err != nil {
		log.Fatal(err)
	}
	sub, err := ch.Consume(ctx, "jobs", warren.ChannelConsumeOptions{})
	if err != nil {
		log.Fatal(err)
	}

	stop := time.After(10 * time.Second)
	for {
		select {
		case d, ok := <-sub.Deliveries():
			if !ok {
				// Ended: nil after our Cancel, ErrConsumerCancelled if
				// the broker cancelled it (the queue was deleted), or
				// the channel's or connection's error.
				fmt.Println("subscription ended:", sub.Err())
				return
			}
			fmt.Printf("job %s\n", d.Body)
			if err := d.Ack(ctx); err != nil {
				log.Print(err) // ErrDeliveryVoid: the channel is gone, the broker redelivers
			}
		case <-stop:
			// Same goroutine as the acks: one goroutine at a time uses
			// a channel. Keep reading: the stream closes after the last
			// delivery sent before the cancel.
			if err := sub.Cancel(ctx); err != nil {
				log.Print(err)
			}
			stop = nil
		}
	}
}

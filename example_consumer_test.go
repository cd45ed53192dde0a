package warren_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/warrenmq/warren"
)

// A consumer that runs until the program stops it: StartConsumer returns
// once the broker confirmed the subscription; Pause and Resume hold the
// flow; Cancel lets in-flight handlers finish.
func ExampleClient_StartConsumer() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@localhost:5672/",
		warren.WithReconnect(warren.ReconnectPolicy{}))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)

	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second) // bounds the start only
	defer cancel()
	consumer, err := client.StartConsumer(startCtx, "orders", func(ctx context.Context, d *warren.Delivery) error {
		log.Printf("order %s", d.Body)
		return nil // acked; an error would reject it
	}, warren.ConsumeOptions{Workers: 4})
	if errors.Is(err, warren.ErrNotFound) {
		log.Fatal("no queue named orders")
	} else if err != nil {
		log.Fatal(err)
	}

	// Hold deliveries during maintenance, then take them again.
	if err := consumer.Pause(ctx); err != nil {
		log.Print(err)
	}
	if err := consumer.Resume(ctx); err != nil {
		log.Print(err)
	}

	// Shut down: no new deliveries, handlers finish within 20 s.
	stopCtx, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	if err := consumer.Cancel(stopCtx); err != nil {
		log.Print(err)
	}
	log.Printf("handled %d deliveries", consumer.Stats().Delivered)
}

// Watching a consumer: Ready is re-armed whenever the subscription is lost
// and closed again on resubscription; Done and Err tell when and why it
// ended.
func ExampleConsumer_Ready() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@localhost:5672/", warren.WithReconnect(warren.ReconnectPolicy{}))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	consumer, err := client.StartConsumer(ctx, "orders", func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
	if err != nil {
		log.Fatal(err)
	}
	for {
		select {
		case <-consumer.Ready():
			log.Print("consuming")
		case <-consumer.Done():
			log.Printf("consumer ended: %v", consumer.Err())
			return
		}
		// Wait until the subscription is lost, then for the next one.
		for isClosed(consumer.Ready()) {
			select {
			case <-consumer.Done():
				log.Printf("consumer ended: %v", consumer.Err())
				return
			case <-time.After(time.Second):
			}
		}
		log.Print("subscription lost; resubscribing")
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A batch consumer writing rows in bulk. A partial failure is expressed by
// rejecting the failed deliveries and returning nil: warren acks the rest
// (with one multiple ack when they are contiguous), and only the rejected
// ones come back.
func ExampleClient_StartBatchConsumer() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)

	insert := func(rows [][]byte) []error { return make([]error, len(rows)) } // the application's bulk insert

	consumer, err := client.StartBatchConsumer(ctx, "rows", func(ctx context.Context, batch []*warren.Delivery) error {
		rows := make([][]byte, len(batch))
		for i, d := range batch {
			rows[i] = d.Body
		}
		for i, err := range insert(rows) {
			if err != nil {
				// Only this one fails: requeue it (or false: dead-letter it).
				if rerr := batch[i].Reject(ctx, true); rerr != nil {
					return rerr // the rest is rejected too
				}
			}
		}
		return nil // everything not rejected above is acked
	}, warren.BatchOptions{Size: 50, MaxWait: 200 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	<-consumer.Done()
	log.Print(consumer.Err())
}

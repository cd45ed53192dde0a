package warren_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/warrenmq/warren"
)

// Dial opens one connection; channels are numbered from 1 in the order they
// are opened.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/", warren.WithName("billing-worker"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(context.Background())

	ch, err := client.Channel(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer ch.Close(context.Background())
	fmt.Println("channel", ch.ID(), "of at most", client.ChannelMax())
}

// An asynchronous channel error (here: publishing to an exchange that does
// not exist) reaches the next call on the channel as a typed error.
func ExampleChannel_Publish() {
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
	_ = ch.Publish(ctx, "no-such-exchange", "key", warren.Publishing{Body: []byte("hi")})
	_, err = ch.QueueDeclare(ctx, "jobs", warren.QueueOptions{Durable: true})
	var chErr *warren.ChannelError
	if errors.Is(err, warren.ErrNotFound) && errors.As(err, &chErr) {
		fmt.Printf("channel %d closed by the broker: %s\n", chErr.ChannelID, chErr.Reason)
	}
}

// Reply codes say which scope an error closed.
func ExampleReplyCode_Level() {
	for _, code := range []warren.ReplyCode{warren.CodeNotFound, warren.CodeConnectionForced, warren.CodeNoRoute} {
		fmt.Println(int(code), code, code.Level())
	}
	// Output:
	// 404 NOT_FOUND channel
	// 320 CONNECTION_FORCED connection
	// 312 NO_ROUTE message
}

// errors.Is matches broker errors against the reply-code sentinels.
func ExampleCodeOf() {
	err := fmt.Errorf("declare jobs: %w", &warren.ChannelError{ChannelID: 4, Code: 406, Reason: "PRECONDITION_FAILED - inequivalent arg 'durable'", Op: "queue.declare"})
	code, _ := warren.CodeOf(err)
	fmt.Println(code, errors.Is(err, warren.ErrPreconditionFailed), warren.IsChannelLevel(err))
	// Output:
	// PRECONDITION_FAILED true true
}

// A Publisher gives any number of goroutines confirmed publishing; each call
// returns once the broker has answered for its message.
func ExamplePublisher_Publish() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	pub, err := client.NewPublisher(ctx, warren.PublisherOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close(ctx)

	err = pub.Publish(ctx, "", "jobs", warren.Publishing{DeliveryMode: warren.Persistent, Body: []byte(`{"id":1}`)})
	switch {
	case err == nil:
		fmt.Println("acked: the broker has it")
	case errors.Is(err, warren.ErrOutcomeUnknown):
		fmt.Println("maybe delivered; republish only if duplicates are acceptable:", err)
	case errors.Is(err, warren.ErrNacked), errors.Is(err, warren.ErrUnroutable):
		fmt.Println("not delivered:", err)
	default:
		fmt.Println("not published:", err)
	}
}

// Tx moves a message between queues atomically: the ack and the publish
// take effect together on commit.
func ExampleClient_Tx() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	err = client.Tx(ctx, func(tx *warren.Tx) error {
		d, ok, err := tx.Get(ctx, "inbox", warren.GetOptions{})
		if err != nil || !ok {
			return err
		}
		if err := tx.Publish(ctx, "", "outbox", warren.Publishing{Body: d.Body}); err != nil {
			return err
		}
		return d.Ack(ctx)
	})
	fmt.Println("moved:", err == nil)
}

// Consume runs until its ctx ends, then takes nothing new, lets in-flight
// handlers finish, and returns the rest to the queue.
func ExampleClient_Consume() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(context.Background())
	err = client.Consume(ctx, "jobs", func(ctx context.Context, d *warren.Delivery) error {
		fmt.Printf("job %s (redelivered %v)\n", d.Body, d.Redelivered)
		return nil // ack
	}, warren.ConsumeOptions{Prefetch: 100, Workers: 4})
	if errors.Is(err, warren.ErrConsumerCancelled) {
		fmt.Println("the queue was deleted")
	}
}

// A Pool gives each goroutine a channel of its own; Do leases one for the
// duration of a function.
func ExampleClient_NewPool() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	pool, err := client.NewPool(ctx, warren.PoolOptions{Size: 8, Mode: warren.ModeConfirm})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close(ctx)
	err = pool.Do(ctx, func(ch warren.Channel) error {
		return ch.Publish(ctx, "", "jobs", warren.Publishing{Body: []byte("hi")}) // waits for the ack
	})
	fmt.Println("published:", err == nil, "channels open:", pool.Stats().Open)
}

// WithReconnect makes the Client dial again when its connection is lost;
// state changes arrive in order on one goroutine.
func ExampleWithReconnect() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/",
		warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second}),
		warren.WithStateCallback(func(e warren.StateEvent) {
			log.Printf("%s %v", e.State, e.Err)
		}),
		warren.WithTopology(func(ctx context.Context, ch warren.Channel) error {
			_, err := ch.QueueDeclare(ctx, "jobs", warren.QueueOptions{Durable: true})
			return err
		}))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
}

// Outcome names are stable, for metrics labels.
func ExampleOutcome_String() {
	for _, o := range []warren.Outcome{warren.OutcomeAcked, warren.OutcomeNacked, warren.OutcomeUnroutable, warren.OutcomeUnknown} {
		fmt.Println(o)
	}
	// Output:
	// acked
	// nacked
	// unroutable
	// unknown
}

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

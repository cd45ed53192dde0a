// Command quickstart is warren's main job in one program: it finds a
// RabbitMQ broker (AMQP_URL, the local default broker, or a private node it
// starts itself), opens one connection, publishes and fetches messages on a
// numbered channel, and shows how an asynchronous channel error reaches the
// next call as a typed error instead of amqp091-go's generic 504.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

func main() {
	if err := run(); err != nil {
		log.Printf("quickstart: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	b, stopBroker, err := brokertest.ForProgram(ctx, "quickstart")
	if err != nil {
		return err
	}
	defer stopBroker()

	client, err := warren.Dial(ctx, b.URL, warren.WithName("warren-quickstart"))
	if err != nil {
		return err
	}
	defer client.Close(ctx)
	fmt.Printf("connected to %s (channel_max %d)\n", client, client.ChannelMax())

	ch, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("opened channel %d\n", ch.ID())

	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}
	const n = 10
	for i := range n {
		msg := warren.Publishing{ContentType: "text/plain", Body: fmt.Appendf(nil, "hello %d", i)}
		if err := ch.Publish(ctx, "", q.Name, msg); err != nil {
			return err
		}
	}
	got := 0
	for got < n {
		d, ok, err := ch.Get(ctx, q.Name, warren.GetOptions{})
		if err != nil {
			return err
		}
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err := d.Ack(ctx); err != nil {
			return err
		}
		got++
	}
	fmt.Printf("published and acked %d messages through queue %s\n", got, q.Name)

	// Publishing to an exchange that does not exist makes the broker close
	// the channel asynchronously. The next call says why.
	bad, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	if err := bad.Publish(ctx, "no-such-exchange", "key", warren.Publishing{Body: []byte("lost")}); err != nil {
		return err
	}
	_, err = bad.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	var chErr *warren.ChannelError
	switch {
	case errors.As(err, &chErr) && errors.Is(err, warren.ErrNotFound):
		fmt.Printf("channel %d was closed by the broker: code %d, %q\n", chErr.ChannelID, int(chErr.Code), chErr.Reason)
	default:
		return fmt.Errorf("expected a 404 channel error, got %v", err)
	}
	fmt.Printf("close of channel %d returns the same cause: %v\n", bad.ID(), bad.Close(ctx))

	// Other channels are unaffected.
	if _, err := ch.QueueDeclare(ctx, q.Name, warren.QueueOptions{Exclusive: true, Passive: true}); err != nil {
		return err
	}
	fmt.Printf("channel %d still works; open channels: %d\n", ch.ID(), client.OpenChannels())
	if err := ch.Close(ctx); err != nil {
		return err
	}
	return client.Close(ctx)
}

package warren_test

import (
	"context"
	"log"

	"github.com/warrenmq/warren"
)

// The flows of RabbitMQ's six tutorials, as the README shows them: work
// queues with fair dispatch, publish/subscribe, routing and topics, and
// RPC over direct reply-to.
func Example_tutorials() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	ch, err := client.Channel(ctx)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := client.NewPublisher(ctx, warren.PublisherOptions{})
	if err != nil {
		log.Fatal(err)
	}
	rpc, err := client.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		log.Fatal(err)
	}
	job, line := []byte("job"), []byte("line")
	work := func(ctx context.Context, d *warren.Delivery) error { return nil }
	print := func(ctx context.Context, d *warren.Delivery) error { log.Printf("%s", d.Body); return nil }
	fib := func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		return warren.Publishing{Body: req.Body}, nil
	}

	// 1, 2. Work queues: a durable queue, persistent messages, fair dispatch (prefetch 1).
	_, err = ch.QueueDeclare(ctx, "tasks", warren.QueueOptions{Durable: true})
	go client.Consume(ctx, "tasks", work, warren.ConsumeOptions{Prefetch: 1})
	err = pub.Publish(ctx, "", "tasks", warren.Publishing{Body: job, DeliveryMode: warren.Persistent})

	// 3. Publish/subscribe: a fanout exchange, one exclusive server-named queue per subscriber.
	err = ch.ExchangeDeclare(ctx, "logs", "fanout", warren.ExchangeOptions{Durable: true})
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	err = ch.QueueBind(ctx, q.Name, "", "logs", nil)
	go client.Consume(ctx, q.Name, print, warren.ConsumeOptions{})
	err = pub.Publish(ctx, "logs", "", warren.Publishing{Body: line})

	// 4, 5. Routing and topics: the same with a direct or topic exchange and binding keys.
	err = ch.ExchangeDeclare(ctx, "topic_logs", "topic", warren.ExchangeOptions{Durable: true})
	err = ch.QueueBind(ctx, q.Name, "kern.*", "topic_logs", nil)
	err = pub.Publish(ctx, "topic_logs", "kern.critical", warren.Publishing{Body: line})

	// 6. RPC.
	_, err = ch.QueueDeclare(ctx, "rpc_queue", warren.QueueOptions{Durable: true})
	go client.Serve(ctx, "rpc_queue", fib, warren.ServeOptions{})
	reply, err := rpc.Call(ctx, "", "rpc_queue", warren.Publishing{Body: []byte("30")})
	_, _ = reply, err
}

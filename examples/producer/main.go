// Command producer shows confirmed publishing with a warren.Publisher: many
// goroutines publish persistent messages through one Publisher, each call
// returning once the broker has answered for its message, and the
// Publisher's Stats count the outcomes. It then shows the two refusals a
// confirm can carry:
//
//   - a mandatory publish that no queue is bound for comes back as a
//     *warren.UnroutableError (312 NO_ROUTE, with the returned message);
//   - a publish to a full queue (x-max-length 1, x-overflow reject-publish)
//     is nacked: a *warren.NackedError.
//
// It finds a broker as examples/quickstart does (AMQP_URL, the local default
// broker on 127.0.0.1:5672, or a private node it starts and stops), declares
// queues of its own with unique names and deletes them at exit.
//
//	go run ./examples/producer
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	publishers = 8    // goroutines
	perWorker  = 1000 // messages each
)

func main() {
	if err := run(); err != nil {
		log.Printf("producer: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	b, stopBroker, err := brokertest.ForProgram(ctx, "producer")
	if err != nil {
		return err
	}
	defer stopBroker()

	client, err := warren.Dial(ctx, b.URL, warren.WithName("warren-example-producer"))
	if err != nil {
		return err
	}
	defer client.Close(ctx)

	ch, err := client.Channel(ctx) // for declarations
	if err != nil {
		return err
	}
	defer ch.Close(ctx)
	jobs, err := declare(ctx, ch, "jobs", nil)
	if err != nil {
		return err
	}
	defer deleteQueue(ctx, ch, jobs)

	pub, err := client.NewPublisher(ctx, warren.PublisherOptions{})
	if err != nil {
		return err
	}
	defer pub.Close(ctx)

	if err := publishMany(ctx, pub, jobs); err != nil {
		return err
	}
	q, err := ch.QueueDeclare(ctx, jobs, warren.QueueOptions{Passive: true})
	if err != nil {
		return err
	}
	fmt.Printf("queue %s holds %d messages\n", jobs, q.Messages)
	if q.Messages != publishers*perWorker {
		return fmt.Errorf("queue %s holds %d messages, want %d", jobs, q.Messages, publishers*perWorker)
	}

	if err := unroutable(ctx, pub); err != nil {
		return err
	}
	full, err := declare(ctx, ch, "full", warren.Table{"x-max-length": 1, "x-overflow": "reject-publish"})
	if err != nil {
		return err
	}
	defer deleteQueue(ctx, ch, full)
	if err := nacked(ctx, pub, full); err != nil {
		return err
	}

	s := pub.Stats()
	fmt.Printf("final stats: acked=%d nacked=%d unroutable=%d unknown=%d\n", s.Acked, s.Nacked, s.Unroutable, s.Unknown)
	if want := int64(publishers*perWorker + 1); s.Acked != want || s.Nacked != 1 || s.Unroutable != 1 || s.Unknown != 0 {
		return fmt.Errorf("unexpected stats %+v", s)
	}
	return pub.Close(ctx)
}

// publishMany publishes perWorker persistent messages from each of
// publishers goroutines and reports the outcomes and the rate.
func publishMany(ctx context.Context, pub *warren.Publisher, queue string) error {
	start := time.Now()
	errs := make([]error, publishers)
	var wg sync.WaitGroup
	for w := range publishers {
		wg.Go(func() {
			for i := range perWorker {
				err := pub.Publish(ctx, "", queue, warren.Publishing{
					DeliveryMode: warren.Persistent,
					ContentType:  "text/plain",
					Body:         fmt.Appendf(nil, "job %d.%d", w, i),
				})
				if err != nil {
					errs[w] = fmt.Errorf("publisher %d, message %d: %w", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	s := pub.Stats()
	fmt.Printf("%d goroutines published %d persistent messages in %v (%.0f msg/s)\n",
		publishers, publishers*perWorker, elapsed.Round(time.Millisecond), float64(s.Acked)/elapsed.Seconds())
	fmt.Printf("stats: acked=%d nacked=%d unroutable=%d unknown=%d\n", s.Acked, s.Nacked, s.Unroutable, s.Unknown)
	return errors.Join(errs...)
}

// unroutable publishes a mandatory message that no queue is bound for.
func unroutable(ctx context.Context, pub *warren.Publisher) error {
	err := pub.PublishMessage(ctx, warren.Message{
		Key:        "no-such-queue-" + rand.Text(),
		Mandatory:  true,
		Publishing: warren.Publishing{Body: []byte("nobody listens")},
	})
	var ue *warren.UnroutableError
	if !errors.As(err, &ue) {
		return fmt.Errorf("mandatory publish without a route: got %v, want an *UnroutableError", err)
	}
	fmt.Printf("mandatory publish returned unroutable: code %d %s, routing key %q, body %q (errors.Is ErrNoRoute: %v)\n",
		int(ue.Code), ue.Reason, ue.Return.RoutingKey, ue.Return.Body, errors.Is(err, warren.ErrNoRoute))
	return nil
}

// nacked publishes twice to a queue that takes one message and refuses more.
func nacked(ctx context.Context, pub *warren.Publisher, queue string) error {
	msg := warren.Publishing{Body: []byte("fills the queue")}
	if err := pub.Publish(ctx, "", queue, msg); err != nil {
		return fmt.Errorf("first publish to %s: %w", queue, err)
	}
	fmt.Printf("first publish to %s (x-max-length 1): acked\n", queue)
	err := pub.Publish(ctx, "", queue, warren.Publishing{Body: []byte("one too many")})
	var ne *warren.NackedError
	if !errors.As(err, &ne) {
		return fmt.Errorf("second publish to a full queue: got %v, want a *NackedError", err)
	}
	fmt.Printf("second publish to %s: nacked (publish %d on channel %d): %v\n", queue, ne.DeliveryTag, ne.ChannelID, err)
	return nil
}

// declare declares a durable queue with a unique name. x-expires makes the
// broker delete it even if this program dies before deleteQueue runs.
func declare(ctx context.Context, ch warren.Channel, prefix string, args warren.Table) (string, error) {
	if args == nil {
		args = warren.Table{}
	}
	args["x-expires"] = int((10 * time.Minute).Milliseconds())
	q, err := ch.QueueDeclare(ctx, "warren-example-"+prefix+"-"+rand.Text()[:8], warren.QueueOptions{Durable: true, Args: args})
	if err != nil {
		return "", err
	}
	fmt.Printf("declared queue %s\n", q.Name)
	return q.Name, nil
}

func deleteQueue(ctx context.Context, ch warren.Channel, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if n, err := ch.QueueDelete(ctx, name, warren.QueueDeleteOptions{}); err != nil {
		log.Printf("producer: deleting queue %s: %v", name, err)
	} else {
		fmt.Printf("deleted queue %s (%d messages)\n", name, n)
	}
}

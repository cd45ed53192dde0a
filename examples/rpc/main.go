// Command rpc shows request/reply over RabbitMQ's direct reply-to: a server
// (Client.Serve, 4 workers) answers requests from a queue, and an RPCClient
// makes concurrent calls to it, each matched to its own reply.
//
// The server squares the number in each request. 16 goroutines make 400
// calls between them, and the program checks every reply against its
// request. Then it shows the two ways a call fails without waiting for a
// reply that will never come: a handler error reaches the caller as a
// *warren.RemoteError, and a request to a routing key no queue is bound to
// comes back at once as ErrUnroutable. It prints a summary with the
// client's counters.
//
// It finds a broker as examples/quickstart does (AMQP_URL, the local default
// broker on 127.0.0.1:5672, or a private node it starts and stops). Its
// queue is exclusive and server-named: the broker deletes it at exit.
//
//	go run ./examples/rpc
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	calls   = 400
	callers = 16
)

func main() {
	if err := run(); err != nil {
		log.Printf("rpc: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	b, stopBroker, err := brokertest.ForProgram(ctx, "rpc")
	if err != nil {
		return err
	}
	defer stopBroker()

	client, err := warren.Dial(ctx, b.URL, warren.WithName("warren-example-rpc"))
	if err != nil {
		return err
	}
	defer client.Close(ctx)

	ch, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	q, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}
	_ = ch.Close(ctx)

	// The server: square the request's number; anything else is an error
	// the caller receives as a *warren.RemoteError.
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	served := make(chan error, 1)
	go func() {
		served <- client.Serve(serveCtx, q.Name, func(_ context.Context, req *warren.Delivery) (warren.Publishing, error) {
			n, err := strconv.Atoi(string(req.Body))
			if err != nil {
				return warren.Publishing{}, fmt.Errorf("not a number: %q", req.Body)
			}
			return warren.Publishing{Body: []byte(strconv.Itoa(n * n))}, nil
		}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{Workers: 4}})
	}()

	rpc, err := client.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		return err
	}
	defer rpc.Close(ctx)

	// 16 goroutines share the 400 calls.
	var next, wrong atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > calls {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				t0 := time.Now()
				reply, err := rpc.Call(cctx, "", q.Name, warren.Publishing{Body: []byte(strconv.FormatInt(n, 10))})
				took := time.Since(t0)
				cancel()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					lat = append(lat, took)
					if string(reply.Body) != strconv.FormatInt(n*n, 10) {
						wrong.Add(1)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return fmt.Errorf("a call failed: %w", firstErr)
	}
	slices.Sort(lat)
	fmt.Printf("%d calls from %d goroutines in %v (%.0f calls/s): p50 %v, p99 %v\n",
		len(lat), callers, elapsed.Round(time.Millisecond), float64(len(lat))/elapsed.Seconds(),
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond))
	if wrong.Load() != 0 {
		return fmt.Errorf("%d replies did not match their request", wrong.Load())
	}
	fmt.Printf("every reply matched its request (%d of %d)\n", len(lat), calls)

	// A handler error comes back as a *warren.RemoteError.
	_, err = rpc.Call(ctx, "", q.Name, warren.Publishing{Body: []byte("seven")})
	var remote *warren.RemoteError
	if !errors.As(err, &remote) {
		return fmt.Errorf("call with a bad request: got %v, want a *warren.RemoteError", err)
	}
	fmt.Printf("handler error reached the caller: %s\n", remote.Message)

	// A request no queue takes comes back at once: no waiting for a deadline.
	t0 := time.Now()
	_, err = rpc.Call(ctx, "", "no-such-service", warren.Publishing{Body: []byte("2")})
	if !errors.Is(err, warren.ErrUnroutable) {
		return fmt.Errorf("call to no-such-service: got %v, want ErrUnroutable", err)
	}
	fmt.Printf("call to an unbound routing key failed after %v: unroutable\n", time.Since(t0).Round(time.Microsecond))

	st := rpc.Stats()
	fmt.Printf("stats: calls=%d replies=%d remote-errors=%d unroutable=%d timed-out=%d late=%d\n",
		st.Calls, st.Replies, st.RemoteErrors, st.Unroutable, st.TimedOut, st.LateReplies)

	stopServing()
	if err := <-served; !errors.Is(err, context.Canceled) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

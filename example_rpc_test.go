package warren_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/warrenmq/warren"
)

// A server answers requests from a queue: the reply goes to the request's
// ReplyTo with its CorrelationId, and the request is acked once the broker
// has confirmed the reply. A handler error is sent back to the caller.
func ExampleClient_Serve() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/",
		warren.WithReconnect(warren.ReconnectPolicy{}))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(context.Background())

	err = client.Serve(ctx, "upper", func(_ context.Context, req *warren.Delivery) (warren.Publishing, error) {
		if len(req.Body) == 0 {
			return warren.Publishing{}, errors.New("empty request")
		}
		return warren.Publishing{Body: []byte(strings.ToUpper(string(req.Body)))}, nil
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{Workers: 4}})
	log.Printf("server stopped: %v", err)
}

// A client calls the server with a deadline. Any number of goroutines may
// share one RPCClient; each call gets its own reply.
func ExampleRPCClient_Call() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)
	rpc, err := client.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer rpc.Close(ctx)

	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	reply, err := rpc.Call(cctx, "", "upper", warren.Publishing{Body: []byte("hello")})
	var remote *warren.RemoteError
	switch {
	case err == nil:
		fmt.Println(string(reply.Body))
	case errors.As(err, &remote):
		fmt.Println("the server failed:", remote.Message)
	case errors.Is(err, warren.ErrUnroutable):
		fmt.Println("no server queue is bound for the key")
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Println("no reply in time")
	default:
		fmt.Println("call failed:", err)
	}
}

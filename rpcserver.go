package warren

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
)

// RPCHandler answers one request. The Publishing it returns is the reply:
// Serve sets its CorrelationId to the request's and publishes it to the
// request's ReplyTo through the default exchange. A non-nil error (or a
// panic) is an answer too: see Serve.
//
// ctx is the one a Handler gets (see Handler): it outlives Serve's ctx
// while Serve shuts down, and ends when the request is void.
type RPCHandler func(ctx context.Context, req *Delivery) (Publishing, error)

// ServeOptions configure Serve. The zero value is the zero ConsumeOptions
// (prefetch 200, one handler at a time) with confirmed replies.
type ServeOptions struct {
	// ConsumeOptions configure the consumer of the request queue.
	// AutoAck is refused: a request is acked only once its reply is
	// published.
	ConsumeOptions
	// NoConfirm publishes replies without publisher confirms: a request
	// is then acked once its reply is handed to the socket, not once the
	// broker has taken it. Faster, and a reply lost in a connection
	// failure is not replaced (its request was acked).
	NoConfirm bool
}

// maxRemoteError is the most bytes of an error text Serve sends in
// RPCErrorHeader.
const maxRemoteError = 4096

// Serve answers requests from queue with h until ctx ends or the consumer
// cannot go on; it blocks, and returns as Client.Consume does (it is built
// on it, with opts.ConsumeOptions, and with WithReconnect subscribes again
// after a reconnect).
//
// For each request, Serve runs h and publishes its reply to the request's
// ReplyTo through the default exchange ("" with ReplyTo as routing key),
// with the request's CorrelationId: ReplyTo is DirectReplyTo's address for
// an RPCClient's request, and may be any queue's name for other callers. Replies are published with confirms
// (on a Publisher of Serve's own) unless opts.NoConfirm is set, and the
// request is acked only after its reply was confirmed: a server that dies
// before that leaves the request to be delivered again.
//
//   - A handler error, or a panic (logged, and passed to opts.OnPanic if
//     set), is an answer: the reply is an empty message whose
//     RPCErrorHeader holds the error's text (at most 4 KiB), which the
//     caller's RPCClient.Call returns as a *RemoteError, and the request is
//     acked, not delivered again.
//   - A reply the publish checks refuse (see Publishing) is replaced by
//     such an error reply, and the request acked.
//   - A request without ReplyTo is handled as a one-way message: h runs,
//     nothing is published, the request is acked whatever h returns (a
//     debug record is logged for an error).
//   - When the reply cannot be published (the channel or connection was
//     lost, the broker nacked it), the request is rejected and requeued
//     (dead-lettered with DeadLetterOnError) and will be handled again.
//
// A caller that has given up is not known to the server: its reply is
// published all the same (the broker drops a reply to the direct reply-to
// address of a channel that is gone, and confirms it), the request is
// acked, and a caller still there drops it as late.
func (c *Client) Serve(ctx context.Context, queue string, h RPCHandler, opts ServeOptions) error {
	const op = "rpc serve"
	if h == nil {
		return fmt.Errorf("%w: %s: nil handler", ErrInvalidArgument, op)
	}
	if opts.AutoAck {
		return fmt.Errorf("%w: %s: AutoAck: a request is acked once its reply is published", ErrInvalidArgument, op)
	}
	var reply func(ctx context.Context, to string, msg Publishing) error
	if opts.NoConfirm {
		size := opts.Workers
		if size <= 0 {
			size = 1
		}
		pool, err := c.NewPool(ctx, PoolOptions{Size: size})
		if err != nil {
			return fmt.Errorf("warren: %s: %w", op, err)
		}
		defer closeBounded(c, pool.Close)
		reply = func(ctx context.Context, to string, msg Publishing) error {
			return pool.Do(ctx, func(ch Channel) error { return ch.Publish(ctx, "", to, msg) })
		}
	} else {
		pub, err := c.NewPublisher(ctx, PublisherOptions{Channels: 1})
		if err != nil {
			return fmt.Errorf("warren: %s: %w", op, err)
		}
		defer closeBounded(c, pub.Close)
		reply = func(ctx context.Context, to string, msg Publishing) error {
			return pub.Publish(ctx, "", to, msg)
		}
	}
	s := &rpcServer{c: c, queue: queue, h: h, onPanic: opts.OnPanic, reply: reply}
	return c.Consume(ctx, queue, s.handle, opts.ConsumeOptions)
}

type rpcServer struct {
	c       *Client
	queue   string
	h       RPCHandler
	onPanic func(d *Delivery, v any, stack []byte)
	reply   func(ctx context.Context, to string, msg Publishing) error
}

// handle is the Consume handler: nil acks the request, an error rejects it.
func (s *rpcServer) handle(ctx context.Context, d *Delivery) error {
	msg, err := s.run(ctx, d)
	if d.ReplyTo == "" {
		if err != nil {
			s.c.opts.logger.Debug("warren: rpc request without reply-to failed; acked", "queue", s.queue, "err", err)
		}
		return nil
	}
	if err != nil {
		msg = errorReply(err)
	}
	msg.CorrelationId = d.CorrelationId
	err = s.reply(ctx, d.ReplyTo, msg)
	if errors.Is(err, ErrInvalidArgument) {
		err = s.reply(ctx, d.ReplyTo, Publishing{CorrelationId: d.CorrelationId,
			Headers: Table{RPCErrorHeader: clip(fmt.Sprintf("warren: the server's reply was refused: %v", err))}})
	}
	if err != nil {
		return fmt.Errorf("warren: rpc serve %q: reply not published: %w", s.queue, err)
	}
	return nil
}

// run runs the handler, turning a panic into an error.
func (s *rpcServer) run(ctx context.Context, d *Delivery) (msg Publishing, err error) {
	defer func() {
		if v := recover(); v != nil {
			stack := debug.Stack()
			s.c.opts.logger.Error("warren: rpc handler panicked; an error reply is sent and the server goes on",
				"queue", s.queue, "delivery_tag", d.DeliveryTag, "panic", v, "stack", string(stack))
			if s.onPanic != nil {
				s.onPanic(d, v, stack)
			}
			err = fmt.Errorf("handler panicked: %v", v)
		}
	}()
	return s.h(ctx, d)
}

// closeBounded runs close with the client's close timeout.
func closeBounded(c *Client, close func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.closeTimeout)
	defer cancel()
	_ = close(ctx)
}

func errorReply(err error) Publishing {
	return Publishing{Headers: Table{RPCErrorHeader: clip(err.Error())}}
}

// clip cuts s to maxRemoteError bytes.
func clip(s string) string {
	if len(s) > maxRemoteError {
		return s[:maxRemoteError]
	}
	return s
}

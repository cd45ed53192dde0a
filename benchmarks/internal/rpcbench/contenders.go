package rpcbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/peers"
)

// caller is one contender.
type caller interface {
	// call makes one round trip and checks the reply.
	call(ctx context.Context) error
	close(ctx context.Context) error
}

// loopOf calls until stop is set.
func loopOf(c caller) bench.Loop {
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		var n int64
		for !stop.Load() {
			if err := c.call(ctx); err != nil {
				return n, err
			}
			n++
		}
		return n, nil
	}
}

// fixture is the echo server and the contenders.
type fixture struct {
	admin      *amqp.Connection // owns the queue and runs the server
	queue      string
	served     chan struct{} // closed when the server goroutine has ended
	contenders map[string]caller
}

func newFixture(ctx context.Context, opts Options) (f *fixture, err error) {
	f = &fixture{contenders: map[string]caller{}, served: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = f.close(context.Background())
		}
	}()
	var ch *amqp.Channel
	if f.admin, ch, err = peers.DialAdmin(opts.BrokerURL, "rpc"); err != nil {
		close(f.served)
		return nil, err
	}
	// Exclusive: deleted with the admin connection; other connections may
	// still publish to it.
	q, err := ch.QueueDeclare("", false, false, true, false, nil)
	if err != nil {
		close(f.served)
		return nil, fmt.Errorf("declaring the queue: %w", err)
	}
	f.queue = q.Name
	reqs, err := ch.Consume(f.queue, "", true, true, false, false, nil)
	if err != nil {
		close(f.served)
		return nil, fmt.Errorf("server consume: %w", err)
	}
	go func() {
		defer close(f.served)
		for d := range reqs {
			_ = ch.Publish("", d.ReplyTo, false, false, amqp.Publishing{
				DeliveryMode: amqp.Transient, CorrelationId: d.CorrelationId, Body: d.Body})
		}
	}()

	body := make([]byte, opts.BodySize)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	for _, who := range opts.Contenders {
		var c caller
		switch who {
		case Raw:
			c, err = newRaw(opts.BrokerURL, f.queue, body)
		case Warren:
			c, err = newWarren(ctx, opts.BrokerURL, f.queue, body)
		}
		if err != nil {
			return nil, fmt.Errorf("%s contender: %w", who, err)
		}
		f.contenders[who] = c
	}
	return f, nil
}

func (f *fixture) close(ctx context.Context) error {
	var errs []error
	for who, c := range f.contenders {
		if err := c.close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", who, err))
		}
	}
	if f.admin != nil {
		if err := f.admin.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("admin connection: %w", err))
		}
	}
	<-f.served
	return errors.Join(errs...)
}

// rawContender is the hand-written amqp091-go direct reply-to client.
type rawContender struct {
	conn  *amqp.Connection
	ch    *amqp.Channel
	queue string
	body  []byte
	seq   atomic.Uint64
	done  chan struct{} // the reader has ended

	mu      sync.Mutex
	waiters map[string]chan amqp.Delivery
}

func newRaw(url, queue string, body []byte) (*rawContender, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{"connection_name": "warrenbench-rpc-raw"}})
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	rets := ch.NotifyReturn(make(chan amqp.Return, 64))
	replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	r := &rawContender{conn: conn, ch: ch, queue: queue, body: body, done: make(chan struct{}),
		waiters: map[string]chan amqp.Delivery{}}
	go func() {
		defer close(r.done)
		for rets != nil || replies != nil {
			select {
			case _, ok := <-rets:
				if !ok {
					rets = nil
				}
			case d, ok := <-replies:
				if !ok {
					replies = nil
					continue
				}
				r.mu.Lock()
				w := r.waiters[d.CorrelationId]
				delete(r.waiters, d.CorrelationId)
				r.mu.Unlock()
				if w != nil {
					w <- d
				}
			}
		}
	}()
	return r, nil
}

func (r *rawContender) call(ctx context.Context) error {
	id := strconv.FormatUint(r.seq.Add(1), 36)
	w := make(chan amqp.Delivery, 1)
	r.mu.Lock()
	r.waiters[id] = w
	r.mu.Unlock()
	err := r.ch.PublishWithContext(ctx, "", r.queue, true, false, amqp.Publishing{
		DeliveryMode: amqp.Transient, CorrelationId: id, ReplyTo: "amq.rabbitmq.reply-to", Body: r.body})
	if err != nil {
		return err
	}
	select {
	case d := <-w:
		if !bytes.Equal(d.Body, r.body) {
			return errors.New("raw: wrong reply")
		}
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		delete(r.waiters, id)
		r.mu.Unlock()
		return ctx.Err()
	}
}

func (r *rawContender) close(context.Context) error {
	err := r.conn.Close()
	<-r.done
	if err != nil && !errors.Is(err, amqp.ErrClosed) {
		return err
	}
	return nil
}

// warrenContender is one warren Client with one RPCClient.
type warrenContender struct {
	client *warren.Client
	rpc    *warren.RPCClient
	queue  string
	body   []byte
}

func newWarren(ctx context.Context, url, queue string, body []byte) (*warrenContender, error) {
	c, err := warren.Dial(ctx, url, warren.WithName("warrenbench-rpc-warren"))
	if err != nil {
		return nil, err
	}
	r, err := c.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		_ = c.Close(ctx)
		return nil, err
	}
	return &warrenContender{client: c, rpc: r, queue: queue, body: body}, nil
}

func (w *warrenContender) call(ctx context.Context) error {
	d, err := w.rpc.Call(ctx, "", w.queue, warren.Publishing{DeliveryMode: warren.Transient, Body: w.body})
	if err != nil {
		return err
	}
	if !bytes.Equal(d.Body, w.body) {
		return errors.New("warren: wrong reply")
	}
	return nil
}

func (w *warrenContender) close(ctx context.Context) error {
	return errors.Join(w.rpc.Close(ctx), w.client.Close(ctx))
}

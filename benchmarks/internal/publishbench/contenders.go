package publishbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/peers"
)

// routingKey is bound to nothing on the suite's exchange.
const routingKey = "nowhere"

// publisher is one contender.
type publisher interface {
	// publish sends one message.
	publish(ctx context.Context) error
	// sync returns once the broker has read everything published before
	// it: it opens and closes a channel on the same connection.
	sync(ctx context.Context) error
	close(ctx context.Context) error
}

// loopOf publishes until stop is set, then syncs.
func loopOf(p publisher) bench.Loop {
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		var n int64
		for !stop.Load() {
			if err := p.publish(ctx); err != nil {
				return n, err
			}
			n++
		}
		if err := p.sync(ctx); err != nil {
			return n, fmt.Errorf("after %d messages: %w", n, err)
		}
		return n, nil
	}
}

// fixture is the exchange, the connection that owns it and the contenders.
type fixture struct {
	admin      *amqp.Connection
	exchange   string
	contenders map[string]publisher
}

func newFixture(ctx context.Context, opts Options) (f *fixture, err error) {
	f = &fixture{contenders: map[string]publisher{}}
	defer func() {
		if err != nil {
			_ = f.close(context.Background())
		}
	}()
	var ch *amqp.Channel
	if f.admin, ch, err = peers.DialAdmin(opts.BrokerURL, "publish"); err != nil {
		return nil, err
	}
	name := fmt.Sprintf("warrenbench-publish-%d", os.Getpid())
	if err := ch.ExchangeDeclare(name, amqp.ExchangeDirect, false, false, false, false, nil); err != nil {
		return nil, fmt.Errorf("declaring the exchange: %w", err)
	}
	f.exchange = name

	body := make([]byte, opts.BodySize)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	msg := amqp.Publishing{DeliveryMode: amqp.Transient, Body: body}
	for _, who := range opts.Contenders {
		var p publisher
		switch who {
		case Raw:
			p, err = newRaw(opts.BrokerURL, f.exchange, msg)
		case Warren:
			p, err = newWarren(ctx, opts.BrokerURL, f.exchange, msg)
		case GoRabbitMQ:
			p, err = newGoRabbit(opts.BrokerURL, f.exchange, body)
		}
		if err != nil {
			return nil, fmt.Errorf("%s contender: %w", who, err)
		}
		f.contenders[who] = p
	}
	return f, nil
}

func (f *fixture) close(ctx context.Context) error {
	var errs []error
	for who, p := range f.contenders {
		if err := p.close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", who, err))
		}
	}
	if f.admin != nil {
		if f.exchange != "" {
			if ch, err := f.admin.Channel(); err != nil {
				errs = append(errs, fmt.Errorf("admin channel: %w", err))
			} else if err := ch.ExchangeDelete(f.exchange, false, false); err != nil {
				errs = append(errs, fmt.Errorf("deleting exchange %s: %w", f.exchange, err))
			}
		}
		if err := f.admin.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("admin connection: %w", err))
		}
	}
	return errors.Join(errs...)
}

// rawContender is amqp091-go: one connection, one plain channel.
type rawContender struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	exchange string
	msg      amqp.Publishing
}

func newRaw(url, exchange string, msg amqp.Publishing) (*rawContender, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{"connection_name": "warrenbench-publish-raw"}})
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return &rawContender{conn: conn, ch: ch, exchange: exchange, msg: msg}, nil
}

func (r *rawContender) publish(ctx context.Context) error {
	return r.ch.PublishWithContext(ctx, r.exchange, routingKey, false, false, r.msg)
}

func (r *rawContender) sync(context.Context) error {
	ch, err := r.conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Close(); err != nil {
		return err
	}
	if r.ch.IsClosed() {
		return errors.New("the publishing channel was closed")
	}
	return nil
}

func (r *rawContender) close(context.Context) error {
	if err := r.conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
		return err
	}
	return nil
}

// warrenContender is one warren Client with one plain Channel.
type warrenContender struct {
	client   *warren.Client
	ch       warren.Channel
	exchange string
	msg      warren.Publishing
}

func newWarren(ctx context.Context, url, exchange string, msg warren.Publishing) (*warrenContender, error) {
	c, err := warren.Dial(ctx, url, warren.WithName("warrenbench-publish-warren"))
	if err != nil {
		return nil, err
	}
	ch, err := c.Channel(ctx)
	if err != nil {
		_ = c.Close(ctx)
		return nil, err
	}
	return &warrenContender{client: c, ch: ch, exchange: exchange, msg: msg}, nil
}

func (w *warrenContender) publish(ctx context.Context) error {
	return w.ch.Publish(ctx, w.exchange, routingKey, w.msg)
}

func (w *warrenContender) sync(ctx context.Context) error {
	ch, err := w.client.Channel(ctx)
	if err != nil {
		return err
	}
	if err := ch.Close(ctx); err != nil {
		return err
	}
	return w.ch.Err()
}

func (w *warrenContender) close(ctx context.Context) error {
	return errors.Join(w.ch.Close(ctx), w.client.Close(ctx))
}

// goRabbitContender is go-rabbitmq: one Conn, one Publisher without
// confirm mode.
type goRabbitContender struct {
	conn *rabbitmq.Conn
	pub  *rabbitmq.Publisher
	body []byte
	keys []string
	opt  func(*rabbitmq.PublishOptions)
}

func newGoRabbit(url, exchange string, body []byte) (*goRabbitContender, error) {
	conn, err := peers.DialGoRabbitMQ(url, "warrenbench-publish-go-rabbitmq")
	if err != nil {
		return nil, err
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.WithPublisherOptionsLogger(peers.Quiet))
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return &goRabbitContender{conn: conn, pub: pub, body: body, keys: []string{routingKey},
		opt: rabbitmq.WithPublishOptionsExchange(exchange)}, nil
}

func (g *goRabbitContender) publish(ctx context.Context) error {
	return g.pub.PublishWithContext(ctx, g.body, g.keys, g.opt)
}

// sync opens and closes a channel on the Conn: go-rabbitmq opens one for
// every Publisher (and exposes no other way to).
func (g *goRabbitContender) sync(context.Context) error {
	p, err := rabbitmq.NewPublisher(g.conn, rabbitmq.WithPublisherOptionsLogger(peers.Quiet))
	if err != nil {
		return err
	}
	p.Close()
	return nil
}

func (g *goRabbitContender) close(context.Context) error {
	g.pub.Close()
	return g.conn.Close()
}

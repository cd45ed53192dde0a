package confirmbench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/peers"
)

// errNacked reports a broker nack, which no pass expects.
var errNacked = errors.New("the broker nacked a message")

// fixture is what the suite's cases share: the queue, the connection that
// owns and purges it, and the contenders' connections.
type fixture struct {
	admin   *amqp.Connection
	adminCh *amqp.Channel // purges the queue between passes; never publishes
	queue   string

	raw      *rawContender
	warren   *warrenContender
	goRabbit *goRabbitContender
	ceiling  *ceilingContender
}

func newFixture(ctx context.Context, opts Options, selected []string) (f *fixture, err error) {
	f = &fixture{}
	defer func() {
		if err != nil {
			_ = f.close(context.Background())
		}
	}()
	if f.admin, f.adminCh, err = peers.DialAdmin(opts.BrokerURL, "confirms"); err != nil {
		return nil, err
	}
	// Exclusive: deleted with the admin connection, so nothing is left on
	// the broker; other connections may still publish to it.
	q, err := f.adminCh.QueueDeclare("", false, false, true, false, nil)
	if err != nil {
		return nil, fmt.Errorf("declaring the queue: %w", err)
	}
	f.queue = q.Name

	msg := amqp.Publishing{DeliveryMode: amqp.Transient, Body: make([]byte, opts.BodySize)}
	for i := range msg.Body {
		msg.Body[i] = byte('a' + i%26)
	}
	if slices.Contains(selected, Raw) {
		if f.raw, err = newRaw(opts.BrokerURL, f.queue, msg); err != nil {
			return nil, fmt.Errorf("raw contender: %w", err)
		}
	}
	if slices.Contains(selected, Ceiling) {
		if f.ceiling, err = newCeiling(opts.BrokerURL, f.queue, msg, opts.CeilingConnections, opts.CeilingChannels); err != nil {
			return nil, fmt.Errorf("ceiling contender: %w", err)
		}
	}
	if slices.Contains(selected, GoRabbitMQ) {
		if f.goRabbit, err = newGoRabbit(opts.BrokerURL, f.queue, msg.Body); err != nil {
			return nil, fmt.Errorf("go-rabbitmq contender: %w", err)
		}
	}
	pubs := map[string]int{}
	for _, name := range selected {
		if name == Warren {
			pubs[name] = 0 // PublisherOptions{}: the defaults
		}
		for _, n := range opts.PublisherChannels {
			if name == PublisherName(n) {
				pubs[name] = n
			}
		}
	}
	if len(pubs) > 0 {
		if f.warren, err = newWarren(ctx, opts.BrokerURL, f.queue, msg, opts.Window, slices.Contains(selected, Warren), pubs); err != nil {
			return nil, fmt.Errorf("warren contender: %w", err)
		}
	}
	return f, nil
}

func (f *fixture) close(ctx context.Context) error {
	var errs []error
	if f.warren != nil {
		if err := f.warren.close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("warren: %w", err))
		}
	}
	if f.raw != nil {
		if err := f.raw.close(); err != nil {
			errs = append(errs, fmt.Errorf("raw: %w", err))
		}
	}
	if f.ceiling != nil {
		if err := f.ceiling.close(); err != nil {
			errs = append(errs, fmt.Errorf("ceiling: %w", err))
		}
	}
	if f.goRabbit != nil {
		if err := f.goRabbit.close(); err != nil {
			errs = append(errs, fmt.Errorf("go-rabbitmq: %w", err))
		}
	}
	if f.admin != nil {
		if err := f.admin.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("admin connection: %w", err))
		}
	}
	return errors.Join(errs...)
}

// trial runs l on g goroutines for about d (bench.RunLoops), then purges
// the queue, which must hold exactly the messages confirmed.
func (f *fixture) trial(ctx context.Context, d time.Duration, g int, l bench.Loop) (bench.Result, error) {
	res, msgs, runErr := bench.RunLoops(ctx, d, g, l)
	// Empty the queue for the next pass, whatever happened in this one.
	purged, perr := f.adminCh.QueuePurge(f.queue, false)
	switch {
	case runErr != nil:
		return nil, runErr
	case perr != nil:
		return nil, fmt.Errorf("purging the queue: %w", perr)
	case int64(purged) != msgs:
		return nil, fmt.Errorf("purged %d messages from the queue after %d were confirmed, want equal", purged, msgs)
	}
	return res, nil
}

// deferredPublish publishes one message and returns amqp091-go's deferred
// confirmation of it (raw amqp091-go and go-rabbitmq both do).
type deferredPublish func(ctx context.Context) (*amqp.DeferredConfirmation, error)

// waitConfirm waits for dc: nil for an ack.
func waitConfirm(ctx context.Context, dc *amqp.DeferredConfirmation) error {
	ok, err := dc.WaitContext(ctx)
	if err == nil && !ok {
		err = errNacked
	}
	return err
}

// waitEach publishes one message and waits for its confirm, repeatedly.
func waitEach(publish deferredPublish) bench.Loop {
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		var n int64
		for !stop.Load() {
			dc, err := publish(ctx)
			if err != nil {
				return n, err
			}
			if err := waitConfirm(ctx, dc); err != nil {
				return n, err
			}
			n++
		}
		return n, nil
	}
}

// window publishes size messages, then waits for all their confirms,
// repeatedly: raw amqp091-go's reference idiom.
func window(size int, publish deferredPublish) bench.Loop {
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		var n int64
		dcs := make([]*amqp.DeferredConfirmation, size)
		for !stop.Load() {
			for i := range dcs {
				dc, err := publish(ctx)
				if err != nil {
					return n, err
				}
				dcs[i] = dc
			}
			for i, dc := range dcs {
				if err := waitConfirm(ctx, dc); err != nil {
					return n, err
				}
				dcs[i] = nil
			}
			n += int64(len(dcs))
		}
		return n, nil
	}
}

// slidingWindow keeps up to size messages unconfirmed: once size are
// outstanding it waits for the oldest before publishing the next, so the
// channel never drains between batches as in window; when stopped it waits
// for the rest.
func slidingWindow(size int, publish deferredPublish) bench.Loop {
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		var n int64
		ring := make([]*amqp.DeferredConfirmation, size)
		head, out := 0, 0 // oldest outstanding, how many
		for !stop.Load() {
			if out == size {
				if err := waitConfirm(ctx, ring[head]); err != nil {
					return n, err
				}
				ring[head] = nil
				head, out, n = (head+1)%size, out-1, n+1
			}
			dc, err := publish(ctx)
			if err != nil {
				return n, err
			}
			ring[(head+out)%size] = dc
			out++
		}
		for ; out > 0; out-- {
			if err := waitConfirm(ctx, ring[head]); err != nil {
				return n, err
			}
			ring[head] = nil
			head, n = (head+1)%size, n+1
		}
		return n, nil
	}
}

// rawContender is amqp091-go on its own: one connection, one channel in
// confirm mode.
type rawContender struct {
	conn  *amqp.Connection
	ch    *amqp.Channel
	queue string
	msg   amqp.Publishing
}

func newRaw(url, queue string, msg amqp.Publishing) (*rawContender, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{"connection_name": "warrenbench-confirms-raw"}})
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return &rawContender{conn: conn, ch: ch, queue: queue, msg: msg}, nil
}

// publish publishes one message with a deferred confirmation.
func (r *rawContender) publish(ctx context.Context) (*amqp.DeferredConfirmation, error) {
	return r.ch.PublishWithDeferredConfirmWithContext(ctx, "", r.queue, false, false, r.msg)
}

func (r *rawContender) close() error {
	err := r.conn.Close()
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// ceilingContender is raw amqp091-go spread over several connections with
// several confirm channels each, one goroutine per channel: the most the
// broker (and this machine) confirms into the suite's queue, against which
// the single-channel idioms and warren's Publisher are read as shares.
type ceilingContender struct {
	conns []*amqp.Connection
	chans []*amqp.Channel // conns[i] owns chans[i*perConn : (i+1)*perConn]
	queue string
	msg   amqp.Publishing
}

func newCeiling(url, queue string, msg amqp.Publishing, conns, perConn int) (c *ceilingContender, err error) {
	if conns < 1 || perConn < 1 {
		return nil, fmt.Errorf("%d connections × %d channels, want at least one of each", conns, perConn)
	}
	c = &ceilingContender{queue: queue, msg: msg}
	defer func() {
		if err != nil {
			_ = c.close()
		}
	}()
	for i := range conns {
		conn, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{
			"connection_name": fmt.Sprintf("warrenbench-confirms-ceiling-%d", i)}})
		if err != nil {
			return nil, err
		}
		c.conns = append(c.conns, conn)
		for range perConn {
			ch, err := conn.Channel()
			if err == nil {
				err = ch.Confirm(false)
			}
			if err != nil {
				return nil, err
			}
			c.chans = append(c.chans, ch)
		}
	}
	return c, nil
}

// goroutines is how many loops a pass runs: one per channel.
func (c *ceilingContender) goroutines() int { return len(c.chans) }

// loop returns a pass's loop: each of the goroutines() goroutines running
// it takes the next channel and keeps a sliding window of size
// unconfirmed messages on it.
func (c *ceilingContender) loop(size int) bench.Loop {
	var next atomic.Int64
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		ch := c.chans[int(next.Add(1)-1)%len(c.chans)]
		return slidingWindow(size, func(ctx context.Context) (*amqp.DeferredConfirmation, error) {
			return ch.PublishWithDeferredConfirmWithContext(ctx, "", c.queue, false, false, c.msg)
		})(ctx, stop)
	}
}

func (c *ceilingContender) close() error {
	var errs []error
	for _, conn := range c.conns {
		if err := conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// warrenContender is one warren Client with a confirm Channel and the
// selected Publishers.
type warrenContender struct {
	client     *warren.Client
	ch         warren.Channel // in ModeConfirm; zero when not selected
	pubs       map[string]*warren.Publisher
	queue      string
	msg        warren.Publishing
	windowSize int
}

func newWarren(ctx context.Context, url, queue string, msg warren.Publishing, window int, withChannel bool, pubs map[string]int) (w *warrenContender, err error) {
	c, err := warren.Dial(ctx, url, warren.WithName("warrenbench-confirms-warren"))
	if err != nil {
		return nil, err
	}
	w = &warrenContender{client: c, pubs: map[string]*warren.Publisher{}, queue: queue, msg: msg, windowSize: window}
	defer func() {
		if err != nil {
			_ = w.close(context.Background())
		}
	}()
	if withChannel {
		if w.ch, err = c.Channel(ctx); err != nil {
			return nil, err
		}
		if err = w.ch.SetMode(ctx, warren.ModeConfirm); err != nil {
			return nil, err
		}
	}
	for name, n := range pubs {
		p, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: n})
		if err != nil {
			return nil, fmt.Errorf("publisher %s: %w", name, err)
		}
		w.pubs[name] = p
	}
	return w, nil
}

// waitEach publishes on the confirm channel; Publish returns once the
// broker acked.
func (w *warrenContender) waitEach(ctx context.Context, stop *atomic.Bool) (int64, error) {
	var n int64
	for !stop.Load() {
		if err := w.ch.Publish(ctx, "", w.queue, w.msg); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// window is the raw idiom with warren's futures.
func (w *warrenContender) window(ctx context.Context, stop *atomic.Bool) (int64, error) {
	var n int64
	confs := make([]*warren.Confirmation, w.windowSize)
	for !stop.Load() {
		for i := range confs {
			c, err := w.ch.PublishDeferred(ctx, warren.Message{Key: w.queue, Publishing: w.msg})
			if err != nil {
				return n, err
			}
			confs[i] = c
		}
		for i, c := range confs {
			if err := c.Wait(ctx); err != nil {
				return n, err
			}
			confs[i] = nil
		}
		n += int64(len(confs))
	}
	return n, nil
}

// publisherLoop returns the loop of one goroutine sharing Publisher who.
func (w *warrenContender) publisherLoop(who string) bench.Loop {
	p := w.pubs[who]
	return func(ctx context.Context, stop *atomic.Bool) (int64, error) {
		var n int64
		for !stop.Load() {
			if err := p.Publish(ctx, "", w.queue, w.msg); err != nil {
				return n, err
			}
			n++
		}
		return n, nil
	}
}

// close closes the publishers (failing if any message was not acked), the
// channel and the client.
func (w *warrenContender) close(ctx context.Context) error {
	var errs []error
	for name, p := range w.pubs {
		if s := p.Stats(); s.Nacked+s.Unroutable+s.Unknown+s.NotPublished != 0 {
			errs = append(errs, fmt.Errorf("publisher %s: %+v, want every message acked", name, s))
		}
		if err := p.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing publisher %s: %w", name, err))
		}
	}
	if w.ch.ID() != 0 {
		if err := w.ch.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing the channel: %w", err))
		}
	}
	if err := w.client.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("closing the client: %w", err))
	}
	return errors.Join(errs...)
}

// goRabbitContender is go-rabbitmq's confirm Publisher on its own Conn.
type goRabbitContender struct {
	conn *rabbitmq.Conn
	pub  *rabbitmq.Publisher
	body []byte
	keys []string // the queue: go-rabbitmq publishes to a list of routing keys
}

func newGoRabbit(url, queue string, body []byte) (*goRabbitContender, error) {
	conn, err := peers.DialGoRabbitMQ(url, "warrenbench-confirms-go-rabbitmq")
	if err != nil {
		return nil, err
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.WithPublisherOptionsConfirm,
		rabbitmq.WithPublisherOptionsLogger(peers.Quiet))
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return &goRabbitContender{conn: conn, pub: pub, body: body, keys: []string{queue}}, nil
}

// publish publishes one transient message to the default exchange.
func (g *goRabbitContender) publish(ctx context.Context) (*amqp.DeferredConfirmation, error) {
	confs, err := g.pub.PublishWithDeferredConfirmWithContext(ctx, g.body, g.keys)
	if err != nil {
		return nil, err
	}
	if len(confs) != 1 || confs[0] == nil {
		return nil, fmt.Errorf("go-rabbitmq returned %d confirmations for one routing key, want one (is the publisher in confirm mode?)", len(confs))
	}
	return confs[0], nil
}

func (g *goRabbitContender) close() error {
	g.pub.Close()
	return g.conn.Close()
}

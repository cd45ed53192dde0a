package consumebench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/peers"
)

// consumeFunc consumes n messages from the queue at prefetch p and returns
// how many deliveries it handled and how many of those were redelivered.
type consumeFunc func(ctx context.Context, p, n int) (got, redelivered int, err error)

// errNacked reports a broker nack while pre-filling, which no pass expects.
var errNacked = errors.New("the broker nacked a pre-fill message")

// fixture is what the suite's cases share: the queue, the connection that
// owns, fills and purges it, and the contenders' connections.
type fixture struct {
	opts    Options
	admin   *amqp.Connection
	adminCh *amqp.Channel // declares (passively) and purges; never publishes
	fillCh  *amqp.Channel // in confirm mode; pre-fills the queue
	queue   string
	msg     amqp.Publishing

	raw      *rawContender
	warren   *warrenContender
	goRabbit *goRabbitContender
}

func newFixture(ctx context.Context, opts Options, selected []string) (f *fixture, err error) {
	f = &fixture{opts: opts}
	defer func() {
		if err != nil {
			_ = f.close(context.Background())
		}
	}()
	if f.admin, f.adminCh, err = peers.DialAdmin(opts.BrokerURL, "consume"); err != nil {
		return nil, err
	}
	if f.fillCh, err = f.admin.Channel(); err == nil {
		err = f.fillCh.Confirm(false)
	}
	if err != nil {
		return nil, fmt.Errorf("fill channel: %w", err)
	}
	// Not exclusive (other connections consume from it), so durable (a
	// transient non-exclusive queue is a kind RabbitMQ 4.3 denies; its
	// messages stay transient), deleted at close; x-expires removes it
	// should the program die before that.
	q, err := f.adminCh.QueueDeclare(fmt.Sprintf("warrenbench-consume-%d", os.Getpid()), true, false, false, false,
		amqp.Table{"x-expires": int32(10 * time.Minute / time.Millisecond)})
	if err != nil {
		return nil, fmt.Errorf("declaring the queue: %w", err)
	}
	f.queue = q.Name
	if q.Messages != 0 || q.Consumers != 0 {
		return nil, fmt.Errorf("queue %s already has %d messages and %d consumers", q.Name, q.Messages, q.Consumers)
	}

	f.msg = amqp.Publishing{DeliveryMode: amqp.Transient, Body: make([]byte, opts.BodySize)}
	for i := range f.msg.Body {
		f.msg.Body[i] = byte('a' + i%26)
	}
	if slices.Contains(selected, Raw) {
		if f.raw, err = newRaw(opts.BrokerURL, f.queue, opts.PassTimeout); err != nil {
			return nil, fmt.Errorf("raw contender: %w", err)
		}
	}
	if slices.Contains(selected, Warren) || slices.Contains(selected, WarrenHandle) || slices.Contains(selected, WarrenBatch) {
		if f.warren, err = newWarren(ctx, opts.BrokerURL, f.queue, opts.PassTimeout); err != nil {
			return nil, fmt.Errorf("warren contender: %w", err)
		}
	}
	if slices.Contains(selected, GoRabbitMQ) {
		if f.goRabbit, err = newGoRabbit(opts.BrokerURL, f.queue, opts.PassTimeout); err != nil {
			return nil, fmt.Errorf("go-rabbitmq contender: %w", err)
		}
	}
	return f, nil
}

func (f *fixture) close(ctx context.Context) error {
	var errs []error
	if f.warren != nil {
		if err := f.warren.client.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("warren: closing the client: %w", err))
		}
	}
	if f.raw != nil {
		if err := f.raw.conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("raw: %w", err))
		}
	}
	if f.goRabbit != nil {
		if err := f.goRabbit.conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("go-rabbitmq: %w", err))
		}
	}
	if f.admin != nil {
		if f.queue != "" && f.adminCh != nil {
			if _, err := f.adminCh.QueueDelete(f.queue, false, false, false); err != nil {
				errs = append(errs, fmt.Errorf("deleting queue %s: %w", f.queue, err))
			}
		}
		if err := f.admin.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("admin connection: %w", err))
		}
	}
	return errors.Join(errs...)
}

// inspect polls the queue (passive queue.declare) until it holds messages
// ready messages and no consumer, for up to 5 s: a closed consumer's
// channel leaves the queue's books asynchronously.
func (f *fixture) inspect(ctx context.Context, messages int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, err := f.adminCh.QueueDeclarePassive(f.queue, false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("inspecting the queue: %w", err)
		}
		if q.Messages == messages && q.Consumers == 0 {
			return nil
		}
		if q.Messages > messages || time.Now().After(deadline) {
			return fmt.Errorf("queue %s holds %d messages and %d consumers, want %d and 0", f.queue, q.Messages, q.Consumers, messages)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// fill publishes n messages to the empty queue with confirms, a window at
// a time, and checks that the queue holds exactly n.
func (f *fixture) fill(ctx context.Context, n int) error {
	if err := f.inspect(ctx, 0); err != nil {
		return fmt.Errorf("before pre-filling: %w", err)
	}
	dcs := make([]*amqp.DeferredConfirmation, 0, f.opts.FillWindow)
	for sent := 0; sent < n; {
		dcs = dcs[:0]
		for ; sent < n && len(dcs) < cap(dcs); sent++ {
			dc, err := f.fillCh.PublishWithDeferredConfirmWithContext(ctx, "", f.queue, false, false, f.msg)
			if err != nil {
				return fmt.Errorf("pre-filling: %w", err)
			}
			dcs = append(dcs, dc)
		}
		for _, dc := range dcs {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("pre-filling: %w", err)
			}
			if !ok {
				return errNacked
			}
		}
	}
	if err := f.inspect(ctx, n); err != nil {
		return fmt.Errorf("after pre-filling: %w", err)
	}
	return nil
}

// trial pre-fills the queue with n messages, then times consume taking
// all of them at prefetch p, then purges the queue, which must be empty.
// It reports msg/s over the timed part's wall time, and per message the
// allocations, bytes allocated and process CPU time of that part.
func (f *fixture) trial(ctx context.Context, p, n int, consume consumeFunc) (bench.Result, error) {
	if err := f.fill(ctx, n); err != nil {
		return nil, err
	}
	m := bench.StartMeter()
	got, redelivered, cerr := consume(ctx, p, n)
	m.Stop()

	// Empty the queue for the next pass, whatever happened in this one.
	purged, perr := f.adminCh.QueuePurge(f.queue, false)
	switch {
	case cerr != nil:
		return nil, cerr
	case perr != nil:
		return nil, fmt.Errorf("purging the queue: %w", perr)
	case got != n:
		return nil, fmt.Errorf("consumed %d of the %d messages", got, n)
	case redelivered != 0:
		return nil, fmt.Errorf("%d of the %d deliveries were redeliveries", redelivered, n)
	case purged != 0:
		return nil, fmt.Errorf("purged %d messages left in the queue after consuming all %d", purged, n)
	}
	return m.Result(int64(n)), nil
}

// rawContender is amqp091-go on its own connection, a channel per pass.
type rawContender struct {
	conn    *amqp.Connection
	queue   string
	timeout time.Duration
}

func newRaw(url, queue string, timeout time.Duration) (*rawContender, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{"connection_name": "warrenbench-consume-raw"}})
	if err != nil {
		return nil, err
	}
	return &rawContender{conn: conn, queue: queue, timeout: timeout}, nil
}

// consume is amqp091-go's documented idiom: basic.qos, basic.consume with
// manual acks, and a range loop over the deliveries acking each one; it
// stops at the n-th and closes the channel (which cancels the consumer).
func (r *rawContender) consume(ctx context.Context, p, n int) (got, redelivered int, err error) {
	ch, err := r.conn.Channel()
	if err != nil {
		return 0, 0, err
	}
	if err := ch.Qos(p, 0, false); err != nil {
		_ = ch.Close()
		return 0, 0, fmt.Errorf("basic.qos: %w", err)
	}
	deliveries, err := ch.Consume(r.queue, "", false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return 0, 0, fmt.Errorf("basic.consume: %w", err)
	}
	// The loop ends only when deliveries is closed: a watchdog closes the
	// channel if the run is interrupted or the pass stalls.
	wctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	stop := context.AfterFunc(wctx, func() { _ = ch.Close() })
	var ackErr error
	for d := range deliveries {
		got++
		if d.Redelivered {
			redelivered++
		}
		if err := d.Ack(false); err != nil {
			ackErr = fmt.Errorf("basic.ack: %w", err)
			break
		}
		if got == n {
			break
		}
	}
	if !stop() {
		return got, redelivered, fmt.Errorf("consuming stopped after %d of %d messages: %w", got, n, wctx.Err())
	}
	if err := ch.Close(); err != nil {
		return got, redelivered, fmt.Errorf("closing the channel: %w", err)
	}
	if ackErr == nil && got < n {
		ackErr = fmt.Errorf("deliveries ended after %d of %d messages", got, n)
	}
	return got, redelivered, ackErr
}

// warrenContender is one warren Client; every pass is one Consume call.
type warrenContender struct {
	client  *warren.Client
	queue   string
	timeout time.Duration
}

func newWarren(ctx context.Context, url, queue string, timeout time.Duration) (*warrenContender, error) {
	c, err := warren.Dial(ctx, url, warren.WithName("warrenbench-consume-warren"))
	if err != nil {
		return nil, err
	}
	return &warrenContender{client: c, queue: queue, timeout: timeout}, nil
}

// consume runs Client.Consume with one worker whose handler counts and
// returns nil (warren acks); at the n-th message it cancels Consume's ctx,
// so Consume cancels the consumer, lets the handler finish and closes its
// channel.
func (w *warrenContender) consume(ctx context.Context, p, n int) (got, redelivered int, err error) {
	wctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	cctx, done := context.WithCancel(wctx)
	defer done()
	h := func(_ context.Context, d *warren.Delivery) error {
		got++ // Workers: 1, so one handler at a time
		if d.Redelivered {
			redelivered++
		}
		if got == n {
			done()
		}
		return nil
	}
	err = w.client.Consume(cctx, w.queue, h, warren.ConsumeOptions{Prefetch: p, Workers: 1})
	switch {
	case got == n && wctx.Err() == nil && errors.Is(err, context.Canceled):
		err = nil // stopped by the handler at the n-th message
	case err == nil:
		err = fmt.Errorf("warren Consume returned nil after %d of %d messages", got, n)
	default:
		err = fmt.Errorf("consuming stopped after %d of %d messages: %w", got, n, err)
	}
	return got, redelivered, err
}

// consumeHandle runs Client.StartConsumer with one worker whose handler
// counts and returns nil (warren acks); once the handler saw the n-th
// message it cancels the Consumer, which waits for that handler's ack and
// closes its channel.
func (w *warrenContender) consumeHandle(ctx context.Context, p, n int) (got, redelivered int, err error) {
	last := make(chan struct{})
	h := func(_ context.Context, d *warren.Delivery) error {
		got++ // Workers: 1, so one handler at a time
		if d.Redelivered {
			redelivered++
		}
		if got == n {
			close(last)
		}
		return nil
	}
	k, err := w.client.StartConsumer(ctx, w.queue, h, warren.ConsumeOptions{Prefetch: p, Workers: 1})
	if err != nil {
		return 0, 0, err
	}
	return w.finish(ctx, k, last, n, &got, &redelivered)
}

// consumeBatch runs Client.StartBatchConsumer with batches of
// min(batchSize, p), one handler at a time counting the batch and
// returning nil (warren acks it); once the n-th message was handed over it
// cancels the Consumer.
func (w *warrenContender) consumeBatch(ctx context.Context, p, n int) (got, redelivered int, err error) {
	last := make(chan struct{})
	h := func(_ context.Context, batch []*warren.Delivery) error {
		for _, d := range batch {
			got++ // Workers: 1, so one handler at a time
			if d.Redelivered {
				redelivered++
			}
		}
		if got == n {
			close(last)
		}
		return nil
	}
	k, err := w.client.StartBatchConsumer(ctx, w.queue, h, warren.BatchOptions{Size: min(batchSize, p),
		ConsumeOptions: warren.ConsumeOptions{Prefetch: p, Workers: 1}})
	if err != nil {
		return 0, 0, err
	}
	return w.finish(ctx, k, last, n, &got, &redelivered)
}

// finish waits for last (or the pass timeout), cancels k, and reports.
// got and redelivered are read only after Cancel, which waits for the
// handler.
func (w *warrenContender) finish(ctx context.Context, k *warren.Consumer, last <-chan struct{}, n int, got, redelivered *int) (int, int, error) {
	wctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	var waitErr error
	select {
	case <-last:
	case <-k.Done():
		waitErr = fmt.Errorf("the consumer ended: %w", k.Err())
	case <-wctx.Done():
		waitErr = wctx.Err()
	}
	cerr := k.Cancel(wctx)
	switch {
	case waitErr != nil:
		return *got, *redelivered, fmt.Errorf("consuming stopped after %d of %d messages: %w", *got, n, waitErr)
	case cerr != nil:
		return *got, *redelivered, fmt.Errorf("Consumer.Cancel: %w", cerr)
	}
	return *got, *redelivered, nil
}

// goRabbitContender is one go-rabbitmq Conn; every pass is one Consumer.
type goRabbitContender struct {
	conn    *rabbitmq.Conn
	queue   string
	timeout time.Duration
}

func newGoRabbit(url, queue string, timeout time.Duration) (*goRabbitContender, error) {
	conn, err := peers.DialGoRabbitMQ(url, "warrenbench-consume-go-rabbitmq")
	if err != nil {
		return nil, err
	}
	return &goRabbitContender{conn: conn, queue: queue, timeout: timeout}, nil
}

// consume is go-rabbitmq's documented consumer: NewConsumer with the
// prefetch option (Concurrency 1, its default; the queue exists, so it is not
// declared), Run with a handler that counts and returns rabbitmq.Ack, then
// Close, which waits for the handler and closes the channel. The handler of
// the n-th message acks it itself (rabbitmq.Manual) before signalling the
// end, so the channel is not closed ahead of that ack.
func (g *goRabbitContender) consume(ctx context.Context, p, n int) (got, redelivered int, err error) {
	consumer, err := rabbitmq.NewConsumer(g.conn, g.queue,
		rabbitmq.WithConsumerOptionsQOSPrefetch(p),
		rabbitmq.WithConsumerOptionsQueueNoDeclare,
		rabbitmq.WithConsumerOptionsLogger(peers.Quiet))
	if err != nil {
		return 0, 0, err
	}
	last := make(chan error, 1)
	h := func(d rabbitmq.Delivery) rabbitmq.Action {
		got++ // Concurrency 1: one handler at a time
		if d.Redelivered {
			redelivered++
		}
		if got < n {
			return rabbitmq.Ack
		}
		last <- d.Ack(false)
		return rabbitmq.Manual
	}
	ran := make(chan error, 1)
	go func() { ran <- consumer.Run(h) }()
	wctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	var ackErr, runErr, waitErr error
	returned := false
	select {
	case ackErr = <-last:
	case runErr = <-ran:
		returned = true
	case <-wctx.Done():
		waitErr = wctx.Err()
	}
	consumer.Close() // waits for the handler: got is final
	if !returned {
		runErr = <-ran
	}
	switch {
	case ackErr != nil:
		err = fmt.Errorf("basic.ack: %w", ackErr)
	case waitErr != nil:
		err = fmt.Errorf("consuming stopped after %d of %d messages: %w", got, n, waitErr)
	case runErr != nil:
		err = fmt.Errorf("go-rabbitmq Consumer.Run: %w", runErr)
	case returned:
		err = fmt.Errorf("go-rabbitmq Consumer.Run returned after %d of %d messages", got, n)
	}
	return got, redelivered, err
}

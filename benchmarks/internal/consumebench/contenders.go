package consumebench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/benchmarks/internal/bench"
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

	raw    *rawContender
	warren *warrenContender
}

func newFixture(ctx context.Context, opts Options, selected []string) (f *fixture, err error) {
	f = &fixture{opts: opts}
	defer func() {
		if err != nil {
			_ = f.close(context.Background())
		}
	}()
	f.admin, err = amqp.DialConfig(opts.BrokerURL, amqp.Config{
		Properties: amqp.Table{"connection_name": "warrenbench-consume-admin"},
	})
	if err != nil {
		return nil, fmt.Errorf("admin connection: %w", err)
	}
	if f.adminCh, err = f.admin.Channel(); err != nil {
		return nil, fmt.Errorf("admin channel: %w", err)
	}
	if f.fillCh, err = f.admin.Channel(); err == nil {
		err = f.fillCh.Confirm(false)
	}
	if err != nil {
		return nil, fmt.Errorf("fill channel: %w", err)
	}
	// Not exclusive (other connections consume from it), deleted at close;
	// x-expires removes it should the program die before that.
	q, err := f.adminCh.QueueDeclare(fmt.Sprintf("warrenbench-consume-%d", os.Getpid()), false, false, false, false,
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
	if slices.Contains(selected, Warren) {
		if f.warren, err = newWarren(ctx, opts.BrokerURL, f.queue, opts.PassTimeout); err != nil {
			return nil, fmt.Errorf("warren contender: %w", err)
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
	runtime.GC()
	var (
		m0, m1   runtime.MemStats
		ru0, ru1 syscall.Rusage
	)
	runtime.ReadMemStats(&m0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	got, redelivered, cerr := consume(ctx, p, n)
	el := time.Since(t0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	runtime.ReadMemStats(&m1)

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
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	return bench.Result{
		"msg_s":      float64(n) / el.Seconds(),
		"allocs_msg": float64(m1.Mallocs-m0.Mallocs) / float64(n),
		"bytes_msg":  float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n),
		"cpu_msg":    float64(cpu) / float64(n),
	}, nil
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

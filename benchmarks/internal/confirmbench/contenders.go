package confirmbench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/benchmarks/internal/bench"
)

// loop publishes until stop is set and returns how many messages the broker
// acked. One pass runs it on one or more goroutines.
type loop func(ctx context.Context, stop *atomic.Bool) (int64, error)

// errNacked reports a broker nack, which no pass expects.
var errNacked = errors.New("the broker nacked a message")

// fixture is what the suite's cases share: the queue, the connection that
// owns and purges it, and the contenders' connections.
type fixture struct {
	admin   *amqp.Connection
	adminCh *amqp.Channel // purges the queue between passes; never publishes
	queue   string

	raw    *rawContender
	warren *warrenContender
}

func newFixture(ctx context.Context, opts Options, selected []string) (f *fixture, err error) {
	f = &fixture{}
	defer func() {
		if err != nil {
			_ = f.close(context.Background())
		}
	}()
	f.admin, err = amqp.DialConfig(opts.BrokerURL, amqp.Config{
		Properties: amqp.Table{"connection_name": "warrenbench-confirms-admin"},
	})
	if err != nil {
		return nil, fmt.Errorf("admin connection: %w", err)
	}
	if f.adminCh, err = f.admin.Channel(); err != nil {
		return nil, fmt.Errorf("admin channel: %w", err)
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
		if f.raw, err = newRaw(opts.BrokerURL, f.queue, msg, opts.Window); err != nil {
			return nil, fmt.Errorf("raw contender: %w", err)
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
	if f.admin != nil {
		if err := f.admin.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("admin connection: %w", err))
		}
	}
	return errors.Join(errs...)
}

// trial runs l on g goroutines for about d, then purges the queue. It
// reports msg/s over the wall time from the start until every goroutine
// has returned (its last messages confirmed), and per message the
// allocations, bytes allocated and process CPU time of the pass.
func (f *fixture) trial(ctx context.Context, d time.Duration, g int, l loop) (bench.Result, error) {
	var (
		stop    atomic.Bool
		start   = make(chan struct{})
		wg      sync.WaitGroup
		counts  = make([]int64, g)
		errOnce sync.Once
		runErr  error
	)
	for i := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			n, err := l(ctx, &stop)
			counts[i] = n
			if err != nil {
				errOnce.Do(func() { runErr = err })
				stop.Store(true)
			}
		}()
	}
	runtime.GC()
	var (
		m0, m1   runtime.MemStats
		ru0, ru1 syscall.Rusage
	)
	runtime.ReadMemStats(&m0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	close(start)
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	stop.Store(true)
	wg.Wait()
	el := time.Since(t0)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	runtime.ReadMemStats(&m1)

	var msgs int64
	for _, n := range counts {
		msgs += n
	}
	// Empty the queue for the next pass, whatever happened in this one.
	purged, perr := f.adminCh.QueuePurge(f.queue, false)
	if runErr != nil {
		return nil, runErr
	}
	if perr != nil {
		return nil, fmt.Errorf("purging the queue: %w", perr)
	}
	if int64(purged) != msgs {
		return nil, fmt.Errorf("purged %d messages from the queue after %d were confirmed, want equal", purged, msgs)
	}
	if msgs == 0 {
		return nil, fmt.Errorf("no message confirmed in %v", el)
	}
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	return bench.Result{
		"msg_s":      float64(msgs) / el.Seconds(),
		"allocs_msg": float64(m1.Mallocs-m0.Mallocs) / float64(msgs),
		"bytes_msg":  float64(m1.TotalAlloc-m0.TotalAlloc) / float64(msgs),
		"cpu_msg":    float64(cpu) / float64(msgs),
	}, nil
}

// rawContender is amqp091-go on its own: one connection, one channel in
// confirm mode.
type rawContender struct {
	conn       *amqp.Connection
	ch         *amqp.Channel
	queue      string
	msg        amqp.Publishing
	windowSize int
}

func newRaw(url, queue string, msg amqp.Publishing, window int) (*rawContender, error) {
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
	return &rawContender{conn: conn, ch: ch, queue: queue, msg: msg, windowSize: window}, nil
}

// waitEach publishes one message and waits for its confirm, repeatedly.
func (r *rawContender) waitEach(ctx context.Context, stop *atomic.Bool) (int64, error) {
	var n int64
	for !stop.Load() {
		dc, err := r.ch.PublishWithDeferredConfirmWithContext(ctx, "", r.queue, false, false, r.msg)
		if err != nil {
			return n, err
		}
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return n, err
		}
		if !ok {
			return n, errNacked
		}
		n++
	}
	return n, nil
}

// window is the reference idiom: publish a window of messages with
// deferred confirmations, then wait for all of them, repeatedly.
func (r *rawContender) window(ctx context.Context, stop *atomic.Bool) (int64, error) {
	var n int64
	dcs := make([]*amqp.DeferredConfirmation, r.windowSize)
	for !stop.Load() {
		for i := range dcs {
			dc, err := r.ch.PublishWithDeferredConfirm("", r.queue, false, false, r.msg)
			if err != nil {
				return n, err
			}
			dcs[i] = dc
		}
		for i, dc := range dcs {
			if !dc.Wait() {
				return n, errNacked
			}
			dcs[i] = nil
		}
		n += int64(len(dcs))
	}
	return n, nil
}

func (r *rawContender) close() error {
	err := r.conn.Close()
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
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
func (w *warrenContender) publisherLoop(who string) loop {
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

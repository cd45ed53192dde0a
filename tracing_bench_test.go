package warren

import (
	"context"
	"os"
	"testing"
	"time"

	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// The cost of tracing when it is off: Channel.Publish with no Tracer
// installed (one nil check on the way in) against the same publish path
// called past the check (publishSpan, what Publish was before the hook).
// Plain channels, to the broker at AMQP_URL when it is set (the messages go
// to the default exchange with a routing key no queue has: the broker
// drops them), otherwise to a scripted broker in this process that reads
// and drops the frames (its allocations then count too).

// plainChannel dials the broker and returns a plain channel on it.
func plainChannel(tb testing.TB, opts ...Option) Channel {
	tb.Helper()
	url := os.Getenv("AMQP_URL")
	if url == "" {
		url = fb.Start(tb, fb.Config{}, func(c *fb.Conn) { _ = c.Serve() }).URL()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := Dial(ctx, url, opts...)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Close(ctx)
	})
	ch, err := client.Channel(ctx)
	if err != nil {
		tb.Fatalf("Channel: %v", err)
	}
	return ch
}

var benchMsg = Publishing{ContentType: "text/plain", MessageId: "m-1", Headers: Table{"k": "v"}, Body: make([]byte, 64)}

// publishNoHook is a publish past the tracing hook's check.
func publishNoHook(ctx context.Context, ch Channel) error {
	_, err := ch.publishSpan(ctx, &Message{Key: "warren-bench-no-such-queue", Publishing: benchMsg}, false, nil, nil)
	return err
}

func publishNoTracer(ctx context.Context, ch Channel) error {
	return ch.Publish(ctx, "", "warren-bench-no-such-queue", benchMsg)
}

// gatedChannel dials a fake broker that reads the client's frames only
// when told to (read), so that its own allocations fall outside
// AllocsPerRun's window, and returns a plain channel on it.
func gatedChannel(t *testing.T, opts ...Option) (ch Channel, read func(n int)) {
	t.Helper()
	reads, done := make(chan int), make(chan struct{})
	b := fb.Start(t, fb.Config{}, func(c *fb.Conn) {
		m := c.Expect(fb.ChannelOpen)
		c.OpenOK(m.Channel)
		for n := range reads {
			for range n {
				if _, err := c.Next(); err != nil {
					return
				}
			}
			done <- struct{}{}
		}
		_ = c.Serve()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := Dial(ctx, b.URL(), opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Close(ctx)
	})
	t.Cleanup(func() { close(reads) }) // runs first: the script serves the close
	if ch, err = client.Channel(ctx); err != nil {
		t.Fatalf("Channel: %v", err)
	}
	return ch, func(n int) {
		select {
		case reads <- n:
		case <-time.After(10 * time.Second):
			t.Fatal("the fake broker stopped reading")
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the fake broker did not read %d publishes", n)
		}
	}
}

// publishAllocs returns the allocations of one publish, the least of a few
// rounds.
func publishAllocs(t *testing.T, ch Channel, read func(int), publish func(context.Context, Channel) error) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Few enough publishes per round that the socket buffers hold them
	// while the broker is not reading.
	const runs = 100
	low := -1.0
	for range 3 {
		var err error
		n := testing.AllocsPerRun(runs, func() {
			if e := publish(ctx, ch); e != nil && err == nil {
				err = e
			}
		})
		read(runs + 1) // AllocsPerRun calls once more to warm up
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if low < 0 || n < low {
			low = n
		}
	}
	return low
}

func TestPublishWithTracingOffAllocatesNothingExtra(t *testing.T) {
	ch, read := gatedChannel(t)
	noHook := publishAllocs(t, ch, read, publishNoHook)
	off := publishAllocs(t, ch, read, publishNoTracer)
	if off != noHook {
		t.Errorf("allocations per publish: %v with tracing off, %v without the hook; want the same", off, noHook)
	}
	t.Logf("allocations per publish: %v with tracing off, %v without the hook", off, noHook)
}

func TestTracerWithoutPublishHookAllocatesNothingExtraPerPublish(t *testing.T) {
	// A Tracer with only consumer-side hooks takes the traced publish
	// path, which must then cost no allocation either.
	ch, read := gatedChannel(t, WithTracer(Tracer{Settle: func(context.Context, SettleOp, *Delivery) func(error) { return nil }}))
	noHook := publishAllocs(t, ch, read, publishNoHook)
	traced := publishAllocs(t, ch, read, publishNoTracer)
	if traced != noHook {
		t.Errorf("allocations per publish: %v through a Tracer without Publish, %v without the hook; want the same", traced, noHook)
	}
}

func benchPublish(b *testing.B, publish func(context.Context, Channel) error, opts ...Option) {
	ch := plainChannel(b, opts...)
	ctx := context.Background()
	b.ReportAllocs()
	cpu := processCPU()
	for b.Loop() {
		if err := publish(ctx, ch); err != nil {
			b.Fatal(err)
		}
	}
	// CPU time (every goroutine of the process: the caller's, amqp091-go's
	// reader, the socket writes) per publish: steadier than ns/op on a
	// busy machine, where the wall clock counts other processes' turns.
	if cpu := processCPU() - cpu; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkPublishNoHook is the publish path without the tracing hook.
func BenchmarkPublishNoHook(b *testing.B) { benchPublish(b, publishNoHook) }

// BenchmarkPublishTracingOff is Channel.Publish with no Tracer installed.
func BenchmarkPublishTracingOff(b *testing.B) { benchPublish(b, publishNoTracer) }

// BenchmarkPublishTracingNoop is Channel.Publish with a Publish hook that
// records nothing and adds one header: the hook's own cost.
func BenchmarkPublishTracingNoop(b *testing.B) {
	benchPublish(b, publishNoTracer, WithTracer(Tracer{Publish: func(_ context.Context, p *PublishInfo) func(error) {
		p.SetHeader("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		return func(error) {}
	}}))
}

package integration

// What a Consumer costs beyond its connection (issue 22, item 4): the
// goroutines and heap that StartConsumer with one worker adds, measured
// over many consumers so that one-off allocations and goroutines that come
// and go average out, next to the same figures for amqp091-go's own
// consumer (Channel, Qos, Consume) on the same broker.
//
// The targets are 2 goroutines and 4 KiB. A warren Consumer has
// three goroutines (amqp091-go's delivery buffer, the worker, and the run
// loop that watches the channel's close, the broker's cancel, Pause,
// Resume and Cancel while the worker is in a handler) and about 6.7 KiB
// (amqp091-go: 2 goroutines and 3.6 KiB); the bounds below pin that, so
// that it can only go down. WARREN_CONSUMER_HEAPPROFILE=FILE writes a heap
// profile (every allocation sampled) of the consumers.

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// settledGoroutines returns the number of goroutines once short-lived
// ones (an RPC's helper, a timer's) have ended: the least of several
// looks, spread over a quarter of a second.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 25 {
		time.Sleep(10 * time.Millisecond)
		n = min(n, runtime.NumGoroutine())
	}
	return n
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// perConsumer starts n consumers with start and returns the goroutines
// and heap bytes each added.
func perConsumer(t *testing.T, n int, start func()) (goroutines, heap float64) {
	t.Helper()
	g0, h0 := settledGoroutines(), heapInUse()
	for range n {
		start()
	}
	g1, h1 := settledGoroutines(), heapInUse()
	return float64(g1-g0) / float64(n), (float64(h1) - float64(h0)) / float64(n)
}

func TestConsumerGoroutinesAndHeapArePinned(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 2*opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	h := func(context.Context, *warren.Delivery) error { return nil }
	const n = 40

	// amqp091-go's own consumer, for reference.
	conn, err := amqp.Dial(b.URL)
	require.NoError(t, err, "amqp.Dial")
	defer conn.Close()
	var rawChans []*amqp.Channel
	rawG, rawB := perConsumer(t, n, func() {
		ch, err := conn.Channel()
		require.NoError(t, err, "Channel")
		require.NoError(t, ch.Qos(200, 0, false), "Qos")
		ds, err := ch.Consume(q, "", false, false, false, false, nil)
		require.NoError(t, err, "Consume")
		rawChans = append(rawChans, ch)
		go func() {
			for range ds { // the application's loop
			}
		}()
	})
	for _, ch := range rawChans {
		require.NoError(t, ch.Close(), "Channel.Close")
	}

	// One consumer first, so that whatever the Client makes once for its
	// first consumer is not counted.
	startConsumer(t, ctx, c, q, h, warren.ConsumeOptions{Workers: 1})
	if f := os.Getenv("WARREN_CONSUMER_HEAPPROFILE"); f != "" {
		runtime.MemProfileRate = 1
		defer func() { runtime.MemProfileRate = 512 * 1024 }()
	}
	g0 := settledGoroutines()
	ks := make([]*warren.Consumer, 0, n)
	perG, perB := perConsumer(t, n, func() {
		k, err := c.StartConsumer(ctx, q, h, warren.ConsumeOptions{Workers: 1})
		require.NoError(t, err, "StartConsumer")
		ks = append(ks, k)
	})
	if f := os.Getenv("WARREN_CONSUMER_HEAPPROFILE"); f != "" {
		w, err := os.Create(f)
		require.NoError(t, err)
		require.NoError(t, pprof.WriteHeapProfile(w))
		require.NoError(t, w.Close())
	}
	t.Logf("per consumer with one worker: warren %.2f goroutines, %.0f B of heap; amqp091-go with its range loop %.2f goroutines, %.0f B (%d consumers each)",
		perG, perB, rawG, rawB, n)
	if perG > 3 {
		t.Errorf("a Consumer with one worker costs %.2f goroutines, want at most 3", perG)
	}
	if perB > 8<<10 {
		t.Errorf("a Consumer with one worker costs %.0f B of heap, want at most 8 KiB", perB)
	}
	for _, k := range ks {
		require.NoError(t, k.Cancel(ctx), "Cancel")
	}
	// Every goroutine of the Consumers ends with them.
	eventually(t, ctx, "the consumers' goroutines gone", func() string {
		if g := runtime.NumGoroutine(); g > g0 {
			return "goroutines: " + strconv.Itoa(g) + ", before the consumers: " + strconv.Itoa(g0)
		}
		return ""
	})
}

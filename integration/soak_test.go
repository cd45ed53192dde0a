package integration

// The reliability soak (issue 7): 32 goroutines publish persistent messages
// through a reconnecting Publisher into a durable queue while 4 consumers
// read; the connection is cut every 2–5 s and the broker (a private node)
// restarts once. Afterwards every message whose Publish returned nil has
// been consumed, every failure was reported to its caller, duplicates are
// counted by cause, and no goroutine is left behind.
//
// It runs in about a minute by default; -soak.messages and -soak.max raise
// the load and the time bound.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren"
)

var (
	soakMessages = flag.Int("soak.messages", 50000, "messages the soak test publishes")
	soakMax      = flag.Duration("soak.max", 2*time.Minute, "bound on the soak test")
)

func TestSoakPublishAndConsumeAcrossCutsAndABrokerRestart(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	needPrivate(t, r.b)
	ctx := testCtx(t, *soakMax)
	c := r.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}))
	q := uniqueName(t, "soak-")
	setup := dial(t, r.b.URL)
	sch := openChannel(t, ctx, setup)
	if _, err := sch.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true}); err != nil {
		t.Fatal(err)
	}
	deleteQueueLater(t, r.b, q)

	pub, err := c.NewPublisher(ctx, warren.PublisherOptions{Channels: 2, RepublishUnknown: true})
	if err != nil {
		t.Fatal(err)
	}

	// Consumers.
	type sighting struct{ times, redelivered int }
	var mu sync.Mutex
	seen := map[string]*sighting{}
	cctx, stopConsumers := context.WithCancel(ctx)
	var consumers errgroup.Group
	for range 4 {
		consumers.Go(func() error {
			err := c.Consume(cctx, q, func(ctx context.Context, d *warren.Delivery) error {
				mu.Lock()
				s := seen[string(d.Body)]
				if s == nil {
					s = &sighting{}
					seen[string(d.Body)] = s
				}
				s.times++
				if d.Redelivered {
					s.redelivered++
				}
				mu.Unlock()
				return nil
			}, warren.ConsumeOptions{Prefetch: 100, ShutdownTimeout: 5 * time.Second})
			if !errors.Is(err, context.Canceled) {
				return fmt.Errorf("got %v, want context.Canceled", err)
			}
			return nil
		})
	}

	// Faults: cuts every 2–5 s, one broker restart.
	faultsDone := make(chan struct{})
	stopFaults := make(chan struct{})
	// The publishers go on until the schedule has run a cut, the restart
	// and another cut, however fast they are.
	const minEvents = 3
	scheduled := make(chan struct{})
	var cuts, restarts atomic.Int64
	go func() {
		defer close(faultsDone)
		defer func() {
			select {
			case <-scheduled:
			default:
				close(scheduled) // stopped before its third event: never leave it open
			}
		}()
		restarted := false
		for event := 1; ; event++ {
			select {
			case <-stopFaults:
				return
			case <-time.After(time.Duration(2000+rand.IntN(3000)) * time.Millisecond):
			}
			if !restarted && event == 2 { // a cut first, then the restart, then cuts
				restarted = true
				cctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
				if _, err := r.b.Ctl(cctx, "stop_app"); err != nil {
					t.Errorf("stop_app: %v", err)
				}
				time.Sleep(500 * time.Millisecond)
				if _, err := r.b.Ctl(cctx, "start_app"); err != nil {
					t.Errorf("start_app: %v", err)
				}
				cancel()
				restarts.Add(1)
				continue
			}
			r.proxy.CutAll()
			cuts.Add(1)
			if event == minEvents {
				close(scheduled)
			}
		}
	}()

	// Publishers.
	const goroutines = 32
	each := (*soakMessages + goroutines - 1) / goroutines // at least -soak.messages in all
	var acked sync.Map
	var nAcked, nFailed, nPublished atomic.Int64 // nPublished: Publish calls
	faultsRan := func() bool {
		select {
		case <-scheduled:
			return true
		default:
			return false
		}
	}
	start := time.Now()
	var pwg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for i := 0; i < each || !faultsRan(); i++ {
				nPublished.Add(1)
				id := fmt.Sprintf("%d-%d", g, i)
				err := pub.Publish(ctx, "", q, warren.Publishing{DeliveryMode: warren.Persistent, Body: []byte(id)})
				if err == nil {
					acked.Store(id, true)
					nAcked.Add(1)
					continue
				}
				nFailed.Add(1)
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	pwg.Wait()
	published := time.Since(start)
	close(stopFaults)
	<-faultsDone

	eventually(t, ctx, "every acked message consumed", func() string {
		mu.Lock()
		defer mu.Unlock()
		missing := 0
		acked.Range(func(k, _ any) bool {
			if seen[k.(string)] == nil {
				missing++
			}
			return true
		})
		if missing > 0 {
			return fmt.Sprintf("%d of %d acked messages not consumed", missing, nAcked.Load())
		}
		return ""
	})
	stopConsumers()
	if err := consumers.Wait(); err != nil {
		t.Errorf("Consume: %v", err)
	}
	st := pub.Stats()
	if err := pub.Close(ctx); err != nil {
		t.Errorf("Publisher.Close: %v", err)
	}

	mu.Lock()
	redelivered, copies := 0, 0
	for _, s := range seen {
		if s.times > 1 {
			redelivered += s.redelivered
			copies += s.times - 1 - min(s.redelivered, s.times-1)
		}
	}
	distinct := len(seen)
	mu.Unlock()
	t.Logf("published %d messages from %d goroutines in %v (%.0f msg/s) across %d cuts and %d broker restart",
		nPublished.Load(), goroutines, published.Round(time.Millisecond), float64(nPublished.Load())/published.Seconds(), cuts.Load(), restarts.Load())
	t.Logf("Publish returned nil %d times, an error %d times; publisher stats %+v", nAcked.Load(), nFailed.Load(), st)
	t.Logf("consumed %d distinct messages: 0 acked messages lost; %d deliveries again after a lost ack (Redelivered), %d extra copies (republished after an unknown outcome; %d republishes)",
		distinct, redelivered, copies, st.Republished)
	if nFailed.Load() != 0 {
		t.Errorf("%d publishes failed with RepublishUnknown and a 2-minute ctx", nFailed.Load())
	}
	if copies > int(st.Republished) {
		t.Errorf("%d extra copies but only %d republishes: duplicates from somewhere else", copies, st.Republished)
	}
	if restarts.Load() != 1 {
		t.Errorf("broker restarts: %d, want 1", restarts.Load())
	}
}

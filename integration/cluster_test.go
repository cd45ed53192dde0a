package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// startCluster starts a three-node cluster for one test and stops it when
// the test ends: containers of the version WARREN_BROKER names, on a
// network of their own, or else private nodes. Without a rabbitmq-server
// installation (or Docker engine) the test is skipped, unless a broker is
// required (CI, WARREN_BROKER).
func startCluster(t *testing.T) *brokertest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var cl *brokertest.Cluster
	var err error
	if v := brokertest.WantedVersion(); v != "" {
		cl, err = startContainerCluster(ctx, v, 3)
	} else {
		cl, err = brokertest.StartCluster(ctx, 3)
	}
	if err != nil {
		if brokertest.Required() {
			t.Fatalf("starting a 3-node cluster: %v", err)
		}
		t.Skipf("no 3-node cluster: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := cl.Stop(ctx); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	t.Logf("3-node cluster up in %v: %v", cl.BootTime().Round(time.Millisecond), cl.URLs())
	for _, b := range cl.Nodes {
		t.Logf("  %s", b)
	}
	return cl
}

// stateTimes records when a Client lost its connection and when it
// reconnected, and where to.
type stateTimes struct {
	mu           sync.Mutex
	disconnected time.Time
	reconnected  time.Time
	endpoint     string
	reconnects   int
}

func (s *stateTimes) record(e warren.StateEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch e.State {
	case warren.StateDisconnected:
		if s.disconnected.IsZero() {
			s.disconnected = e.At
		}
	case warren.StateReconnected:
		s.reconnects++
		if s.reconnected.IsZero() {
			s.reconnected, s.endpoint = e.At, e.Endpoint
		}
	}
}

func (s *stateTimes) failover() (d time.Duration, endpoint string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disconnected.IsZero() || s.reconnected.IsZero() {
		return 0, "", false
	}
	return s.reconnected.Sub(s.disconnected), s.endpoint, true
}

// TestClusterNodeLossLosesNoConfirmedMessage is issue 8's acceptance test.
// A Publisher (8 goroutines, confirms) and a consumer are both connected to
// one node of a three-node cluster, which also leads the quorum queue they
// use. That node goes away while both work: first stopped
// (rabbitmqctl stop: the broker closes connections with 320), then, after
// it has been started again and rejoined, another node is killed (SIGKILL:
// sockets just end). Both clients must fail over to another node by
// themselves, and every message whose Publish returned nil must be
// consumed: zero lost.
func TestClusterNodeLossLosesNoConfirmedMessage(t *testing.T) {
	faultCheckLeaks(t)
	cl := startCluster(t)
	t.Run("stop", func(t *testing.T) {
		testNodeLoss(t, cl, 0, "stopped", func(ctx context.Context) error { return cl.StopNode(ctx, 0) })
	})
	ctx := testCtx(t, 3*time.Minute)
	if err := cl.StartNode(ctx, 0); err != nil {
		t.Fatalf("starting node 0 again: %v", err)
	}
	if err := cl.WaitRunning(ctx); err != nil {
		t.Fatalf("node 0 did not rejoin: %v", err)
	}
	t.Run("kill", func(t *testing.T) {
		testNodeLoss(t, cl, 1, "killed", func(context.Context) error { return cl.KillNode(1) })
	})
}

func testNodeLoss(t *testing.T, cl *brokertest.Cluster, victim int, how string, loseNode func(context.Context) error) {
	ctx := testCtx(t, 4*time.Minute)
	// The victim first, so that both clients start on it.
	all := cl.URLs()
	urls := append(all[victim:victim+1:victim+1], append(all[:victim:victim], all[victim+1:]...)...)
	node0 := strings.TrimPrefix(strings.TrimSuffix(urls[0], "/"), "amqp://guest:guest@")

	// The queue, declared on the victim: its leader is there.
	q := uniqueName(t, "cluster-qq-")
	admin, err := warren.Dial(ctx, urls[0])
	if err != nil {
		t.Fatal(err)
	}
	ach, err := admin.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ach.QueueDeclare(ctx, q, warren.QueueOptions{Durable: true, Type: warren.QueueQuorum}); err != nil {
		t.Fatalf("declaring the quorum queue: %v", err)
	}
	if err := admin.Close(ctx); err != nil {
		t.Fatal(err)
	}

	dialOpts := func(st *stateTimes) []warren.Option {
		return []warren.Option{
			warren.WithEndpointOrder(warren.EndpointsInOrder), // the victim first
			warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, DialTimeout: 5 * time.Second}),
			warren.WithStateCallback(st.record),
		}
	}
	var pubState, conState stateTimes
	pc, err := warren.DialCluster(ctx, urls, dialOpts(&pubState)...)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	cc, err := warren.DialCluster(ctx, urls, dialOpts(&conState)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close(context.Background())
	for _, c := range []*warren.Client{pc, cc} {
		if !strings.Contains(c.Endpoint(), node0) {
			t.Fatalf("client on %s, want node %d (%s)", c.Endpoint(), victim, node0)
		}
	}

	// The consumer: records every id it is handed.
	var (
		cmu       sync.Mutex
		consumed  = map[int]int{}
		lastAfter atomic.Int64 // deliveries handled after the consumer's reconnect
	)
	cctx, stopConsumer := context.WithCancel(ctx)
	consumeErr := make(chan error, 1)
	go func() {
		consumeErr <- cc.Consume(cctx, q, func(_ context.Context, d *warren.Delivery) error {
			id, err := strconv.Atoi(string(d.Body))
			if err != nil {
				return err
			}
			cmu.Lock()
			consumed[id]++
			cmu.Unlock()
			if _, _, ok := conState.failover(); ok {
				lastAfter.Add(1)
			}
			return nil
		}, warren.ConsumeOptions{Prefetch: 100, Workers: 2})
	}()

	// The publishers.
	p, err := pc.NewPublisher(ctx, warren.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var (
		nextID      atomic.Int64
		amu         sync.Mutex
		acked       []int
		ackedAfter  atomic.Int64 // acked after the publisher's reconnect
		firstAfter  atomic.Int64 // unix nanos of the first ack after the reconnect
		unknown     atomic.Int64
		nacked      atomic.Int64
		otherErrs   atomic.Int64
		errSample   atomic.Value
		stopPublish atomic.Bool
		pubWG       sync.WaitGroup
	)
	for range 8 {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			for !stopPublish.Load() && ctx.Err() == nil {
				id := int(nextID.Add(1))
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := p.Publish(pctx, "", q, warren.Publishing{Body: []byte(strconv.Itoa(id)), DeliveryMode: warren.Persistent})
				cancel()
				switch {
				case err == nil:
					amu.Lock()
					acked = append(acked, id)
					amu.Unlock()
					if _, _, ok := pubState.failover(); ok {
						if ackedAfter.Add(1) == 1 {
							firstAfter.Store(time.Now().UnixNano())
						}
					}
				case errors.Is(err, warren.ErrOutcomeUnknown):
					unknown.Add(1)
				case errors.Is(err, warren.ErrNacked):
					nacked.Add(1)
				default:
					otherErrs.Add(1)
					errSample.Store(err.Error())
					time.Sleep(10 * time.Millisecond) // e.g. waiting for the reconnect timed out
				}
			}
		}()
	}

	ackedSoFar := func() int {
		amu.Lock()
		defer amu.Unlock()
		return len(acked)
	}
	eventually(t, ctx, "1,000 messages acked before the node stops", func() string {
		if n := ackedSoFar(); n < 1000 {
			return fmt.Sprintf("%d acked", n)
		}
		return ""
	})
	ackedBefore := ackedSoFar()
	stopAt := time.Now()
	if err := loseNode(ctx); err != nil {
		t.Fatalf("node %d: %v", victim, err)
	}
	stopTook := time.Since(stopAt)
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	eventually(t, rctx, "publishing and consuming resumed on another node", func() string {
		if n := ackedAfter.Load(); n < 1000 {
			sample, _ := errSample.Load().(string)
			return fmt.Sprintf("%d acked since the publisher's reconnect (publisher on %s; stats %+v; unknown %d, other errors %d: %s)\n%s",
				n, pc.Endpoint(), p.Stats(), unknown.Load(), otherErrs.Load(), sample, queueStatus(cl, victim, q))
		}
		if n := lastAfter.Load(); n < 500 {
			return fmt.Sprintf("%d consumed since the consumer's reconnect", n)
		}
		return ""
	})
	stopPublish.Store(true)
	pubWG.Wait()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Publisher.Close: %v", err)
	}

	amu.Lock()
	final := append([]int(nil), acked...)
	amu.Unlock()
	missing := func() []int {
		cmu.Lock()
		defer cmu.Unlock()
		var m []int
		for _, id := range final {
			if consumed[id] == 0 {
				m = append(m, id)
			}
		}
		return m
	}
	eventually(t, ctx, "every acked message consumed", func() string {
		if m := missing(); len(m) > 0 {
			return fmt.Sprintf("%d of %d acked messages not consumed yet (first %d)", len(m), len(final), m[0])
		}
		return ""
	})
	stopConsumer()
	if err := <-consumeErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume returned %v, want context.Canceled", err)
	}

	pubFail, pubEP, ok1 := pubState.failover()
	conFail, conEP, ok2 := conState.failover()
	if !ok1 || !ok2 {
		t.Fatalf("a client did not fail over: publisher %v, consumer %v", ok1, ok2)
	}
	if n := otherErrs.Load(); n > 0 {
		sample, _ := errSample.Load().(string)
		t.Errorf("%d publishes failed with neither a nack nor an unknown outcome, e.g. %s", n, sample)
	}
	for _, ep := range []string{pubEP, conEP, pc.Endpoint(), cc.Endpoint()} {
		if strings.Contains(ep, node0) {
			t.Fatalf("a client is on %s, the stopped node", ep)
		}
	}
	cmu.Lock()
	dups := extraCopies(consumed)
	distinct := len(consumed)
	cmu.Unlock()
	pubState.mu.Lock()
	resumed := time.Duration(firstAfter.Load() - pubState.disconnected.UnixNano())
	pubState.mu.Unlock()
	sample, _ := errSample.Load().(string)
	report := fmt.Sprintf("cluster failover (node %d %s, in %v):\n"+
		"  publisher: disconnected→reconnected %v (to %s), first ack after the loss %v after it\n"+
		"  consumer:  disconnected→reconnected %v (to %s)\n"+
		"  Publish returned nil %d times (%d before the loss, %d after the reconnect); outcome unknown %d; nacked %d (channels renewed after a run of nacks: %d); other errors %d %s\n"+
		"  consumed %d distinct messages, %d redelivered duplicates, %d after the consumer's reconnect; acked but lost: 0",
		victim, how, stopTook.Round(time.Millisecond), pubFail.Round(time.Millisecond), pubEP, resumed.Round(time.Millisecond),
		conFail.Round(time.Millisecond), conEP,
		len(final), ackedBefore, ackedAfter.Load(), unknown.Load(), nacked.Load(), p.Stats().Renewed, otherErrs.Load(), sample,
		distinct, dups, lastAfter.Load())
	t.Log(report)
	fmt.Println(report)
}

// queueStatus describes queue q as a surviving node sees it, for failure
// messages.
func queueStatus(cl *brokertest.Cluster, victim int, q string) string {
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	out, err := cl.Nodes[(victim+1)%len(cl.Nodes)].Ctl(ctx, "list_queues", "name", "type", "leader", "members", "online", "messages", "state")
	if err != nil {
		return "list_queues: " + err.Error()
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, q) || strings.HasPrefix(l, "name") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

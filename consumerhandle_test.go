package warren_test

// The consumer handle (StartConsumer, StartBatchConsumer) against the
// scripted broker: misuse, races of Pause, Resume, Cancel and Client.Close,
// and the settlements a batch consumer sends, which a real broker does not
// show (it would only close the channel for a double ack, or lose a
// message for a multiple ack that covered another batch's delivery).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// Basic-class methods the fake broker package does not name.
var (
	fbBasicCancelOK = fb.ID(60, 31)
	fbBasicReject   = fb.ID(60, 90)
)

// settlement is an ack, nack or reject the fake broker received.
type settlement struct {
	kind     string // "ack", "nack", "reject"
	tag      uint64
	multiple bool
}

func (s settlement) String() string {
	if s.multiple {
		return fmt.Sprintf("%s %d multiple", s.kind, s.tag)
	}
	return fmt.Sprintf("%s %d", s.kind, s.tag)
}

// subscribed is a basic.consume the fake broker answered.
type subscribed struct {
	ch  uint16
	tag string
}

// consumeFake is a broker that serves consumers: it answers channel.open,
// basic.qos, basic.consume and basic.cancel, records settlements, and
// delivers on the test's request. With missing set, a queue.declare is
// answered with 404 (the channel closed), as for a deleted queue.
type consumeFake struct {
	conn     chan *fb.Conn   // the connection, once
	consumes chan subscribed // every basic.consume answered
	cancels  chan subscribed // every basic.cancel answered
	missing  atomic.Bool
	opens    atomic.Int64

	mu      sync.Mutex
	settled []settlement
	c       *fb.Conn
}

func newConsumeFake() *consumeFake {
	return &consumeFake{conn: make(chan *fb.Conn, 1), consumes: make(chan subscribed, 64), cancels: make(chan subscribed, 64)}
}

func (f *consumeFake) script(c *fb.Conn) {
	f.mu.Lock()
	f.c = c
	f.mu.Unlock()
	for {
		m, err := c.Next()
		if err != nil {
			return
		}
		switch m.ID {
		case fb.ChannelOpen:
			f.opens.Add(1)
			c.OpenOK(m.Channel)
		case fbBasicConsume:
			r := m.Reader()
			r.Short()
			queue := r.ShortStr()
			tag := r.ShortStr()
			if queue == "missing" {
				c.CloseChannel(m.Channel, 404, "NOT_FOUND - no queue 'missing' in vhost '/'")
				continue
			}
			c.Send(m.Channel, fbBasicConsumeOK, new(fb.Args).ShortStr(tag))
			f.consumes <- subscribed{m.Channel, tag}
		case fbBasicCancel:
			tag := m.Reader().ShortStr()
			c.Send(m.Channel, fbBasicCancelOK, new(fb.Args).ShortStr(tag))
			f.cancels <- subscribed{m.Channel, tag}
		case fb.BasicAck, fb.BasicNack, fbBasicReject:
			r := m.Reader()
			s := settlement{tag: r.LongLong()}
			switch m.ID {
			case fb.BasicAck:
				s.kind, s.multiple = "ack", r.Bit()
			case fb.BasicNack:
				s.kind, s.multiple = "nack", r.Bit()
			default:
				s.kind = "reject"
			}
			f.mu.Lock()
			f.settled = append(f.settled, s)
			f.mu.Unlock()
		case fb.QueueDeclare:
			if f.missing.Load() {
				c.CloseChannel(m.Channel, 404, "NOT_FOUND - no queue 'q' in vhost '/'")
				continue
			}
			c.DeclareOK(m.Channel, "q")
		default:
			if c.Answer(m) != nil {
				return
			}
		}
	}
}

// deliver sends basic.deliver with body on ch to tag, in one write.
func (f *consumeFake) deliver(t *testing.T, s subscribed, deliveryTag uint64, body string) {
	t.Helper()
	var b []byte
	b = append(b, fb.MethodFrame(s.ch, fb.BasicDeliver, new(fb.Args).ShortStr(s.tag).LongLong(deliveryTag).Bits(false).ShortStr("").ShortStr("q").Bytes()).Encode()...)
	b = append(b, fb.HeaderFrame(s.ch, 60, uint64(len(body)), nil).Encode()...)
	b = append(b, fb.Frame{Type: fb.FrameBody, Channel: s.ch, Payload: []byte(body)}.Encode()...)
	f.mu.Lock()
	c := f.c
	f.mu.Unlock()
	if err := c.SendRaw(b); err != nil {
		t.Fatalf("deliver: %v", err)
	}
}

// brokerCancel sends the broker's basic.cancel of s.
func (f *consumeFake) brokerCancel(s subscribed) {
	f.mu.Lock()
	c := f.c
	f.mu.Unlock()
	c.SendFrame(fb.MethodFrame(s.ch, fbBasicCancel, new(fb.Args).ShortStr(s.tag).Bits(false).Bytes()))
}

func (f *consumeFake) settlements() []settlement {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]settlement(nil), f.settled...)
}

// nextConsume waits for the next basic.consume the broker answered.
func (f *consumeFake) nextConsume(t *testing.T) subscribed {
	t.Helper()
	select {
	case s := <-f.consumes:
		return s
	case <-time.After(testBound):
		t.Fatal("no basic.consume")
		return subscribed{}
	}
}

// startConsumeFake starts a consumeFake and dials it.
func startConsumeFake(t *testing.T, opts ...warren.Option) (*consumeFake, *warren.Client) {
	f := newConsumeFake()
	client := startFake(t, fb.Config{}, f.script, opts...)
	return f, client
}

// waitConsumerDone waits (bounded) for k to end.
func waitConsumerDone(t *testing.T, what string, k *warren.Consumer) {
	t.Helper()
	waitDone(t, what, k.Done(), testBound)
}

func nopHandler(context.Context, *warren.Delivery) error { return nil }

func TestANilOrZeroConsumerGivesTypedErrorsNotPanics(t *testing.T) {
	ctx := testCtx(t)
	for _, k := range []*warren.Consumer{nil, new(warren.Consumer)} {
		name := fmt.Sprintf("%#v", k)
		for op, err := range map[string]error{"Pause": k.Pause(ctx), "Resume": k.Resume(ctx), "Cancel": k.Cancel(ctx)} {
			if !errors.Is(err, warren.ErrInvalidArgument) {
				t.Errorf("%s: %s: got %v, want ErrInvalidArgument", name, op, err)
			}
		}
		select {
		case <-k.Done():
		default:
			t.Errorf("%s: Done not closed", name)
		}
		select {
		case <-k.Ready():
			t.Errorf("%s: Ready closed", name)
		default:
		}
		if err := k.Err(); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("%s: Err: got %v, want ErrInvalidArgument", name, err)
		}
		if s := k.Stats(); s != (warren.ConsumerStats{}) {
			t.Errorf("%s: Stats: got %+v, want zero", name, s)
		}
		if k.Tag() != "" || k.Queue() != "" {
			t.Errorf("%s: Tag %q, Queue %q; want empty", name, k.Tag(), k.Queue())
		}
	}
}

func TestBadConsumerOptionsAreRefusedBeforeAnythingIsSent(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	bh := func(context.Context, []*warren.Delivery) error { return nil }
	cases := []struct {
		name  string
		start func() (*warren.Consumer, error)
	}{
		{"nil handler", func() (*warren.Consumer, error) { return client.StartConsumer(ctx, "q", nil, warren.ConsumeOptions{}) }},
		{"Workers<0", func() (*warren.Consumer, error) {
			return client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{Workers: -1})
		}},
		{"Prefetch<0", func() (*warren.Consumer, error) {
			return client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{Prefetch: -1})
		}},
		{"Prefetch>65535", func() (*warren.Consumer, error) {
			return client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{Prefetch: 65536})
		}},
		{"ShutdownTimeout<0", func() (*warren.Consumer, error) {
			return client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{ShutdownTimeout: -1})
		}},
		{"nil batch handler", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", nil, warren.BatchOptions{})
		}},
		{"Size<0", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", bh, warren.BatchOptions{Size: -1})
		}},
		{"Size>65535", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", bh, warren.BatchOptions{Size: 65536})
		}},
		{"MaxWait<0", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", bh, warren.BatchOptions{MaxWait: -time.Second})
		}},
		{"batch Workers<0", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", bh, warren.BatchOptions{ConsumeOptions: warren.ConsumeOptions{Workers: -1}})
		}},
		{"Prefetch<Size", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", bh, warren.BatchOptions{Size: 10, ConsumeOptions: warren.ConsumeOptions{Prefetch: 9}})
		}},
		{"batch Prefetch<0", func() (*warren.Consumer, error) {
			return client.StartBatchConsumer(ctx, "q", bh, warren.BatchOptions{ConsumeOptions: warren.ConsumeOptions{Prefetch: -1}})
		}},
	}
	for _, tc := range cases {
		k, err := tc.start()
		if !errors.Is(err, warren.ErrInvalidArgument) || k != nil {
			t.Errorf("%s: got (%v, %v), want (nil, ErrInvalidArgument)", tc.name, k, err)
		}
	}
	if n := f.opens.Load(); n != 0 {
		t.Errorf("%d channels opened for refused options, want 0", n)
	}
}

func TestStartConsumerWithAnEndedCtxOrOnAClosedClientLeavesNothing(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	ended, cancel := context.WithCancel(ctx)
	cancel()
	k, err := client.StartConsumer(ended, "q", nopHandler, warren.ConsumeOptions{})
	if !errors.Is(err, context.Canceled) || k != nil {
		t.Fatalf("StartConsumer with an ended ctx: got (%v, %v), want (nil, context.Canceled)", k, err)
	}
	if _, err := client.StartBatchConsumer(ended, "q", func(context.Context, []*warren.Delivery) error { return nil }, warren.BatchOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("StartBatchConsumer with an ended ctx: got %v, want context.Canceled", err)
	}
	if n := client.OpenChannels(); n != 0 {
		t.Errorf("open channels after failed starts: %d, want 0", n)
	}
	if len(f.consumes) != 0 {
		t.Errorf("basic.consume sent with an ended ctx")
	}
	if err := client.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{}); !errors.Is(err, warren.ErrClientClosed) {
		t.Errorf("StartConsumer on a closed Client: got %v, want ErrClientClosed", err)
	}
}

// FIXED BUG (consumerhandle.go run): a Cancel racing the loss of the
// subscription (here the broker's basic.cancel, without reconnect) left
// Err set to the loss, though Cancel's doc says Err is nil after Cancel.
func TestCancelWinsOverALossThatRacesIt(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	for i := range 20 {
		// A handler still running holds the end back (Done closes once
		// handlers return): the broker's cancel is being handled while
		// Cancel is called, and Cancel certainly comes before Done.
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		k, err := client.StartConsumer(ctx, "q", func(context.Context, *warren.Delivery) error {
			started <- struct{}{}
			<-release // its ctx ends with the subscription: this handler holds on regardless
			return nil
		}, warren.ConsumeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := f.nextConsume(t)
		f.deliver(t, s, 1, "hold")
		<-started
		f.brokerCancel(s)
		if i%2 == 0 {
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		}
		if isDone(k.Done()) {
			t.Fatal("the Consumer ended with a handler still running")
		}
		cancelled := make(chan error, 1)
		go func() { cancelled <- k.Cancel(ctx) }()
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		close(release)
		if err := <-cancelled; err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		if err := k.Err(); err != nil {
			t.Fatalf("Err after a Cancel made before the Consumer ended: %v, want nil", err)
		}
	}
	// A Cancel after the end (Done closed) leaves Err as it was.
	k, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.brokerCancel(f.nextConsume(t))
	<-k.Done()
	if err := k.Cancel(ctx); err != nil {
		t.Fatalf("Cancel after the end: %v", err)
	}
	if err := k.Err(); !errors.Is(err, warren.ErrConsumerCancelled) {
		t.Fatalf("Err of a Consumer the broker cancelled before Cancel: %v, want ErrConsumerCancelled", err)
	}
}

func TestConsumerHandlerPanicIsRejectedCountedAndTheConsumerGoesOn(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	var panicked atomic.Int64
	k, err := client.StartConsumer(ctx, "q", func(_ context.Context, d *warren.Delivery) error {
		if string(d.Body) == "boom" {
			panic("boom")
		}
		if string(d.Body) == "fail" {
			return errors.New("fail")
		}
		return nil
	}, warren.ConsumeOptions{OnPanic: func(*warren.Delivery, any, []byte) { panicked.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	s := f.nextConsume(t)
	f.deliver(t, s, 1, "boom")
	f.deliver(t, s, 2, "fail")
	f.deliver(t, s, 3, "ok")
	waitFor(t, "three settlements", testBound, func() bool { return len(f.settlements()) == 3 })
	want := []settlement{{"reject", 1, false}, {"reject", 2, false}, {"ack", 3, false}}
	if got := f.settlements(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("settlements: got %v, want %v", got, want)
	}
	want2 := warren.ConsumerStats{Delivered: 3, Acked: 1, Rejected: 2, HandlerErrors: 2, Panics: 1}
	if st := k.Stats(); st != want2 {
		t.Errorf("Stats: got %+v, want %+v", st, want2)
	}
	if panicked.Load() != 1 {
		t.Errorf("OnPanic called %d times, want 1", panicked.Load())
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
}

// A batch's multiple ack covers every unacked delivery up to its tag on
// the channel: it must never be sent while an earlier batch is still
// being handled (its messages would be acked unprocessed, and lost if the
// handler then fails).
func TestBatchMultipleAckNeverCoversAnEarlierBatchStillRunning(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	release := make(chan struct{})
	started := make(chan uint64, 8)
	k, err := client.StartBatchConsumer(ctx, "q", func(hctx context.Context, batch []*warren.Delivery) error {
		first := batch[0].DeliveryTag
		started <- first
		if first == 1 {
			select {
			case <-release:
			case <-hctx.Done():
				return hctx.Err()
			}
			return errors.New("the first batch fails")
		}
		return nil
	}, warren.BatchOptions{Size: 3, MaxWait: time.Hour, ConsumeOptions: warren.ConsumeOptions{Workers: 2}})
	if err != nil {
		t.Fatal(err)
	}
	s := f.nextConsume(t)
	for tag := uint64(1); tag <= 6; tag++ {
		f.deliver(t, s, tag, "x")
	}
	// Batch 4-6 finishes while batch 1-3 runs: acked one by one.
	waitFor(t, "batch 4-6 settled", testBound, func() bool { return len(f.settlements()) == 3 })
	close(release)
	waitFor(t, "batch 1-3 settled", testBound, func() bool { return len(f.settlements()) == 6 })
	// Nothing outstanding now: the next batch is one multiple ack.
	for tag := uint64(7); tag <= 9; tag++ {
		f.deliver(t, s, tag, "x")
	}
	waitFor(t, "batch 7-9 settled", testBound, func() bool { return len(f.settlements()) == 7 })
	got := f.settlements()
	want := "[ack 4 ack 5 ack 6 reject 1 reject 2 reject 3 ack 9 multiple]"
	if fmt.Sprint(got) != want {
		t.Errorf("settlements: got %v, want %v", got, want)
	}
	st := k.Stats()
	if st.Acked != 6 || st.Rejected != 3 || st.Delivered != 9 || st.HandlerErrors != 1 || st.InFlight != 0 {
		t.Errorf("Stats: %+v", st)
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
}

// Pause, Resume and Cancel from many goroutines at once: no panic (a
// channel closed twice), no deadlock, every call returns, the Consumer
// ends once, nothing is left running.
func TestPauseResumeAndCancelFromManyGoroutines(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	for round := range 5 {
		k, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{Workers: 3})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 30 {
					octx, cancel := context.WithTimeout(ctx, time.Duration(rand.IntN(3000))*time.Microsecond)
					var err error
					switch (g + i) % 2 {
					case 0:
						err = k.Pause(octx)
					default:
						err = k.Resume(octx)
					}
					cancel()
					if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, warren.ErrConsumerEnded) {
						t.Errorf("round %d: Pause/Resume: %v", round, err)
					}
					if g == 0 && i == 20 {
						if err := k.Cancel(ctx); err != nil {
							t.Errorf("round %d: Cancel: %v", round, err)
						}
					}
				}
			}()
		}
		wg.Wait()
		waitConsumerDone(t, "consumer after Cancel", k)
		if err := k.Err(); err != nil {
			t.Errorf("round %d: Err after Cancel: %v", round, err)
		}
		if err := k.Resume(ctx); !errors.Is(err, warren.ErrConsumerEnded) {
			t.Errorf("round %d: Resume after the end: %v, want ErrConsumerEnded", round, err)
		}
	}
	waitFor(t, "every consumer channel closed", testBound, func() bool { return client.OpenChannels() == 0 })
	_ = f
}

// Client.Close ends a Consumer in every state, and leaves nothing running
// (leakCheck): running with a handler that ignores its ctx for a while,
// paused, cancelled, waiting for its deleted queue to come back, and one
// being cancelled as Close runs.
func TestClientCloseEndsConsumersInEveryState(t *testing.T) {
	f, client := startConsumeFake(t, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}))
	ctx := testCtx(t)

	inHandler := make(chan struct{}, 1)
	running, err := client.StartConsumer(ctx, "q", func(context.Context, *warren.Delivery) error {
		inHandler <- struct{}{}
		time.Sleep(200 * time.Millisecond) // ignores its ctx
		return nil
	}, warren.ConsumeOptions{ShutdownTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rs := f.nextConsume(t)
	f.deliver(t, rs, 1, "x")
	<-inHandler

	paused, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.nextConsume(t)
	if err := paused.Pause(ctx); err != nil {
		t.Fatal(err)
	}

	cancelled, err := client.StartBatchConsumer(ctx, "q", func(context.Context, []*warren.Delivery) error { return nil }, warren.BatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.nextConsume(t)
	if err := cancelled.Cancel(ctx); err != nil {
		t.Fatal(err)
	}

	waiting, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ws := f.nextConsume(t)
	f.missing.Store(true)
	f.brokerCancel(ws)
	waitFor(t, "the queue checked twice", testBound, func() bool { return waiting.Stats().QueueChecks >= 2 })

	racing, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.nextConsume(t)
	racingDone := make(chan error, 1)
	go func() { racingDone <- racing.Cancel(ctx) }()

	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for name, k := range map[string]*warren.Consumer{"running": running, "paused": paused, "waiting": waiting} {
		waitConsumerDone(t, name, k)
		if err := k.Err(); !errors.Is(err, warren.ErrClientClosed) {
			t.Errorf("%s: Err after Client.Close: %v, want ErrClientClosed", name, err)
		}
		if err := k.Pause(ctx); !errors.Is(err, warren.ErrConsumerEnded) {
			t.Errorf("%s: Pause after the end: %v, want ErrConsumerEnded", name, err)
		}
	}
	waitConsumerDone(t, "cancelled", cancelled)
	if err := cancelled.Err(); err != nil {
		t.Errorf("cancelled: Err: %v, want nil", err)
	}
	select {
	case err := <-racingDone:
		if err != nil {
			t.Errorf("Cancel racing Client.Close: %v", err)
		}
	case <-time.After(testBound):
		t.Fatal("Cancel racing Client.Close did not return")
	}
	if err := racing.Err(); err != nil && !errors.Is(err, warren.ErrClientClosed) {
		t.Errorf("racing: Err: %v, want nil or ErrClientClosed", err)
	}
	if st := running.Stats(); st.InFlight != 0 || st.Delivered != 1 {
		t.Errorf("running: Stats after the end: %+v", st)
	}
	if !strings.Contains(fmt.Sprint(running.Err()), "closed") {
		t.Errorf("running: Err %v does not say closed", running.Err())
	}
}

// Cancel whose ctx ends while a handler ignores its own: Cancel returns
// ErrShutdownTimeout with ctx's error, the handler's ctx is cancelled,
// and a second Cancel returns the same.
func TestCancelBoundedByItsCtxWhileAHandlerHangs(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	in := make(chan struct{})
	release := make(chan struct{})
	var hctxEnded atomic.Bool
	k, err := client.StartConsumer(ctx, "q", func(hctx context.Context, _ *warren.Delivery) error {
		close(in)
		<-release
		hctxEnded.Store(hctx.Err() != nil)
		return nil
	}, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer close(release)
	s := f.nextConsume(t)
	f.deliver(t, s, 1, "x")
	<-in
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err = k.Cancel(short)
	if !errors.Is(err, warren.ErrShutdownTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Cancel: got %v, want ErrShutdownTimeout and DeadlineExceeded", err)
	}
	if !isDone(k.Done()) || k.Err() != nil {
		t.Errorf("after Cancel: Done %v, Err %v; want closed, nil", isDone(k.Done()), k.Err())
	}
	if st := k.Stats(); st.InFlight != 1 {
		t.Errorf("InFlight after Cancel: %d, want the hanging handler", st.InFlight)
	}
	if err2 := k.Cancel(ctx); !errors.Is(err2, warren.ErrShutdownTimeout) {
		t.Errorf("second Cancel: %v, want the first's ErrShutdownTimeout", err2)
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// FIXED BUG (consumerhandle.go resubscribe): a paused Consumer whose
// connection was lost, ended by Client.Close while the Client was still
// reconnecting, reported the lost connection's error (Client.Err still
// showed it) instead of ErrClientClosed.
func TestAPausedConsumerEndedByCloseWhileReconnectingReportsErrClientClosed(t *testing.T) {
	f := newConsumeFake()
	var conns atomic.Int64
	script := func(c *fb.Conn) {
		if conns.Add(1) > 1 {
			c.Close() // every later connection is lost at once: the Client keeps reconnecting
			return
		}
		f.script(c)
	}
	client := startFake(t, fb.Config{}, script, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}))
	ctx := testCtx(t)
	k, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.nextConsume(t)
	if err := k.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.c.Close()
	f.mu.Unlock()
	waitFor(t, "a few reconnects", testBound, func() bool { return conns.Load() >= 3 })
	if err := client.Close(ctx); err != nil {
		t.Logf("Close: %v", err)
	}
	waitConsumerDone(t, "the paused consumer after Close", k)
	if err := k.Err(); !errors.Is(err, warren.ErrClientClosed) {
		t.Errorf("Err: got %v, want ErrClientClosed", err)
	}
}

func TestAStartRefusedByTheBrokerLeavesNothingRunning(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	for _, batch := range []bool{false, true} {
		var err error
		if batch {
			_, err = client.StartBatchConsumer(ctx, "missing", func(context.Context, []*warren.Delivery) error { return nil }, warren.BatchOptions{})
		} else {
			_, err = client.StartConsumer(ctx, "missing", nopHandler, warren.ConsumeOptions{})
		}
		if !errors.Is(err, warren.ErrNotFound) {
			t.Fatalf("batch=%v: got %v, want ErrNotFound", batch, err)
		}
		asChannelError(t, "StartConsumer on a missing queue", err)
	}
	waitFor(t, "no channel left open", testBound, func() bool { return client.OpenChannels() == 0 })
	if n := f.opens.Load(); n != 2 {
		t.Errorf("channels opened: %d, want 2", n)
	}
}

// With AutoAck a batch consumer settles nothing and counts no settlement;
// a batch is Size deliveries, or what came within MaxWait.
func TestAnAutoAckBatchConsumerSendsNoSettlement(t *testing.T) {
	f, client := startConsumeFake(t)
	ctx := testCtx(t)
	sizes := make(chan int, 8)
	k, err := client.StartBatchConsumer(ctx, "q", func(_ context.Context, batch []*warren.Delivery) error {
		sizes <- len(batch)
		if err := batch[0].Ack(context.Background()); !errors.Is(err, warren.ErrAlreadySettled) {
			t.Errorf("Ack of an AutoAck delivery: %v, want ErrAlreadySettled", err)
		}
		return errors.New("ignored: AutoAck")
	}, warren.BatchOptions{Size: 3, MaxWait: 50 * time.Millisecond, ConsumeOptions: warren.ConsumeOptions{AutoAck: true}})
	if err != nil {
		t.Fatal(err)
	}
	s := f.nextConsume(t)
	for tag := uint64(1); tag <= 4; tag++ {
		f.deliver(t, s, tag, "x")
	}
	for _, want := range []int{3, 1} {
		select {
		case n := <-sizes:
			if n != want {
				t.Errorf("batch of %d, want %d", n, want)
			}
		case <-time.After(testBound):
			t.Fatal("no batch")
		}
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.settlements(); len(got) != 0 {
		t.Errorf("settlements with AutoAck: %v", got)
	}
	st := k.Stats()
	if st.Delivered != 4 || st.Acked+st.Nacked+st.Rejected != 0 || st.HandlerErrors != 2 {
		t.Errorf("Stats: %+v, want 4 delivered, no settlement, 2 handler errors", st)
	}
}

// FIXED BUG (consumerhandle.go run): BrokerCancels was counted when the
// broker's basic.cancel was seen, before Ready was re-armed: a caller that
// saw the count go up still got the old, closed Ready for a while.
func TestReadyIsReArmedByTheTimeABrokerCancelIsCounted(t *testing.T) {
	f, client := startConsumeFake(t, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}))
	ctx := testCtx(t)
	k, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		s := f.nextConsume(t)
		old := k.Ready()
		waitDone(t, "Ready", old, testBound)
		f.brokerCancel(s)
		want := uint64(i + 1)
		waitFor(t, "BrokerCancels", testBound, func() bool { return k.Stats().BrokerCancels >= want })
		if k.Ready() == old {
			t.Fatalf("cancel %d: BrokerCancels counted %d while Ready still returns the closed channel of the lost subscription", i+1, k.Stats().BrokerCancels)
		}
		if got := k.Stats().BrokerCancels; got != want {
			t.Fatalf("BrokerCancels: got %d, want %d", got, want)
		}
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
}

// FIXED BUG (consumerhandle.go run): a connection lost while the Consumer
// was paused made the subscription of the Resume that followed count as a
// resubscription. A subscription lost while active still counts.
func TestResumeAfterAConnectionLostWhilePausedIsNotAResubscription(t *testing.T) {
	f := newConsumeFake()
	var conns atomic.Int64
	script := func(c *fb.Conn) {
		conns.Add(1)
		f.script(c)
	}
	client := startFake(t, fb.Config{}, script, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}))
	ctx := testCtx(t)
	k, err := client.StartConsumer(ctx, "q", nopHandler, warren.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.nextConsume(t)
	cut := func() {
		t.Helper()
		n := conns.Load()
		f.mu.Lock()
		f.c.Close()
		f.mu.Unlock()
		waitFor(t, "the reconnect", testBound, func() bool { return conns.Load() > n })
	}

	// Lost while active: counted.
	cut()
	f.nextConsume(t)
	waitDone(t, "Ready after the reconnect", k.Ready(), testBound)
	if got := k.Stats().Resubscriptions; got != 1 {
		t.Fatalf("Resubscriptions after a subscription lost while active: got %d, want 1", got)
	}

	// Lost while paused: the Resume's subscription is not counted.
	for i := range 3 {
		if err := k.Pause(ctx); err != nil {
			t.Fatalf("Pause %d: %v", i, err)
		}
		cut()
		if err := k.Resume(ctx); err != nil {
			t.Fatalf("Resume %d: %v", i, err)
		}
		f.nextConsume(t)
		if got := k.Stats().Resubscriptions; got != 1 {
			t.Fatalf("Resubscriptions after Pause, a lost connection and Resume (%d): got %d, want still 1", i, got)
		}
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
}

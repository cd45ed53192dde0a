package warren_test

// Misuse and hostile peers: calls a user can make in the wrong state, and a
// broker that stops answering, each of which must end with a clear error
// within the caller's ctx.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warrenmq/warren"
	fb "github.com/warrenmq/warren/internal/fakebroker"
)

// FIXED BUG (issue 17, defect 4): once one channel.open was abandoned by
// its ctx and never answered, every later open waited on a plain mutex,
// past its own ctx, until the first open resolved (possibly never).
func TestOpensAfterAnUnansweredOpenStillEndWithTheirCtx(t *testing.T) {
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		c.Expect(fb.ChannelOpen) // never answered
		for {
			if _, err := c.Next(); err != nil {
				return
			}
		}
	}, warren.WithCloseTimeout(time.Second))

	const bound = 300 * time.Millisecond
	const slack = 700 * time.Millisecond // scheduling on a loaded machine; far below the old hang
	opens := []struct {
		name string
		open func(ctx context.Context) error
	}{
		{"Channel (the first, unanswered)", func(ctx context.Context) error { _, err := client.Channel(ctx); return err }},
		{"Channel", func(ctx context.Context) error { _, err := client.Channel(ctx); return err }},
		{"NewPool", func(ctx context.Context) error {
			_, err := client.NewPool(ctx, warren.PoolOptions{Size: 2, MinIdle: 1})
			return err
		}},
		{"NewPublisher", func(ctx context.Context) error {
			_, err := client.NewPublisher(ctx, warren.PublisherOptions{})
			return err
		}},
		{"Begin", func(ctx context.Context) error { _, err := client.Begin(ctx); return err }},
		{"Tx", func(ctx context.Context) error {
			return client.Tx(ctx, func(*warren.Tx) error { return nil })
		}},
		{"Consume", func(ctx context.Context) error {
			return client.Consume(ctx, "q", func(context.Context, *warren.Delivery) error { return nil }, warren.ConsumeOptions{})
		}},
	}
	for _, o := range opens {
		ctx, cancel := context.WithTimeout(t.Context(), bound)
		start := time.Now()
		err := o.open(ctx)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: got %v, want an error wrapping context.DeadlineExceeded", o.name, err)
		}
		if took > bound+slack {
			t.Errorf("%s: returned after %v, want within its ctx of %v (+%v)", o.name, took, bound, slack)
		}
	}
	// The broker answers no connection.close either: Close ends with its
	// ctx (the cleanup's would wait the whole test bound).
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	if err := client.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with no close-ok: got %v, want an error wrapping context.DeadlineExceeded", err)
	}
}

// What a broker would answer with a connection close, or apply other than
// asked, is refused before sending, by the version the broker reports; the
// fake broker answers nothing but the opens, so a frame sent would fail
// the test (it expects none).
func TestQosAndDeclarationsABrokerVersionWouldPunishAreRefusedBeforeSending(t *testing.T) {
	for _, v := range []string{"3.10.8", "4.3.6"} {
		t.Run(v, func(t *testing.T) {
			sent := make(chan string, 16)
			client := startFake(t, fb.Config{RabbitMQ: v}, func(c *fb.Conn) {
				openOK(c)
				for {
					m, err := c.Next()
					if err != nil {
						return
					}
					if m.ID == fb.ChannelClose {
						c.Send(m.Channel, fb.ChannelCloseOK, nil)
						continue
					}
					if m.ID == fb.ConnectionClose {
						c.Send(0, fb.ConnectionCloseOK, nil)
						return
					}
					sent <- m.String()
				}
			})
			ctx := testCtx(t)
			if got := client.ServerVersion(); got != v {
				t.Fatalf("ServerVersion: got %q, want %q", got, v)
			}
			ch, err := client.Channel(ctx)
			if err != nil {
				t.Fatalf("Channel: %v", err)
			}
			// Refused on every version, all problems at once.
			err = ch.Qos(ctx, warren.QosOptions{PrefetchCount: 70000, PrefetchSize: 1})
			if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "prefetch count 70000") || !strings.Contains(err.Error(), "prefetch size 1") {
				t.Errorf("Qos with a bad count and size: got %v, want ErrInvalidArgument naming both", err)
			}
			_, err = ch.QueueDeclare(ctx, "q", warren.QueueOptions{})
			if !errors.Is(err, warren.ErrInvalidArgument) {
				t.Errorf("QueueDeclare transient non-exclusive: got %v, want ErrInvalidArgument", err)
			}
			if v >= "4" {
				err = ch.Qos(ctx, warren.QosOptions{PrefetchCount: 10, Global: true})
				if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "per consumer") {
					t.Errorf("Qos Global on %s: got %v, want ErrInvalidArgument", v, err)
				}
				_, err = ch.QueueDeclare(ctx, "q", warren.QueueOptions{Durable: true, Args: warren.Table{"x-queue-master-locator": "client-local"}})
				if !errors.Is(err, warren.ErrInvalidArgument) {
					t.Errorf("x-queue-master-locator on %s: got %v, want ErrInvalidArgument", v, err)
				}
			}
			if err := ch.Err(); err != nil {
				t.Errorf("channel after refusals: %v", err)
			}
			select {
			case m := <-sent:
				t.Fatalf("a refused call sent %s", m)
			default:
			}
		})
	}
}

func TestErrAckTimeoutMatchesTheBrokersTimeoutCloseAndNoOther406(t *testing.T) {
	timeout := &warren.ChannelError{ChannelID: 1, Code: 406, Reason: "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 2000 ms. This timeout value can be configured, see consumers doc guide to learn more"}
	if !errors.Is(timeout, warren.ErrAckTimeout) || !errors.Is(timeout, warren.ErrPreconditionFailed) {
		t.Errorf("the consumer-timeout close: errors.Is ErrAckTimeout = %v, ErrPreconditionFailed = %v; want both", errors.Is(timeout, warren.ErrAckTimeout), errors.Is(timeout, warren.ErrPreconditionFailed))
	}
	other := &warren.ChannelError{ChannelID: 1, Code: 406, Reason: "PRECONDITION_FAILED - unknown delivery tag 1"}
	if errors.Is(other, warren.ErrAckTimeout) {
		t.Error("another 406 matches ErrAckTimeout")
	}
	if errors.Is(fmt.Errorf("x: %w", warren.ErrConsumerCancelled), warren.ErrAckTimeout) {
		t.Error("a plain consumer cancel matches ErrAckTimeout")
	}
}

func TestAckTimeoutMustBeWholeMillisecondsAndNotAlsoInArgs(t *testing.T) {
	client := startFake(t, fb.Config{RabbitMQ: "4.3.6"}, serve)
	ctx := testCtx(t)
	h := func(context.Context, *warren.Delivery) error { return nil }
	for _, o := range []warren.ConsumeOptions{
		{AckTimeout: -time.Second},
		{AckTimeout: 1500 * time.Microsecond},
		{AckTimeout: time.Second, Args: warren.Table{"x-consumer-timeout": int64(1000)}},
	} {
		if err := client.Consume(ctx, "q", h, o); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("Consume with AckTimeout %v, Args %v: got %v, want ErrInvalidArgument", o.AckTimeout, o.Args, err)
		}
	}
}

func TestSeveralStateCallbacksAreAllCalledInTheOrderGiven(t *testing.T) {
	var mu sync.Mutex
	var got []string
	record := func(name string) func(warren.StateEvent) {
		return func(e warren.StateEvent) {
			mu.Lock()
			got = append(got, name+":"+e.State.String())
			mu.Unlock()
		}
	}
	client := startFake(t, fb.Config{}, serve, warren.WithStateCallback(record("a")), warren.WithStateCallback(record("b")))
	if err := client.Close(testCtx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"a:connected", "b:connected", "a:closed", "b:closed"}
	if !slices.Equal(got, want) {
		t.Fatalf("callbacks saw %v, want %v", got, want)
	}
}

// A broker that accepts every connection and then closes it for a limit
// (530 NOT_ALLOWED, as a per-node channel limit does) is not hammered:
// each such loss counts as a failure, so the reconnects back off instead of
// restarting from MinBackoff after every successful dial.
func TestABrokerThatClosesEveryNewConnectionForALimitIsNotHammered(t *testing.T) {
	var dials atomic.Int32
	startFake(t, fb.Config{}, func(c *fb.Conn) {
		if dials.Add(1) == 1 {
			time.Sleep(100 * time.Millisecond) // let Dial return first
		}
		c.CloseConnection(530, "NOT_ALLOWED - number of channels opened on node has reached the maximum allowed limit of (5)")
		serve(c)
	}, warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}))
	time.Sleep(2 * time.Second)
	n := dials.Load()
	t.Logf("%d dials in 2 s against a broker closing every new connection", n)
	// Backing off (full jitter, waits up to 50, 100, 200, 400, 400... ms)
	// makes about a dozen; restarting from MinBackoff after every
	// successful dial made several hundred.
	if n > 40 {
		t.Fatalf("%d dials in 2 s: the reconnects did not back off", n)
	}
}

// Whatever the timing of the broker's disappearance, every operation's
// error is the connection's. (The narrow window where amqp091-go returns a
// socket write error before it marks the connection closed is pinned down
// deterministically by TestASocketErrorIsTheConnectionsOnceItIsDeclaredDead.)
func TestAnOpenOrSendOnADyingConnectionReturnsTheConnectionError(t *testing.T) {
	for i := 0; i < 20; i++ {
		t.Run(fmt.Sprint("round ", i), testDyingConnection)
	}
}

func testDyingConnection(t *testing.T) {
	gone := make(chan struct{})
	client := startFake(t, fb.Config{}, func(c *fb.Conn) {
		openOK(c)
		<-gone
		c.Abort()
	})
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	close(gone)
	for j := 0; ; j++ {
		_, oerr := client.Channel(ctx)
		perr := ch.Publish(ctx, "", "q", warren.Publishing{Body: []byte("x")})
		if oerr != nil && !warren.IsConnectionLevel(oerr) {
			t.Fatalf("Channel on a dying connection: got %v (%T), want the *ConnectionError", oerr, oerr)
		}
		if perr != nil && !warren.IsConnectionLevel(perr) {
			t.Fatalf("Publish on a dying connection: got %v (%T), want the *ConnectionError", perr, perr)
		}
		if oerr != nil && perr != nil {
			return
		}
		if j > 10000 {
			t.Fatal("the connection never failed after the broker went away")
		}
	}
}

// A Close waiting for an operation in progress is not overtaken for ever
// by a goroutine that starts operation after operation: once it waits, no
// new operation may start.
func TestCloseIsNotStarvedByAGoroutineRunningOperationsBackToBack(t *testing.T) {
	client := startFake(t, fb.Config{}, serve)
	ctx := testCtx(t)
	ch, err := client.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	busyDone := make(chan error, 1)
	go func() {
		for {
			_, err := ch.QueueDeclare(ctx, "q", warren.QueueOptions{Passive: true})
			if err != nil && !errors.Is(err, warren.ErrConcurrentUse) {
				busyDone <- err
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond) // the loop is running
	closeCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := ch.Close(closeCtx); err != nil {
		t.Fatalf("Close while another goroutine runs operations back to back: %v", err)
	}
	select {
	case err := <-busyDone:
		if !errors.Is(err, warren.ErrChannelClosed) {
			t.Fatalf("the looping goroutine: got %v, want ErrChannelClosed once the channel was closed", err)
		}
	case <-ctx.Done():
		t.Fatal("the looping goroutine went on after Close")
	}
}

func TestAVhostAMQPCannotCarryIsRefusedBeforeDialling(t *testing.T) {
	ctx := testCtx(t)
	for _, vhost := range []string{"%FF%FE", strings.Repeat("v", 256)} {
		_, err := warren.Dial(ctx, "amqp://guest:guest@127.0.0.1:1/"+vhost)
		if !errors.Is(err, warren.ErrInvalidArgument) || !strings.Contains(err.Error(), "vhost") {
			t.Errorf("Dial with vhost %.20q: got %v, want ErrInvalidArgument about the vhost (port 1 is never dialled)", vhost, err)
		}
	}
}

// Zero values of the closable types give a clear error instead of a panic.
func TestClosingZeroValuesIsAnErrorNotAPanic(t *testing.T) {
	ctx := testCtx(t)
	if err := new(warren.Pool).Close(ctx); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("zero Pool Close: %v", err)
	}
	if err := new(warren.Publisher).Close(ctx); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("zero Publisher Close: %v", err)
	}
	if err := new(warren.Tx).Rollback(ctx); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("zero Tx Rollback: %v", err)
	}
	if err := new(warren.Tx).Commit(ctx); !errors.Is(err, warren.ErrInvalidArgument) {
		t.Errorf("zero Tx Commit: %v", err)
	}
}

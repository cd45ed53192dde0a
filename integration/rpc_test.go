package integration

// RPC over direct reply-to (issue 20, item 5): RPCClient.Call against
// Client.Serve — many concurrent calls matched to their replies, a request
// no queue takes failing fast, a deadline with its late reply counted, a
// handler's error reaching the caller typed, and a connection cut under
// load failing the calls in flight with the connection's error.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

// rpcServe runs c.Serve on queue until the test ends, and checks then
// that it stopped as asked.
func rpcServe(t *testing.T, c *warren.Client, queue string, h warren.RPCHandler, opts warren.ServeOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, queue, h, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Serve: got %v, want an error wrapping context.Canceled", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Serve still running 20 s after its ctx was cancelled")
		}
	})
}

// newRPCClient makes an RPCClient on c, closed when the test ends.
func newRPCClient(t *testing.T, ctx context.Context, c *warren.Client, opts warren.RPCOptions) *warren.RPCClient {
	t.Helper()
	r, err := c.NewRPCClient(ctx, opts)
	if err != nil {
		t.Fatalf("NewRPCClient: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("RPCClient.Close: %v", err)
		}
	})
	return r
}

// echo answers with the request's body and MessageId.
func echo(_ context.Context, req *warren.Delivery) (warren.Publishing, error) {
	return warren.Publishing{MessageId: req.MessageId, Body: req.Body}, nil
}

// rpcQueue declares a server queue for the test.
func rpcQueue(t *testing.T, ctx context.Context, b *brokertest.Broker, c *warren.Client) string {
	t.Helper()
	q := uniqueName(t, "rpc-")
	declareQueue(t, ctx, b, openChannel(t, ctx, c), q)
	return q
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func TestRPCThousandConcurrentCallsAreEachAnsweredWithTheirOwnReply(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 60*time.Second)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	var handled atomic.Int64
	rpcServe(t, c, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		handled.Add(1)
		return echo(ctx, req)
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{Workers: 4}})
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})

	const calls, callers = 1000, 32
	var mu sync.Mutex
	var lat []time.Duration
	// At most callers calls at once; the first failure cancels the rest.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(callers)
	for i := range calls {
		g.Go(func() error {
			id := fmt.Sprintf("req-%d-%s", i, randHex(4))
			cctx, cancel := context.WithTimeout(gctx, 20*time.Second)
			defer cancel()
			start := time.Now()
			d, err := r.Call(cctx, "", q, warren.Publishing{MessageId: id, Body: []byte(id)})
			took := time.Since(start)
			switch {
			case err != nil:
				return fmt.Errorf("call %s: %w", id, err)
			case string(d.Body) != id || d.MessageId != id:
				return fmt.Errorf("call %s: got reply body %q, message id %q", id, d.Body, d.MessageId)
			}
			mu.Lock()
			lat = append(lat, took)
			mu.Unlock()
			return nil
		})
	}
	require.NoError(t, g.Wait(), "%d calls from %d goroutines: every call answered with its own reply", calls, callers)
	slices.Sort(lat)
	t.Logf("%d calls from %d goroutines, 4 server workers: p50 %v, p99 %v, max %v", len(lat), callers,
		percentile(lat, 0.50), percentile(lat, 0.99), percentile(lat, 1))
	st := r.Stats()
	if st.Calls != calls || st.Replies != calls || st.LateReplies != 0 || st.UnknownReplies != 0 ||
		st.TimedOut != 0 || st.Failed != 0 || st.Unroutable != 0 || st.InFlight != 0 {
		t.Errorf("Stats: got %+v, want %d calls and replies and nothing else", st, calls)
	}
	if n := handled.Load(); n != calls {
		t.Errorf("the server handled %d requests, want %d", n, calls)
	}
}

func TestRPCCallToAnUnboundKeyFailsFastAsUnroutable(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})
	const deadline = 20 * time.Second
	cctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	d, err := r.Call(cctx, "", uniqueName(t, "no-such-queue-"), warren.Publishing{Body: []byte("anyone?")})
	took := time.Since(start)
	require.ErrorIs(t, err, warren.ErrUnroutable, "Call")
	require.ErrorIs(t, err, warren.ErrNoRoute, "Call")
	require.Nil(t, d, "Call: a delivery with the error")
	var ue *warren.UnroutableError
	if assert.ErrorAs(t, err, &ue, "Call") {
		assert.EqualValues(t, 312, ue.Code, "UnroutableError.Code")
		assert.Equal(t, "anyone?", string(ue.Return.Body), "UnroutableError.Return: the request")
	}
	if took >= deadline/2 {
		t.Errorf("the unroutable call took %v, with a deadline of %v: it waited instead of failing on the return", took, deadline)
	}
	if st := r.Stats(); st.Unroutable != 1 || st.Failed != 0 || st.TimedOut != 0 {
		t.Errorf("Stats: got %+v, want Unroutable 1", st)
	}
	// The channel is fine afterwards.
	q := rpcQueue(t, ctx, b, c)
	rpcServe(t, c, q, echo, warren.ServeOptions{})
	d, err = r.Call(ctx, "", q, warren.Publishing{Body: []byte("x")})
	require.NoError(t, err, "Call after the return")
	require.Equal(t, "x", string(d.Body), "Call after the return: the echo")
}

func TestRPCCallPastItsDeadlineReturnsTheContextErrorAndCountsTheLateReply(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	answered := make(chan struct{}, 1)
	rpcServe(t, c, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		time.Sleep(time.Second)
		answered <- struct{}{}
		return echo(ctx, req)
	}, warren.ServeOptions{})
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	d, err := r.Call(cctx, "", q, warren.Publishing{Body: []byte("slow")})
	require.ErrorIs(t, err, context.DeadlineExceeded, "Call past its deadline")
	require.Nil(t, d, "Call past its deadline: a delivery with the error")
	select {
	case <-answered:
	case <-ctx.Done():
		t.Fatal("the server never answered")
	}
	eventually(t, ctx, "the late reply is counted", func() string {
		if st := r.Stats(); st.LateReplies != 1 || st.TimedOut != 1 || st.Replies != 0 || st.InFlight != 0 {
			return fmt.Sprintf("Stats %+v, want LateReplies 1, TimedOut 1, no Replies", st)
		}
		return ""
	})
}

func TestRPCHandlerErrorsAndPanicsReachTheCallerAsRemoteErrors(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	var handled atomic.Int64
	rpcServe(t, c, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		handled.Add(1)
		switch string(req.Body) {
		case "fail":
			return warren.Publishing{}, errors.New("no such account 42")
		case "panic":
			panic("boom")
		case "bad reply":
			return warren.Publishing{Expiration: "soon"}, nil
		}
		return echo(ctx, req)
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{OnPanic: func(*warren.Delivery, any, []byte) {}}})
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})
	for _, tc := range []struct{ body, want string }{
		{"fail", "no such account 42"},
		{"panic", "boom"},
		{"bad reply", "expiration"},
	} {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d, err := r.Call(cctx, "", q, warren.Publishing{Body: []byte(tc.body)})
		cancel()
		var re *warren.RemoteError
		require.ErrorAs(t, err, &re, "%s: got delivery %v", tc.body, d)
		assert.Contains(t, re.Message, tc.want, "%s: RemoteError.Message", tc.body)
		assert.NotNil(t, re.Reply, "%s: RemoteError.Reply", tc.body)
	}
	d, err := r.Call(ctx, "", q, warren.Publishing{Body: []byte("fine")})
	require.NoError(t, err, "Call after errors")
	require.Equal(t, "fine", string(d.Body), "Call after errors: the echo")
	// Each request was handled once and acked: none comes back.
	time.Sleep(300 * time.Millisecond)
	if n := handled.Load(); n != 4 {
		t.Errorf("handled %d requests, want 4 (an error reply acks its request)", n)
	}
	if st := r.Stats(); st.RemoteErrors != 3 || st.Replies != 4 {
		t.Errorf("Stats: got %+v, want RemoteErrors 3, Replies 4", st)
	}
}

func TestRPCRequestWithoutReplyToIsHandledAndAcked(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	got := make(chan string, 2)
	rpcServe(t, c, q, func(_ context.Context, req *warren.Delivery) (warren.Publishing, error) {
		got <- string(req.Body)
		return warren.Publishing{Body: []byte("unused")}, nil
	}, warren.ServeOptions{NoConfirm: true})
	ch := openChannel(t, ctx, c)
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("one-way")}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "one-way" {
			t.Fatalf("handled %q, want one-way", s)
		}
	case <-ctx.Done():
		t.Fatal("the request was never handled")
	}
	eventually(t, ctx, "the request is acked", func() string {
		info, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			return err.Error()
		}
		if info.Messages != 0 {
			return fmt.Sprintf("%d messages in the queue", info.Messages)
		}
		return ""
	})
	select {
	case s := <-got:
		t.Fatalf("handled %q again: the request was not acked", s)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestRPCCallRefusesItsOwnCorrelationIdAndBadRequestsBeforeSending(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	r := newRPCClient(t, ctx, c, warren.RPCOptions{Channels: 2})
	for _, req := range []warren.Publishing{
		{CorrelationId: "mine"},
		{ReplyTo: "my-queue"},
		{Expiration: "1h"},
		{Headers: warren.Table{"bad": struct{}{}}},
	} {
		if _, err := r.Call(ctx, "", "q", req); !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("Call(%+v): got %v, want ErrInvalidArgument", req, err)
		}
	}
	if st := r.Stats(); st.Calls != 0 {
		t.Errorf("Stats: got %+v, want no calls counted", st)
	}
}

func TestRPCClientCloseFailsCallsInFlightAndLaterCalls(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	started := make(chan struct{}, 1)
	rpcServe(t, c, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		started <- struct{}{}
		<-ctx.Done()
		return warren.Publishing{}, ctx.Err()
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{ShutdownTimeout: time.Second}})
	r, err := c.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := r.Call(ctx, "", q, warren.Publishing{})
		res <- err
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the request never reached the server")
	}
	if err := r.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, warren.ErrRPCClientClosed) {
			t.Errorf("call in flight: got %v, want ErrRPCClientClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("the call in flight did not end with Close")
	}
	if _, err := r.Call(ctx, "", q, warren.Publishing{}); !errors.Is(err, warren.ErrRPCClientClosed) {
		t.Errorf("Call after Close: got %v, want ErrRPCClientClosed", err)
	}
	if err := r.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRPCCallsInFlightFailTypedWhenTheConnectionIsCutAndLaterCallsSucceed(t *testing.T) {
	faultCheckLeaks(t)
	rig := newFaultRig(t)
	b := rig.b
	ctx := testCtx(t, 60*time.Second)
	server := dial(t, b.URL) // not behind the proxy: only the caller's connection is cut
	q := rpcQueue(t, ctx, b, server)
	rpcServe(t, server, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		time.Sleep(20 * time.Millisecond)
		return echo(ctx, req)
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{Workers: 4}})
	c := rig.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})

	const deadline = 20 * time.Second
	var ok, connErrs, other atomic.Int64
	var otherMu sync.Mutex
	var otherErrs []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, deadline)
				start := time.Now()
				_, err := r.Call(cctx, "", q, warren.Publishing{Body: []byte("x")})
				took := time.Since(start)
				cancel()
				switch {
				case err == nil:
					ok.Add(1)
				case warren.IsConnectionLevel(err) && !errors.Is(err, context.DeadlineExceeded) && took < deadline/2:
					connErrs.Add(1)
				default:
					other.Add(1)
					otherMu.Lock()
					otherErrs = append(otherErrs, fmt.Errorf("after %v: %w", took, err))
					otherMu.Unlock()
				}
			}
		}()
	}
	eventually(t, ctx, "calls are answered before the cut", func() string {
		if ok.Load() < 50 {
			return fmt.Sprintf("%d answered", ok.Load())
		}
		return ""
	})
	rig.proxy.CutAll()
	eventually(t, ctx, "calls are answered after the cut", func() string {
		if connErrs.Load() == 0 {
			return "no call has failed with the connection yet"
		}
		if n := ok.Load(); n < 100 {
			return fmt.Sprintf("%d answered", n)
		}
		return ""
	})
	before := ok.Load()
	eventually(t, ctx, "calls go on being answered", func() string {
		if ok.Load() < before+50 {
			return fmt.Sprintf("%d answered since", ok.Load()-before)
		}
		return ""
	})
	close(stop)
	wg.Wait()
	t.Logf("answered %d, failed with the connection %d, other %d; stats %+v", ok.Load(), connErrs.Load(), other.Load(), r.Stats())
	for _, err := range otherErrs {
		t.Errorf("a call failed with neither a reply nor the connection's error: %v", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := r.Call(ctx, "", q, warren.Publishing{}); !warren.IsConnectionLevel(err) {
		t.Errorf("Call after Client.Close: got %v, want a connection-level error", err)
	}
}

func TestRPCRepliesWithUnknownOrRepeatedCorrelationIdsAreCountedAndNeverDelivered(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	// Besides its reply, the server sends a stray one with an id the
	// client never issued, and a copy of the real one (whichever of the
	// two copies comes second is late).
	stray := dial(t, b.URL)
	sch := openChannel(t, ctx, stray)
	var smu sync.Mutex
	rpcServe(t, c, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		smu.Lock()
		defer smu.Unlock()
		if err := sch.Publish(ctx, "", req.ReplyTo, warren.Publishing{CorrelationId: "not-ours", Body: []byte("stray")}); err != nil {
			return warren.Publishing{}, err
		}
		if err := sch.Publish(ctx, "", req.ReplyTo, warren.Publishing{CorrelationId: req.CorrelationId, Body: req.Body}); err != nil {
			return warren.Publishing{}, err
		}
		return echo(ctx, req)
	}, warren.ServeOptions{})
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})
	for i := 0; i < 3; i++ {
		body := fmt.Sprintf("call-%d", i)
		d, err := r.Call(ctx, "", q, warren.Publishing{Body: []byte(body)})
		require.NoError(t, err, "Call %d", i)
		require.Equal(t, body, string(d.Body), "Call %d: the echo", i)
	}
	eventually(t, ctx, "the stray replies are counted", func() string {
		if st := r.Stats(); st.UnknownReplies != 3 || st.Replies != 3 || st.LateReplies != 3 {
			return fmt.Sprintf("Stats %+v, want UnknownReplies 3, Replies 3, LateReplies 3", st)
		}
		return ""
	})
}

func TestRPCCallToAMissingExchangeFailsWithNotFoundAndTheNextCallWorks(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	rpcServe(t, c, q, echo, warren.ServeOptions{})
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := r.Call(cctx, uniqueName(t, "no-such-exchange-"), "k", warren.Publishing{})
	require.ErrorIs(t, err, warren.ErrNotFound, "Call to a missing exchange")
	require.True(t, warren.IsChannelLevel(err), "Call to a missing exchange: IsChannelLevel(%v)", err)
	if took := time.Since(start); took >= 10*time.Second {
		t.Errorf("the call took %v: it waited instead of failing with the channel", took)
	}
	d, err := r.Call(ctx, "", q, warren.Publishing{Body: []byte("after")})
	require.NoError(t, err, "next Call")
	require.Equal(t, "after", string(d.Body), "next Call: the echo")
}

func TestRPCServeAnswersEveryCallWhenItsConnectionIsCut(t *testing.T) {
	faultCheckLeaks(t)
	rig := newFaultRig(t)
	b := rig.b
	ctx := testCtx(t, 60*time.Second)
	c := dial(t, b.URL) // the caller, not behind the proxy
	q := rpcQueue(t, ctx, b, c)
	server := rig.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))
	var handled atomic.Int64
	rpcServe(t, server, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		handled.Add(1)
		time.Sleep(10 * time.Millisecond)
		return echo(ctx, req)
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{Workers: 4, Prefetch: 8}})
	r := newRPCClient(t, ctx, c, warren.RPCOptions{})

	const calls = 300
	var next atomic.Int64
	// 16 callers share the calls; the cut comes while they are in flight.
	var g errgroup.Group
	for range 16 {
		g.Go(func() error {
			for i := next.Add(1); i <= calls; i = next.Add(1) {
				id := fmt.Sprint(i)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				d, err := r.Call(cctx, "", q, warren.Publishing{Body: []byte(id)})
				cancel()
				if err != nil {
					return fmt.Errorf("call %s: %w", id, err)
				}
				if string(d.Body) != id {
					return fmt.Errorf("call %s: got reply %q", id, d.Body)
				}
			}
			return nil
		})
	}
	eventually(t, ctx, "the server handles requests before the cut", func() string {
		if n := handled.Load(); n < 50 {
			return fmt.Sprintf("%d handled", n)
		}
		return ""
	})
	rig.proxy.CutAll()
	assert.NoError(t, g.Wait(), "every call answered across the cut")
	st := r.Stats()
	t.Logf("handled %d requests for %d calls; stats %+v", handled.Load(), calls, st)
	if st.Replies != calls {
		t.Errorf("Stats: got %+v, want %d replies", st, calls)
	}
}

func TestRPCClientCloseEndsACallWaitingForTheConnection(t *testing.T) {
	faultCheckLeaks(t)
	rig := newFaultRig(t)
	ctx := testCtx(t, opTimeout)
	c := rig.dial(warren.WithReconnect(warren.ReconnectPolicy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}))
	r, err := c.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The broker becomes unreachable: the client reconnects in vain.
	if err := rig.proxy.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "the connection is lost", func() string {
		if c.Err() == nil {
			return "still connected"
		}
		return ""
	})
	res := make(chan error, 1)
	go func() {
		_, err := r.Call(ctx, "", "q", warren.Publishing{})
		res <- err
	}()
	time.Sleep(200 * time.Millisecond) // the call waits for a connection
	select {
	case err := <-res:
		t.Fatalf("Call returned %v while no connection could be made, want it to wait", err)
	default:
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.Close(cctx); err != nil {
		t.Fatalf("Close: got %v, want nil", err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, warren.ErrRPCClientClosed) {
			t.Errorf("the waiting call: got %v, want ErrRPCClientClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting call did not end with Close")
	}
}

func TestRPCClientCloseOfTheClientEndsCallsInFlight(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	server := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, server)
	started := make(chan struct{}, 1)
	rpcServe(t, server, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		started <- struct{}{}
		<-ctx.Done()
		return warren.Publishing{}, ctx.Err()
	}, warren.ServeOptions{ConsumeOptions: warren.ConsumeOptions{ShutdownTimeout: time.Second}})
	c := dial(t, b.URL)
	r, err := c.NewRPCClient(ctx, warren.RPCOptions{Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := r.Call(ctx, "", q, warren.Publishing{})
		res <- err
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the request never reached the server")
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Client.Close: %v", err)
	}
	select {
	case err := <-res:
		if !warren.IsConnectionLevel(err) {
			t.Errorf("call in flight: got %v, want a connection-level error", err)
		}
	case <-ctx.Done():
		t.Fatal("the call in flight did not end with Client.Close")
	}
	if err := r.Close(ctx); err != nil {
		t.Errorf("RPCClient.Close after Client.Close: %v", err)
	}
}

func TestRPCServeAcksARequestWhoseCallerIsGone(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := rpcQueue(t, ctx, b, c)
	var handled atomic.Int64
	release := make(chan struct{})
	replied := make(chan struct{}, 4)
	rpcServe(t, c, q, func(ctx context.Context, req *warren.Delivery) (warren.Publishing, error) {
		handled.Add(1)
		<-release
		defer func() { replied <- struct{}{} }()
		return echo(ctx, req)
	}, warren.ServeOptions{})
	caller := dial(t, b.URL)
	r, err := caller.NewRPCClient(ctx, warren.RPCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = r.Call(cctx, "", q, warren.Publishing{Body: []byte("gone")})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Call: got %v, want context.DeadlineExceeded", err)
	}
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := caller.Close(ctx); err != nil {
		t.Fatal(err)
	}
	close(release) // the reply goes to a reply-to whose channel is gone
	<-replied
	ch := openChannel(t, ctx, c)
	eventually(t, ctx, "the request is acked", func() string {
		info, err := ch.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			return err.Error()
		}
		if info.Messages != 0 || info.Consumers != 1 {
			return fmt.Sprintf("%d messages, %d consumers", info.Messages, info.Consumers)
		}
		return ""
	})
	time.Sleep(300 * time.Millisecond)
	if n := handled.Load(); n != 1 {
		t.Errorf("handled %d times, want once: the reply to a gone caller must not requeue its request", n)
	}
}

package integration

// warren.Pool against a real broker (issue 3): the bound and its
// validation against channel_max, lazy and warm opening, blocking and
// fair leasing, ownership of leases, health checks on release with discards
// counted by reason, modes, Stats, Close, and the connection dying under the
// pool.
//
// Not covered here: "a channel that still has a consumer is discarded on
// release". warren has no consumers yet (they come in a later issue), so
// there is no way to leave one on a leased channel; that case belongs with
// the consumer tests.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/internal/faultproxy"
)

// --- helpers ---------------------------------------------------------------

// newTestPool makes a pool on c and closes it when the test ends (before the
// client is closed: cleanups run last-registered first).
func newTestPool(t *testing.T, ctx context.Context, c *warren.Client, opts warren.PoolOptions) *warren.Pool {
	t.Helper()
	p, err := c.NewPool(ctx, opts)
	if err != nil {
		t.Fatalf("NewPool(%+v): got %v, want nil", opts, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

// poolAcquire leases a channel from p and fails the test if it cannot.
func poolAcquire(t *testing.T, ctx context.Context, p *warren.Pool) warren.Channel {
	t.Helper()
	ch, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: got %v, want a channel (stats %+v)", err, p.Stats())
	}
	return ch
}

// poolState is the part of PoolStats a test compares in one go.
type poolState struct {
	Open, InUse, Idle, Waiting int
	Opened                     int64
	Discarded                  warren.DiscardStats
}

func poolStateOf(s warren.PoolStats) poolState {
	return poolState{Open: s.Open, InUse: s.InUse, Idle: s.Idle, Waiting: s.Waiting,
		Opened: s.Opened, Discarded: s.Discarded}
}

// wantPoolState checks p's gauges, Opened and discards now.
func wantPoolState(t *testing.T, what string, p *warren.Pool, want poolState) {
	t.Helper()
	if got := poolStateOf(p.Stats()); got != want {
		t.Errorf("%s: got pool state %+v, want %+v", what, got, want)
	}
}

// eventuallyPoolState waits (bounded by ctx) until p's state is want.
func eventuallyPoolState(t *testing.T, ctx context.Context, what string, p *warren.Pool, want poolState) {
	t.Helper()
	eventually(t, ctx, what, func() string {
		if got := poolStateOf(p.Stats()); got != want {
			return fmt.Sprintf("got pool state %+v, want %+v", got, want)
		}
		return ""
	})
}

// poolBrokerChannel is one channel as `rabbitmqctl list_channels` shows it.
type poolBrokerChannel struct {
	Number      int
	Confirm, Tx bool
}

// poolBrokerChannels lists, by number, the broker's channels on the
// connection with pid connPid. It does not touch t, so a sampling goroutine
// may call it.
func poolBrokerChannels(ctx context.Context, b *brokertest.Broker, connPid string) ([]poolBrokerChannel, error) {
	out, err := b.Ctl(ctx, "list_channels", "--quiet", "--no-table-headers", "connection", "number", "confirm", "transactional")
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl list_channels: %w", err)
	}
	var chans []poolBrokerChannel
	for _, f := range pidLines(out) {
		if f[0] != connPid {
			continue
		}
		if len(f) != 4 {
			return nil, fmt.Errorf("list_channels: got %d fields in %q, want 4", len(f), strings.Join(f, "\t"))
		}
		n, err1 := strconv.Atoi(strings.TrimSpace(f[1]))
		confirm, err2 := strconv.ParseBool(strings.TrimSpace(f[2]))
		tx, err3 := strconv.ParseBool(strings.TrimSpace(f[3]))
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("list_channels: bad line %q: %w", strings.Join(f, "\t"), err)
		}
		chans = append(chans, poolBrokerChannel{Number: n, Confirm: confirm, Tx: tx})
	}
	slices.SortFunc(chans, func(a, b poolBrokerChannel) int { return a.Number - b.Number })
	return chans, nil
}

// poolMustBrokerChannels is poolBrokerChannels for the test goroutine.
func poolMustBrokerChannels(t *testing.T, b *brokertest.Broker, connPid string) []poolBrokerChannel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	chans, err := poolBrokerChannels(ctx, b, connPid)
	if err != nil {
		t.Fatal(err)
	}
	return chans
}

func poolNumbers(chans []poolBrokerChannel) []int {
	nums := make([]int, 0, len(chans))
	for _, c := range chans {
		nums = append(nums, c.Number)
	}
	return nums
}

// eventuallyBrokerChannels waits until the broker lists exactly the channel
// numbers want on the connection with pid connPid.
func eventuallyBrokerChannels(t *testing.T, ctx context.Context, b *brokertest.Broker, connPid string, want []int) []poolBrokerChannel {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	var chans []poolBrokerChannel
	eventually(t, ctx, "broker's channels on the connection", func() string {
		chans = poolMustBrokerChannels(t, b, connPid)
		if got := poolNumbers(chans); !slices.Equal(got, want) {
			return fmt.Sprintf("broker lists channels %v, want %v", got, want)
		}
		return ""
	})
	return chans
}

// poolChannelIDs returns the IDs of chans, sorted.
func poolChannelIDs(chans []warren.Channel) []int {
	ids := make([]int, 0, len(chans))
	for _, ch := range chans {
		ids = append(ids, int(ch.ID()))
	}
	slices.Sort(ids)
	return ids
}

// poolPoll calls cond every 50 ms until it returns "" or limit passes, and
// returns its last complaint ("" when it was satisfied). Unlike eventually it
// does not end the test, so that a test can go on to show what follows.
func poolPoll(limit time.Duration, cond func() string) string {
	deadline := time.Now().Add(limit)
	for {
		msg := cond()
		if msg == "" || time.Now().After(deadline) {
			return msg
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wantErrIs checks errors.Is(err, target).
func wantErrIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got %v, want an error matching %v", what, err, target)
	}
}

// --- (1) bound, validation, lazy and warm opening --------------------------

func TestNewPoolRefusesSizesThatDoNotFitChannelMaxAndSaysWhy(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	const channelMax = 20
	c := dial(t, b.URL, warren.WithChannelMax(channelMax))
	if got := c.ChannelMax(); got != channelMax {
		t.Fatalf("ChannelMax: got %d, want %d", got, channelMax)
	}

	refused := func(what string, opts warren.PoolOptions, texts ...string) {
		t.Helper()
		p, err := c.NewPool(ctx, opts)
		if err == nil {
			_ = p.Close(ctx)
			t.Errorf("%s: NewPool(%+v) with channel_max %d: got a pool, want an error", what, opts, channelMax)
			return
		}
		if !errors.Is(err, warren.ErrInvalidArgument) {
			t.Errorf("%s: NewPool(%+v): got %v, want an error matching ErrInvalidArgument", what, opts, err)
		}
		for _, s := range texts {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: NewPool(%+v): error %q does not say %q", what, opts, err, s)
			}
		}
		t.Logf("%s: %v", what, err)
	}
	// Default headroom is 16, so 4 channels are left for pools.
	refused("Size above channel_max minus the default headroom", warren.PoolOptions{Size: 5},
		"channel_max", strconv.Itoa(channelMax), "5")
	refused("Size plus explicit Headroom above channel_max", warren.PoolOptions{Size: 15, Headroom: 6},
		"channel_max", strconv.Itoa(channelMax), "15")
	refused("Size above channel_max itself", warren.PoolOptions{Size: 2048, Headroom: 1},
		"channel_max", strconv.Itoa(channelMax))
	refused("MinIdle above Size", warren.PoolOptions{Size: 2, MinIdle: 3}, "MinIdle")
	refused("negative Size", warren.PoolOptions{Size: -1}, "Size")
	refused("unknown mode", warren.PoolOptions{Size: 1, Mode: warren.Mode(7)}, "mode")
	if got := c.OpenChannels(); got != 0 {
		t.Errorf("OpenChannels after refused NewPool calls: got %d, want 0", got)
	}

	// Refused pools reserve nothing: the largest pool that fits still fits.
	p4 := newTestPool(t, ctx, c, warren.PoolOptions{Size: 4})
	if got := p4.Stats().Max; got != 4 {
		t.Errorf("Stats.Max: got %d, want 4", got)
	}
	// The headroom is real: with all 4 pooled channels leased, 16 more can
	// be opened outside the pool, and the 17th hits channel_max.
	var leases []warren.Channel
	for range 4 {
		leases = append(leases, poolAcquire(t, ctx, p4))
	}
	for i := range 16 {
		ch, err := c.Channel(ctx)
		if err != nil {
			t.Fatalf("unpooled channel %d of 16 next to a full pool of 4 with channel_max %d: got %v, want a channel", i+1, channelMax, err)
		}
		defer ch.Close(ctx)
	}
	if ch, err := c.Channel(ctx); !errors.Is(err, warren.ErrChannelMax) {
		if err == nil {
			ch.Close(ctx)
		}
		t.Errorf("21st channel with channel_max %d: got %v, want ErrChannelMax", channelMax, err)
	}
	for _, l := range leases {
		p4.Release(l)
	}
	if err := p4.Close(ctx); err != nil {
		t.Fatalf("Close of the pool of 4: got %v, want nil", err)
	}

	// Two pools together may not exceed channel_max minus headroom either.
	newTestPool(t, ctx, c, warren.PoolOptions{Size: 3})
	refused("second pool that does not fit next to the first", warren.PoolOptions{Size: 2},
		"channel_max", strconv.Itoa(channelMax), "3")
	p1 := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})
	if err := p1.Close(ctx); err != nil {
		t.Fatalf("Close of the pool of 1: got %v, want nil", err)
	}
	// Closing a pool gives its reservation back.
	newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})
}

func TestPoolOpensChannelsLazilyAndReusesThem(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 8})

	wantPoolState(t, "new pool without MinIdle", p, poolState{})
	if got := c.OpenChannels(); got != 0 {
		t.Errorf("OpenChannels before any Acquire: got %d, want 0", got)
	}
	if b.Private() {
		pid := mustConnectionPid(t, b, name)
		if got := poolMustBrokerChannels(t, b, pid); len(got) != 0 {
			t.Errorf("broker's channels before any Acquire: got %v, want none", poolNumbers(got))
		}
	}

	a := poolAcquire(t, ctx, p)
	wantPoolState(t, "after the first Acquire", p, poolState{Open: 1, InUse: 1, Opened: 1})
	p.Release(a)
	again := poolAcquire(t, ctx, p)
	if again.ID() != a.ID() {
		t.Errorf("Acquire after Release: got channel %d, want the idle channel %d", again.ID(), a.ID())
	}
	second := poolAcquire(t, ctx, p)
	if second.ID() == again.ID() {
		t.Errorf("second concurrent lease: got channel %d, the same as the first lease", second.ID())
	}
	wantPoolState(t, "two leases", p, poolState{Open: 2, InUse: 2, Opened: 2})
	p.Release(again)
	p.Release(second)
	wantPoolState(t, "both released", p, poolState{Open: 2, Idle: 2, Opened: 2})
}

func TestPoolMinIdleOpensChannelsUpFrontAndReplacesADiscardedOne(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 5, MinIdle: 3})

	wantPoolState(t, "right after NewPool with MinIdle 3", p, poolState{Open: 3, Idle: 3, Opened: 3})
	if got := c.OpenChannels(); got != 3 {
		t.Errorf("OpenChannels right after NewPool with MinIdle 3: got %d, want 3", got)
	}
	var pid string
	var warm []int
	if b.Private() {
		pid = mustConnectionPid(t, b, name)
		warm = poolNumbers(poolMustBrokerChannels(t, b, pid))
		if len(warm) != 3 {
			t.Errorf("broker's channels before any Acquire: got %v, want 3", warm)
		}
	} else {
		t.Logf("broker %s is not a private node: the broker's view is not checked", b)
	}

	ch := poolAcquire(t, ctx, p)
	if warm != nil && !slices.Contains(warm, int(ch.ID())) {
		t.Errorf("first Acquire: got channel %d, want one of the warm channels %v", ch.ID(), warm)
	}
	wantPoolState(t, "one warm channel leased", p, poolState{Open: 3, InUse: 1, Idle: 2, Opened: 3})
	exchange := uniqueName(t, "missing-exchange-")
	if err := ch.Publish(ctx, exchange, "", warren.Publishing{Body: []byte("x")}); err != nil && !errors.Is(err, warren.ErrNotFound) {
		t.Fatalf("Publish to a missing exchange: got %v, want nil or ErrNotFound", err)
	}
	_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	wantChannelError(t, "QueueDeclare after publishing to a missing exchange", err, warren.ErrNotFound, warren.CodeNotFound, ch.ID(), exchange)
	dead := ch.ID()
	p.Release(ch)

	// Back to 3 open without anyone acquiring.
	eventuallyPoolState(t, ctx, "pool after discarding a warm channel", p,
		poolState{Open: 3, Idle: 3, Opened: 4, Discarded: warren.DiscardStats{BrokerClosed: 1}})
	if pid != "" {
		eventually(t, ctx, "broker lists 3 channels, not the discarded one", func() string {
			nums := poolNumbers(poolMustBrokerChannels(t, b, pid))
			if len(nums) != 3 || slices.Contains(nums, int(dead)) {
				return fmt.Sprintf("broker lists channels %v, want 3 without the discarded %d", nums, dead)
			}
			return ""
		})
	}
}

// --- (2) Acquire, TryAcquire, Do ------------------------------------------

func TestPoolAcquireWaitsAtSizeAndItsDeadlineReturnsAWrappedErrorWithThePoolsState(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2})
	l1 := poolAcquire(t, ctx, p)
	l2 := poolAcquire(t, ctx, p)

	actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	took, err := faultWithin(t, 3*time.Second, "Acquire on a full pool with a 300ms context", func() error {
		_, err := p.Acquire(actx)
		return err
	})
	cancel()
	t.Logf("Acquire on a full pool returned after %v: %v", took, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire on a full pool: got %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if err != nil && (!strings.Contains(err.Error(), "pool") || !strings.Contains(err.Error(), "2 of 2")) {
		t.Errorf("Acquire on a full pool: error %q does not describe the pool's state (2 of 2 channels leased)", err)
	}
	if took < 250*time.Millisecond || took > time.Second {
		t.Errorf("Acquire on a full pool with a 300ms context took %v, want 300ms (between 250ms and 1s)", took)
	}
	s := p.Stats()
	if s.AcquireTimeouts != 1 || s.WaitCount != 1 || s.WaitDuration < 250*time.Millisecond || s.Waiting != 0 {
		t.Errorf("stats after one timed-out wait: got AcquireTimeouts %d, WaitCount %d, WaitDuration %v, Waiting %d; want 1, 1, >= 250ms, 0",
			s.AcquireTimeouts, s.WaitCount, s.WaitDuration, s.Waiting)
	}

	took, err = faultWithin(t, time.Second, "TryAcquire on a full pool", func() error {
		_, err := p.TryAcquire(ctx)
		return err
	})
	if !errors.Is(err, warren.ErrPoolExhausted) {
		t.Errorf("TryAcquire on a full pool: got %v, want ErrPoolExhausted", err)
	}
	if took > 50*time.Millisecond {
		t.Errorf("TryAcquire on a full pool took %v, want it not to wait (< 50ms)", took)
	}

	// A cancelled wait is also ended by its context.
	cctx, ccancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, ccancel)
	_, err = faultWithin(t, 2*time.Second, "Acquire on a full pool, cancelled after 100ms", func() error {
		_, err := p.Acquire(cctx)
		return err
	})
	ccancel()
	wantErrIs(t, "cancelled Acquire", err, context.Canceled)

	// A waiter gets the channel that is released, handed over.
	got := make(chan warren.Channel, 1)
	errc := make(chan error, 1)
	go func() {
		ch, err := p.Acquire(ctx)
		if err != nil {
			errc <- err
			return
		}
		got <- ch
	}()
	eventually(t, testCtx(t, 2*time.Second), "one Acquire waiting", func() string {
		if w := p.Stats().Waiting; w != 1 {
			return fmt.Sprintf("Stats.Waiting: got %d, want 1", w)
		}
		return ""
	})
	p.Release(l1)
	select {
	case ch := <-got:
		if ch.ID() != l1.ID() {
			t.Errorf("waiter: got channel %d, want the released channel %d", ch.ID(), l1.ID())
		}
		p.Release(ch)
	case err := <-errc:
		t.Fatalf("waiting Acquire: got %v, want the released channel", err)
	case <-time.After(time.Second):
		t.Fatalf("waiting Acquire: no channel 1 s after a Release")
	}
	p.Release(l2)
	s = p.Stats()
	if s.AcquireTimeouts != 2 || s.WaitCount != 3 || s.InUse != 0 || s.Open != 2 || s.Opened != 2 {
		t.Errorf("final stats: got AcquireTimeouts %d, WaitCount %d, InUse %d, Open %d, Opened %d; want 2, 3, 0, 2, 2",
			s.AcquireTimeouts, s.WaitCount, s.InUse, s.Open, s.Opened)
	}
}

func TestPoolChannelHandedOverAsTheWaiterGivesUpGoesBackToThePool(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	c := dial(t, b.URL)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	// Release the only channel at about the moment the waiter's deadline
	// passes, over and over: sometimes the hand-over wins, sometimes the
	// deadline, and sometimes both at once. The channel must never be lost.
	const iterations = 300
	var handed, timedOut int
	for i := range iterations {
		hold := poolAcquire(t, ctx, p)
		wait := 2 * time.Millisecond
		type result struct {
			ch  warren.Channel
			err error
		}
		res := make(chan result, 1)
		wctx, cancel := context.WithTimeout(ctx, wait)
		go func() {
			ch, err := p.Acquire(wctx)
			res <- result{ch, err}
		}()
		time.Sleep(wait - time.Millisecond + time.Duration(i%20)*100*time.Microsecond)
		p.Release(hold)
		var r result
		select {
		case r = <-res:
		case <-time.After(2 * time.Second):
			cancel()
			t.Fatalf("iteration %d: waiter with a 2ms context still waiting after 2 s", i)
		}
		cancel()
		switch {
		case r.err == nil:
			handed++
			if err := r.ch.Err(); err != nil {
				t.Fatalf("iteration %d: handed-over channel: Err got %v, want nil", i, err)
			}
			p.Release(r.ch)
		case errors.Is(r.err, context.DeadlineExceeded):
			timedOut++
		default:
			t.Fatalf("iteration %d: waiter: got %v, want a channel or context.DeadlineExceeded", i, r.err)
		}
	}
	t.Logf("%d iterations: %d waiters got the channel, %d timed out", iterations, handed, timedOut)
	wantPoolState(t, "after the races", p, poolState{Open: 1, Idle: 1, Opened: 1})
	ch, err := p.TryAcquire(ctx)
	if err != nil {
		t.Fatalf("TryAcquire after the races: got %v, want the pool's one channel", err)
	}
	if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the channel after the races: got %v, want nil", err)
	}
	p.Release(ch)
}

func TestPoolDoReleasesTheChannelWhenFnPanicsAndReturnsFnsError(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	errFn := errors.New("fn failed")
	var inside warren.Channel
	err := p.Do(ctx, func(ch warren.Channel) error {
		inside = ch
		if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
			return err
		}
		return fmt.Errorf("wrapped: %w", errFn)
	})
	if !errors.Is(err, errFn) {
		t.Errorf("Do: got %v, want fn's error", err)
	}
	wantPoolState(t, "after Do returned fn's error", p, poolState{Open: 1, Idle: 1, Opened: 1})
	wantErrIs(t, "Publish on the channel Do handed to fn, after Do", inside.Publish(ctx, "", "warren-nowhere", warren.Publishing{}), warren.ErrReleased)

	if err := p.Do(ctx, func(warren.Channel) error { return nil }); err != nil {
		t.Errorf("Do with fn returning nil: got %v, want nil", err)
	}

	var panicked any
	var id uint16
	func() {
		defer func() { panicked = recover() }()
		_ = p.Do(ctx, func(ch warren.Channel) error {
			id = ch.ID()
			panic("boom in fn")
		})
	}()
	if panicked != "boom in fn" {
		t.Errorf("Do with a panicking fn: recovered %v, want the panic to continue with %q", panicked, "boom in fn")
	}
	wantPoolState(t, "after fn panicked", p, poolState{Open: 1, Idle: 1, Opened: 1})
	ch, err := p.TryAcquire(ctx)
	if err != nil {
		t.Fatalf("TryAcquire after fn panicked: got %v, want the released channel", err)
	}
	if ch.ID() != id {
		t.Errorf("TryAcquire after fn panicked: got channel %d, want channel %d", ch.ID(), id)
	}
	if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the channel after the panic: got %v, want nil", err)
	}

	// On an exhausted pool Do returns the Acquire error and never runs fn.
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	called := false
	err = p.Do(dctx, func(warren.Channel) error { called = true; return nil })
	wantErrIs(t, "Do on an exhausted pool", err, context.DeadlineExceeded)
	if called {
		t.Errorf("Do on an exhausted pool ran fn, want it not to")
	}
	p.Release(ch)
}

// --- (3) ownership ---------------------------------------------------------

func TestPoolReleaseIsIdempotentAndAReleasedHandleReturnsErrReleased(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	old := poolAcquire(t, ctx, p)
	if err := old.Err(); err != nil {
		t.Fatalf("Err of a fresh lease: got %v, want nil", err)
	}
	p.Release(old)
	p.Release(old)
	wantPoolState(t, "after releasing one lease twice", p, poolState{Open: 1, Idle: 1, Opened: 1})

	released := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, warren.ErrReleased) {
			t.Errorf("%s on a released handle: got %v, want ErrReleased", what, err)
		} else if !strings.Contains(err.Error(), "released") {
			t.Errorf("%s on a released handle: error %q does not say the lease was released", what, err)
		}
	}
	checkOld := func(when string) {
		t.Helper()
		released(when+": Publish", old.Publish(ctx, "", "warren-nowhere", warren.Publishing{Body: []byte("x")}))
		_, err := old.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
		released(when+": QueueDeclare", err)
		_, _, err = old.Get(ctx, "warren-nowhere", warren.GetOptions{})
		released(when+": Get", err)
		released(when+": SetMode", old.SetMode(ctx, warren.ModeConfirm))
		released(when+": Close", old.Close(ctx))
		released(when+": Err", old.Err())
	}
	checkOld("idle")

	cur := poolAcquire(t, ctx, p)
	if cur.ID() != old.ID() {
		t.Fatalf("Acquire after Release: got channel %d, want the same channel %d", cur.ID(), old.ID())
	}
	checkOld("re-leased to someone else")
	p.Release(old) // the old handle: must not end the new lease
	wantPoolState(t, "after releasing the old handle of a re-leased channel", p, poolState{Open: 1, InUse: 1, Opened: 1})
	if err := cur.Err(); err != nil {
		t.Errorf("Err of the new lease after the old handle was released and closed: got %v, want nil", err)
	}
	if _, err := cur.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the new lease: got %v, want nil", err)
	}
	if ch, err := p.TryAcquire(ctx); !errors.Is(err, warren.ErrPoolExhausted) {
		if err == nil {
			p.Release(ch)
		}
		t.Errorf("TryAcquire while the new lease is out: got %v, want ErrPoolExhausted", err)
	}

	// Handles the pool never leased are ignored.
	p.Release(warren.Channel{})
	unpooled := openChannel(t, ctx, c)
	p.Release(unpooled)
	wantPoolState(t, "after releasing the zero Channel and an unpooled channel", p, poolState{Open: 1, InUse: 1, Opened: 1})
	if _, err := unpooled.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on an unpooled channel passed to Release: got %v, want nil", err)
	}

	p.Release(cur)
	wantPoolState(t, "all released", p, poolState{Open: 1, Idle: 1, Opened: 1})
}

func TestPoolStaleHandleNeverDisturbsTheNewLeaseHolder(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	admin := openChannel(t, ctx, c)
	q := uniqueName(t, "pool-stale-")
	declareQueue(t, ctx, b, admin, q)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	old := poolAcquire(t, ctx, p)
	p.Release(old)
	cur := poolAcquire(t, ctx, p)
	if cur.ID() != old.ID() {
		t.Fatalf("re-lease: got channel %d, want channel %d", cur.ID(), old.ID())
	}

	// A buggy goroutine keeps using its released handle while the new
	// holder, using its lease correctly from one goroutine, works.
	stop := make(chan struct{})
	var staleReleased, staleOther atomic.Int64
	var staleFirst atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := old.Publish(ctx, "", q, warren.Publishing{Body: []byte("stale")})
			if errors.Is(err, warren.ErrReleased) {
				staleReleased.Add(1)
			} else {
				staleOther.Add(1)
				staleFirst.CompareAndSwap(nil, fmt.Sprint(err))
			}
		}
	}()
	var ok, failed int
	var firstErr error
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if _, err := cur.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			failed++
			continue
		}
		ok++
	}
	close(stop)
	<-done
	t.Logf("new holder: %d ops ok, %d failed; stale handle: %d ErrReleased, %d other results",
		ok, failed, staleReleased.Load(), staleOther.Load())
	if failed > 0 {
		t.Errorf("new lease holder: %d of %d operations failed while a stale handle was in use (first: %v), want none",
			failed, ok+failed, firstErr)
	}
	if n := staleOther.Load(); n > 0 {
		t.Errorf("stale handle: %d operations returned something other than ErrReleased (first: %v), want ErrReleased every time",
			n, staleFirst.Load())
	}
	if qi, err := admin.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil || qi.Messages != 0 {
		t.Errorf("queue %q after the stale publishes: got %d messages (err %v), want 0: no stale publish may reach the broker", q, qi.Messages, err)
	}
	p.Release(cur)
	wantPoolState(t, "after the new lease is released", p, poolState{Open: 1, Idle: 1, Opened: 1})
}

func TestPoolReleaseOfAnotherPoolsChannelCorruptsNeitherPool(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	pa := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})
	pb := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	a := poolAcquire(t, ctx, pa)
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		pb.Release(a)
	}()
	if panicked != nil {
		t.Logf("Release of another pool's channel panicked: %v", panicked)
	}
	// Refusing (a no-op or a panic) is fine; adopting the channel is not.
	wantPoolState(t, "pool B after being handed pool A's channel", pb, poolState{})
	wantPoolState(t, "pool A while its lease is out", pa, poolState{Open: 1, InUse: 1, Opened: 1})
	if err := a.Err(); err != nil {
		t.Errorf("Err of pool A's lease after passing it to pool B's Release: got %v, want nil (still leased from A)", err)
	}
	bch, err := pb.TryAcquire(ctx)
	if err != nil {
		t.Fatalf("TryAcquire on pool B: got %v, want a channel of its own", err)
	}
	if bch.ID() == a.ID() {
		t.Errorf("pool B leased channel %d, which pool A has leased out", bch.ID())
	}
	pb.Release(bch)
	pa.Release(a)
	wantPoolState(t, "pool A after its own Release", pa, poolState{Open: 1, Idle: 1, Opened: 1})
}

func TestPoolTwoGoroutinesOnOneLeaseGetErrConcurrentUseNeverABrokerError(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	admin := openChannel(t, ctx, c)
	q := uniqueName(t, "pool-concurrent-")
	declareQueue(t, ctx, b, admin, q)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})
	lease := poolAcquire(t, ctx, p)

	type tally struct {
		ops, ok, published, concurrent int
		other                          []error
	}
	var tallies [2]tally
	var seen [2]atomic.Bool
	var wg sync.WaitGroup
	deadline := time.Now().Add(5 * time.Second)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tl := &tallies[g]
			for time.Now().Before(deadline) {
				// Both goroutines keep going until both have been refused
				// at least once and each has had 200 operations succeed.
				if seen[0].Load() && seen[1].Load() && tl.ok >= 200 {
					return
				}
				var err error
				publish := tl.ops%2 == 1
				if publish {
					err = lease.Publish(ctx, "", q, warren.Publishing{Body: []byte("c")})
				} else {
					_, err = lease.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
				}
				tl.ops++
				switch {
				case err == nil:
					tl.ok++
					if publish {
						tl.published++
					}
				case errors.Is(err, warren.ErrConcurrentUse):
					tl.concurrent++
					seen[g].Store(true)
				default:
					tl.other = append(tl.other, err)
					if len(tl.other) >= 5 {
						return
					}
				}
			}
		}()
	}
	wg.Wait()

	published := 0
	for g, tl := range tallies {
		t.Logf("goroutine %d: %d ops, %d succeeded (%d publishes), %d ErrConcurrentUse, %d other errors",
			g, tl.ops, tl.ok, tl.published, tl.concurrent, len(tl.other))
		for _, err := range tl.other {
			t.Errorf("goroutine %d: got %v, want nil or ErrConcurrentUse", g, err)
		}
		published += tl.published
	}
	if tallies[0].concurrent+tallies[1].concurrent == 0 {
		t.Errorf("two goroutines on one lease for up to 5 s: got no ErrConcurrentUse, want some")
	}
	if err := c.Err(); err != nil {
		t.Fatalf("client Err after concurrent use of one lease: got %v, want nil (the wire was garbled)", err)
	}
	if err := lease.Err(); err != nil {
		t.Errorf("lease Err after concurrent use: got %v, want nil", err)
	}
	// Every publish that was accepted reached the queue, and nothing else did.
	var last int
	eventually(t, testCtx(t, 10*time.Second), "queue holds the accepted publishes", func() string {
		qi, err := admin.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatalf("QueueDeclare passive: %v", err)
		}
		last = qi.Messages
		if last != published {
			return fmt.Sprintf("queue %q holds %d messages, want the %d accepted publishes", q, last, published)
		}
		return ""
	})
	p.Release(lease)
	wantPoolState(t, "after releasing the shared lease", p, poolState{Open: 1, Idle: 1, Opened: 1})
}

// --- (4) health: discards by reason ----------------------------------------

func TestPoolChannelClosedByTheBrokerDuringALeaseIsReplacedAndTheHolderSeesTheCause(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	ch := poolAcquire(t, ctx, p)
	exchange := uniqueName(t, "missing-exchange-")
	if err := ch.Publish(ctx, exchange, "", warren.Publishing{Body: []byte("x")}); err != nil && !errors.Is(err, warren.ErrNotFound) {
		t.Fatalf("Publish to a missing exchange: got %v, want nil or ErrNotFound", err)
	}
	_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	wantChannelError(t, "QueueDeclare after publishing to a missing exchange", err, warren.ErrNotFound, warren.CodeNotFound, ch.ID(), exchange)
	wantChannelError(t, "lease Err", ch.Err(), warren.ErrNotFound, warren.CodeNotFound, ch.ID(), exchange)
	wantChannelError(t, "Publish after the close", ch.Publish(ctx, "", "warren-nowhere", warren.Publishing{}), warren.ErrNotFound, warren.CodeNotFound, ch.ID(), exchange)

	p.Release(ch)
	// Replaced lazily: nothing is open until the next Acquire.
	wantPoolState(t, "after releasing the broker-closed channel", p,
		poolState{Opened: 1, Discarded: warren.DiscardStats{BrokerClosed: 1}})

	next := poolAcquire(t, ctx, p)
	if next.ID() == ch.ID() {
		t.Errorf("Acquire after the discard: got channel %d again, want a new channel", next.ID())
	}
	if _, err := next.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the replacement channel: got %v, want nil", err)
	}
	wantPoolState(t, "replacement leased", p,
		poolState{Open: 1, InUse: 1, Opened: 2, Discarded: warren.DiscardStats{BrokerClosed: 1}})
	if err := c.Err(); err != nil {
		t.Errorf("client Err: got %v, want nil", err)
	}
	if got := c.OpenChannels(); got != 1 {
		t.Errorf("OpenChannels: got %d, want 1 (the replacement)", got)
	}
	if b.Private() {
		eventuallyBrokerChannels(t, ctx, b, mustConnectionPid(t, b, name), []int{int(next.ID())})
	}
	p.Release(next)
}

func TestPoolChannelClosedByTheBrokerWhileIdleIsDiscardedAtTheNextAcquire(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ctx := testCtx(t, time.Minute)
	barrier, err := c.Channel(ctx) // unpooled: its replies come after the broker's close
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	ch := poolAcquire(t, ctx, p)
	if _, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Fatalf("QueueDeclare: %v", err)
	}
	// Hold the broker's answer back so that the channel.close it sends for
	// the missing exchange arrives only after the channel is idle again.
	r.proxy.Stall(faultproxy.ServerToClient)
	exchange := uniqueName(t, "missing-exchange-")
	if err := ch.Publish(ctx, exchange, "", warren.Publishing{Body: []byte("x")}); err != nil {
		t.Fatalf("Publish to a missing exchange with the broker's replies held back: got %v, want nil", err)
	}
	p.Release(ch)
	wantPoolState(t, "released before the broker's close arrived", p, poolState{Open: 1, Idle: 1, Opened: 1})
	r.proxy.Resume(faultproxy.ServerToClient)
	// Frames arrive in order: once the barrier's RPC is answered, the
	// channel.close sent before it has been read.
	if _, err := barrier.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Fatalf("barrier QueueDeclare: %v", err)
	}

	next := poolAcquire(t, ctx, p)
	if next.ID() == ch.ID() {
		t.Fatalf("Acquire after the broker closed the idle channel %d: got that channel, want a new one", ch.ID())
	}
	if err := next.Err(); err != nil {
		t.Errorf("Err of the new lease: got %v, want nil", err)
	}
	if _, err := next.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the new lease: got %v, want nil", err)
	}
	wantPoolState(t, "after the idle channel was discarded", p,
		poolState{Open: 1, InUse: 1, Opened: 2, Discarded: warren.DiscardStats{BrokerClosed: 1}})
	p.Release(next)
}

func TestPoolChannelClosedByItsHolderIsDiscardedOnRelease(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	ch := poolAcquire(t, ctx, p)
	if err := ch.Close(ctx); err != nil {
		t.Fatalf("Close of a leased channel: got %v, want nil", err)
	}
	p.Release(ch)
	wantPoolState(t, "after releasing a closed channel", p,
		poolState{Opened: 1, Discarded: warren.DiscardStats{Closed: 1}})
	next := poolAcquire(t, ctx, p)
	if next.ID() == ch.ID() {
		t.Errorf("Acquire after the discard: got channel %d again, want a new channel", next.ID())
	}
	if _, err := next.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the replacement: got %v, want nil", err)
	}
	if got := c.OpenChannels(); got != 1 {
		t.Errorf("OpenChannels: got %d, want 1", got)
	}
	p.Release(next)
}

func TestPoolChannelPoisonedByAnAbandonedOperationIsDiscardedOnRelease(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ctx := testCtx(t, time.Minute)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	ch := poolAcquire(t, ctx, p)
	r.proxy.Stall(faultproxy.ServerToClient)
	qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	took, err := faultWithin(t, 2*time.Second, "QueueDeclare with a stalled broker", func() error {
		_, err := ch.QueueDeclare(qctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
		return err
	})
	cancel()
	t.Logf("abandoned QueueDeclare returned after %v: %v", took, err)
	wantErrIs(t, "abandoned QueueDeclare", err, warren.ErrPoisoned)
	wantErrIs(t, "abandoned QueueDeclare", err, context.DeadlineExceeded)
	r.proxy.Resume(faultproxy.ServerToClient)

	p.Release(ch)
	wantPoolState(t, "after releasing the poisoned channel", p,
		poolState{Opened: 1, Discarded: warren.DiscardStats{Poisoned: 1}})
	next := poolAcquire(t, ctx, p)
	if next.ID() == ch.ID() {
		t.Errorf("Acquire after the discard: got channel %d again, want a new channel", next.ID())
	}
	if _, err := next.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on the replacement: got %v, want nil", err)
	}
	faultEventually(t, 5*time.Second, func() string {
		if got := c.OpenChannels(); got != 1 {
			return fmt.Sprintf("OpenChannels: got %d, want 1 (poisoned channel closed, replacement open)", got)
		}
		return ""
	})
	if _, ok := faultBrokerChannels(t, r.b, r.name); ok {
		faultEventually(t, 30*time.Second, func() string {
			nums, _ := faultBrokerChannels(t, r.b, r.name)
			if !slices.Equal(nums, []int{int(next.ID())}) {
				return fmt.Sprintf("broker's channels on the connection: got %v, want [%d]", nums, next.ID())
			}
			return ""
		})
	}
	p.Release(next)
}

func TestPoolReleaseDuringARunningOperationDiscardsAndClosesTheChannel(t *testing.T) {
	faultCheckLeaks(t)
	r := newFaultRig(t)
	c := r.dial()
	ctx := testCtx(t, time.Minute)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

	ch := poolAcquire(t, ctx, p)
	r.proxy.Stall(faultproxy.ServerToClient)
	started := make(chan struct{})
	opDone := make(chan error, 1)
	go func() {
		close(started)
		_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true})
		opDone <- err
	}()
	<-started
	time.Sleep(100 * time.Millisecond)
	if err := ch.Publish(ctx, "", "warren-nowhere", warren.Publishing{}); !errors.Is(err, warren.ErrConcurrentUse) {
		t.Fatalf("probe while the QueueDeclare waits for a stalled broker: got %v, want ErrConcurrentUse (the operation should be running)", err)
	}

	p.Release(ch) // while the QueueDeclare is still running
	// The channel stays open on the broker until the operation ends, so its
	// slot stays taken: the pool never has more than Size channels.
	wantPoolState(t, "after releasing a channel with an operation running", p,
		poolState{Open: 1, InUse: 1, Opened: 1, Discarded: warren.DiscardStats{Busy: 1}})

	r.proxy.Resume(faultproxy.ServerToClient)
	took, _ := faultWithin(t, 5*time.Second, "the running QueueDeclare after the broker resumed", func() error { return <-opDone })
	t.Logf("the running QueueDeclare returned %v after the resume", took)

	// The discarded channel must actually be closed, or the pool's bound
	// means nothing: its slot has already been given back.
	if msg := poolPoll(5*time.Second, func() string {
		if got := c.OpenChannels(); got != 0 {
			return fmt.Sprintf("OpenChannels: got %d, want 0 (channel %d was discarded)", got, ch.ID())
		}
		return ""
	}); msg != "" {
		t.Errorf("5 s after the discard: %s", msg)
	}
	if msg := poolPoll(5*time.Second, func() string {
		if s := p.Stats(); s.Open != 0 || s.InUse != 0 {
			return fmt.Sprintf("got Open %d, InUse %d, want the slot freed once the channel closed", s.Open, s.InUse)
		}
		return ""
	}); msg != "" {
		t.Errorf("5 s after the running operation ended: %s", msg)
	}
	wantErrIs(t, "QueueDeclare on the released handle", func() error {
		_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
		return err
	}(), warren.ErrReleased)
	next := poolAcquire(t, ctx, p)
	if next.ID() == ch.ID() {
		t.Errorf("Acquire after the discard: got channel %d again, want a new channel", next.ID())
	}
	if got := c.OpenChannels(); got != 1 {
		t.Errorf("OpenChannels with a pool of 1 and nothing else: got %d, want 1", got)
	}
	if _, ok := faultBrokerChannels(t, r.b, r.name); ok {
		if msg := poolPoll(5*time.Second, func() string {
			nums, _ := faultBrokerChannels(t, r.b, r.name)
			if !slices.Equal(nums, []int{int(next.ID())}) {
				return fmt.Sprintf("broker's channels on the connection of a pool of 1: got %v, want only the lease [%d] (discarded channel %d still open)", nums, next.ID(), ch.ID())
			}
			return ""
		}); msg != "" {
			t.Errorf("5 s after the discard: %s", msg)
		}
	}
	p.Release(next)
}

func TestPoolChannelWhoseModeChangedIsDiscardedAndTheNextLeaseIsPlain(t *testing.T) {
	for _, mode := range []warren.Mode{warren.ModeTx, warren.ModeConfirm} {
		t.Run(mode.String(), func(t *testing.T) {
			faultCheckLeaks(t)
			b := brokertest.Need(t, broker)
			ctx := testCtx(t, time.Minute)
			name := uniqueName(t, "warren-it-")
			c := dial(t, b.URL, warren.WithName(name))
			p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})

			ch := poolAcquire(t, ctx, p)
			if got := ch.Mode(); got != warren.ModePlain {
				t.Fatalf("lease from a plain pool: got mode %s, want plain", got)
			}
			if err := ch.SetMode(ctx, mode); err != nil {
				t.Fatalf("SetMode(%s) on a leased plain channel: got %v, want nil", mode, err)
			}
			if got := ch.Mode(); got != mode {
				t.Fatalf("Mode after SetMode(%s): got %s", mode, got)
			}
			p.Release(ch)
			wantPoolState(t, "after releasing a channel switched to "+mode.String(), p,
				poolState{Opened: 1, Discarded: warren.DiscardStats{ModeChanged: 1}})

			next := poolAcquire(t, ctx, p)
			if next.ID() == ch.ID() {
				t.Errorf("Acquire after the discard: got channel %d again, want a new channel", next.ID())
			}
			if got := next.Mode(); got != warren.ModePlain {
				t.Errorf("next lease from the plain pool: got mode %s, want plain", got)
			}
			if err := next.Publish(ctx, "", "warren-nowhere", warren.Publishing{Body: []byte("x")}); err != nil {
				t.Errorf("Publish on the next lease: got %v, want nil", err)
			}
			if b.Private() {
				chans := eventuallyBrokerChannels(t, ctx, b, mustConnectionPid(t, b, name), []int{int(next.ID())})
				if chans[0].Confirm || chans[0].Tx {
					t.Errorf("broker's view of the next lease, channel %d: got confirm %v, transactional %v; want a plain channel",
						next.ID(), chans[0].Confirm, chans[0].Tx)
				}
			}
			p.Release(next)
		})
	}
}

// --- (5) modes ---------------------------------------------------------------

func TestConfirmPoolLeasesConfirmChannelsThatRefuseTxModeAndStayUsable(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))
	admin := openChannel(t, ctx, c)
	q := uniqueName(t, "pool-confirm-")
	declareQueue(t, ctx, b, admin, q)
	cp := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2, MinIdle: 1, Mode: warren.ModeConfirm})
	pp := newTestPool(t, ctx, c, warren.PoolOptions{Size: 2})

	if got := cp.Stats().Mode; got != warren.ModeConfirm {
		t.Errorf("confirm pool Stats.Mode: got %s, want confirm", got)
	}
	if got := pp.Stats().Mode; got != warren.ModePlain {
		t.Errorf("plain pool Stats.Mode: got %s, want plain", got)
	}
	var confirms, plains []warren.Channel
	for range 2 {
		confirms = append(confirms, poolAcquire(t, ctx, cp))
		plains = append(plains, poolAcquire(t, ctx, pp))
	}
	for _, ch := range confirms {
		if got := ch.Mode(); got != warren.ModeConfirm {
			t.Errorf("lease %d from the confirm pool: got mode %s, want confirm", ch.ID(), got)
		}
	}
	for _, ch := range plains {
		if got := ch.Mode(); got != warren.ModePlain {
			t.Errorf("lease %d from the plain pool: got mode %s, want plain", ch.ID(), got)
		}
	}
	cids, pids := poolChannelIDs(confirms), poolChannelIDs(plains)
	for _, id := range cids {
		if slices.Contains(pids, id) {
			t.Errorf("channel %d leased from both pools (confirm %v, plain %v)", id, cids, pids)
		}
	}
	if b.Private() {
		chans := eventuallyBrokerChannels(t, ctx, b, mustConnectionPid(t, b, name), append(append([]int{int(admin.ID())}, cids...), pids...))
		for _, bc := range chans {
			wantConfirm := slices.Contains(cids, bc.Number)
			if bc.Confirm != wantConfirm || bc.Tx {
				t.Errorf("broker's view of channel %d: got confirm %v, transactional %v; want confirm %v, transactional false",
					bc.Number, bc.Confirm, bc.Tx, wantConfirm)
			}
		}
	}

	a := confirms[0]
	if err := a.SetMode(ctx, warren.ModeTx); !errors.Is(err, warren.ErrModeConflict) {
		t.Errorf("SetMode(tx) on a confirm lease: got %v, want ErrModeConflict", err)
	}
	if err := a.SetMode(ctx, warren.ModePlain); !errors.Is(err, warren.ErrModeConflict) {
		t.Errorf("SetMode(plain) on a confirm lease: got %v, want ErrModeConflict", err)
	}
	if err := a.SetMode(ctx, warren.ModeConfirm); err != nil {
		t.Errorf("SetMode(confirm) on a confirm lease: got %v, want nil", err)
	}
	if got := a.Mode(); got != warren.ModeConfirm {
		t.Errorf("Mode after the refused SetMode(tx): got %s, want confirm", got)
	}
	if err := a.Err(); err != nil {
		t.Errorf("Err after the refused SetMode(tx): got %v, want nil", err)
	}
	if err := a.Publish(ctx, "", q, warren.Publishing{Body: []byte("after refused tx")}); err != nil {
		t.Errorf("Publish after the refused SetMode(tx): got %v, want nil", err)
	}
	eventually(t, testCtx(t, 10*time.Second), "the publish reached the queue", func() string {
		qi, err := a.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatalf("QueueDeclare passive on the confirm lease: got %v, want nil", err)
		}
		if qi.Messages != 1 {
			return fmt.Sprintf("queue %q holds %d messages, want 1", q, qi.Messages)
		}
		return ""
	})

	for i := range confirms {
		cp.Release(confirms[i])
		pp.Release(plains[i])
	}
	wantPoolState(t, "confirm pool after releasing its leases", cp, poolState{Open: 2, Idle: 2, Opened: 2})
	wantPoolState(t, "plain pool after releasing its leases", pp, poolState{Open: 2, Idle: 2, Opened: 2})

	// Many goroutines leasing from both pools always get their pool's mode.
	var g errgroup.Group
	var wrong atomic.Int64
	for range 8 {
		g.Go(func() error {
			for i := range 50 {
				p, want := cp, warren.ModeConfirm
				if i%2 == 1 {
					p, want = pp, warren.ModePlain
				}
				err := p.Do(ctx, func(ch warren.Channel) error {
					if got := ch.Mode(); got != want {
						wrong.Add(1)
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Errorf("Do from 8 goroutines on both pools: got error %v, want none", err)
	}
	if n := wrong.Load(); n != 0 {
		t.Errorf("leases in the wrong mode: got %d, want 0", n)
	}
	wantPoolState(t, "confirm pool after mixed use", cp, poolState{Open: 2, Idle: 2, Opened: 2})
	wantPoolState(t, "plain pool after mixed use", pp, poolState{Open: 2, Idle: 2, Opened: 2})
}

// --- (7) Close --------------------------------------------------------------

func TestPoolCloseWaitsForLeasesUpToItsContextThenClosesEveryChannel(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	const channelMax = 20
	c := dial(t, b.URL, warren.WithName(name), warren.WithChannelMax(channelMax))
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 3, MinIdle: 3})

	lease := poolAcquire(t, ctx, p)
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	took, err := faultWithin(t, 3*time.Second, "Pool.Close with a lease out", func() error { return p.Close(cctx) })
	cancel()
	t.Logf("Close with a lease out returned after %v: %v", took, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a lease out and a 200ms context: got %v, want an error wrapping context.DeadlineExceeded", err)
	} else if !strings.Contains(err.Error(), "leased") {
		t.Errorf("Close with a lease out: error %q does not say a channel is still leased", err)
	}
	if took < 150*time.Millisecond || took > time.Second {
		t.Errorf("Close with a lease out and a 200ms context took %v, want about 200ms", took)
	}
	// The idle channels are closed already; the lease is not taken away.
	wantPoolState(t, "after the timed-out Close", p, poolState{Open: 1, InUse: 1, Opened: 3})
	eventually(t, testCtx(t, 5*time.Second), "idle channels closed", func() string {
		if got := c.OpenChannels(); got != 1 {
			return fmt.Sprintf("OpenChannels: got %d, want 1 (the lease)", got)
		}
		return ""
	})

	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"Acquire", func() error { _, err := p.Acquire(ctx); return err }},
		{"TryAcquire", func() error { _, err := p.TryAcquire(ctx); return err }},
		{"Do", func() error {
			return p.Do(ctx, func(warren.Channel) error { t.Errorf("Do after Close ran fn"); return nil })
		}},
	} {
		took, err := faultWithin(t, time.Second, op.name+" after Close", op.do)
		wantErrIs(t, op.name+" after Close", err, warren.ErrPoolClosed)
		if took > 50*time.Millisecond {
			t.Errorf("%s after Close took %v, want it to fail at once", op.name, took)
		}
	}
	if _, err := lease.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true, AutoDelete: true}); err != nil {
		t.Errorf("QueueDeclare on a lease held across Close: got %v, want nil (Close waits for leases)", err)
	}

	p.Release(lease)
	if err := p.Close(ctx); err != nil {
		t.Errorf("Close after the lease was released: got %v, want nil", err)
	}
	wantPoolState(t, "after Close", p, poolState{Opened: 3})
	if got := c.OpenChannels(); got != 0 {
		t.Errorf("OpenChannels after Close: got %d, want 0", got)
	}
	if b.Private() {
		eventuallyBrokerChannels(t, ctx, b, mustConnectionPid(t, b, name), nil)
	}
	took, err = faultWithin(t, time.Second, "second Pool.Close", func() error { return p.Close(ctx) })
	if err != nil || took > 50*time.Millisecond {
		t.Errorf("second Close: got %v after %v, want nil at once", err, took)
	}
	wantErrIs(t, "Publish on the lease released before Close", lease.Publish(ctx, "", "warren-nowhere", warren.Publishing{}), warren.ErrReleased)

	// The closed pool's channel numbers are free again: a pool of 4 fits
	// with channel_max 20 and the default headroom of 16.
	newTestPool(t, ctx, c, warren.PoolOptions{Size: 4})
	if err := c.Err(); err != nil {
		t.Errorf("client Err: got %v, want nil", err)
	}
	roundTrip(t, ctx, c)
}

func TestPoolCloseWakesBlockedAcquiresWithErrPoolClosed(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})
	lease := poolAcquire(t, ctx, p)

	const waiters = 2
	errs := make(chan error, waiters)
	for range waiters {
		go func() {
			_, err := p.Acquire(ctx)
			errs <- err
		}()
	}
	eventually(t, testCtx(t, 2*time.Second), "Acquires waiting", func() string {
		if w := p.Stats().Waiting; w != waiters {
			return fmt.Sprintf("Stats.Waiting: got %d, want %d", w, waiters)
		}
		return ""
	})
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	closeErr := make(chan error, 1)
	go func() { closeErr <- p.Close(cctx) }()
	for i := range waiters {
		select {
		case err := <-errs:
			wantErrIs(t, fmt.Sprintf("blocked Acquire %d when the pool closed", i), err, warren.ErrPoolClosed)
			if d := time.Since(start); d > 150*time.Millisecond {
				t.Errorf("blocked Acquire %d returned %v after Close began, want at once (before Close's own 200ms wait ends)", i, d)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("blocked Acquire %d: still waiting 2 s after Close", i)
		}
	}
	wantErrIs(t, "Close with a lease out", <-closeErr, context.DeadlineExceeded)
	p.Release(lease)
	if err := p.Close(ctx); err != nil {
		t.Errorf("Close after the lease was released: got %v, want nil", err)
	}
	wantPoolState(t, "after Close", p, poolState{Opened: 1})
}

func TestPoolCloseThatTimesOutWithLeasesOutKeepsTheHeadroomForUnpooledChannels(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	const channelMax = 20
	c := dial(t, b.URL, warren.WithChannelMax(channelMax))
	old := newTestPool(t, ctx, c, warren.PoolOptions{Size: 4})
	var leases []warren.Channel
	for range 4 {
		leases = append(leases, poolAcquire(t, ctx, old))
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := old.Close(cctx)
	cancel()
	wantErrIs(t, "Close with 4 leases out", err, context.DeadlineExceeded)

	// The closing pool's 4 leases still hold channel numbers. Another pool
	// of 4 may be refused, or accepted only if the 16 numbers of headroom
	// for unpooled channels are still there next to it.
	np, err := c.NewPool(ctx, warren.PoolOptions{Size: 4})
	if err != nil {
		wantErrIs(t, "NewPool while a closing pool's leases are out", err, warren.ErrInvalidArgument)
		t.Logf("NewPool refused while the closing pool's leases are out: %v", err)
	} else {
		t.Cleanup(func() { _ = np.Close(context.Background()) })
		for range 4 {
			leases = append(leases, poolAcquire(t, ctx, np))
		}
		var unpooled []warren.Channel
		for i := range 16 {
			ch, err := c.Channel(ctx)
			if err != nil {
				t.Errorf("unpooled channel %d of the default headroom of 16, with channel_max %d, the closing pool's 4 leases and a new pool of 4 leased: got %v, want a channel",
					i+1, channelMax, err)
				break
			}
			unpooled = append(unpooled, ch)
		}
		for _, ch := range unpooled {
			_ = ch.Close(ctx)
		}
		for _, l := range leases[4:] {
			np.Release(l)
		}
	}
	for _, l := range leases[:4] {
		old.Release(l)
	}
	if err := old.Close(ctx); err != nil {
		t.Errorf("Close once the leases are back: got %v, want nil", err)
	}
}

// --- (8) the connection dies ------------------------------------------------

func TestPoolAfterTheConnectionDiesAcquireAndLeasedChannelsReturnTheConnectionError(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	needPrivate(t, b)
	ctx := testCtx(t, time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 4})

	var leases []warren.Channel
	for range 4 {
		leases = append(leases, poolAcquire(t, ctx, p))
	}
	type result struct {
		err error
		at  time.Time
	}
	const waiters = 3
	blocked := make(chan result, waiters)
	for range waiters {
		go func() {
			ch, err := p.Acquire(ctx)
			if err == nil {
				p.Release(ch)
			}
			blocked <- result{err, time.Now()}
		}()
	}
	eventually(t, testCtx(t, 2*time.Second), "Acquires waiting on the full pool", func() string {
		if w := p.Stats().Waiting; w != waiters {
			return fmt.Sprintf("Stats.Waiting: got %d, want %d", w, waiters)
		}
		return ""
	})

	pid := mustConnectionPid(t, b, name)
	reason := "pool test reason " + randHex(4)
	ctl(t, b, "close_connection", pid, reason)
	ctlDone := time.Now()

	check := func(what string, err error) {
		t.Helper()
		var ce *warren.ConnectionError
		if !errors.As(err, &ce) {
			t.Errorf("%s: got %v (%T), want a *warren.ConnectionError", what, err, err)
			return
		}
		if !errors.Is(err, warren.ErrConnectionForced) || !strings.Contains(err.Error(), reason) {
			t.Errorf("%s: got %v, want errors.Is ErrConnectionForced and the broker's reason %q", what, err, reason)
		}
	}
	for i := range waiters {
		select {
		case r := <-blocked:
			check(fmt.Sprintf("blocked Acquire %d", i), r.err)
			if d := r.at.Sub(ctlDone); d > 2*time.Second {
				t.Errorf("blocked Acquire %d returned %v after close_connection, want within 2 s", i, d)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("blocked Acquire %d: still waiting 2 s after close_connection returned (stats %+v)", i, p.Stats())
		}
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("client Done not closed 5 s after close_connection")
	}

	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"Acquire", func() error { _, err := p.Acquire(ctx); return err }},
		{"TryAcquire", func() error { _, err := p.TryAcquire(ctx); return err }},
		{"Do", func() error {
			return p.Do(ctx, func(warren.Channel) error { t.Errorf("Do on a dead connection ran fn"); return nil })
		}},
	} {
		took, err := faultWithin(t, 2*time.Second, op.name+" on a dead connection", op.do)
		check(op.name+" on a dead connection", err)
		if took > 50*time.Millisecond {
			t.Errorf("%s on a dead connection took %v, want it to fail at once (< 50ms)", op.name, took)
		}
	}
	// Three leases are used after the death; the fourth is released
	// untouched, and is still a channel that died with its connection.
	for _, ch := range leases[:3] {
		_, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
		check(fmt.Sprintf("QueueDeclare on lease %d", ch.ID()), err)
		check(fmt.Sprintf("Publish on lease %d", ch.ID()), ch.Publish(ctx, "", "warren-nowhere", warren.Publishing{}))
	}
	for _, ch := range leases {
		p.Release(ch)
	}
	s := p.Stats()
	if got := poolStateOf(s); got != (poolState{Opened: 4, Discarded: warren.DiscardStats{Connection: 4}}) {
		t.Errorf("after releasing the leases of the dead connection: got pool state %+v, want Opened 4, Discarded.Connection 4 and nothing open", got)
	}
	if s.AcquireTimeouts != 0 {
		t.Errorf("AcquireTimeouts: got %d, want 0 (the waits were ended by the connection, not a context)", s.AcquireTimeouts)
	}
	took, err := faultWithin(t, 2*time.Second, "Pool.Close on a dead connection", func() error { return p.Close(ctx) })
	if err != nil {
		t.Errorf("Pool.Close on a dead connection after every lease came back: got %v after %v, want nil", err, took)
	}
}

// --- load, fairness, Stats (6) ----------------------------------------------

func TestPoolOf8Serves256GoroutinesPublishing100EachOnAtMost8BrokerChannels(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, 3*time.Minute)
	name := uniqueName(t, "warren-it-")
	c := dial(t, b.URL, warren.WithName(name))
	admin := openChannel(t, ctx, c) // the one unpooled channel: declares and counts
	const unpooled = 1
	q := uniqueName(t, "pool-load-")
	declareQueue(t, ctx, b, admin, q)
	const (
		size       = 8
		goroutines = 256
		each       = 100
		total      = goroutines * each
	)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: size})

	// Sample the broker's channels for this connection while the load runs.
	// Each rabbitmqctl call takes about half a second.
	type sample struct {
		start, end    time.Time
		total, pooled int
		err           error
	}
	var (
		samples     []sample // written by the sampler until samplerDone is closed
		stop        = make(chan struct{})
		samplerDone = make(chan struct{})
		pid         string
	)
	if b.Private() {
		pid = mustConnectionPid(t, b, name)
		go func() {
			defer close(samplerDone)
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := sample{start: time.Now()}
				cctx, cancel := context.WithTimeout(ctx, ctlTimeout)
				chans, err := poolBrokerChannels(cctx, b, pid)
				cancel()
				s.end, s.err, s.total = time.Now(), err, len(chans)
				for _, bc := range chans {
					if bc.Number != int(admin.ID()) {
						s.pooled++
					}
				}
				samples = append(samples, s)
				if err != nil {
					return
				}
			}
		}()
	} else {
		close(samplerDone)
		t.Logf("broker %s is not a private node: the broker's channel count is not sampled", b)
	}

	body := bytes.Repeat([]byte{'p'}, 128)
	var (
		g             errgroup.Group
		published     atomic.Int64
		concurrentUse atomic.Int64
	)
	begin := make(chan struct{})
	for range goroutines {
		g.Go(func() error {
			<-begin
			for range each {
				err := p.Do(ctx, func(ch warren.Channel) error {
					return ch.Publish(ctx, "", q, warren.Publishing{Body: body})
				})
				if err != nil {
					if errors.Is(err, warren.ErrConcurrentUse) {
						concurrentUse.Add(1)
					}
					return err
				}
				published.Add(1)
			}
			return nil
		})
	}
	// Let the sampler's first look (before any lease) get going.
	time.Sleep(50 * time.Millisecond)
	loadStart := time.Now()
	close(begin)
	loadErr := g.Wait()
	loadEnd := time.Now()
	close(stop)
	<-samplerDone
	elapsed := loadEnd.Sub(loadStart)
	s := p.Stats()
	t.Logf("%d publishes by %d goroutines through a pool of %d in %v: %.0f msg/s; waits %d, total wait %v (mean %v)",
		published.Load(), goroutines, size, elapsed.Round(time.Millisecond), float64(published.Load())/elapsed.Seconds(),
		s.WaitCount, s.WaitDuration.Round(time.Millisecond), (s.WaitDuration / time.Duration(max(s.WaitCount, 1))).Round(time.Microsecond))

	if n := concurrentUse.Load(); n != 0 {
		t.Errorf("ErrConcurrentUse in correct use of the pool: got %d, want 0", n)
	}
	if loadErr != nil || published.Load() != total {
		t.Fatalf("published %d of %d, first error %v; want all published and no error", published.Load(), total, loadErr)
	}

	// Stats match healthy use: nothing leased or waiting, no churn, no discards.
	if s.Max != size || s.InUse != 0 || s.Waiting != 0 || s.Open > size || s.Idle != s.Open {
		t.Errorf("stats after the load: got Max %d, InUse %d, Waiting %d, Open %d, Idle %d; want %d, 0, 0, <= %d, Idle == Open",
			s.Max, s.InUse, s.Waiting, s.Open, s.Idle, size, size)
	}
	if s.Opened > size || s.Opened != int64(s.Open) {
		t.Errorf("stats after the load: got Opened %d with Open %d, want Opened == Open <= %d (no churn in healthy use)", s.Opened, s.Open, size)
	}
	if s.WaitCount == 0 || s.WaitDuration <= 0 {
		t.Errorf("stats after the load: got WaitCount %d, WaitDuration %v; want both > 0 with %d goroutines on %d channels",
			s.WaitCount, s.WaitDuration, goroutines, size)
	}
	if s.AcquireTimeouts != 0 || s.Discarded != (warren.DiscardStats{}) {
		t.Errorf("stats after the load: got AcquireTimeouts %d, Discarded %+v; want 0 and none", s.AcquireTimeouts, s.Discarded)
	}
	if got := c.OpenChannels(); got != s.Open+unpooled {
		t.Errorf("OpenChannels after the load: got %d, want the pool's %d + %d unpooled", got, s.Open, unpooled)
	}

	if pid != "" {
		during := 0
		for i, sm := range samples {
			if sm.err != nil {
				t.Fatalf("sample %d of the broker's channels: %v", i, sm.err)
			}
			if sm.start.Before(loadEnd) && sm.end.After(loadStart) {
				during++
			}
			if sm.pooled > size || sm.total > size+unpooled {
				t.Errorf("sample %d (%v into the load): broker lists %d channels on the connection, %d of them pooled; want <= %d + %d unpooled",
					i, sm.start.Sub(loadStart).Round(time.Millisecond), sm.total, sm.pooled, size, unpooled)
			}
		}
		// Channels are only ever opened in healthy use, so the broker's count
		// after the load is the highest it reached; check it as well.
		after := poolMustBrokerChannels(t, b, pid)
		var pooledAfter int
		for _, bc := range after {
			if bc.Number != int(admin.ID()) {
				pooledAfter++
			}
		}
		counts := make([]int, 0, len(samples))
		for _, sm := range samples {
			counts = append(counts, sm.pooled)
		}
		t.Logf("broker's pooled channel count: %d samples %v (%d overlapping the load), %d after it", len(samples), counts, during, pooledAfter)
		if pooledAfter != s.Open || len(after) != s.Open+unpooled {
			t.Errorf("broker after the load: lists %d channels, %d pooled; want the pool's Open %d + %d unpooled", len(after), pooledAfter, s.Open, unpooled)
		}
	}

	// Every message is in the queue: wait until the count reaches the total
	// and stays there.
	deadline := time.Now().Add(30 * time.Second)
	var n int
	for {
		qi, err := admin.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true})
		if err != nil {
			t.Fatalf("QueueDeclare passive: %v", err)
		}
		n = qi.Messages
		if n > total {
			t.Fatalf("queue %q holds %d messages, want %d", q, n, total)
		}
		if n == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue %q holds %d messages 30 s after the load, want %d", q, n, total)
		}
		time.Sleep(pollEvery)
	}
	time.Sleep(300 * time.Millisecond)
	if qi, err := admin.QueueDeclare(ctx, q, warren.QueueOptions{Passive: true}); err != nil || qi.Messages != total {
		t.Errorf("queue %q a moment later: got %d messages (err %v), want %d", q, qi.Messages, err, total)
	}
}

// Sixteen goroutines lease two channels for a second: the pool, not the
// CPU, is what they contend for, and it serves them in arrival order, so
// each gets about the same number of leases.
//
// Each lease publishes on a confirm channel and waits for the broker's
// confirm, so the holder parks for a round trip while the others queue in
// Acquire. (With a fire-and-forget publish a lease is pure CPU work: only
// GOMAXPROCS of the goroutines run at a time, most acquires find a channel
// idle and nobody waiting, and the shares are the Go and OS schedulers'
// time slices, not the pool's order.)
func TestPoolServesEveryGoroutineItsShareUnderSustainedContention(t *testing.T) {
	faultCheckLeaks(t)
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	const (
		size       = 2
		goroutines = 16
		run        = time.Second
	)
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: size, Mode: warren.ModeConfirm})
	key := uniqueName(t, "warren-nowhere-") // no such queue: the default exchange drops it, and acks it

	var counts [goroutines]int
	var errs [goroutines]error
	var wg sync.WaitGroup
	begin := make(chan struct{})
	var stopAt time.Time
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-begin
			for time.Now().Before(stopAt) {
				ch, err := p.Acquire(ctx)
				if err != nil {
					errs[g] = err
					return
				}
				err = ch.Publish(ctx, "", key, warren.Publishing{Body: []byte("f")}) // returns with the broker's ack
				p.Release(ch)
				if err != nil {
					errs[g] = err
					return
				}
				counts[g]++
			}
		}()
	}
	stopAt = time.Now().Add(run)
	close(begin)
	wg.Wait()

	sum := 0
	for g, n := range counts {
		sum += n
		if errs[g] != nil {
			t.Errorf("goroutine %d: got %v, want no error", g, errs[g])
		}
	}
	mean := float64(sum) / goroutines
	sorted := slices.Sorted(slices.Values(counts[:]))
	s := p.Stats()
	t.Logf("%d goroutines on a pool of %d for %v: %d leases (%.0f/s); per goroutine min %d, max %d, mean %.0f; sorted %v; waits %d, mean wait %v",
		goroutines, size, run, sum, float64(sum)/run.Seconds(), sorted[0], sorted[len(sorted)-1], mean, sorted,
		s.WaitCount, (s.WaitDuration / time.Duration(max(s.WaitCount, 1))).Round(time.Microsecond))
	for g, n := range counts {
		if float64(n) < mean/4 {
			t.Errorf("goroutine %d: got %d leases, want at least a quarter of the mean %.0f", g, n, mean)
		}
	}
	// Sustained contention: past the first leases, every Acquire waits.
	if s.WaitCount == 0 || s.WaitCount < int64(sum)/2 {
		t.Errorf("WaitCount: got %d for %d leases, want most of them with %d goroutines on %d channels", s.WaitCount, sum, goroutines, size)
	}
	if s.InUse != 0 || s.Opened > size || s.Discarded != (warren.DiscardStats{}) {
		t.Errorf("stats: got InUse %d, Opened %d, Discarded %+v; want 0, <= %d, none", s.InUse, s.Opened, s.Discarded, size)
	}
}

// A plain pooled channel released while it holds a fetched message it never
// settled is closed, which returns the message to its queue, instead of
// being reused with the message stuck on it.
func TestPoolDiscardsAChannelReleasedWithAnUnsettledMessage(t *testing.T) {
	b := brokertest.Need(t, broker)
	ctx := testCtx(t, opTimeout)
	c := dial(t, b.URL)
	q := uniqueName(t, "q-")
	ch := openChannel(t, ctx, c)
	declareQueue(t, ctx, b, ch, q)
	if err := ch.Publish(ctx, "", q, warren.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	p := newTestPool(t, ctx, c, warren.PoolOptions{Size: 1})
	lc, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fetched, ok, err := lc.Get(ctx, q, warren.GetOptions{})
	if err != nil || !ok {
		t.Fatalf("Get: ok %v err %v", ok, err)
	}
	p.Release(lc)
	if s := p.Stats(); s.Discarded.Unsettled != 1 {
		t.Errorf("Discarded.Unsettled: %d, want 1 (%+v)", s.Discarded.Unsettled, s)
	}
	// The fetched message went back with the channel: settling it now is
	// void, and says so (and that the lease had ended).
	err = fetched.Ack(ctx)
	if !errors.Is(err, warren.ErrDeliveryVoid) || !errors.Is(err, warren.ErrReleased) {
		t.Errorf("Ack of a delivery whose lease was released: got %v, want ErrDeliveryVoid and ErrReleased", err)
	}
	d := getOne(t, ctx, ch, q)
	if !d.Redelivered {
		t.Error("the message came back without Redelivered")
	}
	// A lease that settles what it fetched keeps its channel.
	lc, err = p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Nack(ctx, true); err != nil {
		t.Fatal(err)
	}
	// basic.nack has no reply, and the broker does not order it with a
	// basic.get on another channel: the requeue may not have reached the
	// queue yet, so the get polls.
	got := getOne(t, ctx, lc, q)
	if err := got.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	p.Release(lc)
	if s := p.Stats(); s.Discarded.Unsettled != 1 || s.Idle != 1 {
		t.Errorf("after a settled lease: %+v, want the channel idle and no new discard", s)
	}
}

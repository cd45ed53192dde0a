package chanpool

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// res is a fake resource that detects being held by two goroutines.
type res struct {
	id    int64
	held  atomic.Bool
	alive atomic.Bool
}

type fakeOpener struct {
	max       int
	next      atomic.Int64
	open      atomic.Int64
	maxSeen   atomic.Int64
	failEvery int64 // every n-th Open fails; 0 = never
	delay     time.Duration
	// destroyDelay is how long Destroy takes; the resource counts as
	// alive until it returns.
	destroyDelay time.Duration
}

func (f *fakeOpener) config() Config[*res] {
	return Config[*res]{
		Max: f.max,
		Open: func(ctx context.Context) (*res, error) {
			n := f.next.Add(1)
			if f.failEvery > 0 && n%f.failEvery == 0 {
				return nil, errors.New("open failed")
			}
			if f.delay > 0 {
				select {
				case <-time.After(f.delay):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			o := f.open.Add(1)
			for {
				m := f.maxSeen.Load()
				if o <= m || f.maxSeen.CompareAndSwap(m, o) {
					break
				}
			}
			r := &res{id: n}
			r.alive.Store(true)
			return r, nil
		},
		Destroy: func(r *res) {
			if !r.alive.CompareAndSwap(true, false) {
				panic("resource destroyed twice")
			}
			if f.destroyDelay > 0 {
				time.Sleep(f.destroyDelay)
			}
			f.open.Add(-1)
		},
	}
}

func claim(t testing.TB, r *res) {
	if !r.held.CompareAndSwap(false, true) {
		t.Errorf("resource %d handed to two goroutines at once", r.id)
	}
	if !r.alive.Load() {
		t.Errorf("resource %d handed out after it was destroyed", r.id)
	}
}

func unclaim(r *res) { r.held.Store(false) }

func TestAcquireOpensLazilyAndReusesIdleResources(t *testing.T) {
	f := &fakeOpener{max: 4}
	p := New(f.config())
	ctx := context.Background()
	if got := f.open.Load(); got != 0 {
		t.Fatalf("got %d open before the first Acquire, want 0", got)
	}
	a, _ := p.Acquire(ctx)
	p.Release(a)
	b, _ := p.Acquire(ctx)
	if a != b {
		t.Errorf("got a new resource for a sequential Acquire, want the idle one reused")
	}
	p.Release(b)
	if s := p.Stats(); s.Open != 1 || s.Idle != 1 || s.InUse != 0 || s.Opened != 1 {
		t.Errorf("got %+v, want 1 open, 1 idle, 0 in use, 1 opened", s)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.open.Load(); got != 0 {
		t.Errorf("got %d resources alive after Close, want 0", got)
	}
}

func TestAcquireBlocksAtMaxAndHonoursItsContext(t *testing.T) {
	f := &fakeOpener{max: 2}
	p := New(f.config())
	ctx := context.Background()
	a, _ := p.Acquire(ctx)
	b, _ := p.Acquire(ctx)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.Acquire(short)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Errorf("Acquire returned after %v, want about 50ms", d)
	}
	if _, err := p.TryAcquire(ctx); !errors.Is(err, ErrExhausted) {
		t.Errorf("TryAcquire: got %v, want ErrExhausted", err)
	}
	s := p.Stats()
	if s.AcquireTimeout != 1 || s.WaitCount != 1 || s.WaitDuration < 40*time.Millisecond {
		t.Errorf("got %+v, want 1 timeout, 1 wait of about 50ms", s)
	}
	p.Release(a)
	p.Release(b)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWaitersAreServedInArrivalOrder(t *testing.T) {
	f := &fakeOpener{max: 1}
	p := New(f.config())
	ctx := context.Background()
	r, _ := p.Acquire(ctx)
	const n = 20
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := p.Acquire(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			order <- i
			p.Release(got)
		}()
		// Wait until waiter i is queued before starting the next.
		deadline := time.Now().Add(2 * time.Second)
		for p.Stats().Waiting != i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("waiter %d never queued", i)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	p.Release(r)
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Fatalf("waiter %d served in position %d: got out of arrival order", got, want)
		}
		want++
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAGrantRacingACancelledWaiterGoesBackToThePool(t *testing.T) {
	f := &fakeOpener{max: 1}
	p := New(f.config())
	ctx := context.Background()
	for i := range 2000 {
		r, _ := p.Acquire(ctx)
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			got, err := p.Acquire(wctx)
			if err == nil {
				p.Release(got)
			}
			done <- err
		}()
		for p.Stats().Waiting == 0 {
			time.Sleep(10 * time.Microsecond)
		}
		// Release and cancel as close together as we can.
		if i%2 == 0 {
			go cancel()
			p.Release(r)
		} else {
			p.Release(r)
			cancel()
		}
		<-done
		// Whatever happened, the one resource must be acquirable now.
		tctx, tcancel := context.WithTimeout(ctx, time.Second)
		got, err := p.Acquire(tctx)
		tcancel()
		if err != nil {
			t.Fatalf("iteration %d: resource leaked: %v (stats %+v)", i, err, p.Stats())
		}
		p.Release(got)
		cancel()
	}
	if s := p.Stats(); s.Open != 1 || s.InUse != 0 {
		t.Errorf("got %+v, want 1 open and none in use", s)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestDiscardLetsAWaiterOpenAReplacement(t *testing.T) {
	f := &fakeOpener{max: 1}
	p := New(f.config())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, _ := p.Acquire(ctx)
	got := make(chan *res, 1)
	go func() {
		x, err := p.Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- x
	}()
	for p.Stats().Waiting == 0 {
		time.Sleep(10 * time.Microsecond)
	}
	p.Discard(r)
	x := <-got
	if x == r || x == nil || !x.alive.Load() {
		t.Fatalf("got %v, want a fresh live resource", x)
	}
	p.Release(x)
	if s := p.Stats(); s.Open != 1 || s.Opened != 2 || s.Destroyed != 1 {
		t.Errorf("got %+v, want 1 open, 2 opened, 1 destroyed", s)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFailReachesWaitersAndNewAcquires(t *testing.T) {
	f := &fakeOpener{max: 1}
	p := New(f.config())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, _ := p.Acquire(ctx)
	boom := errors.New("connection lost")
	errs := make(chan error, 1)
	go func() {
		_, err := p.Acquire(ctx)
		errs <- err
	}()
	for p.Stats().Waiting == 0 {
		time.Sleep(10 * time.Microsecond)
	}
	p.Fail(boom)
	if err := <-errs; !errors.Is(err, boom) {
		t.Errorf("waiter: got %v, want %v", err, boom)
	}
	if _, err := p.Acquire(ctx); !errors.Is(err, boom) {
		t.Errorf("new Acquire: got %v, want %v at once", err, boom)
	}
	p.Release(r) // destroyed, not pooled
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.open.Load(); n != 0 {
		t.Errorf("got %d alive, want 0", n)
	}
}

func TestCloseWaitsForLeasesUpToItsContext(t *testing.T) {
	f := &fakeOpener{max: 2}
	p := New(f.config())
	ctx := context.Background()
	r, _ := p.Acquire(ctx)
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if err := p.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded while a lease is out", err)
	}
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close: got %v, want ErrClosed", err)
	}
	p.Release(r)
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := f.open.Load(); n != 0 {
		t.Errorf("got %d alive after Close, want 0", n)
	}
}

func TestCloseFromFiftyGoroutinesAtOnceReturnsNilToEachOnlyOnceEveryResourceIsDestroyed(t *testing.T) {
	// Destroys that take a while and leases that come back while the
	// closers wait: each Close must return only after the same work (every
	// resource destroyed, every Destroy returned), never race, never panic.
	for round := range 20 {
		f := &fakeOpener{max: 8, destroyDelay: 200 * time.Microsecond}
		p := New(f.config())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var leased []*res
		for range 8 {
			r, err := p.Acquire(ctx)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			leased = append(leased, r)
		}
		for _, r := range leased[:4] {
			p.Release(r) // idle: Close destroys them
		}
		const closers = 50
		start := make(chan struct{})
		errs := make(chan error, closers)
		early := make(chan int64, closers) // resources alive when a Close returned nil
		var wg sync.WaitGroup
		for range closers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				err := p.Close(ctx)
				if n := f.open.Load(); err == nil && n != 0 {
					early <- n
				}
				errs <- err
			}()
		}
		for i, r := range leased[4:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				time.Sleep(time.Duration(i) * 300 * time.Microsecond)
				if i%2 == 0 {
					p.Release(r)
				} else {
					p.Discard(r)
				}
			}()
		}
		close(start)
		wg.Wait()
		cancel()
		close(errs)
		close(early)
		for err := range errs {
			if err != nil {
				t.Errorf("round %d: Close: got %v, want nil", round, err)
			}
		}
		for n := range early {
			t.Errorf("round %d: Close returned nil with %d resources not yet destroyed, want 0", round, n)
		}
		if n := f.open.Load(); n != 0 {
			t.Errorf("round %d: got %d alive after every Close, want 0", round, n)
		}
		if s := p.Stats(); s.Open != 0 || s.InUse != 0 || s.Idle != 0 || s.Destroyed != 8 {
			t.Errorf("round %d: got %+v, want 0 open, 0 in use, 0 idle, 8 destroyed", round, s)
		}
		if t.Failed() {
			return
		}
	}
}

func TestCloseCallersWhoseContextEndsGiveUpAloneAndTheDrainStillCompletes(t *testing.T) {
	f := &fakeOpener{max: 2}
	var drained atomic.Int64
	cfg := f.config()
	cfg.Drained = func() {
		if n := f.open.Load(); n != 0 {
			t.Errorf("Drained ran with %d resources alive, want 0", n)
		}
		drained.Add(1)
	}
	p := New(cfg)
	ctx := context.Background()
	r, _ := p.Acquire(ctx)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	long, lcancel := context.WithTimeout(ctx, 10*time.Second)
	defer lcancel()
	longErr := make(chan error, 1)
	go func() { longErr <- p.Close(long) }()
	if err := p.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a short ctx while a lease is out: got %v, want DeadlineExceeded", err)
	}
	select {
	case err := <-longErr:
		t.Fatalf("Close with a long ctx returned %v while the lease was still out, want it to wait", err)
	default:
	}
	if n := drained.Load(); n != 0 {
		t.Fatalf("Drained ran %d times while a lease was out, want 0", n)
	}
	p.Release(r)
	select {
	case err := <-longErr:
		if err != nil {
			t.Errorf("Close with a long ctx: got %v, want nil once the lease came back", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close with a long ctx: still waiting 5 s after the last lease came back")
	}
	if n := drained.Load(); n != 1 {
		t.Errorf("Drained ran %d times, want once", n)
	}
	if err := p.Close(short); err != nil {
		t.Errorf("Close after the drain, with an ended ctx: got %v, want nil (nothing left to wait for)", err)
	}
	if n := drained.Load(); n != 1 {
		t.Errorf("Drained ran %d times after another Close, want once", n)
	}
}

func TestTheDrainCompletesWithoutACloseWaitingForIt(t *testing.T) {
	f := &fakeOpener{max: 1, destroyDelay: time.Millisecond}
	done := make(chan struct{})
	cfg := f.config()
	cfg.Drained = func() { close(done) }
	p := New(cfg)
	ctx := context.Background()
	r, _ := p.Acquire(ctx)
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if err := p.Close(gone); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close with an ended ctx while a lease is out: got %v, want Canceled", err)
	}
	p.Release(r) // destroyed: the last resource, nobody waiting
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Drained: not run 5 s after the last lease came back, want it run by that Release")
	}
	if n := f.open.Load(); n != 0 {
		t.Errorf("got %d alive, want 0", n)
	}
}

func TestCloseIsBoundedByItsContextWhileIdleResourcesAreSlowToDestroy(t *testing.T) {
	f := &fakeOpener{max: 4, destroyDelay: 300 * time.Millisecond}
	p := New(f.config())
	ctx := context.Background()
	if err := p.Warm(ctx, 4); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := p.Close(short)
	if d := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || d > 250*time.Millisecond {
		t.Errorf("Close with a 50 ms ctx while 4 idle resources take 300 ms each to destroy: got %v after %v, want DeadlineExceeded after about 50 ms", err, d)
	}
	long, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	start = time.Now()
	if err := p.Close(long); err != nil {
		t.Fatalf("second Close: got %v, want nil", err)
	}
	// In parallel: about one Destroy's time, not four.
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("second Close: returned after %v, want the 4 destroys run in parallel (about 300 ms)", d)
	}
	if n := f.open.Load(); n != 0 {
		t.Errorf("got %d alive after Close, want 0", n)
	}
}

func TestStressNeverExceedsMaxNorSharesAResource(t *testing.T) {
	f := &fakeOpener{max: 8, failEvery: 97, delay: 50 * time.Microsecond}
	p := New(f.config())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var (
		wg       sync.WaitGroup
		acquired atomic.Int64
		timeouts atomic.Int64
	)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 500 {
				actx, acancel := context.WithTimeout(ctx, time.Duration(rng.IntN(300))*time.Microsecond)
				r, err := p.Acquire(actx)
				acancel()
				if err != nil {
					timeouts.Add(1)
					continue
				}
				claim(t, r)
				acquired.Add(1)
				if n := rng.IntN(4); n > 0 {
					time.Sleep(time.Duration(n) * 10 * time.Microsecond)
				}
				unclaim(r)
				if rng.IntN(20) == 0 {
					p.Discard(r)
				} else {
					p.Release(r)
				}
			}
		}()
	}
	wg.Wait()
	s := p.Stats()
	if m := f.maxSeen.Load(); m > 8 {
		t.Errorf("got %d resources open at once, want at most 8", m)
	}
	if s.InUse != 0 || s.Waiting != 0 || s.Open != s.Idle || int64(s.Open) != f.open.Load() {
		t.Errorf("counts do not add up: %+v, %d alive", s, f.open.Load())
	}
	if s.Opened-s.Destroyed != int64(s.Open) {
		t.Errorf("opened %d - destroyed %d != open %d", s.Opened, s.Destroyed, s.Open)
	}
	t.Logf("acquired %d, timed out %d, %+v", acquired.Load(), timeouts.Load(), s)
	if acquired.Load() == 0 {
		t.Error("nothing was ever acquired")
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.open.Load(); n != 0 {
		t.Errorf("got %d alive after Close, want 0", n)
	}
}

func BenchmarkAcquireReleaseUncontended(b *testing.B) {
	f := &fakeOpener{max: 8}
	p := New(f.config())
	ctx := context.Background()
	r, _ := p.Acquire(ctx)
	p.Release(r)
	b.ReportAllocs()
	for b.Loop() {
		r, _ := p.Acquire(ctx)
		p.Release(r)
	}
}

func BenchmarkAcquireReleaseContended(b *testing.B) {
	for _, g := range []int{64, 1024} {
		b.Run(itoa(g)+"goroutines", func(b *testing.B) {
			f := &fakeOpener{max: 8}
			p := New(f.config())
			ctx := context.Background()
			b.ReportAllocs()
			b.SetParallelism(g / max(1, runtimeProcs()))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r, err := p.Acquire(ctx)
					if err != nil {
						b.Error(err)
						return
					}
					p.Release(r)
				}
			})
		})
	}
}

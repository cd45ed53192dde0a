package poolbench

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/jackc/puddle/v2"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/chanpool"
)

// Contender names, in the order they run within a round.
const (
	Warren   = "warren"   // warren.Pool over real channels on one Client
	Chanpool = "chanpool" // warren's internal/chanpool core, trivial resources
	Puddle   = "puddle"   // github.com/jackc/puddle/v2, trivial resources
)

// contender is one pool under test. Its loops call the pool directly, with
// no interface or closure between the caller and Acquire/Release, so the
// uncontended figure is the pool's own cost.
type contender interface {
	// serial runs n Acquire+Release pairs on the calling goroutine.
	serial(n int) error
	// loop runs Acquire, hold, Release, work until w.stop is set.
	loop(w *worker) error
	close(ctx context.Context) error
}

// res is the trivial resource of the chanpool and puddle contenders.
type res struct{ id int }

// resOpener hands out numbered resources (ids from 1, as warren's channel
// numbers), so hand-off times can be tracked per resource.
type resOpener struct{ next atomic.Int64 }

func (o *resOpener) open(context.Context) (*res, error) {
	return &res{id: int(o.next.Add(1))}, nil
}

// warrenPool leases channels of a warren.Pool opened on a live Client.
type warrenPool struct {
	client *warren.Client
	pool   *warren.Pool
}

func newWarren(ctx context.Context, url string, size int) (*warrenPool, error) {
	c, err := warren.Dial(ctx, url, warren.WithName("warrenbench"))
	if err != nil {
		return nil, err
	}
	// MinIdle = Size: every channel is opened here, once; the benchmark
	// only leases them, so the broker is never on the measured path.
	p, err := c.NewPool(ctx, warren.PoolOptions{Size: size, MinIdle: size})
	if err != nil {
		_ = c.Close(ctx)
		return nil, err
	}
	if s := p.Stats(); s.Idle != size {
		_ = c.Close(ctx)
		return nil, fmt.Errorf("warren pool: %d channels idle after NewPool, want %d", s.Idle, size)
	}
	return &warrenPool{client: c, pool: p}, nil
}

func (c *warrenPool) serial(n int) error {
	ctx := context.Background()
	for range n {
		ch, err := c.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		c.pool.Release(ch)
	}
	return nil
}

func (c *warrenPool) loop(w *worker) error {
	ctx := context.Background()
	for !w.stop.Load() {
		t0 := w.begin()
		ch, err := c.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		id := int(ch.ID())
		w.acquired(t0, id)
		w.holdIt()
		w.releasing(id)
		c.pool.Release(ch)
		w.released()
	}
	return nil
}

func (c *warrenPool) close(ctx context.Context) error {
	s := c.pool.Stats()
	d := s.Discarded
	if lost := d.BrokerClosed + d.Poisoned + d.Closed + d.Busy + d.ModeChanged + d.Connection; lost != 0 || s.Opened != int64(s.Max) {
		// Every lease must have reused the channels opened at the start.
		return fmt.Errorf("warren pool: %d channels opened and %+v discarded during the run, want %d and none", s.Opened, d, s.Max)
	}
	err := c.pool.Close(ctx)
	if cerr := c.client.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// corePool leases trivial resources from warren's internal/chanpool.
type corePool struct{ pool *chanpool.Pool[*res] }

func newCore(ctx context.Context, size int) (*corePool, error) {
	var o resOpener
	p := chanpool.New(chanpool.Config[*res]{Max: size, Open: o.open, Destroy: func(*res) {}})
	if err := p.Warm(ctx, size); err != nil {
		return nil, err
	}
	return &corePool{pool: p}, nil
}

func (c *corePool) serial(n int) error {
	ctx := context.Background()
	for range n {
		r, err := c.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		c.pool.Release(r)
	}
	return nil
}

func (c *corePool) loop(w *worker) error {
	ctx := context.Background()
	for !w.stop.Load() {
		t0 := w.begin()
		r, err := c.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		w.acquired(t0, r.id)
		w.holdIt()
		w.releasing(r.id)
		c.pool.Release(r)
		w.released()
	}
	return nil
}

func (c *corePool) close(ctx context.Context) error { return c.pool.Close(ctx) }

// puddlePool leases trivial resources from puddle v2.
type puddlePool struct{ pool *puddle.Pool[*res] }

func newPuddle(ctx context.Context, size int) (*puddlePool, error) {
	var o resOpener
	p, err := puddle.NewPool(&puddle.Config[*res]{
		Constructor: o.open,
		Destructor:  func(*res) {},
		MaxSize:     int32(size),
	})
	if err != nil {
		return nil, err
	}
	for range size {
		if err := p.CreateResource(ctx); err != nil {
			p.Close()
			return nil, err
		}
	}
	return &puddlePool{pool: p}, nil
}

func (c *puddlePool) serial(n int) error {
	ctx := context.Background()
	for range n {
		r, err := c.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		r.Release()
	}
	return nil
}

func (c *puddlePool) loop(w *worker) error {
	ctx := context.Background()
	for !w.stop.Load() {
		t0 := w.begin()
		r, err := c.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		id := r.Value().id
		w.acquired(t0, id)
		w.holdIt()
		w.releasing(id)
		r.Release()
		w.released()
	}
	return nil
}

func (c *puddlePool) close(context.Context) error {
	c.pool.Close()
	return nil
}

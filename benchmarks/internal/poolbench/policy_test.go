package poolbench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/warrenmq/warren/internal/chanpool"
)

// A model of warren.Pool's policy layer as of commit ce983ae (pool.go
// lease/Release, channel.suspect and channel.unusable, copied field for
// field) over the real chanpool core, with the changes suggested in
// BENCHMARKS.md switched on one at a time. "at-ce983ae" costs what
// BenchmarkPool/uncontended/warren costs at that commit; the differences
// between variants are what each change saves.
//
//	go test -run '^$' -bench 'PolicyModel|Pool/uncontended' -cpu 2 -count 1 ./internal/poolbench   # repeat, interleaved

type causeBox struct{ err error }

type mclient struct {
	dead     chan struct{} // closed when the connection has ended
	deadFlag atomic.Bool   // suggested: set just before dead is closed
}

type mchan struct {
	c           *mclient
	gen         atomic.Uint64
	mode        atomic.Int32
	busy        atomic.Bool
	closes      chan error
	brokerClose atomic.Pointer[causeBox]
	cause       atomic.Pointer[causeBox]
	pool        *policy
}

var errClosed = errors.New("closed")

// unusable is channel.unusable.
//
//go:noinline
func (ch *mchan) unusable(op string) error {
	if b := ch.cause.Load(); b != nil {
		return b.err
	}
	select {
	case e, ok := <-ch.closes:
		if !ok || e == nil {
			e = errClosed
		}
		ch.cause.CompareAndSwap(nil, &causeBox{e})
		return ch.cause.Load().err
	default:
		return nil
	}
}

// suspect is channel.suspect at ce983ae: two atomic loads and a
// non-blocking receive from the client's dead channel.
func (ch *mchan) suspect() bool {
	if ch.cause.Load() != nil || ch.brokerClose.Load() != nil {
		return true
	}
	select {
	case <-ch.c.dead:
		return true
	default:
		return false
	}
}

// suspectFlag is the suggestion: the same test with the client's dead
// channel mirrored in an atomic.Bool (a plain load on amd64 and arm64).
func (ch *mchan) suspectFlag() bool {
	return ch.cause.Load() != nil || ch.brokerClose.Load() != nil || ch.c.deadFlag.Load()
}

type mhandle struct {
	s   *mchan
	gen uint64
}

type policy struct {
	core     *chanpool.Pool[*mchan]
	deadFlag bool // suspectFlag instead of suspect
	mode     int32

	// slot, when used, is a lock-free fast path in front of the core; see
	// slotAcquire.
	slot    atomic.Pointer[mchan]
	waiting atomic.Int32
}

func newPolicy(b *testing.B, deadFlag bool) *policy {
	p := &policy{deadFlag: deadFlag}
	c := &mclient{dead: make(chan struct{})}
	p.core = chanpool.New(chanpool.Config[*mchan]{
		Max: 8,
		Open: func(context.Context) (*mchan, error) {
			ch := &mchan{c: c, closes: make(chan error, 1), pool: p}
			ch.gen.Store(1) // generation 0 is for channels outside pools
			return ch, nil
		},
		Destroy: func(*mchan) {},
	})
	if err := p.core.Warm(context.Background(), 8); err != nil {
		b.Fatal(err)
	}
	return p
}

func (p *policy) dead(st *mchan) bool {
	if p.deadFlag {
		return st.suspectFlag() && st.unusable("") != nil
	}
	return st.suspect() && st.unusable("") != nil
}

// acquire is Pool.Acquire + Pool.lease.
func (p *policy) acquire(ctx context.Context) (mhandle, error) {
	for {
		st, err := p.core.Acquire(ctx)
		if err != nil {
			return mhandle{}, err
		}
		if p.dead(st) {
			p.core.Discard(st)
			continue
		}
		return mhandle{s: st, gen: st.gen.Load()}, nil
	}
}

// release is Pool.Release.
func (p *policy) release(ch mhandle) {
	st := ch.s
	if st == nil || st.pool != p || !st.gen.CompareAndSwap(ch.gen, ch.gen+1) {
		return
	}
	if st.busy.Load() || p.dead(st) || st.mode.Load() != p.mode {
		p.core.Discard(st)
		return
	}
	p.core.Release(st)
}

// slotAcquire and slotRelease price a lock-free fast path in front of the
// core: one idle channel kept in an atomic slot, taken with Swap and put
// back with CompareAndSwap while nobody waits, so an uncontended
// Acquire+Release costs two atomic instructions instead of two mutex round
// trips. This is a cost estimate for the uncontended path only (waiting is
// left to the core and counted crudely), not a correct pool: a real one
// re-checks the slot after queueing a waiter and re-checks for waiters
// after filling the slot.
func (p *policy) slotAcquire(ctx context.Context) (mhandle, error) {
	for {
		st := p.slot.Swap(nil)
		if st == nil {
			p.waiting.Add(1)
			var err error
			st, err = p.core.Acquire(ctx)
			p.waiting.Add(-1)
			if err != nil {
				return mhandle{}, err
			}
		}
		if p.dead(st) {
			p.core.Discard(st)
			continue
		}
		return mhandle{s: st, gen: st.gen.Load()}, nil
	}
}

func (p *policy) slotRelease(ch mhandle) {
	st := ch.s
	if st == nil || st.pool != p || !st.gen.CompareAndSwap(ch.gen, ch.gen+1) {
		return
	}
	if st.busy.Load() || p.dead(st) || st.mode.Load() != p.mode {
		p.core.Discard(st)
		return
	}
	if p.waiting.Load() == 0 && p.slot.CompareAndSwap(nil, st) {
		return
	}
	p.core.Release(st)
}

func BenchmarkPolicyModel(b *testing.B) {
	ctx := context.Background()
	// The loops are written out so every call is direct, as in warren.
	b.Run("at-ce983ae", func(b *testing.B) {
		p := newPolicy(b, false)
		b.ReportAllocs()
		for b.Loop() {
			ch, err := p.acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.release(ch)
		}
	})
	b.Run("dead-flag", func(b *testing.B) {
		p := newPolicy(b, true)
		b.ReportAllocs()
		for b.Loop() {
			ch, err := p.acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.release(ch)
		}
	})
	b.Run("dead-flag+slot", func(b *testing.B) {
		p := newPolicy(b, true)
		b.ReportAllocs()
		for b.Loop() {
			ch, err := p.slotAcquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.slotRelease(ch)
		}
	})
	b.Run("core-only", func(b *testing.B) {
		p := newPolicy(b, false)
		b.ReportAllocs()
		for b.Loop() {
			st, err := p.core.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.core.Release(st)
		}
	})
}

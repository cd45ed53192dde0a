// Package chanpool is the concurrency core of warren's channel pool: a
// bounded, lazily filled, ctx-aware pool of resources with FIFO-fair
// waiters. It knows nothing about AMQP; warren's Pool adds the policy
// (channel health, modes, leases).
//
// Fairness: a released resource goes to the longest-waiting Acquire, handed
// over directly on a buffered channel, so no waiter can be overtaken by a
// newcomer while it waits. The fast path (an idle resource, nobody waiting)
// is one mutex acquisition and no allocation.
package chanpool

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"time"
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("chanpool: closed")

// ErrExhausted is returned by TryAcquire when every resource is in use and
// no more may be opened.
var ErrExhausted = errors.New("chanpool: exhausted")

// Config configures a Pool.
type Config[T any] struct {
	// Max is the most resources the pool holds open at once (> 0).
	Max int
	// Open opens a new resource. It is called without the pool's lock,
	// by the Acquire that needs it.
	Open func(ctx context.Context) (T, error)
	// Destroy disposes of a resource the pool no longer holds. It is called
	// without the pool's lock and may block; Pool.Close waits for it.
	Destroy func(T)
	// Drained, if set, is called once, without the pool's lock, when the
	// pool is closed and every resource has been destroyed (every Destroy
	// has returned): by whichever call finished the last of that work,
	// whether or not a Close is still waiting. Close calls waiting then
	// return after it.
	Drained func()
}

// Stats is a snapshot of the pool's counters.
type Stats struct {
	Max            int
	Open           int // open resources, leased or idle, plus opens in progress
	InUse          int
	Idle           int
	Waiting        int           // Acquire calls waiting now
	WaitCount      int64         // Acquire calls that had to wait
	WaitDuration   time.Duration // total time spent waiting
	AcquireTimeout int64         // waits ended by their context
	Opened         int64         // resources opened since the pool was made
	Destroyed      int64         // resources destroyed since the pool was made
}

// Pool is a bounded pool of resources of type T. It is safe for concurrent
// use.
type Pool[T any] struct {
	cfg Config[T]

	mu         sync.Mutex // guards following
	idle       []T        // stack: the most recently used on top
	open       int        // resources open or being opened
	inUse      int
	waiters    queue[T]
	failErr    error // set by Fail: every Acquire returns it
	closed     bool
	destroying int  // Destroy calls counted and not yet returned
	isDrained  bool // closed, nothing open, nothing being destroyed: drained is (about to be) closed
	stats      Stats

	// drained is closed once the pool is closed and its last resource is
	// destroyed. Made by New: Close's callers all wait on it.
	drained chan struct{}

	waiterPool sync.Pool // *waiter[T]
}

// grant is what a waiter receives: a resource, or permission to open one.
type grant[T any] struct {
	res  T
	open bool // no resource: the waiter may open one (a slot was freed)
	err  error
}

type waiter[T any] struct {
	c chan grant[T] // size 1: a grant is never blocked on
}

// New returns an empty pool.
func New[T any](cfg Config[T]) *Pool[T] {
	p := &Pool[T]{cfg: cfg, drained: make(chan struct{})}
	p.waiterPool.New = func() any { return &waiter[T]{c: make(chan grant[T], 1)} }
	return p
}

// Acquire returns an idle resource, opens one if fewer than Max are open,
// or waits for one in FIFO order until ctx ends.
func (p *Pool[T]) Acquire(ctx context.Context) (T, error) {
	var zero T
	p.mu.Lock()
	if err := p.unavailableLocked(); err != nil {
		p.mu.Unlock()
		return zero, err
	}
	if p.waiters.len() == 0 {
		if n := len(p.idle); n > 0 {
			r := p.idle[n-1]
			p.idle[n-1] = zero
			p.idle = p.idle[:n-1]
			p.inUse++
			p.mu.Unlock()
			return r, nil
		}
		if p.open < p.cfg.Max {
			p.open++
			p.inUse++
			p.mu.Unlock()
			return p.openNew(ctx)
		}
	}
	if err := ctx.Err(); err != nil {
		p.mu.Unlock()
		return zero, err
	}
	w := p.waiterPool.Get().(*waiter[T])
	p.waiters.push(w)
	p.stats.WaitCount++
	p.mu.Unlock()

	start := time.Now()
	select {
	case g := <-w.c:
		p.waiterPool.Put(w)
		p.addWait(start, false)
		return p.take(ctx, g)
	case <-ctx.Done():
	}
	p.mu.Lock()
	removed := p.waiters.remove(w)
	p.mu.Unlock()
	p.addWait(start, true)
	if !removed {
		// A grant was handed over as ctx ended: pass it on, never leak it.
		g := <-w.c
		p.pass(g)
	}
	p.waiterPool.Put(w)
	return zero, ctx.Err()
}

// take turns a grant into the caller's resource.
func (p *Pool[T]) take(ctx context.Context, g grant[T]) (T, error) {
	var zero T
	if g.err != nil {
		return zero, g.err
	}
	if g.open {
		return p.openNew(ctx)
	}
	return g.res, nil
}

// pass hands on a grant whose waiter gave up.
func (p *Pool[T]) pass(g grant[T]) {
	switch {
	case g.err != nil:
	case g.open:
		p.mu.Lock()
		p.freeSlotLocked()
		p.unlock()
	default:
		p.Release(g.res)
	}
}

// openNew opens a resource for a caller already counted in open and inUse.
func (p *Pool[T]) openNew(ctx context.Context) (T, error) {
	r, err := p.cfg.Open(ctx)
	p.mu.Lock()
	if err != nil {
		p.freeSlotLocked()
		p.unlock()
		var zero T
		return zero, err
	}
	p.stats.Opened++
	if p.closed {
		p.inUse--
		p.open--
		p.destroyingLocked(1)
		p.mu.Unlock()
		p.destroy(r)
		var zero T
		return zero, ErrClosed
	}
	p.mu.Unlock()
	return r, nil
}

// freeSlotLocked gives up a slot that held (or was to hold) a leased
// resource: the first waiter, if any, may open a new one.
func (p *Pool[T]) freeSlotLocked() {
	p.inUse--
	if w := p.waiters.pop(); w != nil {
		p.inUse++
		if err := p.unavailableLocked(); err != nil {
			p.inUse--
			p.open--
			w.c <- grant[T]{err: err}
			return
		}
		w.c <- grant[T]{open: true}
		return
	}
	p.open--
}

// TryAcquire is Acquire without waiting: ErrExhausted when nothing is idle
// and no more may be opened. It may still open a resource, bounded by ctx.
// (Its fast path repeats Acquire's on purpose: factored into a shared
// helper, the uncontended Acquire+Release measured ~4 ns slower.)
func (p *Pool[T]) TryAcquire(ctx context.Context) (T, error) {
	var zero T
	p.mu.Lock()
	if err := p.unavailableLocked(); err != nil {
		p.mu.Unlock()
		return zero, err
	}
	if p.waiters.len() == 0 {
		if n := len(p.idle); n > 0 {
			r := p.idle[n-1]
			p.idle[n-1] = zero
			p.idle = p.idle[:n-1]
			p.inUse++
			p.mu.Unlock()
			return r, nil
		}
		if p.open < p.cfg.Max {
			p.open++
			p.inUse++
			p.mu.Unlock()
			return p.openNew(ctx)
		}
	}
	p.mu.Unlock()
	return zero, ErrExhausted
}

// Release returns a healthy resource: to the longest waiter, else to the
// idle stack.
func (p *Pool[T]) Release(r T) {
	p.mu.Lock()
	if p.closed || p.failErr != nil {
		p.inUse--
		p.open--
		p.destroyingLocked(1)
		p.mu.Unlock()
		p.destroy(r)
		return
	}
	if w := p.waiters.pop(); w != nil {
		p.mu.Unlock()
		w.c <- grant[T]{res: r}
		// Let the waiter run now. Otherwise it runs only when this
		// goroutine next blocks, and the resource sits idle meanwhile
		// (puddle's issue #46: ~1 ms stalls when the releaser keeps
		// working after Release).
		runtime.Gosched()
		return
	}
	p.inUse--
	p.idle = append(p.idle, r)
	p.mu.Unlock()
}

// Discard destroys a leased resource instead of returning it; then its slot
// goes to the first waiter, who opens a replacement. The slot is freed only
// after Destroy returns, so no more than Max resources ever exist at once.
func (p *Pool[T]) Discard(r T) {
	p.mu.Lock()
	p.destroyingLocked(1)
	p.mu.Unlock()
	p.destroy(r)
	p.mu.Lock()
	p.freeSlotLocked()
	p.unlock()
}

// Warm opens resources until at least n are idle or open, bounded by Max.
func (p *Pool[T]) Warm(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		if err := p.unavailableLocked(); err != nil {
			p.mu.Unlock()
			return err
		}
		if p.open >= n || p.open >= p.cfg.Max {
			p.mu.Unlock()
			return nil
		}
		p.open++
		p.inUse++
		p.mu.Unlock()
		r, err := p.openNew(ctx)
		if err != nil {
			return err
		}
		p.Release(r)
	}
}

// Fail makes every current and future Acquire return err (the first
// Fail's, when called again).
// Idle resources are destroyed.
func (p *Pool[T]) Fail(err error) {
	p.mu.Lock()
	if p.failErr == nil { // the first reason stands
		p.failErr = err
	}
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.destroyingLocked(len(idle))
	ws := p.waiters.drain()
	p.mu.Unlock()
	for _, w := range ws {
		w.c <- grant[T]{err: err}
	}
	for _, r := range idle {
		p.destroy(r)
	}
}

// Close makes Acquire fail with ErrClosed, destroys idle resources (in
// parallel, each on a goroutine of its own), and waits up to ctx for leased
// ones to come back (they are destroyed on Release) and for every Destroy
// to finish. It returns nil once that is all done, or ctx's error if ctx
// ends first; the pool then finishes draining as the destroys end and the
// leases come back, whether or not anyone waits.
//
// Close is safe to call from any number of goroutines at once and any
// number of times: the first call starts the close, and every call waits
// for the same drain.
func (p *Pool[T]) Close(ctx context.Context) error {
	p.mu.Lock()
	var (
		idle []T
		ws   []*waiter[T]
	)
	if !p.closed {
		p.closed = true
		idle = p.idle
		p.idle = nil
		p.open -= len(idle)
		p.destroyingLocked(len(idle))
		ws = p.waiters.drain()
	}
	p.unlock() // drained already when nothing was open
	for _, w := range ws {
		w.c <- grant[T]{err: ErrClosed}
	}
	for _, r := range idle {
		// Not on this goroutine: a slow Destroy must not hold this
		// caller past its ctx, nor make the others wait for one after
		// another.
		go p.destroy(r)
	}
	select {
	case <-p.drained:
		return nil
	default:
	}
	select {
	case <-p.drained:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// destroyingLocked counts n resources about to be destroyed. It must be
// called in the same critical section that stops counting them as open,
// so that the pool never looks drained while a Destroy is still to come.
func (p *Pool[T]) destroyingLocked(n int) {
	p.destroying += n
	p.stats.Destroyed += int64(n)
}

// destroy disposes of r, already counted by destroyingLocked.
func (p *Pool[T]) destroy(r T) {
	if p.cfg.Destroy != nil {
		p.cfg.Destroy(r)
	}
	p.mu.Lock()
	p.destroying--
	p.unlock()
}

// unlock releases mu. If that ends the drain of a closed pool (nothing
// open, nothing being destroyed), it then runs the Drained hook and wakes
// every Close: once, by whichever call did the last of the work.
func (p *Pool[T]) unlock() {
	last := p.closed && !p.isDrained && p.open == 0 && p.destroying == 0
	if last {
		p.isDrained = true
	}
	p.mu.Unlock()
	if last {
		if p.cfg.Drained != nil {
			p.cfg.Drained()
		}
		close(p.drained)
	}
}

func (p *Pool[T]) unavailableLocked() error {
	if p.closed {
		return ErrClosed
	}
	return p.failErr
}

func (p *Pool[T]) addWait(start time.Time, timedOut bool) {
	d := time.Since(start)
	p.mu.Lock()
	p.stats.WaitDuration += d
	if timedOut {
		p.stats.AcquireTimeout++
	}
	p.mu.Unlock()
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool[T]) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Max = p.cfg.Max
	s.Open = p.open
	s.InUse = p.inUse
	s.Idle = len(p.idle)
	s.Waiting = p.waiters.len()
	return s
}

// queue is a FIFO of waiters. It is a slice used as a ring-free queue: pops
// advance head; the backing array is reused once the queue empties.
type queue[T any] struct {
	items []*waiter[T]
	head  int
}

func (q *queue[T]) len() int { return len(q.items) - q.head }

func (q *queue[T]) push(w *waiter[T]) { q.items = append(q.items, w) }

func (q *queue[T]) pop() *waiter[T] {
	if q.head == len(q.items) {
		return nil
	}
	w := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
	return w
}

// remove takes w out of the queue; false if it was already popped.
func (q *queue[T]) remove(w *waiter[T]) bool {
	for i := q.head; i < len(q.items); i++ {
		if q.items[i] == w {
			copy(q.items[i:], q.items[i+1:])
			q.items[len(q.items)-1] = nil
			q.items = q.items[:len(q.items)-1]
			if q.head == len(q.items) {
				q.items = q.items[:0]
				q.head = 0
			}
			return true
		}
	}
	return false
}

func (q *queue[T]) drain() []*waiter[T] {
	ws := append([]*waiter[T](nil), q.items[q.head:]...)
	clear(q.items)
	q.items = q.items[:0]
	q.head = 0
	return ws
}

// Limit lowers how many resources the pool holds open at once to n (at
// least 1, at most the Max it was made with): Acquire then waits for a
// release instead of opening more. Resources already open beyond n stay
// until they are destroyed.
func (p *Pool[T]) Limit(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg.Max = max(1, min(n, p.cfg.Max))
}

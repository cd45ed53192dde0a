package warren

import (
	"context"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// BatchHandler processes a batch of deliveries, in delivery order (see
// BatchOptions for how batches are made). Returning nil acks every
// delivery of the batch the handler did not settle itself; returning an
// error (or panicking) rejects them (basic.reject, requeued unless
// DeadLetterOnError). Deliveries the handler settled itself (Ack, Nack,
// Reject on the Delivery, before it returns) are left alone.
//
// So a partial failure is the handler rejecting the failed deliveries
// itself and returning nil: only those come back (see the example of
// Client.StartBatchConsumer).
//
// When the unsettled deliveries of a batch that returned nil are
// contiguous on the channel (no delivery of another batch left unsettled
// below them), warren acks them with one multiple basic.ack; otherwise one
// by one. ctx is as for Handler: it ends at once when the subscription is
// lost, and the batch's deliveries are then void.
type BatchHandler func(ctx context.Context, batch []*Delivery) error

// BatchOptions configure StartBatchConsumer: the ConsumeOptions, with
// Workers counting batch handlers that run at once (default 1: one batch
// at a time, in order), and the batch size and wait.
type BatchOptions struct {
	ConsumeOptions
	// Size is the most deliveries a batch holds (default 100, at most
	// 65535; a negative Size, like a negative MaxWait or Workers, is
	// refused with ErrInvalidArgument). Unless AutoAck is set, Prefetch
	// must be at least Size: a smaller one is refused with
	// ErrInvalidArgument before anything is sent, since the broker would
	// never send a full batch. The default Prefetch is Size × (Workers+1),
	// at most 65535: a full batch for each handler and the next one
	// filling.
	Size int
	// MaxWait bounds how long a batch waits to fill (default 100 ms): the
	// handler gets Size deliveries, or what arrived within MaxWait of the
	// batch's first delivery, whichever comes first. It should stay well
	// below AckTimeout and the broker's consumer_timeout.
	MaxWait time.Duration
}

const (
	defaultBatchSize    = 100
	defaultBatchMaxWait = 100 * time.Millisecond
)

// batchSpec is a batch consumer's handler and batch shape.
type batchSpec struct {
	h       BatchHandler
	size    int
	maxWait time.Duration
}

// StartBatchConsumer starts consuming queue like StartConsumer (same
// start, lifetime, Pause, Resume, Cancel, resubscription and Stats; see
// Consumer), handing the deliveries to h in batches of up to opts.Size
// (see BatchOptions and BatchHandler). Deliveries are batched in delivery
// order by one goroutine per subscription and handled by opts.Workers
// goroutines. At Cancel a batch no handler has started returns to the
// queue; a lost subscription voids the batches being handled.
func (c *Client) StartBatchConsumer(ctx context.Context, queue string, h BatchHandler, opts BatchOptions) (*Consumer, error) {
	const op = "basic.consume"
	if h == nil {
		return nil, fmt.Errorf("%w: %s: nil batch handler", ErrInvalidArgument, op)
	}
	if opts.Size == 0 {
		opts.Size = defaultBatchSize
	}
	if opts.MaxWait == 0 {
		opts.MaxWait = defaultBatchMaxWait
	}
	switch {
	case opts.Size < 0 || opts.Size > 65535:
		return nil, fmt.Errorf("%w: %s: batch Size %d outside 1..65535", ErrInvalidArgument, op, opts.Size)
	case opts.MaxWait < 0:
		return nil, fmt.Errorf("%w: %s: negative batch MaxWait", ErrInvalidArgument, op)
	case opts.Workers < 0:
		return nil, fmt.Errorf("%w: %s: negative Workers", ErrInvalidArgument, op)
	case !opts.AutoAck && opts.Prefetch > 0 && opts.Prefetch < opts.Size:
		return nil, fmt.Errorf("%w: %s: Prefetch %d below batch Size %d: the broker would never send a full batch", ErrInvalidArgument, op, opts.Prefetch, opts.Size)
	}
	if opts.Prefetch == 0 {
		opts.Prefetch = min(opts.Size*(max(opts.Workers, 1)+1), 65535)
	}
	spec := &batchSpec{h: h, size: opts.Size, maxWait: opts.MaxWait}
	return c.startConsumer(ctx, queue, opts.ConsumeOptions, true, func(k *Consumer) { k.batch = spec })
}

// batchBook is a subscription's outstanding batches: handed to a worker
// (or dropped at a shutdown, their deliveries left unacked) and not yet
// settled. A batch may ack with one multiple ack only when it is the
// earliest: nothing of another batch is unsettled below it.
type batchBook struct {
	mu     sync.Mutex
	firsts []uint64 // first delivery tag of each, ascending (batches are made in order)
}

func (b *batchBook) add(first uint64) {
	b.mu.Lock()
	b.firsts = append(b.firsts, first)
	b.mu.Unlock()
}

func (b *batchBook) earliest(first uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.firsts) > 0 && b.firsts[0] == first
}

func (b *batchBook) remove(first uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, f := range b.firsts {
		if f == first {
			b.firsts = append(b.firsts[:i], b.firsts[i+1:]...)
			return
		}
	}
}

// startBatchWorkers starts the round's batcher and batch workers.
func (cs *consumer) startBatchWorkers(r *round) {
	fl := cs.k.fl
	batches := make(chan []amqp.Delivery)
	fl.wg.Add(1)
	go func() {
		defer fl.wg.Done()
		defer close(batches)
		if cs.collect(r, batches) {
			r.end()
		}
	}()
	for i := 0; i < cs.opts.Workers; i++ {
		fl.wg.Add(1)
		go func() {
			defer fl.wg.Done()
			for b := range batches {
				select {
				case <-cs.stop:
					continue // taken as shutdown began: left unacked (and outstanding), it returns to the queue
				default:
				}
				fl.running.Add(1)
				cs.k.st.inFlight.Add(int64(len(b)))
				r.started[i].Store(monoNow())
				cs.handleBatch(b)
				r.started[i].Store(0)
				cs.lastSettle.Store(monoNow())
				cs.k.st.inFlight.Add(-int64(len(b)))
				fl.running.Add(-1)
			}
		}()
	}
}

// collect makes batches of the round's deliveries and hands them to the
// workers, until the deliveries end (it then returns true, after handing
// on what it held) or stop is closed.
func (cs *consumer) collect(r *round, out chan<- []amqp.Delivery) bool {
	spec := cs.k.batch
	var batch []amqp.Delivery
	var timer *time.Timer
	var timeout <-chan time.Time
	flush := func() bool {
		b := batch
		batch = nil
		if timer != nil {
			timer.Stop()
			timer, timeout = nil, nil
		}
		if !cs.opts.AutoAck {
			cs.batches.add(b[0].DeliveryTag) // in order, before any worker can see it
		}
		select {
		case out <- b:
			return true
		case <-cs.stop:
			return false // left unacked (and outstanding): it returns to the queue
		}
	}
	for {
		select {
		case <-cs.stop:
			return false
		case ad, ok := <-r.deliveries:
			if !ok {
				if len(batch) > 0 && !flush() {
					return false
				}
				return true
			}
			batch = append(batch, ad)
			if len(batch) == 1 {
				timer = time.NewTimer(spec.maxWait)
				timeout = timer.C
			}
			if len(batch) >= spec.size && !flush() {
				return false
			}
		case <-timeout:
			if !flush() {
				return false
			}
		}
	}
}

// handleBatch runs the batch handler and settles what it left unsettled.
func (cs *consumer) handleBatch(ads []amqp.Delivery) {
	ds := make([]*Delivery, len(ads))
	for i := range ads {
		ds[i] = cs.delivery(&ads[i])
	}
	ctx, err := cs.hctx, error(nil)
	if t := cs.c.opts.tracer; t != nil {
		var end func(error)
		ctx, end = t.startBatch(ctx, cs, ds)
		defer func() { end(err) }()
	}
	err = cs.callBatch(ctx, ds)
	if err != nil {
		cs.k.st.handlerErrors.Add(1)
	}
	if cs.opts.AutoAck {
		return
	}
	bg := ds[0].ownCtx()
	if err == nil {
		cs.ackBatch(ds)
	} else {
		for _, d := range ds {
			if d.settled.Load() == unsettled {
				_ = d.Reject(bg, !cs.opts.DeadLetterOnError)
			}
		}
	}
	for _, d := range ds {
		if d.settled.Load() != settled {
			// Still being settled by a goroutine the handler left behind,
			// or its settlement failed: the batch stays outstanding, so
			// that no later batch's multiple ack covers that delivery.
			return
		}
	}
	cs.batches.remove(ds[0].DeliveryTag)
}

// callBatch runs the batch handler, turning a panic into an error.
func (cs *consumer) callBatch(ctx context.Context, ds []*Delivery) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = cs.panicked(ds[0], v)
		}
	}()
	return cs.k.batch.h(ctx, ds)
}

// ackBatch acks the deliveries of a batch the handler left unsettled: with
// one multiple ack up to the highest of them that is contiguous (only
// settled deliveries of this batch between them, and no other batch
// outstanding below it), the rest one by one.
func (cs *consumer) ackBatch(ds []*Delivery) {
	bg := ds[0].ownCtx()
	if cs.batches.earliest(ds[0].DeliveryTag) {
		var mine []*Delivery
		for _, d := range ds {
			if d.settled.CompareAndSwap(unsettled, settling) {
				mine = append(mine, d)
				continue
			}
			if d.settled.Load() != settled {
				break // being settled by another goroutine: a multiple ack must stop below it
			}
		}
		if len(mine) > 1 {
			cs.mu.Lock()
			err := Channel{s: cs.st}.Ack(bg, mine[len(mine)-1].DeliveryTag, true)
			cs.mu.Unlock()
			state := unsettled
			if err == nil {
				state = settled
				cs.k.st.tally[tallyAck].Add(uint64(len(mine)))
			}
			for _, d := range mine {
				d.settled.Store(state)
			}
			if err != nil {
				return // the channel is gone: every delivery on it is void
			}
		} else {
			for _, d := range mine {
				d.settled.Store(unsettled)
			}
		}
	}
	for _, d := range ds {
		if d.settled.Load() == unsettled {
			_ = d.Ack(bg)
		}
	}
}

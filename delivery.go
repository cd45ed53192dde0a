package warren

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Delivery is a message received from the broker. Its fields are
// amqp091-go's; Ack, Nack and Reject go through the warren Channel it came
// from, serialised with that channel's other operations.
//
// Redelivered is true when the broker delivered the message before and it
// was not acknowledged (at-least-once delivery: handlers must tolerate
// seeing a message more than once).
type Delivery struct {
	amqp.Delivery
	ch      Channel
	lock    *sync.Mutex  // a consumer's: serialises settlements from its workers
	counted bool         // fetched by Get: counted in its channel's unsettled messages
	settled atomic.Int32 // unsettled, settling, settled or heldAck
	tally   *settleTally // a Consumer's settlement counters, or nil
	// tctx is the processing trace's ctx (without cancellation), the
	// parent of warren's own settlement's trace; nil when not traced.
	tctx context.Context
}

// settleTally counts a Consumer's settlements (see ConsumerStats), by
// kind.
type settleTally [3]atomic.Uint64

// Kinds of settlement, indexes into a settleTally.
const (
	tallyAck = iota
	tallyNack
	tallyReject
)

// count counts a settlement of kind when err says it was sent.
func (d *Delivery) count(kind int, err error) error {
	if err == nil && d.tally != nil {
		d.tally[kind].Add(1)
	}
	return err
}

// Settlement states of a Delivery.
const (
	unsettled int32 = iota
	settling        // a settlement is being sent
	settled         // its frame was handed to the socket
	// heldAck: its handler returned nil and warren holds its ack back, to
	// send it with others (ConsumeOptions.CoalesceAcks); settled as far as
	// anyone else can tell.
	heldAck
)

// DeliveryCount returns the quorum queue's x-delivery-count header: how
// many of the message's earlier deliveries failed (0 on the first delivery,
// and for messages that never passed through a quorum queue). With
// QueueOptions' DeliveryLimit, the message is dead-lettered or dropped
// once the count exceeds the limit; a handler can use it to give up on a
// poison message earlier.
//
// What counts as a failure depends on the broker: up to RabbitMQ 4.2 every
// return to the queue counts (Reject, Nack with requeue, a channel or
// consumer lost before the ack); from 4.3 only Reject does (and a lost
// consumer or channel), while Nack returns the message without counting
// it, as RabbitMQ's docs describe. warren's Consume rejects a message whose
// handler failed, so delivery limits work on every version. AcquiredCount
// counts every return.
func (d *Delivery) DeliveryCount() int { return headerCount(d.Headers["x-delivery-count"]) }

// AcquiredCount returns the quorum queue's x-acquired-count header
// (RabbitMQ 4.0 and later): how often the message was delivered before and
// returned to the queue for any reason, failures or not; 0 on the first
// delivery and on brokers that do not set it.
func (d *Delivery) AcquiredCount() int { return headerCount(d.Headers["x-acquired-count"]) }

// headerCount reads a counter header of any integer type; 0 otherwise.
func headerCount(v any) int {
	switch n := v.(type) {
	case int64:
		return int(n)
	case int32:
		return int(n)
	case int16:
		return int(n)
	case int8:
		return int(n)
	case uint8:
		return int(n)
	case uint16:
		return int(n)
	case uint32:
		return int(n)
	}
	return 0
}

// GetOptions are the settings of basic.get.
type GetOptions struct {
	AutoAck bool // the broker considers the message acknowledged once sent
}

// Get fetches one message from queue. ok is false when the queue is empty.
// Unless opts.AutoAck is set, the message must be settled with Ack, Nack or
// Reject on the returned Delivery.
func (ch Channel) Get(ctx context.Context, queue string, opts GetOptions) (d *Delivery, ok bool, err error) {
	const op = "basic.get"
	if ch.s != nil && ch.s.c.opts.tracer != nil {
		end := ch.s.c.opts.tracer.startReceive(ctx, ch.s.c, queue)
		defer func() { end(d, err) }()
	}
	if err := checkNames(op, "queue", queue); err != nil {
		return nil, false, err
	}
	var ad amqp.Delivery
	err = ch.call(ctx, op, func() (err error) {
		ad, ok, err = ch.s.ch.Get(queue, opts.AutoAck)
		return err
	})
	if err != nil {
		return nil, false, err // an abandoned call's goroutine may still write ad and ok
	}
	if !ok {
		return nil, false, nil
	}
	ad.Acknowledger = nil // settle through warren only
	d = &Delivery{Delivery: ad, ch: ch, counted: !opts.AutoAck}
	if d.counted {
		ch.s.unsettled.Add(1)
	}
	if opts.AutoAck {
		d.settled.Store(settled)
	}
	return d, true, nil
}

// Ack acknowledges the delivery.
func (d *Delivery) Ack(ctx context.Context) error {
	return d.count(tallyAck, d.settle(ctx, tallyAck, func() error { return d.ch.Ack(ctx, d.DeliveryTag, false) }))
}

// Nack negatively acknowledges the delivery; requeue puts it back on the
// queue, otherwise it is dropped or dead-lettered. On RabbitMQ 4.3 and
// later a Nack says the message was not processed, not that it failed: it
// does not raise a quorum queue's delivery count, so it never trips a
// DeliveryLimit. To report a failure, use Reject (see DeliveryCount).
func (d *Delivery) Nack(ctx context.Context, requeue bool) error {
	return d.count(tallyNack, d.settle(ctx, tallyNack, func() error { return d.ch.Nack(ctx, d.DeliveryTag, false, requeue) }))
}

// Reject rejects the delivery: processing it failed. requeue puts it back
// on the queue, otherwise it is dropped or dead-lettered. A rejected
// message's delivery count rises on every RabbitMQ version, so a quorum
// queue's DeliveryLimit dead-letters a message rejected too often.
func (d *Delivery) Reject(ctx context.Context, requeue bool) error {
	return d.count(tallyReject, d.settle(ctx, tallyReject, func() error { return d.ch.Reject(ctx, d.DeliveryTag, requeue) }))
}

// settle sends the settlement fn, of kind (tallyAck, tallyNack or
// tallyReject). The delivery counts as settled only once
// fn has handed its frame to the socket: an error from before the write
// (ctx, concurrent use, a closed or released channel, a bad argument)
// leaves it unsettled.
func (d *Delivery) settle(ctx context.Context, kind int, fn func() error) (err error) {
	if d.ch.s == nil {
		return fmt.Errorf("%w: delivery does not come from a warren Channel", ErrInvalidArgument)
	}
	if t := d.ch.s.c.opts.tracer; t != nil {
		end := t.startSettle(ctx, kind, d)
		defer func() { end(err) }()
	}
	if d.DeliveryTag <= d.ch.s.settledThrough.Load() {
		return fmt.Errorf("%w (delivery tag %d on channel %d, by a multiple ack or nack through the Channel)", ErrAlreadySettled, d.DeliveryTag, d.ch.ID())
	}
	if !d.settled.CompareAndSwap(unsettled, settling) {
		if d.settled.Load() == settling {
			return fmt.Errorf("%w: delivery tag %d on channel %d is being settled by another goroutine", ErrConcurrentUse, d.DeliveryTag, d.ch.ID())
		}
		return fmt.Errorf("%w (delivery tag %d on channel %d)", ErrAlreadySettled, d.DeliveryTag, d.ch.ID())
	}
	if d.lock != nil {
		d.lock.Lock()
		defer d.lock.Unlock()
	}
	err = fn()
	if err != nil && !outcomeUnknown(err) {
		// Nothing reached the socket (or the channel is gone, and with it
		// every delivery it carried): a retry is judged afresh.
		d.settled.Store(unsettled)
		released := errors.Is(err, ErrReleased)
		// A pooled channel released with this delivery unsettled was
		// discarded, not reused (see Pool.Release): the broker has the
		// message back.
		if (d.ch.s.cause.Load() != nil && !released) || (released && d.counted) {
			return fmt.Errorf("%w (delivery tag %d on channel %d): %w", ErrDeliveryVoid, d.DeliveryTag, d.ch.ID(), err)
		}
		return err
	}
	d.settled.Store(settled)
	st := d.ch.s
	if Mode(st.mode.Load()) == ModeTx {
		st.txSettle(d)
	} else if d.counted {
		st.unsettled.Add(-1)
	}
	return err
}

// outcomeUnknown reports whether err is an *OutcomeUnknownError. (A
// function of its own: the target errors.As writes to lives on the heap,
// and would be allocated on every settlement, failed or not.)
func outcomeUnknown(err error) bool {
	var unknown *OutcomeUnknownError
	return errors.As(err, &unknown)
}

// Ack acknowledges the delivery with tag, and with multiple every earlier
// unacknowledged one.
//
// A Delivery settled this way is not told so, except by multiple: after a
// multiple ack or nack, settling one of the Deliveries it covered returns
// ErrAlreadySettled. Settle each delivery one way, through its Delivery or
// through the Channel.
func (ch Channel) Ack(ctx context.Context, tag uint64, multiple bool) error {
	err := ch.send(ctx, "basic.ack", func() error { ch.s.markTx(); return ch.s.writeSettle(methodAck, tag, bit(multiple, 0)) })
	if err == nil && multiple {
		ch.s.settledUpTo(tag)
	}
	return err
}

// Methods writeSettle writes.
const (
	methodAck    = 80  // basic.ack
	methodReject = 90  // basic.reject
	methodNack   = 120 // basic.nack
)

// writeSettle writes basic.ack, basic.reject or basic.nack (method) for
// tag with its bits, as amqp091-go would, without its allocations. An error
// wrapping amqp.ErrClosed means nothing was written (see writeContent).
func (ch *channel) writeSettle(method uint16, tag uint64, bits byte) error {
	const payload = 4 + 8 + 1 // class and method, delivery tag, bits
	f := [frameHeaderLen + payload + 1]byte{frameMethodType, byte(ch.id >> 8), byte(ch.id), 0, 0, 0, payload,
		0, classBasic, byte(method >> 8), byte(method)}
	binary.BigEndian.PutUint64(f[11:19], tag)
	f[19] = bits
	f[20] = frameEndOctet
	return ch.writeContent(f[:], nil)
}

// bit returns 1<<n if on.
func bit(on bool, n uint) byte {
	if on {
		return 1 << n
	}
	return 0
}

// settledUpTo records that every delivery up to tag is settled.
func (ch *channel) settledUpTo(tag uint64) {
	for {
		cur := ch.settledThrough.Load()
		if tag <= cur || ch.settledThrough.CompareAndSwap(cur, tag) {
			return
		}
	}
}

// Nack negatively acknowledges the delivery with tag (and with multiple every
// earlier one); requeue puts them back on the queue.
func (ch Channel) Nack(ctx context.Context, tag uint64, multiple, requeue bool) error {
	err := ch.send(ctx, "basic.nack", func() error {
		ch.s.markTx()
		return ch.s.writeSettle(methodNack, tag, bit(multiple, 0)|bit(requeue, 1))
	})
	if err == nil && multiple {
		ch.s.settledUpTo(tag)
	}
	return err
}

// Reject rejects the delivery with tag; requeue puts it back on the queue.
func (ch Channel) Reject(ctx context.Context, tag uint64, requeue bool) error {
	return ch.send(ctx, "basic.reject", func() error { ch.s.markTx(); return ch.s.writeSettle(methodReject, tag, bit(requeue, 0)) })
}

// txSettle records a settlement made in the open transaction: it counts once
// committed, and a rollback makes the delivery unsettled again.
func (ch *channel) txSettle(d *Delivery) {
	ch.mu.Lock()
	ch.txDeliveries = append(ch.txDeliveries, d)
	ch.mu.Unlock()
	if d.counted {
		ch.txSettled.Add(1)
	}
}

// txEnd ends the open transaction's settlements: committed, they stand;
// rolled back, the broker forgot them and their deliveries are unsettled
// again.
func (ch *channel) txEnd(committed bool) {
	ch.mu.Lock()
	ds := ch.txDeliveries
	ch.txDeliveries = nil
	ch.mu.Unlock()
	if committed {
		ch.unsettled.Add(-ch.txSettled.Swap(0))
		return
	}
	ch.txSettled.Store(0)
	ch.settledThrough.Store(0) // a rolled-back multiple ack settled nothing
	for _, d := range ds {
		d.settled.Store(unsettled)
	}
}

// markTx records that a transaction on the channel has work to commit.
func (ch *channel) markTx() {
	if Mode(ch.mode.Load()) == ModeTx {
		ch.txDirty.Store(true)
	}
}

package warren

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// Tx is an AMQP transaction (tx.select) on a channel of its own: the
// publishes, acks, nacks and rejects made through it take effect together
// when Commit returns nil, and not at all after Rollback.
//
// Its semantics follow database/sql: after Commit or Rollback every method
// returns ErrTxDone, so `defer tx.Rollback(ctx)` is always safe. A Tx
// belongs to one goroutine, like a Channel.
//
// AMQP transactions are atomic per queue, not across queues, and a commit
// costs a round-trip (and an fsync for persistent messages): publisher
// confirms are the faster way to make publishing reliable. Transactions are
// the way to tie acks of consumed messages to publishes, e.g. moving a
// message from one queue to another.
type Tx struct {
	ch   Channel
	pool *Pool // the tx pool the channel is leased from; nil for Client.Begin
	done atomic.Bool
	// committed is set by a successful Commit (read by Tx helpers).
	committed atomic.Bool
	commitErr error // what Commit returned, if it failed
}

// Begin: see Client.Begin.
func (c *session) Begin(ctx context.Context) (*Tx, error) {
	st, err := c.openChannel(ctx)
	if err != nil {
		return nil, err
	}
	ch := Channel{s: st}
	if err := ch.SetMode(ctx, ModeTx); err != nil {
		_ = st.close(context.Background(), 0)
		return nil, err
	}
	return &Tx{ch: ch}, nil
}

// Tx: see Client.Tx.
func (c *session) Tx(ctx context.Context, fn func(*Tx) error) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	return tx.run(ctx, fn)
}

// Begin starts a transaction on a channel leased from p, which must have
// been made with Mode ModeTx. The channel goes back to the pool when the
// transaction ends cleanly; a channel that fetched messages it did not
// settle, or whose commit or rollback failed, is closed instead.
func (p *Pool) Begin(ctx context.Context) (*Tx, error) {
	if p.opts.Mode != ModeTx {
		return nil, fmt.Errorf("%w: Pool.Begin needs a pool made with Mode ModeTx (this one is %s)", ErrModeConflict, p.opts.Mode)
	}
	ch, err := p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &Tx{ch: ch, pool: p}, nil
}

// Tx runs fn in a transaction on a channel leased from p, as Client.Tx.
func (p *Pool) Tx(ctx context.Context, fn func(*Tx) error) error {
	tx, err := p.Begin(ctx)
	if err != nil {
		return err
	}
	return tx.run(ctx, fn)
}

func (tx *Tx) run(ctx context.Context, fn func(*Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			_ = tx.Rollback(ctx)
			panic(r)
		}
	}()
	if err := fn(tx); err != nil {
		if rbErr := tx.Rollback(ctx); rbErr != nil && !errors.Is(rbErr, ErrTxDone) {
			return errors.Join(err, rbErr)
		}
		return err
	}
	if tx.done.Load() {
		// fn ended the transaction itself.
		if tx.committed.Load() {
			return nil
		}
		if tx.commitErr != nil {
			return tx.commitErr // the function's Commit failed, or its outcome is unknown
		}
		return fmt.Errorf("%w: the function rolled the transaction back and returned nil", ErrTxDone)
	}
	if err := tx.Commit(ctx); err != nil {
		if !tx.done.Load() {
			// Not sent (ctx had ended): the transaction is still open.
			rctx, cancel := withDefaultTimeout(context.WithoutCancel(ctx), tx.ch.s.c.opts.closeTimeout)
			_ = tx.Rollback(rctx)
			cancel()
		}
		return err
	}
	return nil
}

// Channel returns the transaction's channel, for operations Tx does not wrap
// (declarations, Qos). Messages fetched with its Get belong to the
// transaction: their acks take effect on commit. The handle stops working
// when the transaction ends.
func (tx *Tx) Channel() Channel { return tx.ch }

func (tx *Tx) check() error {
	if tx.done.Load() {
		return ErrTxDone
	}
	return nil
}

// Publish publishes msg within the transaction: the broker routes it only
// on Commit.
func (tx *Tx) Publish(ctx context.Context, exchange, key string, msg Publishing) error {
	if err := tx.check(); err != nil {
		return err
	}
	return tx.ch.Publish(ctx, exchange, key, msg)
}

// PublishMessage publishes m within the transaction (Mandatory is refused:
// a transaction has no per-message answer to report a return with).
func (tx *Tx) PublishMessage(ctx context.Context, m Message) error {
	if err := tx.check(); err != nil {
		return err
	}
	return tx.ch.PublishMessage(ctx, m)
}

// Get fetches one message from queue on the transaction's channel. Acking
// it (Delivery.Ack) takes effect on Commit; after a Rollback the message
// stays unacknowledged and returns to the queue when the transaction's
// channel closes, which warren does when the transaction ends.
func (tx *Tx) Get(ctx context.Context, queue string, opts GetOptions) (*Delivery, bool, error) {
	if err := tx.check(); err != nil {
		return nil, false, err
	}
	return tx.ch.Get(ctx, queue, opts)
}

// Commit commits the transaction. nil means the broker committed it.
//
// If the channel or connection closes, or ctx ends, before the broker
// answers, nobody can know whether the commit happened: Commit returns an
// *OutcomeUnknownError (ErrOutcomeUnknown) wrapping the cause. A
// *ChannelError means the broker refused the transaction and discarded it.
// After Commit the transaction is done, whatever Commit returned, with one
// exception: when ctx had already ended (or another goroutine was using
// the channel), nothing is sent and the transaction stays open, to be
// committed again or rolled back.
func (tx *Tx) Commit(ctx context.Context) error {
	if tx == nil || tx.ch.s == nil {
		return fmt.Errorf("%w: Commit of a Tx not made by Begin", ErrInvalidArgument)
	}
	// A ctx already ended sends nothing and changes nothing: the
	// transaction stays open, for a retry or a Rollback.
	if err := ctx.Err(); err != nil {
		if tx.done.Load() {
			return ErrTxDone
		}
		return fmt.Errorf("warren: tx.commit not sent, the transaction is still open: %w", err)
	}
	if !tx.done.CompareAndSwap(false, true) {
		return ErrTxDone
	}
	// A channel that can no longer carry the commit means it did not
	// happen: the transaction is discarded with its channel.
	if err := tx.ch.Err(); err != nil {
		tx.ch.s.txEnd(false)
		tx.finish()
		tx.commitErr = fmt.Errorf("warren: tx.commit not sent, the transaction is discarded: %w", err)
		return tx.commitErr
	}
	err := tx.ch.call(ctx, "tx.commit", func() error { return tx.ch.s.ch.TxCommit() })
	if err == nil {
		tx.ch.s.txDirty.Store(false)
		tx.ch.s.txEnd(true)
		tx.committed.Store(true)
		tx.finish()
		return nil
	}
	if errors.Is(err, ErrConcurrentUse) || errors.Is(err, ErrReleased) ||
		(ctx.Err() != nil && errors.Is(err, ctx.Err()) && !errors.Is(err, ErrPoisoned)) {
		// Nothing was sent: another goroutine is inside an operation on
		// the transaction's channel, or ctx ended before the channel
		// took the commit (an RPC abandoned after sending is ErrPoisoned).
		// The transaction stays open.
		tx.done.Store(false)
		return err
	}
	if IsChannelLevel(err) && !errors.Is(err, ErrPoisoned) {
		tx.ch.s.txEnd(false) // the broker refused it: discarded
		tx.finish()
		tx.commitErr = err
		return err
	}
	tx.finish()
	tx.commitErr = &OutcomeUnknownError{ChannelID: tx.ch.ID(), Op: "tx.commit", Cause: err}
	return tx.commitErr
}

// Rollback discards the transaction's publishes and acks. It returns nil
// once the work is certainly discarded: on the broker's rollback-ok, or
// because the channel or connection ended first (the broker discards an
// uncommitted transaction when its channel closes). A ctx that ends first
// makes warren close the channel, which discards the work the same way.
// After Commit or Rollback it returns ErrTxDone.
func (tx *Tx) Rollback(ctx context.Context) error {
	if tx == nil || tx.ch.s == nil {
		return fmt.Errorf("%w: Rollback of a Tx not made by Begin", ErrInvalidArgument)
	}
	if !tx.done.CompareAndSwap(false, true) {
		return ErrTxDone
	}
	err := tx.ch.call(ctx, "tx.rollback", func() error { return tx.ch.s.ch.TxRollback() })
	if err == nil {
		tx.ch.s.txDirty.Store(false)
	}
	// Rolled back, or discarded with the channel that finish closes: the
	// settlements are void. Those messages stay unacknowledged on the
	// channel and their Deliveries are unsettled again, so the channel is
	// not reused (see Pool.Release).
	tx.ch.s.txEnd(false)
	tx.finish()
	return nil
}

// finish gives the channel back: to its pool (which keeps it only if the
// transaction left nothing behind), or closes a dedicated one.
func (tx *Tx) finish() {
	if tx.pool != nil {
		tx.pool.Release(tx.ch)
		return
	}
	// Close waits (bounded) for another goroutine's operation on the
	// transaction's channel, and then leaves the close to the background.
	_ = tx.ch.s.close(context.Background(), 0)
}

package warren

import (
	"context"
	"fmt"
)

// Mode is a channel's publishing mode. A channel starts in ModePlain and can
// be switched once, to ModeConfirm (confirm.select: the broker acks or nacks
// every publish) or to ModeTx (tx.select: publishes and acks take effect on
// commit). The switch is permanent, and the two cannot be mixed: RabbitMQ
// closes a channel with 406 PRECONDITION_FAILED when asked to.
type Mode int32

const (
	ModePlain Mode = iota
	ModeConfirm
	ModeTx
)

// String returns "plain", "confirm" or "tx".
func (m Mode) String() string {
	switch m {
	case ModePlain:
		return "plain"
	case ModeConfirm:
		return "confirm"
	case ModeTx:
		return "tx"
	}
	return fmt.Sprintf("Mode(%d)", int32(m))
}

// Mode returns the channel's current mode.
func (ch Channel) Mode() Mode {
	if ch.s == nil {
		return ModePlain
	}
	return Mode(ch.s.mode.Load())
}

// SetMode switches the channel to m: ModeConfirm sends confirm.select,
// ModeTx sends tx.select. Asking for the mode the channel already has does
// nothing. Asking a confirm channel for tx mode, a tx channel for confirm
// mode, or any channel for ModePlain once it has left it, returns
// ErrModeConflict without a round-trip to the broker.
func (ch Channel) SetMode(ctx context.Context, m Mode) error {
	if ch.s == nil {
		return errZeroChannel
	}
	cur := Mode(ch.s.mode.Load())
	switch {
	case m == cur:
		return nil
	case m != ModeConfirm && m != ModeTx:
		if m == ModePlain {
			return fmt.Errorf("%w: channel %d is in %s mode, which is permanent", ErrModeConflict, ch.s.id, cur)
		}
		return fmt.Errorf("%w: unknown mode %d", ErrInvalidArgument, int32(m))
	case cur != ModePlain:
		return fmt.Errorf("%w: channel %d is in %s mode; %s mode would make the broker close it (406)", ErrModeConflict, ch.s.id, cur, m)
	}
	if m == ModeTx {
		err := ch.call(ctx, "tx.select", func() error { return ch.s.ch.Tx() })
		if err == nil {
			ch.s.mode.Store(int32(ModeTx))
		}
		return err
	}
	// The listeners go in before confirm.select, so that no confirmation
	// arrives unheard; the drainer runs until the channel ends.
	var t *confirmTracker
	err := ch.call(ctx, "confirm.select", func() error {
		t = newConfirmTracker(ch.s)
		if !ch.s.c.goTracked(t.run) {
			return ErrClientClosed
		}
		return ch.s.ch.Confirm(false)
	})
	if err == nil {
		ch.s.confirm = t
		ch.s.mode.Store(int32(ModeConfirm))
	}
	return err
}

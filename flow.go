package warren

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// FlowPolicy says what a publish does while the broker has paused
// publishing (see ErrBlocked).
type FlowPolicy int

const (
	// FlowWait makes a publish wait until publishing resumes, bounded by
	// its ctx; a ctx that ends first returns its error together with
	// ErrBlocked, and nothing is sent. The default.
	FlowWait FlowPolicy = iota
	// FlowFail makes a publish return ErrBlocked at once.
	FlowFail
)

// String returns "wait" or "fail".
func (p FlowPolicy) String() string {
	switch p {
	case FlowWait:
		return "wait"
	case FlowFail:
		return "fail"
	}
	return fmt.Sprintf("FlowPolicy(%d)", int(p))
}

// gate is open (publishing allowed) or shut; waiters block while it is shut.
type gate struct {
	shut atomic.Bool // the fast path: one load per publish
	mu   sync.Mutex
	open chan struct{} // closed when the gate opens again; nil while open
}

// set shuts (paused) or opens the gate.
func (g *gate) set(paused bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case paused && g.open == nil:
		g.open = make(chan struct{})
		g.shut.Store(true)
	case !paused && g.open != nil:
		g.shut.Store(false)
		close(g.open)
		g.open = nil
	}
}

// opened returns a channel closed when the gate opens, or nil if it is open.
func (g *gate) opened() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == nil {
		return nil
	}
	return g.open
}

// FlowActive reports whether the broker lets this channel publish: false
// after channel.flow active=false until active=true. (RabbitMQ itself uses
// TCP back-pressure and connection.blocked instead; the protocol still
// requires clients to honour channel.flow.)
func (ch Channel) FlowActive() bool {
	return ch.s == nil || !ch.s.flow.shut.Load()
}

// waitPublish returns nil once the broker lets this channel publish, or why
// op cannot wait for it. It costs two atomic loads when nothing is paused.
func (ch *channel) waitPublish(ctx context.Context, op string) error {
	return ch.c.waitPublish(ctx, ch, op)
}

// paused reports whether publishing on ch (nil: a channel not chosen yet)
// is paused by the broker.
func (c *session) paused(ch *channel) bool {
	return c.blockGate.shut.Load() || (ch != nil && ch.flow.shut.Load())
}

// waitPublish waits while the connection is blocked or ch's flow is off
// (ch may be nil: only the connection counts), per the flow policy.
func (c *session) waitPublish(ctx context.Context, ch *channel, op string) error {
	for c.paused(ch) {
		why := "the connection is blocked (connection.blocked)"
		wait := c.blockGate.opened()
		if wait == nil && ch != nil {
			why = fmt.Sprintf("the flow of channel %d is off (channel.flow)", ch.id)
			wait = ch.flow.opened()
		}
		if wait == nil {
			continue // it opened meanwhile
		}
		var gone chan struct{}
		if ch != nil {
			gone = ch.gone
		}
		select {
		case <-gone:
			return nil // the channel is closing: the operation reports why
		default:
		}
		if c.opts.flowPolicy == FlowFail {
			return fmt.Errorf("%w: %s not sent: %s", ErrBlocked, op, why)
		}
		select {
		case <-gone:
			return nil
		case <-wait:
		case <-c.dead:
			return c.connError(op)
		case <-ctx.Done():
			return fmt.Errorf("warren: %s not sent: %s until its context ended: %w (%w)", op, why, ctx.Err(), ErrBlocked)
		}
	}
	return nil
}

// sawFlow applies a channel.flow read off the wire (on amqp091-go's reader
// goroutine; amqp091-go answers it with flow-ok).
func (c *session) sawFlow(id uint16, active bool) {
	c.mu.Lock()
	ch := c.channels[id]
	if ch == nil {
		if c.earlyFlow == nil {
			c.earlyFlow = make(map[uint16]bool)
		}
		c.earlyFlow[id] = active
	}
	c.mu.Unlock()
	if ch != nil {
		ch.flowDue.Add(1)
		ch.flowWant.Store(active)
		if !active {
			ch.flow.set(true) // stop now
		}
		// Resuming waits for amqp091-go's flow-ok to be written
		// (wroteFlowOK): it is sent without the channel's lock, and a
		// publish released earlier could split its frames.
	}
	c.opts.logger.Info("warren: broker set channel flow", "endpoint", c.endpoint, "channel", id, "active", active)
}

// wroteFlowOK opens the flow gate of channel id once the answers to every
// channel.flow read so far are written, if the last one said active.
func (c *session) wroteFlowOK(id uint16) {
	c.mu.Lock()
	ch := c.channels[id]
	c.mu.Unlock()
	if ch != nil && ch.flowDue.Add(-1) <= 0 {
		ch.flowDue.Store(0)
		if ch.flowWant.Load() {
			ch.flow.set(false)
		}
	}
}

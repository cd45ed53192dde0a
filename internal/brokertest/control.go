package brokertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// VersionEnv names the environment variable that picks the RabbitMQ version
// the tests run against, for example "3.10" or "4.3". When it is set (and
// AMQP_URL is not), [Find] asks the container provider for a broker of that
// version and for nothing else, and [Required] reports true: a version that
// was asked for and cannot be started is a failure, never a skip.
const VersionEnv = "WARREN_BROKER"

// WantedVersion returns the RabbitMQ version named by [VersionEnv], "" when
// it is not set.
func WantedVersion() string { return strings.TrimSpace(os.Getenv(VersionEnv)) }

// Controller controls the RabbitMQ node of a broker that this package did
// not start itself, such as one in a container. A container provider sets
// it as [Broker.Control] so that [Broker.Ctl], [Broker.StopApp],
// [Broker.StartApp], [Broker.Restart] and a [Cluster] made with
// [NewCluster] work on that broker as they do on a private node.
//
// Its methods may be called from several goroutines.
type Controller interface {
	// Ctl runs rabbitmqctl against the node with args and returns its
	// combined output; on failure the error includes the output.
	Ctl(ctx context.Context, args ...string) (string, error)
	// StopNode stops the node's Erlang VM gracefully (it closes client
	// connections with 320 CONNECTION_FORCED, as "rabbitmqctl stop" does),
	// forcibly if that takes too long, and waits for it to exit. The node's
	// name, data and AMQP address stay for StartNode.
	StopNode(ctx context.Context) error
	// KillNode kills the node's Erlang VM at once (SIGKILL), as a crash
	// would, and waits for it to exit.
	KillNode(ctx context.Context) error
	// StartNode starts a stopped or killed node again with the same name,
	// data and AMQP address. It need not wait for the AMQP listener.
	StartNode(ctx context.Context) error
	// NodeRunning reports whether the node's Erlang VM runs.
	NodeRunning(ctx context.Context) (bool, error)
}

// Pauser is a [Controller] that can freeze its node, as `docker pause`
// does: the node's sockets stay open but it answers nothing (heartbeats
// included) until Unpause.
type Pauser interface {
	Pause(ctx context.Context) error
	Unpause(ctx context.Context) error
}

// Partitioner is a [Controller] that can cut its node off from the other
// nodes of its cluster, as `docker network disconnect` does, and join it
// again.
type Partitioner interface {
	Disconnect(ctx context.Context) error
	Connect(ctx context.Context) error
}

// ErrUnsupported is returned by [Broker.Pause], [Cluster.Disconnect] and
// the like when the broker's controller cannot do that.
var ErrUnsupported = errors.New("brokertest: not supported by this broker")

// Controllable reports whether b's node can be controlled: it is a private
// node started by this package or a broker with a [Broker.Control].
func (b *Broker) Controllable() bool { return b.controller() != nil }

// controller returns what controls b's node, nil if nothing does.
func (b *Broker) controller() Controller {
	switch {
	case b == nil:
		return nil
	case b.node != nil:
		return b.node
	case b.Control != nil:
		return b.Control
	}
	return nil
}

// isStopped reports whether Stop has been called.
func (b *Broker) isStopped() bool {
	b.stopMu.Lock()
	defer b.stopMu.Unlock()
	return b.stopped
}

// Pause freezes the broker's node (see [Pauser]). It returns
// [ErrUnsupported] unless the broker's [Broker.Control] is a Pauser
// (a container).
func (b *Broker) Pause(ctx context.Context) error {
	p, ok := b.controller().(Pauser)
	if !ok {
		return fmt.Errorf("%w: pausing %s", ErrUnsupported, b)
	}
	return p.Pause(ctx)
}

// Unpause lets a node frozen by [Broker.Pause] run again.
func (b *Broker) Unpause(ctx context.Context) error {
	p, ok := b.controller().(Pauser)
	if !ok {
		return fmt.Errorf("%w: unpausing %s", ErrUnsupported, b)
	}
	return p.Unpause(ctx)
}

// waitAMQP waits until b's AMQP listener answers, ctx ends, or (for a
// private node) the node exits.
func (b *Broker) waitAMQP(ctx context.Context) error {
	if b.node != nil {
		return b.node.waitAMQP(ctx)
	}
	addr := b.Addr()
	for {
		err := probeAMQP(ctx, addr, time.Second)
		if err == nil {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("brokertest: waiting for AMQP on %s: %w (last error: %v)", addr, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// The private node's side of Controller.

func (n *node) Ctl(ctx context.Context, args ...string) (string, error) {
	if n.stopped.Load() {
		return "", fmt.Errorf("brokertest: node %s is stopped", n.name)
	}
	return n.run(ctx, args...)
}

func (n *node) StopNode(ctx context.Context) error { return n.halt(ctx) }

func (n *node) KillNode(context.Context) error { return n.kill() }

func (n *node) StartNode(ctx context.Context) error {
	start := time.Now()
	if err := n.launch(ctx); err != nil {
		n.kill()
		return err
	}
	n.booted = time.Since(start)
	return nil
}

func (n *node) NodeRunning(context.Context) (bool, error) { return n.done != nil && !n.exited(), nil }

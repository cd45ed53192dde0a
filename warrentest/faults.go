package warrentest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/warrenmq/warren/internal/brokertest"
)

// ErrConnectionNotFound is returned (wrapped) by [Broker.CloseConnection]
// when the broker lists no connection with the name asked for.
var ErrConnectionNotFound = errors.New("warrentest: no connection with that name")

// closeReason is the reason the broker gives, after 320 CONNECTION_FORCED,
// when CloseConnection closes a connection.
const closeReason = "closed by warrentest"

// ctl runs rabbitmqctl on the broker's node, wrapping ErrNotControllable.
func (b *Broker) ctl(ctx context.Context, args ...string) (string, error) {
	out, err := b.b.Ctl(ctx, args...)
	if errors.Is(err, brokertest.ErrNotPrivate) {
		return out, fmt.Errorf("%w: %s", ErrNotControllable, b)
	}
	return out, err
}

// Ctl runs rabbitmqctl with args against the broker's node and returns what
// it printed (for example Ctl(ctx, "list_queues", "name", "messages")). On
// a private node it runs the installation's rabbitmqctl with the node's
// Erlang cookie; in a container, rabbitmqctl inside the container. It
// returns [ErrNotControllable] for the broker at AMQP_URL, and an error
// that includes the output when rabbitmqctl fails. Each call starts an
// Erlang VM: it takes about a second.
func (b *Broker) Ctl(ctx context.Context, args ...string) (string, error) {
	return b.ctl(ctx, args...)
}

// CloseConnection makes the broker close every connection whose
// client-provided connection name is name (warren sets it with
// warren.WithName), as `rabbitmqctl close_connection` does: the client
// gets connection.close with 320 CONNECTION_FORCED and the reason
// "closed by warrentest". It returns an error wrapping
// [ErrConnectionNotFound] when the broker lists no such connection, and
// [ErrNotControllable] for the broker at AMQP_URL.
func (b *Broker) CloseConnection(ctx context.Context, name string) error {
	if name == "" {
		return fmt.Errorf("%w: an empty name", ErrConnectionNotFound)
	}
	out, err := b.ctl(ctx, "list_connections", "--quiet", "--no-table-headers", "pid", "client_properties")
	if err != nil {
		return err
	}
	pids := connectionPids(out, name)
	if len(pids) == 0 {
		return fmt.Errorf("%w: %q", ErrConnectionNotFound, name)
	}
	var errs []error
	for _, pid := range pids {
		if _, err := b.ctl(ctx, "close_connection", pid, closeReason); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// connectionPids returns the pids, from the output of
// `rabbitmqctl list_connections --quiet --no-table-headers pid
// client_properties`, of the connections named name. Lines that do not
// start with an Erlang pid (warnings) are ignored.
func connectionPids(out, name string) []string {
	// client_properties prints as an Erlang list of {key, type, value}
	// (3.x, 4.x: {"connection_name","name"} among the pairs rabbitmqctl
	// formats).
	want := `{"connection_name","` + name + `"}`
	var pids []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "<") {
			continue
		}
		pid, props, ok := strings.Cut(line, "\t")
		if ok && strings.Contains(props, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Block raises the memory alarm on the broker's node, as a node that has
// run out of memory does: the broker stops reading from every connection
// that publishes, and sends it connection.blocked (a connection is blocked
// at its next publish; connections that only consume carry on). Publishers
// stay blocked until [Broker.Unblock], which a test must call (or restart
// the broker) before it ends, since the broker is shared. Block returns
// [ErrNotControllable] for the broker at AMQP_URL.
//
// The alarm is set directly (rabbit_alarm:set_alarm), so the node's memory
// high watermark is left as it was; this works on RabbitMQ 3.x and 4.x.
func (b *Broker) Block(ctx context.Context) error {
	_, err := b.ctl(ctx, "eval", "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []}).")
	return err
}

// Unblock clears the memory alarm [Broker.Block] raised: the broker reads
// from its blocked connections again and sends them connection.unblocked.
// Unblock of a broker that is not blocked does nothing.
func (b *Broker) Unblock(ctx context.Context) error {
	_, err := b.ctl(ctx, "eval", "rabbit_alarm:clear_alarm({resource_limit, memory, node()}).")
	return err
}

// Restart restarts RabbitMQ on the broker's node (`rabbitmqctl stop_app`,
// then `start_app`) and returns once its AMQP listener answers again: every
// client connection is closed, with 320 CONNECTION_FORCED (or, for a client
// whose write crosses the broker's close, a reset socket), non-durable
// queues and their messages are gone, durable queues and their persistent
// messages remain. It clears an alarm raised by [Broker.Block]. ctx bounds
// the whole restart (a few seconds). It returns [ErrNotControllable] for
// the broker at AMQP_URL.
func (b *Broker) Restart(ctx context.Context) error {
	err := b.b.Restart(ctx)
	if errors.Is(err, brokertest.ErrNotPrivate) {
		return fmt.Errorf("%w: %s", ErrNotControllable, b)
	}
	return err
}

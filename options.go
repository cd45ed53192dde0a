package warren

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Option configures a Client. Options are applied in order by Dial; an
// invalid value makes Dial return an error wrapping ErrInvalidArgument.
type Option func(*options) error

type options struct {
	tls          *tls.Config   // nil: amqps:// uses a default config with ServerName from the URL
	heartbeat    time.Duration // proposed to the broker
	channelMax   uint16        // 0: accept the broker's
	frameSize    int           // 0: 128 KiB (RabbitMQ's default)
	name         string        // client-provided connection name
	logger       *slog.Logger  // never nil after defaults
	closeTimeout time.Duration // bound on Close when its ctx has no deadline
	flowPolicy   FlowPolicy    // what publishes do while the broker pauses publishing
	metrics      MetricsHook   // per-event figures, every field optional
	tracer       *tracing      // nil: nothing traced (see WithTracer)
	reconnect    *ReconnectPolicy
	onState      []func(StateEvent)
	topology     func(context.Context, Channel) error
	order        EndpointOrder       // DialCluster: the order endpoints are tried in
	counters     *counters           // shared by a Client's connections; set by dialClient
	provider     CredentialsProvider // WithCredentials; nil: the URL's (or UpdateSecret's)
	refresh      *RefreshPolicy      // WithCredentialRefresh
	secret       *secretCell         // the last secret UpdateSecret set; one per Client (defaultOptions)
}

const (
	defaultHeartbeat    = 10 * time.Second
	defaultFrameSize    = 128 * 1024
	defaultCloseTimeout = 10 * time.Second
)

func defaultOptions() options {
	return options{
		heartbeat:    defaultHeartbeat,
		frameSize:    defaultFrameSize,
		logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		closeTimeout: defaultCloseTimeout,
		secret:       new(secretCell),
	}
}

// WithTLS sets the TLS configuration used for amqps:// URLs. Without it an
// amqps:// URL gets a default configuration (TLS 1.2 or newer, ServerName
// from the URL). The config is cloned; ServerName is filled from the URL
// when empty.
//
// TLS is chosen by the URL's scheme, not by this option: WithTLS with an
// amqp:// URL (for Dial, or for any endpoint of DialCluster) is refused
// before anything is dialled, with an error wrapping ErrInvalidArgument
// that says to use amqps://, rather than connecting in plaintext and
// sending the password in the clear.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) error {
		if cfg == nil {
			return fmt.Errorf("%w: WithTLS: nil *tls.Config", ErrInvalidArgument)
		}
		o.tls = cfg.Clone()
		return nil
	}
}

// WithHeartbeat sets the heartbeat interval warren proposes (default 10 s;
// the broker and client settle on the lower value). warren sends a
// heartbeat every half interval and declares the peer dead after 1.5
// intervals without a byte from it. The interval must be at least one
// second (AMQP's resolution). A heartbeat=N query parameter in the URL
// takes precedence.
func WithHeartbeat(d time.Duration) Option {
	return func(o *options) error {
		if d < time.Second {
			return fmt.Errorf("%w: WithHeartbeat: %v is below AMQP's one-second resolution", ErrInvalidArgument, d)
		}
		o.heartbeat = d
		return nil
	}
}

// WithChannelMax requests a channel_max lower than the broker's (RabbitMQ's
// default is 2047). The negotiated value is Client.ChannelMax. Zero accepts
// the broker's value.
func WithChannelMax(n uint16) Option {
	return func(o *options) error {
		o.channelMax = n
		return nil
	}
}

// WithFrameSize requests a maximum frame size in bytes (default 131072,
// RabbitMQ's default; the AMQP minimum is 4096).
func WithFrameSize(n int) Option {
	return func(o *options) error {
		if n < 4096 {
			return fmt.Errorf("%w: WithFrameSize: %d is below the AMQP minimum of 4096", ErrInvalidArgument, n)
		}
		o.frameSize = n
		return nil
	}
}

// WithName sets the client-provided connection name that RabbitMQ shows in
// its management UI and in `rabbitmqctl list_connections client_properties`.
func WithName(name string) Option {
	return func(o *options) error {
		o.name = name
		return nil
	}
}

// WithLogger sets the logger for events warren handles itself (connection
// lost, a slow stray close-ok). Errors that warren returns to a caller are
// never also logged. The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return fmt.Errorf("%w: WithLogger: nil *slog.Logger", ErrInvalidArgument)
		}
		o.logger = l
		return nil
	}
}

// WithCloseTimeout bounds Client.Close and Channel.Close when their context
// has no deadline (default 10 s), so that a broker that stopped answering
// (a memory alarm, a dead network) cannot make Close hang.
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithCloseTimeout: %v is not positive", ErrInvalidArgument, d)
		}
		o.closeTimeout = d
		return nil
	}
}

// WithEndpointOrder sets the order in which DialCluster's endpoints are
// tried; the default is ShuffleEndpoints.
func WithEndpointOrder(order EndpointOrder) Option {
	return func(o *options) error {
		if order != ShuffleEndpoints && order != EndpointsInOrder {
			return fmt.Errorf("%w: WithEndpointOrder: unknown order %d", ErrInvalidArgument, int(order))
		}
		o.order = order
		return nil
	}
}

// WithFlowPolicy sets what publishes do while the broker has paused
// publishing (default FlowWait). Without it, a publish on a blocked
// connection would sit in a socket write that nothing can interrupt short
// of closing the connection.
func WithFlowPolicy(p FlowPolicy) Option {
	return func(o *options) error {
		if p != FlowWait && p != FlowFail {
			return fmt.Errorf("%w: WithFlowPolicy: unknown policy %d", ErrInvalidArgument, int(p))
		}
		o.flowPolicy = p
		return nil
	}
}

// WithMetrics installs hook (see MetricsHook).
func WithMetrics(hook MetricsHook) Option {
	return func(o *options) error {
		o.metrics = hook
		return nil
	}
}

// WithReconnect makes the Client reconnect when its connection is lost,
// per p. warren owns reconnection: amqp091-go's own recovery stays off (see
// docs/reconnection.md).
//
// What carries on across a reconnect:
//
//   - the Client: Channel, NewPool, Begin... work on the new connection;
//     Client.Channel during a reconnect waits for it (bounded by its ctx);
//   - Pools (made with Client.NewPool): dead channels are discarded as they
//     are leased or released, new ones open on the new connection, and an
//     Acquire during the reconnect waits for it (bounded by its ctx);
//   - Publishers: messages sent before the loss resolve outcome unknown;
//     messages not yet sent wait for the new connection (bounded by their
//     caller's ctx) and go out on it;
//   - Client.Consume subscribes again on the new connection; its unacked
//     messages were requeued by the broker and come again (Redelivered).
//
// What does not: Channels (and Txs) of the lost connection keep returning
// its *ConnectionError; nothing silently moves to the new connection, so no
// channel error is hidden and no transaction half-moves. Topology is
// redeclared on each new connection only with WithTopology (or by the
// application after StateReconnected); durable topology survives anyway.
// Close stops reconnecting.
func WithReconnect(p ReconnectPolicy) Option {
	return func(o *options) error {
		if p.MinBackoff < 0 || p.MaxBackoff < 0 || p.MaxAttempts < 0 || p.DialTimeout < 0 || p.StableAfter < 0 {
			return fmt.Errorf("%w: WithReconnect: negative value in %+v", ErrInvalidArgument, p)
		}
		if p.MinBackoff == 0 {
			p.MinBackoff = 100 * time.Millisecond
		}
		if p.MaxBackoff == 0 {
			p.MaxBackoff = 30 * time.Second
		}
		if p.MaxBackoff < p.MinBackoff {
			return fmt.Errorf("%w: WithReconnect: MaxBackoff %v below MinBackoff %v", ErrInvalidArgument, p.MaxBackoff, p.MinBackoff)
		}
		if p.DialTimeout == 0 {
			p.DialTimeout = defaultDialTimeout
		}
		if p.StableAfter == 0 {
			p.StableAfter = defaultStableAfter
		}
		o.reconnect = &p
		return nil
	}
}

// WithTopology declares the application's topology (exchanges, queues,
// bindings) with fn on every connection: once in Dial, which fails if fn
// does, and again after every reconnect, before the new connection is put
// to use (pools, Publishers and consumers wait for it). A failure after a
// reconnect does not stop the Client: it is reported in the
// StateReconnected event's Err. fn gets a plain channel of its own, closed
// afterwards, and a ctx bounded by the reconnect policy's DialTimeout (30 s
// without one).
func WithTopology(fn func(ctx context.Context, ch Channel) error) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithTopology: nil function", ErrInvalidArgument)
		}
		o.topology = fn
		return nil
	}
}

// WithStateCallback calls fn for every state change, in order, on one
// goroutine of warren's (never on amqp091-go's frame reader, so a slow fn
// delays only later callbacks). StateClosed is the last call.
//
// Callbacks compose: given several times, every fn is called for every
// event, in the order the options were given (a metrics hook and a logger
// can both listen).
func WithStateCallback(fn func(StateEvent)) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithStateCallback: nil function", ErrInvalidArgument)
		}
		o.onState = append(o.onState, fn)
		return nil
	}
}

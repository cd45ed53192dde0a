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
	reconnect    *ReconnectPolicy
	onState      []func(StateEvent)
	topology     func(context.Context, Channel) error
	order        EndpointOrder // DialCluster: the order endpoints are tried in
	counters     *counters     // shared by a Client's connections; set by dialClient
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

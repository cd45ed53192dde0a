package warren

// Dialing: URL parsing and checks, TLS, SASL, the AMQP handshake, and the
// redaction that keeps passwords out of every string warren makes.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/wire"
)

// dial opens a session with options o; see Dial.
func dial(ctx context.Context, rawURL string, o options) (*session, error) {
	uri, err := amqp.ParseURI(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: dial: invalid AMQP URL: %v", ErrInvalidArgument, urlError(err))
	}
	if err := urlParams(rawURL, &o); err != nil {
		return nil, err
	}
	sasl, err := saslFor(uri)
	if err != nil {
		return nil, err
	}
	if o.counters == nil {
		o.counters = new(counters)
	}
	c := &session{
		opts:      o,
		cnt:       o.counters,
		endpoint:  redact(uri),
		channels:  make(map[uint16]*channel),
		pools:     make(poolSet),
		dead:      make(chan struct{}),
		closeDone: make(chan struct{}),
	}
	if err := c.connect(ctx, uri, sasl); err != nil {
		return nil, fmt.Errorf("warren: dial %s: %w", c.endpoint, err)
	}
	c.channelMax = c.conn.Config.ChannelMax
	trackers := make([]atomic.Pointer[confirmTracker], int(c.channelMax)+1)
	if c.channelMax == 0 {
		trackers = make([]atomic.Pointer[confirmTracker], 1<<16)
	}
	c.confirmers.Store(&trackers)

	// Buffered listeners registered before anything can close the
	// connection: amqp091-go delivers into them without blocking its reader.
	closes := c.conn.NotifyClose(make(chan *amqp.Error, 1))
	blocks := c.conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	c.wg.Add(2)
	go c.watch(closes, blocks)
	go c.stallLoop()

	c.opts.logger.Info("warren: connected", "endpoint", c.endpoint, "channel_max", c.channelMax,
		"frame_max", c.conn.Config.FrameSize, "heartbeat", c.conn.Config.Heartbeat)
	return c, nil
}

// connect dials, does TLS if asked, and runs the AMQP handshake under ctx.
func (c *session) connect(ctx context.Context, uri amqp.URI, sasl []amqp.Authentication) error {
	addr := net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	var conn net.Conn = raw
	if uri.Scheme == "amqps" {
		cfg, err := c.tlsConfig(uri)
		if err != nil {
			raw.Close()
			return err
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	c.wire = wire.New(conn, c.sawClose)
	c.wire.SetConfirmHooks(c.sawConfirm, c.sawReturn, c.sawReturnDropped)
	c.wire.SetFlowHook(c.sawFlow, c.wroteFlowOK)

	// Cancelling ctx during the handshake fails the pending read or write.
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	props := amqp.NewConnectionProperties()
	props["product"] = "warren (amqp091-go)"
	props["version"] = Version
	if c.opts.name != "" {
		props["connection_name"] = c.opts.name
	}
	channelMax := c.opts.channelMax
	if channelMax == 0 {
		channelMax = uri.ChannelMax
	}
	conn2, err := amqp.Open(c.wire, amqp.Config{
		SASL:       sasl,
		Vhost:      uri.Vhost,
		ChannelMax: channelMax,
		FrameSize:  c.opts.frameSize,
		Heartbeat:  c.opts.heartbeat,
		Properties: props,
		Locale:     "en_US",
	})
	if !stop() {
		// ctx ended at some point during the handshake; even if it
		// completed, the socket now carries a deadline in the past.
		if conn2 != nil {
			_ = conn2.Close()
		}
		raw.Close()
		return ctx.Err()
	}
	if err != nil {
		raw.Close()
		var ae *amqp.Error
		switch {
		case errors.Is(err, amqp.ErrCredentials), errors.Is(err, amqp.ErrSASL):
			// RabbitMQ closes the socket (after a 3 s pause) instead of
			// sending connection.close, because amqp091-go does not offer
			// authentication_failure_close: the refusal is still the broker's.
			return &ConnectionError{Code: CodeAccessRefused, Server: true, Op: "handshake",
				Reason: "ACCESS_REFUSED - login refused: " + reasonOf(err)}
		case errors.Is(err, amqp.ErrVhost):
			return &ConnectionError{Code: CodeNotAllowed, Server: true, Op: "handshake",
				Reason: "NOT_ALLOWED - access to the virtual host refused: " + reasonOf(err)}
		case errors.As(err, &ae):
			return connectionCause("handshake", ae)
		}
		return err
	}
	c.conn = conn2
	if hb := conn2.Config.Heartbeat; hb > 0 {
		// amqp091-go v1.16 clears the read deadline when the handshake
		// completes, after its heartbeater may already have set one: a
		// broker silent from then on would never be noticed. Set the
		// deadline the heartbeater keeps (three half-intervals); every
		// frame read moves it on.
		_ = c.wire.SetReadDeadline(time.Now().Add(3 * hb / 2))
	}
	return nil
}

// reasonOf returns the reason of an *amqp.Error, or the error's text.
func reasonOf(err error) string {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Reason
	}
	return err.Error()
}

func (c *session) tlsConfig(uri amqp.URI) (*tls.Config, error) {
	cfg := c.opts.tls
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: uri.ServerName}
		if uri.CACertFile != "" {
			pem, err := os.ReadFile(uri.CACertFile)
			if err != nil {
				return nil, fmt.Errorf("read cacertfile: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: cacertfile holds no PEM certificate", ErrInvalidArgument)
			}
		}
		if uri.CertFile != "" && uri.KeyFile != "" {
			cert, err := tls.LoadX509KeyPair(uri.CertFile, uri.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("load client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
	} else {
		cfg = cfg.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = uri.Host
	}
	return cfg, nil
}

func saslFor(uri amqp.URI) ([]amqp.Authentication, error) {
	if len(uri.AuthMechanism) == 0 {
		return []amqp.Authentication{uri.PlainAuth()}, nil
	}
	var out []amqp.Authentication
	for _, m := range uri.AuthMechanism {
		switch strings.ToUpper(m) {
		case "PLAIN":
			out = append(out, uri.PlainAuth())
		case "AMQPLAIN":
			out = append(out, uri.AMQPlainAuth())
		case "EXTERNAL":
			out = append(out, &amqp.ExternalAuth{})
		default:
			return nil, fmt.Errorf("%w: dial: unsupported auth_mechanism %q", ErrInvalidArgument, m)
		}
	}
	return out, nil
}

// urlParams applies the URL query parameters amqp091-go parses into
// unexported fields: heartbeat (seconds) overrides WithHeartbeat.
func urlParams(rawURL string, o *options) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("%w: dial: invalid AMQP URL: %v", ErrInvalidArgument, urlError(err))
	}
	if hb := u.Query().Get("heartbeat"); hb != "" {
		n, err := strconv.Atoi(hb)
		if err != nil || n < 1 {
			return fmt.Errorf("%w: dial: URL parameter heartbeat=%q is not a positive number of seconds", ErrInvalidArgument, hb)
		}
		o.heartbeat = time.Duration(n) * time.Second
	}
	return nil
}

// urlError strips the URL (which may hold a password) from a parse error.
func urlError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact renders uri without its password.
func redact(uri amqp.URI) string {
	u := url.URL{Scheme: uri.Scheme, Host: net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))}
	if uri.Username != "" {
		u.User = url.User(uri.Username)
	}
	s := u.String() + "/" + url.PathEscape(uri.Vhost)
	return s
}

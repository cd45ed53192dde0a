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
	"unicode"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/internal/wire"
)

// dial opens a session with options o; see Dial.
func dial(ctx context.Context, rawURL string, o options) (*session, error) {
	uri, _, err := checkURL("dial", rawURL, &o)
	if err != nil {
		return nil, err
	}
	life, err := applyCredentials(ctx, &uri, &o)
	if err != nil {
		return nil, fmt.Errorf("warren: dial %s: %w", redact(uri), err)
	}
	// With the provider's or UpdateSecret's credentials (checkURL has
	// checked the mechanisms).
	sasl, err := saslFor("dial", uri)
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
		dead:      make(chan struct{}),
		closeDone: make(chan struct{}),
	}
	if life != nil {
		c.cred.Store(life)
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

func saslFor(op string, uri amqp.URI) ([]amqp.Authentication, error) {
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
			return nil, fmt.Errorf("%w: %s: unsupported auth_mechanism %q", ErrInvalidArgument, op, m)
		}
	}
	return out, nil
}

// checkURL parses rawURL and checks everything about it that can be
// checked without dialling, with options o: the URL's syntax, its query
// parameters (heartbeat=N is applied to o), its SASL mechanisms, and that
// WithTLS does not come with an amqp:// URL. Dial and every endpoint of
// DialCluster go through it before anything is dialled. Its errors wrap
// ErrInvalidArgument and never hold any part of the URL.
func checkURL(op, rawURL string, o *options) (amqp.URI, []amqp.Authentication, error) {
	uri, u, err := parseURL(op, rawURL)
	if err != nil {
		return amqp.URI{}, nil, err
	}
	if o.tls != nil && uri.Scheme != "amqps" {
		return amqp.URI{}, nil, fmt.Errorf("%w: %s: WithTLS is set but the URL is amqp://, which does not use TLS: "+
			"use an amqps:// URL", ErrInvalidArgument, op)
	}
	if err := urlParams(op, u, o); err != nil {
		return amqp.URI{}, nil, err
	}
	if err := checkCredentialOptions(op, o); err != nil {
		return amqp.URI{}, nil, err
	}
	// The vhost is a short string of connection.open: RabbitMQ answers a
	// bad one by closing the connection during the handshake.
	if p := shortstrProblem(uri.Vhost); p != "" {
		return amqp.URI{}, nil, fmt.Errorf("%w: %s: the URL's vhost %s", ErrInvalidArgument, op, p)
	}
	sasl, err := saslFor(op, uri)
	if err != nil {
		return amqp.URI{}, nil, err
	}
	return uri, sasl, nil
}

// parseURL parses rawURL as amqp091-go does (amqp.ParseURI) and as
// net/url does. It is the only place warren parses a URL, and badURL makes
// all its errors. Besides what the parsers refuse, it refuses:
//
//   - an '@' after the host: the shape of a user or password holding an
//     unescaped '/', '?' or '#'. net/url then reads the rest of the
//     userinfo as the port, the vhost, the query or the fragment, and
//     warren would dial, and name in its errors, whatever that made of
//     the password (the port, when the password is all digits before the
//     '/');
//   - a URL that does not start with amqp:// or amqps://;
//   - a port outside 1–65535, which amqp091-go would only find out when
//     dialling.
func parseURL(op, rawURL string) (amqp.URI, *url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return amqp.URI{}, nil, badURL(op, rawURL, err)
	}
	uri, err := amqp.ParseURI(rawURL)
	switch {
	case err != nil:
	case atAfterHost(rawURL), u.Opaque != "":
		err = errURLShape
	case uri.Port < 1 || uri.Port > 65535:
		err = errPortRange
	default:
		return uri, u, nil
	}
	return amqp.URI{}, nil, badURL(op, rawURL, err)
}

var (
	errURLShape  = errors.New("url shape")  // parseURL's own refusal; badURL says why
	errPortRange = errors.New("port range") // parseURL's own refusal
)

const errHeartbeatParam = "URL parameter heartbeat is not a whole number of seconds from 1 to 65535"

// badURL turns the failure to parse rawURL (err: from net/url or
// amqp.ParseURI, or parseURL's own) into an error wrapping
// ErrInvalidArgument that says what is wrong in a fixed vocabulary. Both
// parsers quote the URL or parts of it in their errors (net/url says
// `invalid port ":Hunter2" after host` when a password holds a '/'), so
// err is neither wrapped nor quoted, and nothing of rawURL, which may hold
// a password, goes into the result: err and rawURL are only inspected to
// choose the words.
func badURL(op, rawURL string, err error) error {
	scheme, afterScheme, _ := strings.Cut(rawURL, ":")
	scheme = strings.ToLower(scheme)
	var (
		escErr  url.EscapeError
		hostErr url.InvalidHostError
		numErr  *strconv.NumError // amqp.ParseURI's port (its query parameter errors do not wrap)
	)
	text := ""
	if err != nil {
		text = err.Error()
	}
	var problem string
	switch {
	case atAfterHost(rawURL):
		problem = "an '@' follows the host, so the user or password holds an unescaped '/', '?' or '#': " +
			"percent-encode the user and password (url.UserPassword does); an '@' in the vhost or a query parameter is written %40"
	case strings.ContainsFunc(rawURL, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		problem = "the URL holds a space or a control character: percent-encode it (a space is %20)"
	case (scheme != "amqp" && scheme != "amqps") || !strings.HasPrefix(afterScheme, "//"):
		problem = "the URL must start with amqp:// or amqps://"
	case errors.As(err, &escErr):
		problem = "a '%' does not start a %XX escape: a '%' in the user, password or vhost is written %25"
	case strings.Contains(text, "invalid userinfo"):
		problem = "the user or password holds a character that must be percent-encoded (url.UserPassword does)"
	case errors.As(err, &hostErr), strings.Contains(text, "missing ']'"):
		problem = "the host is not a valid host name or IP address"
	case errors.Is(err, errPortRange), errors.As(err, &numErr), strings.Contains(text, "invalid port"):
		problem = "the port is not a number from 1 to 65535"
	case strings.HasPrefix(text, "heartbeat"):
		problem = errHeartbeatParam
	case strings.HasPrefix(text, "channel_max"):
		problem = "URL parameter channel_max is not a number from 0 to 65535"
	case strings.HasPrefix(text, "connection_timeout"):
		problem = "URL parameter connection_timeout is not a number of milliseconds"
	default:
		problem = "the URL cannot be parsed"
	}
	return fmt.Errorf("%w: %s: invalid AMQP URL: %s", ErrInvalidArgument, op, problem)
}

// atAfterHost reports whether an '@' comes after the authority of rawURL
// ("scheme://authority...", the authority ended by the first '/', '?' or
// '#').
func atAfterHost(rawURL string) bool {
	_, rest, _ := strings.Cut(rawURL, ":")
	rest, ok := strings.CutPrefix(rest, "//")
	if !ok {
		return false
	}
	i := strings.IndexAny(rest, "/?#")
	return i >= 0 && strings.Contains(rest[i:], "@")
}

// urlParams applies the URL query parameters amqp091-go parses into
// unexported fields: heartbeat (seconds) overrides WithHeartbeat.
func urlParams(op string, u *url.URL, o *options) error {
	if hb := u.Query().Get("heartbeat"); hb != "" {
		n, err := strconv.Atoi(hb)
		if err != nil || n < 1 {
			return fmt.Errorf("%w: %s: invalid AMQP URL: %s", ErrInvalidArgument, op, errHeartbeatParam)
		}
		o.heartbeat = time.Duration(n) * time.Second
	}
	return nil
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

// Package brokertest finds or starts a real RabbitMQ broker for warren's
// tests and runnable examples, and says which broker it used.
//
// [Find] tries, in order:
//
//  1. the AMQP_URL environment variable, if set;
//  2. when WARREN_BROKER ([VersionEnv]) names a RabbitMQ version such as
//     "4.3", for tests (not with TryLocalDefault): a broker of that version
//     from the container provider registered with
//     [RegisterContainerProvider], and nothing else;
//  3. only with [Options.TryLocalDefault]: the local default broker
//     amqp://guest:guest@127.0.0.1:5672/, if it answers the AMQP protocol
//     header within about a second;
//  4. a private RabbitMQ node started from the local rabbitmq-server
//     installation on free loopback ports, with its own temporary
//     directories (see [StartNode]);
//  5. the container provider, with its default version.
//
// If all of them fail, Find returns an error wrapping [ErrNoBroker] that
// lists what was tried and why each step failed.
//
// Fault tests control the broker's node with [Broker.Ctl] and the methods
// built on it: a private node directly, a container through the
// [Controller] its provider sets.
//
// Test packages normally call [RunMain] from TestMain and [Need] at the top
// of every test that needs a broker. When [Required] reports true (on CI), a
// missing broker fails the run instead of skipping tests.
//
// The package imports only the standard library, so runnable examples in the
// root module can use it without extra dependencies.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// ErrNoBroker is wrapped by the error [Find] returns when no broker could be
// found or started.
var ErrNoBroker = errors.New("brokertest: no RabbitMQ broker found")

// ErrNotPrivate is returned by [Broker.Ctl] and the wrappers over it when the
// broker cannot be controlled: it is neither a private node started by this
// package nor a broker with a [Controller] (see [Broker.Controllable]).
var ErrNotPrivate = errors.New("brokertest: broker is neither a private node nor controllable")

// LocalDefaultURL is the URL of the local default broker probed when
// [Options.TryLocalDefault] is set.
const LocalDefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

const (
	localDefaultAddr = "127.0.0.1:5672"
	probeTimeout     = time.Second
)

// Broker is a RabbitMQ broker found or started by this package.
type Broker struct {
	// URL is the AMQP URL of the broker, including credentials
	// (guest/guest on a private node).
	URL string
	// Source says in human-readable form which broker this is, for example
	// "AMQP_URL" or "private node warren-123-1@localhost on 127.0.0.1:41234".
	Source string
	// Node is the Erlang node name of a private node or of a controllable
	// container's node, "" otherwise.
	Node string
	// OnStop, if set, is called once by [Broker.Stop]. A container provider
	// registered with [RegisterContainerProvider] uses it to terminate its
	// container.
	OnStop func(ctx context.Context) error
	// Control, if set, controls the node of a broker this package did not
	// start (a container); see [Broker.Controllable]. A private node
	// ignores it.
	Control Controller

	node *node // nil unless this is a private node

	stopMu  sync.Mutex
	stopped bool
	stopErr error
}

// Private reports whether b is a private node started by this package, which
// can be controlled with [Broker.Ctl] and stopped with [Broker.Stop].
func (b *Broker) Private() bool { return b != nil && b.node != nil }

// Addr returns the host:port of the broker's AMQP listener. If b.URL has no
// port, the scheme's default port (5672 for amqp, 5671 for amqps) is used.
func (b *Broker) Addr() string {
	if b.node != nil {
		return b.node.addr
	}
	addr, err := urlAddr(b.URL)
	if err != nil {
		return ""
	}
	return addr
}

// URLWith returns b.URL with other credentials and virtual host. Empty user
// and pass keep b.URL's credentials; an empty vhost keeps b.URL's virtual
// host. The vhost "/" is written as the path "/", which AMQP clients read as
// the default virtual host "/"; other vhosts are path-escaped, so "a/b"
// becomes "/a%2Fb". If b.URL does not parse, URLWith returns it unchanged.
func (b *Broker) URLWith(user, pass, vhost string) string {
	u, err := url.Parse(b.URL)
	if err != nil {
		return b.URL
	}
	if user != "" || pass != "" {
		u.User = url.UserPassword(user, pass)
	}
	switch vhost {
	case "":
	case "/":
		u.Path, u.RawPath = "/", ""
	default:
		u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	}
	return u.String()
}

// String returns the broker's source and address, without credentials.
func (b *Broker) String() string {
	if b == nil {
		return "<no broker>"
	}
	if addr := b.Addr(); !strings.Contains(b.Source, addr) {
		return fmt.Sprintf("%s (%s)", b.Source, addr)
	}
	return b.Source
}

// Stop stops a private node: it asks the node to stop, kills its process
// group if it is still alive afterwards, and removes its directories. For
// other brokers it only calls [Broker.OnStop], if set. Stop is idempotent:
// later calls return the first call's result. ctx bounds the graceful part
// of the shutdown; the forced kill and the cleanup happen even when ctx is
// done.
func (b *Broker) Stop(ctx context.Context) error {
	if b == nil {
		return nil
	}
	b.stopMu.Lock()
	defer b.stopMu.Unlock()
	if b.stopped {
		return b.stopErr
	}
	b.stopped = true
	var errs []error
	if b.node != nil {
		errs = append(errs, b.node.stop(ctx))
	}
	if b.OnStop != nil {
		if err := b.OnStop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("brokertest: stopping %s: %w", b.Source, err))
		}
	}
	b.stopErr = errors.Join(errs...)
	return b.stopErr
}

// Options configures [Find].
type Options struct {
	// TryLocalDefault makes Find probe the local default broker
	// amqp://guest:guest@127.0.0.1:5672/ after AMQP_URL. Runnable examples
	// set it; tests leave it false so that they never touch a developer's
	// own broker.
	TryLocalDefault bool
	// ForcePrivate skips AMQP_URL, the local default broker and any
	// container provider: Find always starts a private node, which fault
	// tests need because they control the node with [Broker.Ctl].
	ForcePrivate bool
	// Logf receives a line saying which broker was used. nil logs to
	// standard error.
	Logf func(format string, args ...any)
	// Check, if set, vets the broker Find found (for example its version);
	// when it fails, Find stops that broker and returns the error, wrapping
	// [ErrNoBroker].
	Check func(ctx context.Context, b *Broker) error
	// Container, if set, is the container provider for this call, in place
	// of the one registered with [RegisterContainerProvider].
	Container ContainerProvider
	// Name prefixes the lines Find and [RunMain] log ("brokertest" when
	// empty); warrentest sets its own.
	Name string

	// For this package's tests.
	sbinDir   string // if set, use this sbin dir instead of looking for the installation
	localAddr string // if set, probe this address instead of 127.0.0.1:5672
}

// name returns the prefix of the lines o logs.
func (o Options) name() string {
	if o.Name != "" {
		return o.Name
	}
	return "brokertest"
}

func (o Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
		return
	}
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// ContainerProvider starts a RabbitMQ broker of the given version ("3.10",
// "4.3"; "" for the provider's default) in a container.
type ContainerProvider func(ctx context.Context, version string) (*Broker, error)

var (
	providerMu sync.Mutex
	provider   ContainerProvider
)

// RegisterContainerProvider registers a function that starts a broker in a
// container. [Find] calls it when [VersionEnv] names a version, and
// otherwise when no private node could be started. The returned Broker
// needs URL and Source; it may set OnStop to terminate the container when
// [Broker.Stop] is called, and Control and Node so that fault tests can
// control it. A later registration replaces an earlier one; nil
// unregisters.
func RegisterContainerProvider(p ContainerProvider) {
	providerMu.Lock()
	defer providerMu.Unlock()
	provider = p
}

// provider returns the container provider for a Find with o: o.Container,
// else the registered one.
func (o Options) provider() ContainerProvider {
	if o.Container != nil {
		return o.Container
	}
	providerMu.Lock()
	defer providerMu.Unlock()
	return provider
}

// Find finds or starts a broker as described in the package documentation
// and logs which one it used through opts.Logf. ctx bounds the whole search,
// including the start of a private node (about 5 s). The caller should call
// [Broker.Stop] when done with the broker.
func Find(ctx context.Context, opts Options) (*Broker, error) {
	b, err := find(ctx, opts)
	if err != nil {
		return nil, err
	}
	if opts.Check != nil {
		if err := opts.Check(ctx, b); err != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			b.Stop(sctx)
			return nil, fmt.Errorf("%w: %s was found but is not fit: %w", ErrNoBroker, b, err)
		}
	}
	if b.Private() {
		opts.logf("%s: using %s (started in %.1fs)", opts.name(), b, b.BootTime().Seconds())
	} else {
		opts.logf("%s: using %s", opts.name(), b)
	}
	return b, nil
}

func find(ctx context.Context, opts Options) (*Broker, error) {
	var tried []string
	var errs []error
	fail := func(step string, err error) {
		tried = append(tried, step+": "+strings.TrimPrefix(err.Error(), "brokertest: "))
		errs = append(errs, err)
	}

	if opts.ForcePrivate {
		tried = append(tried, "AMQP_URL, local default broker and container provider skipped (ForcePrivate)")
	} else {
		if raw := os.Getenv("AMQP_URL"); raw != "" {
			if _, err := urlAddr(raw); err != nil {
				return nil, fmt.Errorf("brokertest: AMQP_URL is set but unusable: %w", err)
			}
			return &Broker{URL: raw, Source: "AMQP_URL"}, nil
		}
		tried = append(tried, "AMQP_URL: not set")

		// Programs (TryLocalDefault) have no container provider: for them
		// AMQP_URL or the local default broker stands for the version.
		if v := WantedVersion(); v != "" && !opts.TryLocalDefault {
			return fromProvider(ctx, opts.provider(), v)
		}

		if opts.TryLocalDefault {
			addr := localDefaultAddr
			if opts.localAddr != "" {
				addr = opts.localAddr
			}
			if err := probeAMQP(ctx, addr, probeTimeout); err != nil {
				fail("local default broker "+addr, err)
			} else {
				return &Broker{
					URL:    "amqp://guest:guest@" + addr + "/",
					Source: "local default broker " + addr,
				}, nil
			}
		}
	}

	b, err := startNode(ctx, opts)
	if err == nil {
		return b, nil
	}
	fail("private node", err)

	if !opts.ForcePrivate {
		if p := opts.provider(); p == nil {
			tried = append(tried, "container provider: none registered")
		} else if b, err := callProvider(ctx, p, ""); err != nil {
			fail("container provider", err)
		} else {
			return b, nil
		}
	}

	return nil, &noBrokerError{
		msg:  ErrNoBroker.Error() + "; tried: " + strings.Join(tried, "; "),
		errs: errs,
	}
}

// fromProvider returns a broker of RabbitMQ version v from the container
// provider, which must be registered.
func fromProvider(ctx context.Context, p ContainerProvider, v string) (*Broker, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: %s=%s asks for RabbitMQ %s in a container, and no container provider is registered (the integration tests register one)",
			ErrNoBroker, VersionEnv, v, v)
	}
	b, err := callProvider(ctx, p, v)
	if err != nil {
		return nil, fmt.Errorf("%w: %s=%s: container provider: %w", ErrNoBroker, VersionEnv, v, err)
	}
	return b, nil
}

func callProvider(ctx context.Context, p ContainerProvider, v string) (*Broker, error) {
	b, err := p(ctx, v)
	if err != nil {
		return nil, err
	}
	if b == nil || b.URL == "" {
		return nil, errors.New("brokertest: returned no broker URL")
	}
	if b.Source == "" {
		b.Source = "container"
	}
	return b, nil
}

// noBrokerError is the error find returns. Its message lists every step
// tried; it wraps ErrNoBroker and each step's error, so errors.Is works for
// both (for example with context.DeadlineExceeded).
type noBrokerError struct {
	msg  string
	errs []error
}

func (e *noBrokerError) Error() string { return e.msg }

func (e *noBrokerError) Unwrap() []error { return append([]error{ErrNoBroker}, e.errs...) }

// Required reports whether a missing broker must fail tests rather than skip
// them. It is true when WARREN_REQUIRE_BROKER is "1" or "true", when
// WARREN_BROKER ([VersionEnv]) asks for a version, or when CI is set to
// anything but "", "0" or "false". WARREN_REQUIRE_BROKER set to "0" or
// "false" overrides the other two.
func Required() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv("WARREN_REQUIRE_BROKER"))) {
	case "1", "true":
		return true
	case "0", "false":
		return false
	}
	if WantedVersion() != "" {
		return true
	}
	switch strings.ToLower(strings.TrimSpace(os.Getenv("CI"))) {
	case "", "0", "false":
		return false
	}
	return true
}

// urlAddr returns the host:port an AMQP URL points at.
func urlAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("brokertest: parsing broker URL: %w", err)
	}
	var port string
	switch u.Scheme {
	case "amqp":
		port = "5672"
	case "amqps":
		port = "5671"
	default:
		return "", fmt.Errorf("brokertest: broker URL scheme %q is not amqp or amqps", u.Scheme)
	}
	if u.Port() != "" {
		port = u.Port()
	}
	host := u.Hostname()
	if host == "" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port), nil
}

// amqpHeader is the AMQP 0-9-1 protocol header a client sends first.
const amqpHeader = "AMQP\x00\x00\x09\x01"

// probeAMQP connects to addr, sends the AMQP 0-9-1 protocol header and checks
// that the peer answers with a method frame (connection.start). The whole
// probe takes at most timeout, and less if ctx ends sooner.
func probeAMQP(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("brokertest: probing %s: %w", addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if _, err := io.WriteString(conn, amqpHeader); err != nil {
		return fmt.Errorf("brokertest: probing %s: %w", addr, err)
	}
	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return fmt.Errorf("brokertest: probing %s: no AMQP answer: %w", addr, err)
	}
	if first[0] != 1 {
		return fmt.Errorf("brokertest: probing %s: answer starts with byte %#02x, not an AMQP method frame", addr, first[0])
	}
	return nil
}

// ForProgram finds a broker for a runnable program (the examples): the
// environment's AMQP_URL, the local default broker, or a private node it
// starts, logging which with log.Printf. stop stops a private node (bounded,
// logging a failure as name's); call it when the program is done.
func ForProgram(ctx context.Context, name string) (b *Broker, stop func(), err error) {
	b, err = Find(ctx, Options{TryLocalDefault: true, Logf: log.Printf})
	if err != nil {
		return nil, nil, err
	}
	return b, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Stop(sctx); err != nil {
			log.Printf("%s: stopping the broker: %v", name, err)
		}
	}, nil
}

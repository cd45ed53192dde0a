// Package warrentest gives tests a real RabbitMQ broker, and faults to
// inject into it: close one connection, block publishers, restart the
// node, cut or black-hole one client's traffic.
//
// A test package starts one broker for all of its tests from TestMain, and
// each test asks for it with [Start]:
//
//	func TestMain(m *testing.M) { warrentest.Main(m) }
//
//	func TestConsumerSurvivesACut(t *testing.T) {
//		b := warrentest.Start(t)
//		p := b.Proxy(t) // this test's own path to the broker
//		c, err := warren.Dial(ctx, p.URL(), warren.WithReconnect(warren.ReconnectPolicy{}))
//		...
//		p.Cut() // the connection dies; the client reconnects through p
//	}
//
// Without Main, Start starts a broker for the test alone and stops it when
// the test ends.
//
// # Which broker
//
// [New], [Start] and [Main] use the first of:
//
//  1. the broker at the AMQP_URL environment variable, if it is set
//     (warrentest never stops it, and cannot inject faults into it other
//     than through a [Proxy]);
//  2. when WARREN_BROKER names a RabbitMQ version ("3.10", "4.3"): a
//     container of that version, and nothing else (see below);
//  3. a private RabbitMQ node started from the local rabbitmq-server
//     installation — the directory holding rabbitmq-server and rabbitmqctl
//     named by WARREN_RABBITMQ_SBIN, else the Debian/Ubuntu package's inner
//     scripts, else rabbitmq-server on PATH (a generic Unix or Homebrew
//     installation) — on free loopback ports with its own temporary
//     directories; it boots in about 5 s and halts by itself if the test
//     binary dies;
//  4. a container started with testcontainers-go on the local Docker
//     engine, from the image given by [WithImage], else [DefaultImage].
//
// When none works, the tests that need a broker are skipped, with the
// reason — unless a broker is required, and then they fail: when the CI
// environment variable is set (to anything but "", "0" or "false"), when
// WARREN_REQUIRE_BROKER is "1" or "true", or when WARREN_BROKER asks for a
// version. WARREN_REQUIRE_BROKER=0 turns the requirement off. With
// WARREN_BROKER set, a broker (AMQP_URL's too) that runs another version
// is an error.
//
// The container for WARREN_BROKER=V runs the image named by the
// environment variable WARREN_RABBITMQ_IMAGE_V (dots as underscores:
// WARREN_RABBITMQ_IMAGE_4_3), else warren-rabbitmq:V if the Docker engine
// has such an image, else rabbitmq:V-management. Containers publish AMQP
// on a loopback port only and need a Docker engine on this machine; in a
// CI job that runs in a container, set TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
// (testcontainers-go otherwise connects to the default gateway). On an
// engine that cannot pull images, also set TESTCONTAINERS_RYUK_DISABLED=true:
// testcontainers-go otherwise pulls its reaper image (testcontainers/ryuk)
// first; the Broker's Close removes its container either way.
//
// # Faults
//
// [Broker.CloseConnection], [Broker.Block], [Broker.Unblock] and
// [Broker.Restart] act on the broker's node, so they need a private node or
// a container ([Broker.Controllable]); on AMQP_URL's broker they return
// [ErrNotControllable]. They act on the whole broker: tests that use them
// on the broker shared through Main should not run in parallel with tests
// that the fault would disturb. A [Proxy] works with any broker and
// affects only the clients that dial its URL.
package warrentest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warrenmq/warren/internal/brokertest"
)

// DefaultImage is the image of the container started when neither
// [WithImage] nor WARREN_BROKER names one.
const DefaultImage = "rabbitmq:4-management"

const (
	findTimeout = 5 * time.Minute // bound on finding a broker (a container may pull its image)
	stopTimeout = time.Minute     // bound on stopping one
)

// ErrNoBroker is wrapped by the error [New] returns when it finds no broker
// and can start none, or finds one that is not fit (it does not answer, or
// runs another version than WARREN_BROKER asks for); the message lists
// what was tried and why each step failed.
var ErrNoBroker = brokertest.ErrNoBroker

// ErrNotControllable is returned (wrapped) by the fault methods of a broker
// whose node warrentest cannot control: the broker at AMQP_URL.
var ErrNotControllable = errors.New("warrentest: the broker's node cannot be controlled (it came from AMQP_URL)")

// Option configures [New], [Start] and [Main].
type Option func(*options)

type options struct {
	image string
	logf  func(format string, args ...any)
}

// WithImage sets the container image to run when a broker has to be started
// in a container, for example "rabbitmq:3.13-management". It applies
// whenever a container is started (step 2 or 4 of the package
// documentation). The image must run RabbitMQ with the user guest/guest
// allowed to connect from outside the container, as the official images
// do.
func WithImage(image string) Option {
	return func(o *options) { o.image = image }
}

func buildOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.logf == nil {
		o.logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	return o
}

// Broker is a RabbitMQ broker for tests. Its methods are safe for
// concurrent use.
type Broker struct {
	b       *brokertest.Broker
	version Version
	owned   bool // Close stops it: it was returned by New
}

// New finds or starts a broker as the package documentation describes and
// returns it; ctx bounds the search (a private node boots in about 5 s; a
// container may have to pull its image). The caller must call
// [Broker.Close] when done. Tests normally use [Start] instead, which skips
// or fails the test when there is no broker and closes it when the test
// ends. New's error wraps [ErrNoBroker] when no broker could be found.
func New(ctx context.Context, opts ...Option) (*Broker, error) {
	return find(ctx, buildOptions(opts))
}

func find(ctx context.Context, o options) (*Broker, error) {
	var version Version
	b, err := brokertest.Find(ctx, brokertest.Options{
		Name:      "warrentest",
		Logf:      o.logf,
		Container: containerProvider(o.image, o.logf),
		Check: func(ctx context.Context, b *brokertest.Broker) error {
			v, err := readVersion(ctx, b.URL)
			if err != nil {
				return err
			}
			if want := brokertest.WantedVersion(); want != "" && !v.matches(want) {
				return fmt.Errorf("%s=%s, but the broker runs RabbitMQ %s", brokertest.VersionEnv, want, v)
			}
			version = v
			return nil
		},
	})
	if err != nil {
		return nil, &findError{err}
	}
	return &Broker{b: b, version: version, owned: true}, nil
}

// findError is the error of a failed search: the internal finder's, told
// in warrentest's name.
type findError struct{ err error }

func (e *findError) Error() string {
	return strings.ReplaceAll(e.err.Error(), "brokertest: ", "warrentest: ")
}

func (e *findError) Unwrap() error { return e.err }

// Close stops the broker if [New] started it: a private node is stopped and
// its directory removed, a container is removed. The broker at AMQP_URL is
// left running. Close is idempotent, and does nothing on a broker returned
// by [Start] (the test's end or Main closes those). ctx bounds the graceful
// part of the shutdown; a node that does not stop in time is killed.
func (b *Broker) Close(ctx context.Context) error {
	if !b.owned {
		return nil
	}
	return b.b.Stop(ctx)
}

// URL returns the broker's AMQP URL, with credentials (guest/guest on a
// node warrentest started).
func (b *Broker) URL() string { return b.b.URL }

// Addr returns the host:port of the broker's AMQP listener.
func (b *Broker) Addr() string { return b.b.Addr() }

// String says which broker this is and where it listens, without
// credentials: "AMQP_URL (127.0.0.1:5672)", "private node
// warren-123-1@localhost on 127.0.0.1:41234", or the container's image.
func (b *Broker) String() string { return b.b.String() }

// Version returns the RabbitMQ version the broker reported when it was
// found.
func (b *Broker) Version() Version { return b.version }

// Controllable reports whether the broker's node can be controlled (a
// private node or a container): whether the fault methods can work.
func (b *Broker) Controllable() bool { return b.b.Controllable() }

// The broker Main found, shared by every Start of the test binary.
var (
	mainMu     sync.Mutex
	mainRan    bool
	mainBroker *Broker
	mainErr    error
)

// Main finds or starts a broker for the test binary as [Run] does, runs the
// tests and exits with their status. Call it from TestMain:
//
//	func TestMain(m *testing.M) { warrentest.Main(m) }
func Main(m *testing.M, opts ...Option) {
	os.Exit(Run(m, opts...))
}

// Run is [Main] for a TestMain that has more to do after the tests: it
// finds or starts a broker (bounded to 5 minutes), runs m's tests, in which
// [Start] returns that broker, stops the broker (if it started one) and
// returns the exit code. If no broker is found and one is required (see the
// package documentation) it prints why and returns 1 without running any
// test; otherwise the tests run, and Start skips those that ask for a
// broker, saying why there is none. Stopping the broker failing turns a
// passing run into exit code 1.
func Run(m *testing.M, opts ...Option) int {
	o := buildOptions(opts)
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	b, err := find(ctx, o)
	cancel()
	var ib *brokertest.Broker
	if b != nil {
		b.owned = false
		ib = b.b
	}
	mainMu.Lock()
	mainRan, mainBroker, mainErr = true, b, err
	mainMu.Unlock()
	brokertest.SetMain(ib, err)
	defer closeDocker()
	if err != nil {
		if brokertest.Required() {
			fmt.Fprintf(os.Stderr, "warrentest: FAIL: a broker is required (CI, WARREN_BROKER or WARREN_REQUIRE_BROKER is set) and none was found: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "warrentest: no broker, the tests that need one will skip: %v\n", err)
	}

	code := m.Run()

	if b != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := b.b.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "warrentest: stopping %s: %v\n", b, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Start returns a broker for the test tb. When [Main] or [Run] runs the test
// binary, that is the broker they found, shared with the binary's other
// tests (opts are then ignored). Otherwise Start finds or starts a broker
// for tb alone, as [New] does, and stops it when tb ends. When there is no
// broker, Start skips tb with the reason, or fails it if a broker is
// required (see the package documentation).
func Start(tb testing.TB, opts ...Option) *Broker {
	tb.Helper()
	mainMu.Lock()
	ran, shared, reason := mainRan, mainBroker, mainErr
	mainMu.Unlock()
	if !ran {
		o := buildOptions(opts)
		o.logf = tb.Logf
		ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
		b, err := find(ctx, o)
		cancel()
		if err == nil {
			b.owned = false
			tb.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
				defer cancel()
				if err := b.b.Stop(ctx); err != nil {
					tb.Errorf("warrentest: stopping %s: %v", b, err)
				}
			})
			return b
		}
		reason = err
	}
	if shared != nil {
		return shared
	}
	msg := "no RabbitMQ broker: " + strings.TrimPrefix(reason.Error(), "warrentest: ")
	if brokertest.Required() {
		tb.Fatal(msg + " (a broker is required: CI, WARREN_BROKER or WARREN_REQUIRE_BROKER is set)")
	}
	tb.Skip(msg)
	return nil
}

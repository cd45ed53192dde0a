package integration

// The container provider for brokertest: when there is no AMQP_URL and no
// private node can be started (no local rabbitmq-server), the tests run
// against RabbitMQ in a container started by testcontainers-go, provided a
// Docker engine answers.

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/rabbitmq"
	"go.uber.org/goleak"

	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	containerImage     = "rabbitmq:3.10-management-alpine"
	dockerCheckTimeout = 2 * time.Second
)

// containerStarted records that startContainer asked testcontainers for a
// container, which starts goroutines of its own (see containerLeakIgnores).
var containerStarted atomic.Bool

func init() { brokertest.RegisterContainerProvider(startContainer) }

// dockerAnswers pings the Docker engine named by DOCKER_HOST (default: the
// local socket) and fails within dockerCheckTimeout when none answers, so
// that testcontainers-go is never started without one (it panics or waits
// for a long time when the engine is missing).
func dockerAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dockerCheckTimeout)
	defer cancel()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx); err != nil {
		return fmt.Errorf("no Docker engine answers at %s: %w", cli.DaemonHost(), err)
	}
	return nil
}

// startContainer starts RabbitMQ in a container; Broker.Stop terminates it.
func startContainer(ctx context.Context) (b *brokertest.Broker, err error) {
	if err := dockerAnswers(ctx); err != nil {
		return nil, err
	}
	// testcontainers-go panics when it cannot settle on a Docker host.
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("testcontainers: %v", r)
		}
	}()
	containerStarted.Store(true)
	c, err := rabbitmq.Run(ctx, containerImage)
	if err != nil {
		_ = testcontainers.TerminateContainer(c)
		return nil, fmt.Errorf("start %s: %w", containerImage, err)
	}
	u, err := c.AmqpURL(ctx)
	if err != nil {
		_ = testcontainers.TerminateContainer(c)
		return nil, fmt.Errorf("%s: AMQP URL: %w", containerImage, err)
	}
	return &brokertest.Broker{
		URL:    u,
		Source: fmt.Sprintf("testcontainers %s (container %.12s)", containerImage, c.GetContainerID()),
		OnStop: func(ctx context.Context) error {
			return testcontainers.TerminateContainer(c, testcontainers.StopContext(ctx))
		},
	}, nil
}

// containerLeakIgnores returns the goleak options TestMain needs when the
// broker came from a container: testcontainers-go keeps a connection to its
// reaper container, and its Docker client's HTTP keep-alive connections,
// closing them asynchronously. Without a container it returns nothing.
func containerLeakIgnores() []goleak.Option {
	if !containerStarted.Load() {
		return nil
	}
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/testcontainers/testcontainers-go.(*Reaper).connect.func1"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	}
}

func TestContainerProviderDockerCheckFailsFastWhenNoEngineAnswers(t *testing.T) {
	faultCheckLeaks(t)
	took, err := faultWithin(t, dockerCheckTimeout+time.Second, "Docker check", func() error {
		return dockerAnswers(context.Background())
	})
	// Either outcome is fine here; what matters is that it comes quickly.
	t.Logf("Docker check after %v: %v", took, err)
	if took > dockerCheckTimeout+500*time.Millisecond {
		t.Errorf("Docker check took %v, want at most %v", took, dockerCheckTimeout+500*time.Millisecond)
	}
}

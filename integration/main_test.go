// Package integration tests warren against a real RabbitMQ broker.
//
// The broker comes from warrentest, the harness warren offers its users
// (warrentest.Run): AMQP_URL if set; else, when WARREN_BROKER names a
// RabbitMQ version (3.10, 4.3), a testcontainers-go container of that
// version (image WARREN_RABBITMQ_IMAGE_V, else warren-rabbitmq:V, built by
// .ci/brokers.sh); else a private node started from the local
// rabbitmq-server installation, else a container when a Docker engine
// answers. With CI or WARREN_BROKER set a missing broker fails the run
// instead of skipping it, and with WARREN_BROKER set a broker of another
// version fails it too. The tests use internal/brokertest's API on that
// broker (rabbitmqctl, node control), and the cluster test starts its
// containers through warrentest too (containers_test.go).
//
// This is a separate module so that its test-only dependencies
// (testcontainers-go through warrentest, goleak) never reach the go.mod of
// warren's importers.
package integration

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/warrentest"
)

// broker is the broker every test in this package shares; nil when none was
// found and none is required (tests then skip via brokertest.Need).
var broker *brokertest.Broker

func TestMain(m *testing.M) {
	brokertest.OnMain(func(b *brokertest.Broker) { broker = b })
	code := warrentest.Run(m)
	if code == 0 {
		if err := goleak.Find(containerLeakIgnores()...); err != nil {
			fmt.Fprintf(os.Stderr, "integration: leaked goroutines after all tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

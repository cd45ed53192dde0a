// Package integration tests warren against a real RabbitMQ broker.
//
// The broker comes from internal/brokertest: AMQP_URL if set, else a private
// node started from the local rabbitmq-server installation, else a
// testcontainers-go container when a Docker engine answers. With CI set a
// missing broker fails the run instead of skipping it.
//
// This is a separate module so that its test-only dependencies
// (testcontainers-go, goleak) never reach the go.mod of warren's importers.
package integration

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren/internal/brokertest"
)

// broker is the broker every test in this package shares; nil when none was
// found and none is required (tests then skip via brokertest.Need).
var broker *brokertest.Broker

func TestMain(m *testing.M) {
	code := brokertest.RunMain(m, &broker, brokertest.Options{})
	if code == 0 {
		// containerLeakIgnores (containers_test.go) is empty unless the
		// broker came from testcontainers-go, whose reaper connection and
		// Docker HTTP keep-alives outlive the terminated container.
		if err := goleak.Find(containerLeakIgnores()...); err != nil {
			fmt.Fprintf(os.Stderr, "integration: leaked goroutines after all tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

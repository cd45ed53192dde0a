// Package integration tests warren against a real RabbitMQ broker.
//
// The broker comes from internal/brokertest: AMQP_URL if set; else, when
// WARREN_BROKER names a RabbitMQ version (3.10, 4.3), a testcontainers-go
// container of that version (containers_test.go); else a private node
// started from the local rabbitmq-server installation, else a container
// when a Docker engine answers. With CI or WARREN_BROKER set a missing
// broker fails the run instead of skipping it, and with WARREN_BROKER set
// a broker of another version fails it too.
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
	code := brokertest.RunMain(m, &broker, brokertest.Options{Check: checkWantedVersion})
	closeDocker()
	if code == 0 {
		// containerLeakIgnores (containers_test.go) is empty unless a
		// broker came from testcontainers-go, whose Docker HTTP keep-alives
		// outlive the terminated container.
		if err := goleak.Find(containerLeakIgnores()...); err != nil {
			fmt.Fprintf(os.Stderr, "integration: leaked goroutines after all tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

package brokertest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

const (
	findTimeout = 2 * time.Minute // RunMain's bound on Find
	stopTimeout = time.Minute     // RunMain's bound on Stop
)

var (
	reasonMu       sync.Mutex
	noBrokerReason = "brokertest.RunMain was not called from TestMain"
)

// RunMain is meant to be called from TestMain:
//
//	var broker *brokertest.Broker
//
//	func TestMain(m *testing.M) {
//		os.Exit(brokertest.RunMain(m, &broker, brokertest.Options{}))
//	}
//
// It finds a broker with [Find] and stores it in *dst, runs the tests, stops
// a private node afterwards and returns the exit code. If no broker is found
// and [Required] reports true, it prints why and returns 1 without running
// any test. Otherwise it prints a "no broker: integration tests will skip"
// line and runs the tests with *dst == nil; [Need] then skips them.
func RunMain(m *testing.M, dst **Broker, opts Options) int {
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	b, err := Find(ctx, opts)
	cancel()
	*dst = b
	if err != nil {
		reasonMu.Lock()
		noBrokerReason = err.Error()
		reasonMu.Unlock()
		if Required() {
			fmt.Fprintf(os.Stderr, "brokertest: FAIL: a broker is required (CI or WARREN_REQUIRE_BROKER is set) but none was found: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "brokertest: no broker: integration tests will skip (%v)\n", err)
	}

	code := m.Run()

	if b != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := b.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "brokertest: stopping %s: %v\n", b.Source, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Need returns b, or ends the test if b is nil: with t.Fatal when [Required]
// reports true, with t.Skip otherwise. Either way the message says why no
// broker was found, as recorded by [RunMain].
func Need(t testing.TB, b *Broker) *Broker {
	t.Helper()
	if b != nil {
		return b
	}
	reasonMu.Lock()
	reason := noBrokerReason
	reasonMu.Unlock()
	if Required() {
		t.Fatalf("no RabbitMQ broker, and one is required: %s", reason)
	}
	t.Skipf("no RabbitMQ broker: %s", reason)
	return nil
}

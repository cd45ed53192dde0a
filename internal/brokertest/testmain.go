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
// any test. Otherwise it prints a "no broker: the tests that need one will
// skip" line and runs the tests with *dst == nil; [Need] then skips them.
// Before the tests run, it calls [SetMain].
func RunMain(m *testing.M, dst **Broker, opts Options) int {
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	b, err := Find(ctx, opts)
	cancel()
	*dst = b
	SetMain(b, err)
	if err != nil {
		if Required() {
			fmt.Fprintf(os.Stderr, "%s: FAIL: a broker is required (CI, WARREN_BROKER or WARREN_REQUIRE_BROKER is set) but none was found: %v\n", opts.name(), err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "%s: no broker: the tests that need one will skip (%v)\n", opts.name(), err)
	}

	code := m.Run()

	if b != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := b.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "%s: stopping %s: %v\n", opts.name(), b.Source, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// SetMain records the outcome of the search for the broker a test binary's
// tests share: the reason [Need] gives when b is nil (err's message), and
// the broker passed to the functions registered with [OnMain], which it
// calls. [RunMain] calls it; so does warrentest.Run, which finds the broker
// itself.
func SetMain(b *Broker, err error) {
	if err != nil {
		reasonMu.Lock()
		noBrokerReason = err.Error()
		reasonMu.Unlock()
	}
	notifyMain(b)
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

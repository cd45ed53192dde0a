package warrentest_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren/internal/brokertest"
	"github.com/warrenmq/warren/warrentest"
)

func TestMain(m *testing.M) {
	code := warrentest.Run(m)
	if code == 0 {
		var ignore []goleak.Option
		if brokertest.ContainersUsed() {
			// testcontainers-go's Docker clients keep HTTP keep-alive
			// connections, closed asynchronously.
			ignore = append(ignore,
				goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
				goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"))
		}
		if err := goleak.Find(ignore...); err != nil {
			fmt.Fprintf(os.Stderr, "warrentest: leaked goroutines after all tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

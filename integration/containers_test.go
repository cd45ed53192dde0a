package integration

// RabbitMQ in containers comes from warrentest (started by
// testcontainers-go; see its package documentation): the suite's broker
// when WARREN_BROKER names a version, and the cluster test's three nodes,
// on a network of their own. `make test` runs both for every version of
// the matrix (see the Makefile and .ci/brokers.sh, which builds the images
// from Debian packages when no registry is reachable).
//
// Traffic stays on this machine: init sets TESTCONTAINERS_HOST_OVERRIDE to
// 127.0.0.1 (without it testcontainers, which believes it runs in a
// container here, sends its connections to the machine's default gateway)
// and disables Ryuk, whose image cannot be pulled. warrentest leaves both
// to its user, as a library should; this suite (and .ci/run, and the
// Makefile) is that user.

import (
	"context"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/warrenmq/warren/internal/brokertest"
)

func init() {
	// Before testcontainers is first called; see the file comment.
	os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
}

// startContainerCluster starts n RabbitMQ containers of version v on a
// network of their own and joins them into a cluster, through warrentest.
// Cluster.Stop removes the containers and the network.
func startContainerCluster(ctx context.Context, v string, n int) (*brokertest.Cluster, error) {
	return brokertest.StartContainerCluster(ctx, v, n)
}

// containerLeakIgnores returns the goleak options TestMain needs when
// testcontainers-go was used: its Docker clients keep HTTP keep-alive
// connections, closing them asynchronously. Without a container it returns
// nothing.
func containerLeakIgnores() []goleak.Option {
	if !brokertest.ContainersUsed() {
		return nil
	}
	return []goleak.Option{
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	}
}

func TestContainerHarnessKeepsTestcontainersOnThisMachine(t *testing.T) {
	if got := os.Getenv("TESTCONTAINERS_HOST_OVERRIDE"); got != "127.0.0.1" {
		t.Errorf("TESTCONTAINERS_HOST_OVERRIDE = %q, want 127.0.0.1 (set by the harness itself)", got)
	}
	if got := os.Getenv("TESTCONTAINERS_RYUK_DISABLED"); got != "true" {
		t.Errorf("TESTCONTAINERS_RYUK_DISABLED = %q, want true", got)
	}
}

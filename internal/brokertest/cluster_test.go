package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// clusterEnv, set to "1", runs the cluster tests outside CI.
const clusterEnv = "WARREN_CLUSTER"

// needClusterTests skips a slow cluster test unless WARREN_CLUSTER=1 or a
// broker is required (CI), and fails it when rabbitmq-server is missing but
// a broker is required.
func needClusterTests(t *testing.T) {
	t.Helper()
	if os.Getenv(clusterEnv) != "1" && !Required() {
		t.Skipf("cluster tests take about a minute: set %s=1 (implied by CI=true) to run them", clusterEnv)
	}
	needServer(t)
}

// startTestCluster starts a cluster of n nodes that the test's cleanup
// stops.
func startTestCluster(t *testing.T, ctx context.Context, n int) *Cluster {
	t.Helper()
	c, err := StartCluster(ctx, n)
	if err != nil {
		t.Fatalf("StartCluster: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("cleanup Stop: %v", err)
		}
	})
	for _, b := range c.Nodes {
		t.Logf("node %s (booted in %v)", b, b.BootTime())
	}
	t.Logf("cluster of %d started in %v", n, c.BootTime())
	return c
}

// nodeNames returns the sorted node names of c, without those of the nodes
// numbered in except.
func nodeNames(c *Cluster, except ...int) []string {
	var names []string
	for i, b := range c.Nodes {
		if !slices.Contains(except, i) {
			names = append(names, b.Node)
		}
	}
	slices.Sort(names)
	return names
}

// checkRunning checks that node i of c reports exactly want running.
func checkRunning(t *testing.T, ctx context.Context, c *Cluster, i int, want []string) {
	t.Helper()
	got, err := c.RunningNodes(ctx, i)
	if err != nil {
		t.Fatalf("RunningNodes(%d): %v", i, err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("node %d reports running %v, want %v", i, got, want)
	}
}

// distAddr returns the address of a node's Erlang distribution listener.
func distAddr(n *node) string {
	for _, kv := range n.env {
		if port, ok := strings.CutPrefix(kv, "RABBITMQ_DIST_PORT="); ok {
			return net.JoinHostPort("127.0.0.1", port)
		}
	}
	return ""
}

// refused checks that nothing accepts connections on addr.
func refused(t *testing.T, addr string) {
	t.Helper()
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections", addr)
	}
}

// timed runs a step of a test and logs how long it took.
func timed(t *testing.T, what string, f func() error) {
	t.Helper()
	start := time.Now()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Logf("%s took %v", what, time.Since(start).Round(time.Millisecond))
}

func TestCluster(t *testing.T) {
	needClusterTests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startTestCluster(t, ctx, 3)
	all := nodeNames(c)

	t.Run("Distinct", func(t *testing.T) {
		seen := map[string]bool{}
		var cookie string
		for i, b := range c.Nodes {
			n := b.node
			for _, v := range []string{b.Node, b.Addr(), distAddr(n), n.dir} {
				if seen[v] {
					t.Errorf("node %d shares %q with another node", i, v)
				}
				seen[v] = true
			}
			if conn, err := net.DialTimeout("tcp", distAddr(n), time.Second); err != nil {
				t.Errorf("node %d: distribution port: %v", i, err)
			} else {
				conn.Close()
			}
			data, err := os.ReadFile(filepath.Join(n.dir, "home", ".erlang.cookie"))
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				cookie = string(data)
			} else if string(data) != cookie {
				t.Errorf("node %d has another cookie", i)
			}
		}
		if !slices.Equal(c.URLs(), []string{c.Nodes[0].URL, c.Nodes[1].URL, c.Nodes[2].URL}) {
			t.Errorf("URLs() = %v", c.URLs())
		}
	})

	t.Run("Status", func(t *testing.T) {
		for i := range c.Nodes {
			checkRunning(t, ctx, c, i, all)
		}
		out, err := c.Nodes[0].Ctl(ctx, "cluster_status")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("cluster_status:\n%s", out)
	})

	t.Run("QuorumQueueSurvivesNodeStop", func(t *testing.T) {
		testQuorumQueue(t, ctx, c)
	})

	t.Run("StopStartRejoin", func(t *testing.T) {
		b := c.Nodes[2]
		conn := dial(t, b.URL)
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		timed(t, "StopNode(2)", func() error { return c.StopNode(ctx, 2) })
		waitClosed(t, ctx, closed)
		refused(t, b.Addr())
		refused(t, distAddr(b.node))
		checkRunning(t, ctx, c, 0, nodeNames(c, 2))
		if err := c.StopNode(ctx, 2); err != nil {
			t.Errorf("second StopNode: %v", err)
		}
		if err := c.KillNode(2); err != nil {
			t.Errorf("KillNode of a stopped node: %v", err)
		}
		timed(t, "StartNode(2)", func() error { return c.StartNode(ctx, 2) })
		timed(t, "WaitRunning", func() error { return c.WaitRunning(ctx) })
		checkRunning(t, ctx, c, 2, all)
		dial(t, b.URL).Close()
		if err := c.StartNode(ctx, 2); err == nil {
			t.Error("StartNode of a running node succeeded")
		}
	})

	t.Run("KillRejoin", func(t *testing.T) {
		b := c.Nodes[1]
		conn := dial(t, b.URL)
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		if err := c.KillNode(1); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, ctx, closed)
		refused(t, b.Addr())
		timed(t, "StartNode(1) after KillNode", func() error { return c.StartNode(ctx, 1) })
		timed(t, "WaitRunning", func() error { return c.WaitRunning(ctx) })
		checkRunning(t, ctx, c, 1, all)
		dial(t, b.URL).Close()
	})

	t.Run("StopApp", func(t *testing.T) {
		b := c.Nodes[1]
		conn := dial(t, b.URL)
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		timed(t, "StopApp", func() error { return b.StopApp(ctx) })
		waitClosed(t, ctx, closed)
		refused(t, b.Addr())
		checkRunning(t, ctx, c, 0, nodeNames(c, 1))
		timed(t, "StartApp", func() error { return b.StartApp(ctx) })
		timed(t, "WaitRunning", func() error { return c.WaitRunning(ctx) })
	})

	var dirs []string
	var pids []int
	for _, b := range c.Nodes {
		dirs = append(dirs, b.node.dir)
		pids = append(pids, b.node.pgid)
	}
	timed(t, "Stop", func() error { return c.Stop(ctx) })
	for i, b := range c.Nodes {
		refused(t, b.Addr())
		if _, err := os.Stat(dirs[i]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("node dir %s still there after Stop: %v", dirs[i], err)
		}
		if pidAlive(pids[i]) {
			t.Errorf("node process %d still alive after Stop", pids[i])
		}
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.StartNode(ctx, 0); err == nil {
		t.Error("StartNode after Stop succeeded")
	}
}

func waitClosed(t *testing.T, ctx context.Context, closed <-chan *amqp.Error) {
	t.Helper()
	select {
	case err := <-closed:
		t.Logf("connection closed: %v", err)
	case <-ctx.Done():
		t.Fatal("connection not closed")
	}
}

// queueInfo is a line of "rabbitmqctl list_queues name members leader".
type queueInfo struct {
	Name    string   `json:"name"`
	Members []string `json:"members"`
	Leader  string   `json:"leader"`
}

func listQueue(t *testing.T, ctx context.Context, b *Broker, name string) queueInfo {
	t.Helper()
	out, err := b.Ctl(ctx, "list_queues", "name", "members", "leader", "--formatter", "json")
	if err != nil {
		t.Fatal(err)
	}
	var qs []queueInfo
	if j := strings.IndexByte(out, '['); j > 0 {
		out = out[j:]
	}
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("parsing list_queues: %v: %s", err, out)
	}
	for _, q := range qs {
		if q.Name == name {
			slices.Sort(q.Members)
			return q
		}
	}
	t.Fatalf("no queue %s in list_queues: %s", name, out)
	return queueInfo{}
}

// testQuorumQueue declares a quorum queue on node 0, publishes to it with
// confirms on node 1, stops node 0 and consumes everything on node 2.
func testQuorumQueue(t *testing.T, ctx context.Context, c *Cluster) {
	const queue, before, after = "brokertest-qq", 50, 10
	conn0 := dial(t, c.Nodes[0].URL)
	defer conn0.Close()
	ch0, err := conn0.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch0.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	q := listQueue(t, ctx, c.Nodes[1], queue)
	t.Logf("queue %s: leader %s, members %v", queue, q.Leader, q.Members)
	if !slices.Equal(q.Members, nodeNames(c)) {
		t.Fatalf("members %v, want all nodes", q.Members)
	}

	conn1 := dial(t, c.Nodes[1].URL)
	defer conn1.Close()
	ch1, err := conn1.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch1.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		t.Helper()
		var dcs []*amqp.DeferredConfirmation
		for i := from; i < to; i++ {
			dc, err := ch1.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, Body: fmt.Appendf(nil, "m%d", i)})
			if err != nil {
				t.Fatal(err)
			}
			dcs = append(dcs, dc)
		}
		for i, dc := range dcs {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				t.Fatalf("confirm of message %d: ack %v, %v", from+i, ok, err)
			}
		}
	}
	publish(0, before)

	closed := conn0.NotifyClose(make(chan *amqp.Error, 1))
	timed(t, "StopNode(0)", func() error { return c.StopNode(ctx, 0) })
	waitClosed(t, ctx, closed)
	refused(t, c.Nodes[0].Addr())
	// Writes go on with two of three replicas.
	timed(t, "publishing with node 0 down", func() error { publish(before, before+after); return nil })

	conn2 := dial(t, c.Nodes[2].URL)
	defer conn2.Close()
	ch2, err := conn2.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch2.Qos(before+after, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch2.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range before + after {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatalf("deliveries closed after %d messages", i)
			}
			if want := fmt.Sprintf("m%d", i); string(d.Body) != want {
				t.Fatalf("message %d is %q, want %q", i, d.Body, want)
			}
			if i == before+after-1 {
				if err := d.Ack(true); err != nil {
					t.Fatal(err)
				}
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages: %v", i, before+after, ctx.Err())
		}
	}
	q = listQueue(t, ctx, c.Nodes[2], queue)
	t.Logf("with node 0 down: leader %s, members %v", q.Leader, q.Members)
	if q.Leader == c.Nodes[0].Node {
		t.Errorf("leader is the stopped node")
	}

	timed(t, "StartNode(0)", func() error { return c.StartNode(ctx, 0) })
	timed(t, "WaitRunning", func() error { return c.WaitRunning(ctx) })
	if _, err := ch2.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
}

// TestStartClusterTimeout checks that ctx bounds StartCluster and that a
// failed start leaves no node directory behind.
func TestStartClusterTimeout(t *testing.T) {
	t.Parallel()
	needServer(t)
	if _, err := StartCluster(context.Background(), 0); err == nil {
		t.Error("StartCluster with 0 nodes succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	c, err := StartCluster(ctx, 3)
	if err == nil {
		c.Stop(context.Background())
		t.Fatal("StartCluster started a cluster in under 2 seconds")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error does not wrap context.DeadlineExceeded: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("StartCluster took %v after a 2s timeout", d)
	}
	t.Logf("after %v: %v", time.Since(start), err)
	dirs, _ := filepath.Glob(filepath.Join(parentDir(), fmt.Sprintf("warren-%d-*", os.Getpid())))
	for _, dir := range dirs {
		if _, mine := live.Load(dir); !mine {
			t.Errorf("failed start left %s behind", dir)
		}
	}
}

// clusterHold is the child mode in which TestClusterChild starts a cluster
// and waits to be killed.
const clusterHold = "cluster-hold"

// TestClusterChild runs in the child process of TestClusterKilledOwner.
func TestClusterChild(t *testing.T) {
	if os.Getenv(childEnv) != clusterHold {
		t.Skip("only runs in a child process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range c.Nodes {
		fmt.Printf("NODE %s %d\n", b.node.dir, b.node.pgid)
	}
	fmt.Println("CLUSTER UP")
	<-ctx.Done() // until killed
}

// TestClusterKilledOwner kills a process that runs a cluster, as a test
// timeout would, and checks that all its nodes halt and are reaped.
func TestClusterKilledOwner(t *testing.T) {
	needClusterTests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd, out := runChild(t, ctx, clusterHold)
	cmd.Args = append(cmd.Args, "-test.run=^TestClusterChild$") // the last -test.run wins
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for !strings.Contains(out.String(), "CLUSTER UP") {
		select {
		case <-ctx.Done():
			t.Fatalf("child did not start a cluster:\n%s", out)
		case err := <-exited:
			t.Fatalf("child exited (%v) without starting a cluster:\n%s", err, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
	dirs := map[string]int{}
	for _, line := range strings.Split(out.String(), "\n") {
		var dir string
		var pid int
		if _, err := fmt.Sscanf(line, "NODE %s %d", &dir, &pid); err == nil {
			dirs[dir] = pid
		}
	}
	if len(dirs) != 3 {
		t.Fatalf("child reported %d nodes, want 3:\n%s", len(dirs), out)
	}
	cmd.Process.Kill()
	<-exited

	deadline := time.Now().Add(15 * time.Second)
	for dir, pid := range dirs {
		for pidAlive(pid) {
			if time.Now().After(deadline) {
				killGroup(pid)
				t.Fatalf("node process %d (%s) still alive after its owner was killed", pid, dir)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	reapStale(t.Logf)
	for dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("node dir %s not reaped: %v", dir, err)
		}
	}
}

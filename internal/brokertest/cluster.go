package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// clusterPoll is how often WaitRunning asks for the cluster status.
const clusterPoll = 250 * time.Millisecond

// Cluster is a RabbitMQ cluster of private nodes started by [StartCluster],
// or of controllable brokers (containers) joined by [NewCluster].
//
// StopNode, KillNode, StartNode, Disconnect, Connect and Stop may be called
// from several goroutines; they run one at a time. Controlling a node
// through its [Broker] (Ctl, StopApp, StartApp) at the same time as
// StopNode, KillNode or StartNode on the same node is not supported.
type Cluster struct {
	// Nodes are the cluster's nodes. The others joined Nodes[0].
	Nodes []*Broker

	booted time.Duration

	mu      sync.Mutex
	stopped bool
	stopErr error
}

// StartCluster starts n private RabbitMQ nodes (see [StartNode]) and joins
// them into one cluster: nodes 2..n run "rabbitmqctl stop_app", "reset",
// "join_cluster NODE1" and "start_app" one after the other. The nodes boot
// in parallel, each with its own name, directory, AMQP port and Erlang
// distribution port (the Erlang port mapper, epmd on port 4369, is shared
// with every other Erlang node on the machine), and they share one Erlang
// cookie. StartCluster returns when "rabbitmqctl cluster_status" reports all
// n nodes running and every AMQP listener answers. ctx bounds the whole
// start, which takes 15 to 20 s for three nodes on two cores.
//
// Like single private nodes, the nodes halt by themselves when the process
// that started them exits, and StartCluster first reaps leftover nodes of
// exited processes. The caller must call [Cluster.Stop].
func StartCluster(ctx context.Context, n int) (*Cluster, error) {
	return startCluster(ctx, n, Options{})
}

func startCluster(ctx context.Context, n int, opts Options) (*Cluster, error) {
	start := time.Now()
	if n < 1 {
		return nil, fmt.Errorf("brokertest: a cluster needs at least one node, not %d", n)
	}
	sbin, err := locateSbin(opts.sbinDir)
	if err != nil {
		return nil, err
	}
	reapStale(opts.logf)

	// Pick all ports at once so that the parallel boots never pick the same.
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	cookie := randomCookie()
	c := &Cluster{Nodes: make([]*Broker, n)}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c.Nodes[i], errs[i] = bootRetry(ctx, sbin, nodeConfig{cookie: cookie, ports: ports[2*i : 2*i+2]})
		})
	}
	wg.Wait()
	// The nodes that booted are in live, so a concurrent reaper leaves them
	// alone; drop the others from Nodes so that Stop skips them.
	c.Nodes = slices.DeleteFunc(c.Nodes, func(b *Broker) bool { return b == nil })
	if err := errors.Join(errs...); err != nil {
		c.Stop(ctx) // kills at once if ctx is done
		return nil, err
	}
	if err := c.join(ctx); err != nil {
		c.Stop(ctx)
		return nil, err
	}
	c.booted = time.Since(start)
	return c, nil
}

// NewCluster joins brokers that run but are not clustered yet, such as
// containers started on one network, into one cluster, as StartCluster
// joins its private nodes: nodes[1:] join nodes[0], and NewCluster returns
// when "rabbitmqctl cluster_status" reports all of them running and every
// AMQP listener answers. Each broker must be controllable (a private node,
// or a [Broker.Control]) and name its Erlang node in Broker.Node, and the
// nodes must share an Erlang cookie.
//
// The cluster owns the brokers: [Cluster.Stop] stops them, and so does
// NewCluster when it fails.
func NewCluster(ctx context.Context, nodes []*Broker) (*Cluster, error) {
	start := time.Now()
	c := &Cluster{Nodes: slices.Clone(nodes)}
	var err error
	if len(nodes) == 0 {
		err = errors.New("brokertest: a cluster needs at least one node")
	}
	for _, b := range nodes {
		switch {
		case b == nil:
			err = errors.New("brokertest: NewCluster: nil broker")
		case !b.Controllable() || b.Node == "":
			err = fmt.Errorf("brokertest: NewCluster: %s is not controllable or has no node name", b)
		}
	}
	c.Nodes = slices.DeleteFunc(c.Nodes, func(b *Broker) bool { return b == nil })
	if err == nil {
		err = c.join(ctx)
	}
	if err != nil {
		c.Stop(ctx)
		return nil, err
	}
	c.booted = time.Since(start)
	return c, nil
}

// join joins Nodes[1:] to Nodes[0] and waits until the cluster reports them
// all running.
func (c *Cluster) join(ctx context.Context) error {
	first := c.Nodes[0].Node
	for _, b := range c.Nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"reset"}, {"join_cluster", first}, {"start_app"}} {
			if _, err := b.Ctl(ctx, args...); err != nil {
				return fmt.Errorf("brokertest: joining %s to %s: %w", b.Node, first, err)
			}
		}
	}
	if err := c.WaitRunning(ctx); err != nil {
		return err
	}
	for _, b := range c.Nodes {
		if err := b.waitAMQP(ctx); err != nil {
			return err
		}
	}
	return nil
}

// URLs returns the AMQP URLs of the nodes, in the order of Nodes.
func (c *Cluster) URLs() []string {
	urls := make([]string, len(c.Nodes))
	for i, b := range c.Nodes {
		urls[i] = b.URL
	}
	return urls
}

// BootTime returns how long StartCluster took.
func (c *Cluster) BootTime() time.Duration { return c.booted }

// Stop stops all nodes in parallel, as [Broker.Stop] does, and removes their
// directories. Stop is idempotent: later calls return the first call's
// result.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return c.stopErr
	}
	c.stopped = true
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, b := range c.Nodes {
		wg.Go(func() { errs[i] = b.Stop(ctx) })
	}
	wg.Wait()
	c.stopErr = errors.Join(errs...)
	return c.stopErr
}

// StopNode stops node i's Erlang VM ("rabbitmqctl stop" on a private node,
// `docker stop` on a container; SIGKILL if that does not end it in time)
// and waits for it to exit: its AMQP clients lose their connections and its
// AMQP port refuses new ones. The node's name, data and ports stay reserved
// for [Cluster.StartNode], and the other nodes keep it as a (stopped)
// cluster member.
//
// To stop only the RabbitMQ application and keep the Erlang VM, use
// Nodes[i].StopApp. StopNode of a stopped node does nothing.
func (c *Cluster) StopNode(ctx context.Context, i int) error {
	n, err := c.lockNode(i)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	if running, err := n.NodeRunning(ctx); err != nil || !running {
		return err
	}
	return n.StopNode(ctx)
}

// KillNode kills node i's Erlang VM with SIGKILL, as a crash would, and
// waits (at most 10 s) for it to exit. Like after [Cluster.StopNode],
// [Cluster.StartNode] starts it again. KillNode of a stopped node does
// nothing.
func (c *Cluster) KillNode(i int) error {
	n, err := c.lockNode(i)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	if running, err := n.NodeRunning(ctx); err != nil || !running {
		return err
	}
	return n.KillNode(ctx)
}

// StartNode starts node i again after [Cluster.StopNode] or
// [Cluster.KillNode], with the same name, directory, cookie and ports, and
// waits until its AMQP listener answers. The node rejoins the cluster by
// itself; [Cluster.WaitRunning] waits until the cluster reports it running.
// StartNode fails if the node is still running.
//
// As RabbitMQ requires, a node restarts only while a node that ran when it
// stopped is running again: after stopping all nodes, start the last one
// stopped first. Until then StartNode waits for its peers, bounded by ctx.
func (c *Cluster) StartNode(ctx context.Context, i int) error {
	n, err := c.lockNode(i)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	b := c.Nodes[i]
	running, err := n.NodeRunning(ctx)
	if err != nil {
		return err
	}
	if running {
		return fmt.Errorf("brokertest: node %s is still running", b.Node)
	}
	if err := n.StartNode(ctx); err != nil {
		return err
	}
	return b.waitAMQP(ctx)
}

// Disconnect cuts node i off from the other nodes (and from its clients),
// as a network partition would, until [Cluster.Connect]; the node keeps
// running. It returns [ErrUnsupported] unless the node's controller is a
// [Partitioner] (a container on the cluster's network).
func (c *Cluster) Disconnect(ctx context.Context, i int) error {
	return c.partition(ctx, i, "disconnecting", Partitioner.Disconnect)
}

// Connect joins node i to the cluster's network again after
// [Cluster.Disconnect].
func (c *Cluster) Connect(ctx context.Context, i int) error {
	return c.partition(ctx, i, "connecting", Partitioner.Connect)
}

// partition runs op, a Partitioner method, on node i's controller under
// c.mu; what names op in the ErrUnsupported error for a node whose
// controller cannot partition.
func (c *Cluster) partition(ctx context.Context, i int, what string, op func(Partitioner, context.Context) error) error {
	n, err := c.lockNode(i)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	p, ok := n.(Partitioner)
	if !ok {
		return fmt.Errorf("%w: %s %s", ErrUnsupported, what, c.Nodes[i])
	}
	return op(p, ctx)
}

// lockNode locks c.mu and returns the controller of node i, or returns an
// error with c.mu unlocked.
func (c *Cluster) lockNode(i int) (Controller, error) {
	if i < 0 || i >= len(c.Nodes) {
		return nil, fmt.Errorf("brokertest: no node %d in a cluster of %d", i, len(c.Nodes))
	}
	c.mu.Lock()
	b := c.Nodes[i]
	if c.stopped || b.isStopped() || (b.node != nil && b.node.stopped.Load()) {
		c.mu.Unlock()
		return nil, fmt.Errorf("brokertest: node %s is stopped for good", b.Node)
	}
	return b.controller(), nil
}

// RunningNodes returns the names of the nodes in which the RabbitMQ
// application runs, as "rabbitmqctl cluster_status" on node i reports them.
func (c *Cluster) RunningNodes(ctx context.Context, i int) ([]string, error) {
	if i < 0 || i >= len(c.Nodes) {
		return nil, fmt.Errorf("brokertest: no node %d in a cluster of %d", i, len(c.Nodes))
	}
	out, err := c.Nodes[i].Ctl(ctx, "cluster_status", "--formatter", "json")
	if err != nil {
		return nil, err
	}
	var status struct {
		Running []string `json:"running_nodes"`
	}
	// Skip anything the CLI prints before the JSON document.
	if j := strings.IndexByte(out, '{'); j > 0 {
		out = out[j:]
	}
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		return nil, fmt.Errorf("brokertest: parsing cluster_status of %s: %w: %s", c.Nodes[i].Node, err, out)
	}
	slices.Sort(status.Running)
	return status.Running, nil
}

// WaitRunning waits until "rabbitmqctl cluster_status", asked of the first
// node that answers, reports every node of the cluster running, or until ctx
// ends.
func (c *Cluster) WaitRunning(ctx context.Context) error {
	want := make([]string, len(c.Nodes))
	for i, b := range c.Nodes {
		want[i] = b.Node
	}
	slices.Sort(want)
	var last string
	for {
		for i := range c.Nodes {
			running, err := c.RunningNodes(ctx, i)
			if err != nil {
				last = err.Error()
				continue
			}
			if slices.Equal(running, want) {
				return nil
			}
			last = fmt.Sprintf("%s reports running %v", c.Nodes[i].Node, running)
			break
		}
		t := time.NewTimer(clusterPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("brokertest: waiting for cluster nodes %v to run: %w (last: %s)", want, ctx.Err(), last)
		case <-t.C:
		}
	}
}

package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeCluster is the shared state of fake container nodes: which nodes run
// and which have joined the first.
type fakeCluster struct {
	mu      sync.Mutex
	running map[string]bool
	joined  map[string]bool
	calls   []string
}

// fakeNode is a Controller (and Pauser, Partitioner) that records what it
// is asked and answers rabbitmqctl cluster_status from fakeCluster.
type fakeNode struct {
	c    *fakeCluster
	name string
}

func (f *fakeNode) record(call string) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	f.c.calls = append(f.c.calls, f.name+" "+call)
}

func (f *fakeNode) Ctl(_ context.Context, args ...string) (string, error) {
	f.record("ctl " + strings.Join(args, " "))
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	switch args[0] {
	case "join_cluster":
		f.c.joined[f.name] = true
	case "cluster_status":
		var running []string
		for n, r := range f.c.running {
			if r && f.c.joined[n] {
				running = append(running, n)
			}
		}
		out, _ := json.Marshal(map[string]any{"running_nodes": running})
		return "Cluster status of node " + f.name + " ...\n" + string(out), nil
	case "fail":
		return "", errors.New("fake failure")
	}
	return "", nil
}

func (f *fakeNode) setRunning(r bool) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	f.c.running[f.name] = r
}

func (f *fakeNode) StopNode(context.Context) error { f.record("stop"); f.setRunning(false); return nil }
func (f *fakeNode) KillNode(context.Context) error { f.record("kill"); f.setRunning(false); return nil }
func (f *fakeNode) StartNode(context.Context) error {
	f.record("start")
	f.setRunning(true)
	return nil
}
func (f *fakeNode) NodeRunning(context.Context) (bool, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	return f.c.running[f.name], nil
}
func (f *fakeNode) Pause(context.Context) error      { f.record("pause"); return nil }
func (f *fakeNode) Unpause(context.Context) error    { f.record("unpause"); return nil }
func (f *fakeNode) Disconnect(context.Context) error { f.record("disconnect"); return nil }
func (f *fakeNode) Connect(context.Context) error    { f.record("connect"); return nil }

// amqpAnswerer listens on loopback and answers the AMQP protocol header
// with the first byte of a method frame, as a broker's listener would.
func amqpAnswerer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{1})
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func TestControllerDrivesAContainerBroker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fc := &fakeCluster{running: map[string]bool{"rabbit@a": true}, joined: map[string]bool{}}
	stops := 0
	b := &Broker{
		URL:     "amqp://guest:guest@" + amqpAnswerer(t) + "/",
		Node:    "rabbit@a",
		Control: &fakeNode{c: fc, name: "rabbit@a"},
		OnStop:  func(context.Context) error { stops++; return nil },
	}
	if !b.Controllable() || b.Private() {
		t.Fatalf("Controllable %v, Private %v; want true, false", b.Controllable(), b.Private())
	}
	if _, err := b.Ctl(ctx, "status"); err != nil {
		t.Fatal(err)
	}
	if err := b.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Ctl(ctx, "fail"); err == nil {
		t.Error("a failing Ctl returned nil")
	}
	if err := b.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Unpause(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"rabbit@a ctl status", "rabbit@a ctl stop_app", "rabbit@a ctl start_app", "rabbit@a ctl fail", "rabbit@a pause", "rabbit@a unpause"}
	if !slices.Equal(fc.calls, want) {
		t.Errorf("calls %q, want %q", fc.calls, want)
	}
	if err := b.Stop(ctx); err != nil || stops != 1 {
		t.Errorf("Stop: %v, OnStop called %d times; want nil, 1", err, stops)
	}

	plain := &Broker{URL: "amqp://127.0.0.1:1/"}
	if plain.Controllable() {
		t.Error("a broker without Control is Controllable")
	}
	if err := plain.Pause(ctx); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Pause without a Pauser: %v, want ErrUnsupported", err)
	}
}

func TestNewClusterJoinsAndControlsContainerNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fc := &fakeCluster{running: map[string]bool{}, joined: map[string]bool{"rabbit@n0": true}}
	var stops atomic.Int32 // Cluster.Stop stops the nodes in parallel
	var nodes []*Broker
	for _, name := range []string{"rabbit@n0", "rabbit@n1", "rabbit@n2"} {
		fc.running[name] = true
		nodes = append(nodes, &Broker{
			URL:     "amqp://guest:guest@" + amqpAnswerer(t) + "/",
			Node:    name,
			Control: &fakeNode{c: fc, name: name},
			OnStop:  func(context.Context) error { stops.Add(1); return nil },
		})
	}
	c, err := NewCluster(ctx, nodes)
	if err != nil {
		t.Fatal(err)
	}
	wantJoin := []string{
		"rabbit@n1 ctl stop_app", "rabbit@n1 ctl reset", "rabbit@n1 ctl join_cluster rabbit@n0", "rabbit@n1 ctl start_app",
		"rabbit@n2 ctl stop_app", "rabbit@n2 ctl reset", "rabbit@n2 ctl join_cluster rabbit@n0", "rabbit@n2 ctl start_app",
	}
	if got := fc.calls[:len(wantJoin)]; !slices.Equal(got, wantJoin) {
		t.Errorf("join calls %q, want %q", got, wantJoin)
	}
	fc.calls = nil

	if err := c.StopNode(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode(ctx, 2); err != nil { // stopped already: nothing to do
		t.Fatal(err)
	}
	if err := c.StartNode(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.StartNode(ctx, 2); err == nil {
		t.Error("StartNode of a running node succeeded")
	}
	if err := c.KillNode(1); err != nil {
		t.Fatal(err)
	}
	if err := c.StartNode(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitRunning(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx, 0); err != nil {
		t.Fatal(err)
	}
	var control []string
	for _, call := range fc.calls {
		if !strings.Contains(call, "cluster_status") {
			control = append(control, call)
		}
	}
	want := []string{"rabbit@n2 stop", "rabbit@n2 start", "rabbit@n1 kill", "rabbit@n1 start", "rabbit@n0 disconnect", "rabbit@n0 connect"}
	if !slices.Equal(control, want) {
		t.Errorf("control calls %q, want %q", control, want)
	}
	if err := c.Stop(ctx); err != nil || stops.Load() != 3 {
		t.Errorf("Stop: %v, %d brokers stopped; want nil, 3", err, stops.Load())
	}
	if err := c.StartNode(ctx, 0); err == nil {
		t.Error("StartNode after Stop succeeded")
	}

	// A broker that cannot be controlled is refused, and the others stopped.
	stops.Store(0)
	_, err = NewCluster(ctx, []*Broker{
		{URL: "amqp://127.0.0.1:1/", Node: "rabbit@x", OnStop: func(context.Context) error { stops.Add(1); return nil }},
		{URL: "amqp://127.0.0.1:1/", OnStop: func(context.Context) error { stops.Add(1); return nil }},
	})
	if err == nil || stops.Load() != 2 {
		t.Errorf("NewCluster of uncontrollable brokers: %v, %d stopped; want an error, 2", err, stops.Load())
	}
}

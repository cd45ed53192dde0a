package brokertest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// controlOnly is a Controller that cannot partition (not a Partitioner).
type controlOnly struct{ Controller }

// Cluster.Disconnect and Connect call the node's Partitioner, refuse a node
// whose controller is none with ErrUnsupported naming what was asked, and
// refuse a node that does not exist or is stopped for good.
func TestClusterDisconnectAndConnectGoThroughThePartitioner(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fc := &fakeCluster{running: map[string]bool{}, joined: map[string]bool{}}
	c := &Cluster{Nodes: []*Broker{
		{Node: "rabbit@n0", Control: &fakeNode{c: fc, name: "rabbit@n0"}},
		{Node: "rabbit@n1", Control: controlOnly{&fakeNode{c: fc, name: "rabbit@n1"}}},
	}}
	if err := c.Disconnect(ctx, 0); err != nil {
		t.Fatalf("Disconnect(0): %v", err)
	}
	if err := c.Connect(ctx, 0); err != nil {
		t.Fatalf("Connect(0): %v", err)
	}
	if want := []string{"rabbit@n0 disconnect", "rabbit@n0 connect"}; !slices.Equal(fc.calls, want) {
		t.Errorf("calls %q, want %q", fc.calls, want)
	}
	for _, tc := range []struct {
		what string
		op   func(context.Context, int) error
	}{{"disconnecting", c.Disconnect}, {"connecting", c.Connect}} {
		err := tc.op(ctx, 1)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tc.what+" ") {
			t.Errorf("%s a node that cannot partition: got %v, want ErrUnsupported saying %q", tc.what, err, tc.what)
		}
		if err := tc.op(ctx, 2); err == nil || errors.Is(err, ErrUnsupported) {
			t.Errorf("%s node 2 of 2: got %v, want an error for a missing node", tc.what, err)
		}
	}
	c.stopped = true
	if err := c.Disconnect(ctx, 0); err == nil {
		t.Error("Disconnect after Stop: got nil, want an error")
	}
	if len(fc.calls) != 2 {
		t.Errorf("calls %q after the refusals, want none more", fc.calls)
	}
}

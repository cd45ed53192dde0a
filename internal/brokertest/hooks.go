package brokertest

// Hooks through which the public package warrentest (a module of its own,
// which brings testcontainers-go) serves warren's own test modules: they
// use internal API on the brokers warrentest finds, and the containers it
// starts.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

var (
	hooksMu     sync.Mutex
	mainHooks   []func(*Broker)
	clusterProv ClusterProvider
)

// OnMain registers f to be called by [RunMain] with the broker it found
// (nil if none) before the tests run. A test package whose TestMain calls
// warrentest.Run uses it to keep the internal *Broker for its helpers.
func OnMain(f func(*Broker)) {
	hooksMu.Lock()
	defer hooksMu.Unlock()
	mainHooks = append(mainHooks, f)
}

func notifyMain(b *Broker) {
	hooksMu.Lock()
	hooks := slices.Clone(mainHooks)
	hooksMu.Unlock()
	for _, f := range hooks {
		f(b)
	}
}

// ClusterProvider starts n RabbitMQ nodes of version v ("3.10", "4.3") in
// containers and joins them into a cluster (see [NewCluster]).
type ClusterProvider func(ctx context.Context, v string, n int) (*Cluster, error)

// RegisterClusterProvider registers the function [StartContainerCluster]
// calls. warrentest registers one when it is linked in. A later
// registration replaces an earlier one; nil unregisters.
func RegisterClusterProvider(p ClusterProvider) {
	hooksMu.Lock()
	defer hooksMu.Unlock()
	clusterProv = p
}

// StartContainerCluster starts an n-node cluster of RabbitMQ version v in
// containers through the registered [ClusterProvider]. It fails when none is
// registered. The caller must call [Cluster.Stop].
func StartContainerCluster(ctx context.Context, v string, n int) (*Cluster, error) {
	hooksMu.Lock()
	p := clusterProv
	hooksMu.Unlock()
	if p == nil {
		return nil, errors.New("brokertest: no container cluster provider is registered (import warrentest)")
	}
	return p(ctx, v, n)
}

var containersUsed atomic.Bool

// MarkContainersUsed records that this process asked testcontainers-go for
// a container. Its Docker clients keep HTTP connections (and so goroutines)
// that a leak check after the tests must allow; see [ContainersUsed].
func MarkContainersUsed() { containersUsed.Store(true) }

// ContainersUsed reports whether [MarkContainersUsed] was called.
func ContainersUsed() bool { return containersUsed.Load() }

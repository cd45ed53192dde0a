package warren

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// EndpointOrder is the order in which a Client with several endpoints
// tries them (see DialCluster and WithEndpointOrder).
type EndpointOrder int

const (
	// ShuffleEndpoints tries the endpoints in an order shuffled once when
	// the Client is made, then round the circle: clients of one cluster
	// spread over its nodes instead of all piling onto the first. It is
	// the default, as in RabbitMQ's Java client.
	ShuffleEndpoints EndpointOrder = iota
	// EndpointsInOrder tries them in the order given (a preferred node
	// first, say), then round the circle.
	EndpointsInOrder
)

// DialCluster is Dial for a broker reachable at several endpoints, the
// nodes of a RabbitMQ cluster (or its load balancers): urls holds one
// amqp:// or amqps:// URL per endpoint (HostURLs builds them from one URL
// and a host list). The Client holds one connection, to one endpoint, at a
// time.
//
// DialCluster tries the endpoints in the order WithEndpointOrder sets
// (shuffled by default) until one accepts, each dial bounded by ctx and,
// when there are several, by the reconnect policy's DialTimeout (30 s
// without WithReconnect); it fails only when every endpoint failed, with
// all their errors. With WithReconnect
// a lost connection is replaced by dialling the endpoints that follow the
// lost one, round the circle: the next node first, then the others, and
// only after a whole round has failed does the policy's backoff wait.
// Client.Endpoint, ClientStats.Endpoint, StateEvent.Endpoint and the log
// say which endpoint is in use.
//
// Every URL is checked before anything is dialled, as Dial checks its one:
// a malformed URL, or an amqp:// one with WithTLS, is an ErrInvalidArgument
// naming the endpoint by its index (never quoting the URL), not a failover
// surprise.
func DialCluster(ctx context.Context, urls []string, opts ...Option) (*Client, error) {
	if len(urls) == 0 {
		return nil, fmt.Errorf("%w: DialCluster: no endpoints", ErrInvalidArgument)
	}
	o, err := parseOptions(opts)
	if err != nil {
		return nil, err
	}
	for i, u := range urls {
		// What dial checks of a URL, checked now for every endpoint.
		scratch := o
		if _, _, err := checkURL(fmt.Sprintf("DialCluster: endpoint %d", i), u, &scratch); err != nil {
			return nil, err
		}
	}
	eps := append([]string(nil), urls...)
	if o.order == ShuffleEndpoints {
		rand.Shuffle(len(eps), func(i, j int) { eps[i], eps[j] = eps[j], eps[i] })
	}
	return dialClient(ctx, eps, o)
}

// HostURLs returns one URL per host: base (credentials, vhost, query
// parameters, scheme) with its host and port replaced. A host without a
// port keeps base's port, or the scheme's default. For DialCluster:
//
//	urls, err := warren.HostURLs("amqp://app:secret@/orders", "rabbit-1", "rabbit-2:5673", "rabbit-3")
func HostURLs(base string, hosts ...string) ([]string, error) {
	_, u, err := parseURL("HostURLs: base", base)
	if err != nil {
		return nil, err
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%w: HostURLs: no hosts", ErrInvalidArgument)
	}
	port := u.Port()
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		host, p, err := net.SplitHostPort(h)
		if err != nil { // no port
			host, p = strings.Trim(h, "[]"), port
		}
		if host == "" || strings.ContainsAny(host, "/@?#") {
			return nil, fmt.Errorf("%w: HostURLs: bad host %q", ErrInvalidArgument, h)
		}
		v := *u
		v.Host = host
		if strings.Contains(host, ":") {
			v.Host = "[" + host + "]"
		}
		if p != "" {
			v.Host = net.JoinHostPort(host, p)
		}
		out = append(out, v.String())
	}
	return out, nil
}

// Endpoint returns the endpoint of the connection in use (or of the lost
// one, while reconnecting), as a URL without the password.
func (c *Client) Endpoint() string { return c.s().endpoint }

// dialNext dials the endpoint at c.next, bounded by ctx and (when
// positive) by per, and moves c.next on to the endpoint after it: the next
// to try, whether this dial fails or its connection is later lost.
func (c *Client) dialNext(ctx context.Context, per time.Duration) (*session, error) {
	i := c.next
	c.next = (c.next + 1) % len(c.endpoints)
	if per > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, per)
		defer cancel()
	}
	return dial(ctx, c.endpoints[i].url(), c.opts)
}

// dialRound dials each endpoint once, from c.next on, until one accepts.
func (c *Client) dialRound(ctx context.Context, per time.Duration) (*session, error) {
	var errs []error
	for range c.endpoints {
		s, err := c.dialNext(ctx, per)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
		if len(c.endpoints) > 1 {
			c.opts.logger.Warn("warren: endpoint failed", "err", err)
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, fmt.Errorf("warren: all %d endpoints failed: %w", len(errs), errors.Join(errs...))
}

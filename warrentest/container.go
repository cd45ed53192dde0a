package warrentest

// RabbitMQ in containers, started by testcontainers-go: step 2 (the version
// WARREN_BROKER names) and step 4 (the last resort) of the package
// documentation, and the clusters of warren's own tests. Every container
// and network carries warrentest's labels, and those left by test
// processes of this machine that have exited are removed before a new one
// starts. A container's node is controlled through the Docker engine:
// rabbitmqctl by exec, stop, kill, start, pause and network disconnect.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dnetwork "github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/rabbitmq"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	dockerCheckTimeout = 2 * time.Second
	// containerStopGrace bounds a graceful `docker stop` of a node before
	// the engine kills it.
	containerStopGrace = 30 * time.Second

	labelTest  = "org.warrenmq.warren.test"  // "true" on everything warrentest creates
	labelOwner = "org.warrenmq.warren.owner" // "HOST/PID" of the test process
	labelWant  = "org.warrenmq.warren.version"
)

func init() {
	brokertest.RegisterClusterProvider(startContainerCluster)
}

var (
	dockerMu  sync.Mutex
	dockerCli *client.Client
)

// docker returns the process's Docker client, made on first use. It keeps
// no idle connections, so it leaves no goroutine behind between calls.
func docker() (*client.Client, error) {
	dockerMu.Lock()
	defer dockerMu.Unlock()
	if dockerCli != nil {
		return dockerCli, nil
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation(), withoutKeepAlives)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if err := checkLocalEngine(cli.DaemonHost()); err != nil {
		cli.Close()
		return nil, err
	}
	dockerCli = cli
	return cli, nil
}

// withoutKeepAlives is a client option that closes every connection after
// its request. Options run before the client wraps its transport for
// tracing, so the transport is still the *http.Transport.
func withoutKeepAlives(c *client.Client) error {
	tr, ok := c.HTTPClient().Transport.(*http.Transport)
	if !ok {
		return fmt.Errorf("docker client: transport %T is not an *http.Transport", c.HTTPClient().Transport)
	}
	tr.DisableKeepAlives = true
	return nil
}

// closeDocker closes the Docker client, if one was made.
func closeDocker() {
	dockerMu.Lock()
	defer dockerMu.Unlock()
	if dockerCli != nil {
		dockerCli.Close()
		dockerCli = nil
	}
}

// checkLocalEngine refuses a Docker engine that is not on this machine: a
// container publishes AMQP on a loopback port.
func checkLocalEngine(host string) error {
	u, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("docker host %q: %w", host, err)
	}
	switch u.Scheme {
	case "unix", "npipe":
		return nil
	case "tcp", "http", "https":
		if h := u.Hostname(); h == "localhost" || net.ParseIP(h).IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("docker host %s is not on this machine: warrentest only uses a local engine", host)
}

// dockerAnswers pings the Docker engine and fails within dockerCheckTimeout
// when none answers, so that testcontainers-go is never started without one
// (it panics or waits for a long time when the engine is missing).
func dockerAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dockerCheckTimeout)
	defer cancel()
	cli, err := docker()
	if err != nil {
		return err
	}
	if _, err := cli.Ping(ctx); err != nil {
		return fmt.Errorf("no Docker engine answers at %s: %w", cli.DaemonHost(), err)
	}
	return nil
}

// imageFor returns the image for RabbitMQ version v: see the package
// documentation.
func imageFor(ctx context.Context, cli *client.Client, v string) string {
	if img := os.Getenv(imageEnv(v)); img != "" {
		return img
	}
	local := "warren-rabbitmq:" + v
	if _, err := cli.ImageInspect(ctx, local); err == nil {
		return local
	}
	return "rabbitmq:" + v + "-management"
}

func imageEnv(v string) string { return "WARREN_RABBITMQ_IMAGE_" + strings.ReplaceAll(v, ".", "_") }

// ownerLabel identifies this test process among the engine's containers.
func ownerLabel() string {
	host, _ := os.Hostname()
	return host + "/" + strconv.Itoa(os.Getpid())
}

func labels(v string) map[string]string {
	return map[string]string{labelTest: "true", labelOwner: ownerLabel(), labelWant: v}
}

var reapOnce sync.Once

// reapLeftovers removes the containers and networks that test processes of
// this machine left behind when they exited without cleaning up (killed on
// timeout, say). Those of live processes, and of other machines, stay.
func reapLeftovers(ctx context.Context, cli *client.Client, logf func(string, ...any)) {
	reapOnce.Do(func() {
		host, _ := os.Hostname()
		stale := func(labels map[string]string) bool {
			h, pid, ok := strings.Cut(labels[labelOwner], "/")
			if !ok || h != host {
				return false
			}
			n, err := strconv.Atoi(pid)
			return err == nil && n > 0 && n != os.Getpid() && pidGone(n)
		}
		f := filters.NewArgs(filters.Arg("label", labelTest+"=true"))
		if cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f}); err == nil {
			for _, c := range cs {
				if stale(c.Labels) {
					err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
					logf("warrentest: removed leftover container %.12s of %s: %v", c.ID, c.Labels[labelOwner], err)
				}
			}
		}
		if ns, err := cli.NetworkList(ctx, dnetwork.ListOptions{Filters: f}); err == nil {
			for _, n := range ns {
				if stale(n.Labels) {
					err := cli.NetworkRemove(ctx, n.ID)
					logf("warrentest: removed leftover network %s of %s: %v", n.Name, n.Labels[labelOwner], err)
				}
			}
		}
	})
}

// freeLoopbackPort returns a TCP port on 127.0.0.1 that was free a moment
// ago. A node's AMQP port is published on a port chosen here rather than by
// the engine, so that it stays the same when the container restarts.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// randHex returns n random bytes as hex.
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// nodeSpec describes one RabbitMQ container to start.
type nodeSpec struct {
	version  string // for the labels; "" when the image was chosen by the user
	image    string
	hostname string                        // the container's host name; the node is rabbit@hostname
	net      *testcontainers.DockerNetwork // nil: the default bridge
	env      map[string]string
}

// startNode starts one RabbitMQ container with testcontainers' RabbitMQ
// module and returns it as a controllable broker whose Stop removes it.
func startNode(ctx context.Context, cli *client.Client, spec nodeSpec) (*brokertest.Broker, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ { // a second try if the port was taken meanwhile
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		env := map[string]string{"RABBITMQ_NODENAME": "rabbit@" + spec.hostname}
		for k, v := range spec.env {
			env[k] = v
		}
		opts := []testcontainers.ContainerCustomizer{
			testcontainers.WithLabels(labels(spec.version)),
			testcontainers.WithEnv(env),
			testcontainers.WithConfigModifier(func(c *container.Config) { c.Hostname = spec.hostname }),
			// Only AMQP, on a loopback port of our choosing (the module also
			// asks for TLS and management ports, which are not needed).
			testcontainers.CustomizeRequestOption(func(req *testcontainers.GenericContainerRequest) error {
				req.ExposedPorts = []string{fmt.Sprintf("127.0.0.1:%d:5672/tcp", port)}
				return nil
			}),
		}
		if spec.net != nil {
			opts = append(opts, network.WithNetwork([]string{spec.hostname}, spec.net))
		}
		brokertest.MarkContainersUsed()
		c, err := rabbitmq.Run(ctx, spec.image, opts...)
		if err != nil {
			_ = testcontainers.TerminateContainer(c)
			lastErr = fmt.Errorf("start %s: %w", spec.image, err)
			if strings.Contains(err.Error(), "already allocated") || strings.Contains(err.Error(), "address already in use") {
				continue
			}
			return nil, lastErr
		}
		ctl := &containerControl{cli: cli, id: c.GetContainerID(), alias: spec.hostname}
		if spec.net != nil {
			ctl.netID = spec.net.ID
		}
		return &brokertest.Broker{
			URL:     fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", port),
			Node:    "rabbit@" + spec.hostname,
			Control: ctl,
			OnStop: func(ctx context.Context) error {
				return testcontainers.TerminateContainer(c, testcontainers.StopContext(ctx))
			},
		}, nil
	}
	return nil, lastErr
}

// containerProvider returns the brokertest container provider for a search:
// a container of the version asked for (WARREN_BROKER), or of image when
// no version is asked for (DefaultImage when image is "").
func containerProvider(image string, logf func(string, ...any)) brokertest.ContainerProvider {
	return func(ctx context.Context, v string) (b *brokertest.Broker, err error) {
		if err := dockerAnswers(ctx); err != nil {
			return nil, err
		}
		// testcontainers-go panics when it cannot settle on a Docker host.
		defer func() {
			if r := recover(); r != nil {
				b, err = nil, fmt.Errorf("testcontainers: %v", r)
			}
		}()
		cli, err := docker()
		if err != nil {
			return nil, err
		}
		reapLeftovers(ctx, cli, logf)
		img := image
		switch {
		case img != "":
		case v != "":
			img = imageFor(ctx, cli, v)
		default:
			img = DefaultImage
		}
		start := time.Now()
		b, err = startNode(ctx, cli, nodeSpec{version: v, image: img, hostname: "rmq-" + randHex(4)})
		if err != nil {
			return nil, err
		}
		b.Source = fmt.Sprintf("container %.12s of %s (node %s, up in %.1fs)",
			b.Control.(*containerControl).id, img, b.Node, time.Since(start).Seconds())
		return b, nil
	}
}

func stopQuietly(b *brokertest.Broker) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = b.Stop(ctx)
}

// startContainerCluster starts n RabbitMQ containers of version v on a
// network of their own, sharing an Erlang cookie, and joins them into a
// cluster. Cluster.Stop removes the containers and the network.
func startContainerCluster(ctx context.Context, v string, n int) (*brokertest.Cluster, error) {
	if err := dockerAnswers(ctx); err != nil {
		return nil, err
	}
	cli, err := docker()
	if err != nil {
		return nil, err
	}
	reapLeftovers(ctx, cli, func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	image := imageFor(ctx, cli, v)
	brokertest.MarkContainersUsed()
	nw, err := network.New(ctx, network.WithLabels(labels(v)))
	if err != nil {
		return nil, fmt.Errorf("cluster network: %w", err)
	}
	removeNet := func() error {
		rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return nw.Remove(rctx)
	}
	// -setcookie works for every image, whoever owns its cookie file.
	cookie := "WARREN" + strings.ToUpper(randHex(10))
	env := map[string]string{
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-setcookie " + cookie,
		"RABBITMQ_CTL_ERL_ARGS":               "-setcookie " + cookie,
	}
	prefix := "rmq-" + randHex(3) + "-"
	nodes := make([]*brokertest.Broker, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			nodes[i], errs[i] = startNode(ctx, cli, nodeSpec{
				version: v, image: image, hostname: prefix + strconv.Itoa(i), net: nw, env: env,
			})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, b := range nodes {
			if b != nil {
				stopQuietly(b)
			}
		}
		return nil, errors.Join(err, removeNet())
	}
	// The network goes with the last node.
	var left atomic.Int32
	left.Store(int32(n))
	for _, b := range nodes {
		terminate := b.OnStop
		b.OnStop = func(ctx context.Context) error {
			err := terminate(ctx)
			if left.Add(-1) == 0 {
				err = errors.Join(err, removeNet())
			}
			return err
		}
	}
	for _, b := range nodes {
		got, err := readVersion(ctx, b.URL)
		if err == nil && !got.matches(v) {
			err = fmt.Errorf("image %s runs RabbitMQ %s, not %s.x", image, got, v)
		}
		if err != nil {
			for _, b := range nodes {
				stopQuietly(b)
			}
			return nil, err
		}
		b.Source = fmt.Sprintf("container of %s: RabbitMQ %s, node %s", image, got, b.Node)
	}
	return brokertest.NewCluster(ctx, nodes)
}

// containerControl controls the RabbitMQ node in a container through the
// Docker engine. It implements brokertest.Controller, Pauser and
// Partitioner.
type containerControl struct {
	cli   *client.Client
	id    string
	netID string // the cluster's network; "" on the default bridge
	alias string // the node's name on netID
}

// Ctl runs rabbitmqctl in the container (with the image's environment, so
// the node's HOME and cookie) and returns its combined output.
func (cc *containerControl) Ctl(ctx context.Context, args ...string) (string, error) {
	out, err := cc.exec(ctx, append([]string{"rabbitmqctl"}, args...))
	if err != nil {
		return out, fmt.Errorf("rabbitmqctl %s in container %.12s: %w: %s",
			strings.Join(args, " "), cc.id, err, strings.TrimSpace(out))
	}
	return out, nil
}

// exec runs cmd in the container and returns its combined output; a
// non-zero exit status is an error.
func (cc *containerControl) exec(ctx context.Context, cmd []string) (string, error) {
	created, err := cc.cli.ContainerExecCreate(ctx, cc.id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", err
	}
	resp, err := cc.cli.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", err
	}
	defer resp.Close()
	stop := context.AfterFunc(ctx, resp.Close) // unblock the copy when ctx ends
	defer stop()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, resp.Reader); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return out.String(), err
	}
	info, err := cc.cli.ContainerExecInspect(ctx, created.ID)
	if err != nil {
		return out.String(), err
	}
	if info.ExitCode != 0 {
		return out.String(), fmt.Errorf("exit status %d", info.ExitCode)
	}
	return out.String(), nil
}

func (cc *containerControl) StopNode(ctx context.Context) error {
	secs := int(containerStopGrace.Seconds())
	if err := cc.cli.ContainerStop(ctx, cc.id, container.StopOptions{Timeout: &secs}); err != nil {
		return fmt.Errorf("docker stop %.12s: %w", cc.id, err)
	}
	return nil
}

func (cc *containerControl) KillNode(ctx context.Context) error {
	if err := cc.cli.ContainerKill(ctx, cc.id, "KILL"); err != nil {
		return fmt.Errorf("docker kill %.12s: %w", cc.id, err)
	}
	for {
		if running, err := cc.NodeRunning(ctx); err != nil || !running {
			return err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("container %.12s still runs after docker kill: %w", cc.id, ctx.Err())
		case <-t.C:
		}
	}
}

func (cc *containerControl) StartNode(ctx context.Context) error {
	if err := cc.cli.ContainerStart(ctx, cc.id, container.StartOptions{}); err != nil {
		return fmt.Errorf("docker start %.12s: %w", cc.id, err)
	}
	return nil
}

func (cc *containerControl) NodeRunning(ctx context.Context) (bool, error) {
	info, err := cc.cli.ContainerInspect(ctx, cc.id)
	if err != nil {
		return false, fmt.Errorf("docker inspect %.12s: %w", cc.id, err)
	}
	return info.State != nil && info.State.Running, nil
}

func (cc *containerControl) Pause(ctx context.Context) error {
	return cc.cli.ContainerPause(ctx, cc.id)
}

func (cc *containerControl) Unpause(ctx context.Context) error {
	return cc.cli.ContainerUnpause(ctx, cc.id)
}

func (cc *containerControl) Disconnect(ctx context.Context) error {
	if cc.netID == "" {
		return fmt.Errorf("%w: container %.12s is on no network of its own", brokertest.ErrUnsupported, cc.id)
	}
	return cc.cli.NetworkDisconnect(ctx, cc.netID, cc.id, false)
}

func (cc *containerControl) Connect(ctx context.Context) error {
	if cc.netID == "" {
		return fmt.Errorf("%w: container %.12s is on no network of its own", brokertest.ErrUnsupported, cc.id)
	}
	return cc.cli.NetworkConnect(ctx, cc.netID, cc.id, &dnetwork.EndpointSettings{Aliases: []string{cc.alias}})
}

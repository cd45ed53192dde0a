package integration

// RabbitMQ in containers, started by testcontainers-go, for brokertest:
//
//   - WARREN_BROKER=3.10 or 4.3 (brokertest.VersionEnv) runs the suite
//     against a container of that version, and the cluster test against
//     three of them on a network of their own; `make test` does it for
//     every version (see the Makefile and .ci/brokers.sh, which builds the
//     images from Debian packages when no registry is reachable);
//   - without it, a container is the last resort when there is no AMQP_URL
//     and no private node can be started.
//
// The image for version V is WARREN_RABBITMQ_IMAGE_V (dots as underscores:
// WARREN_RABBITMQ_IMAGE_4_3), else warren-rabbitmq:V if the engine has it,
// else the official rabbitmq:V-management. Every container carries
// warren's labels; at start, containers and networks left by test
// processes that have exited are removed. A container's node is controlled
// through the Docker engine (brokertest.Controller): rabbitmqctl by exec,
// stop, kill, start, pause and network disconnect.
//
// Traffic stays on this machine: init sets TESTCONTAINERS_HOST_OVERRIDE to
// 127.0.0.1 (without it testcontainers, which believes it runs in a
// container here, sends its connections to the machine's default gateway)
// and disables Ryuk, whose image cannot be pulled; the engine must be local.

import (
	"bytes"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dnetwork "github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/rabbitmq"
	"github.com/testcontainers/testcontainers-go/network"
	"go.uber.org/goleak"

	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	// defaultVersion is the version of a container started without
	// WARREN_BROKER.
	defaultVersion     = "3.10"
	dockerCheckTimeout = 2 * time.Second
	// containerStopGrace bounds a graceful `docker stop` of a node before
	// the engine kills it.
	containerStopGrace = 30 * time.Second

	labelTest  = "org.warrenmq.warren.test"  // "true" on everything the harness creates
	labelOwner = "org.warrenmq.warren.owner" // "HOST/PID" of the test process
	labelWant  = "org.warrenmq.warren.version"
)

// containerStarted records that a container was asked of testcontainers,
// which starts goroutines of its own (see containerLeakIgnores).
var containerStarted atomic.Bool

func init() {
	// Before testcontainers is first called; see the file comment.
	os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	brokertest.RegisterContainerProvider(startContainer)
}

var (
	dockerMu  sync.Mutex
	dockerCli *client.Client
)

// docker returns the process's Docker client, made on first use. It keeps
// no idle connections: a test that checks for leaked goroutines may
// control the broker (each rabbitmqctl is an exec through the engine), and
// an idle keep-alive connection would look like a leak.
func docker() (*client.Client, error) {
	dockerMu.Lock()
	defer dockerMu.Unlock()
	if dockerCli != nil {
		return dockerCli, nil
	}
	cli, err := newDockerClient()
	if err != nil {
		return nil, err
	}
	dockerCli = cli
	return cli, nil
}

func newDockerClient() (*client.Client, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation(), withoutKeepAlives)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if err := checkLocalEngine(cli.DaemonHost()); err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
}

// withoutKeepAlives is a client option that closes every connection after
// its request. Options run before the client wraps its transport for
// tracing, so the transport is still the *http.Transport (which
// HTTPClient's copy of the http.Client shares).
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

// checkLocalEngine refuses a Docker engine that is not on this machine.
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
	return fmt.Errorf("docker host %s is not on this machine: the tests only use a local engine", host)
}

// dockerAnswers pings the Docker engine named by DOCKER_HOST (default: the
// local socket) and fails within dockerCheckTimeout when none answers, so
// that testcontainers-go is never started without one (it panics or waits
// for a long time when the engine is missing).
func dockerAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dockerCheckTimeout)
	defer cancel()
	cli, err := docker()
	if err != nil {
		return err
	}
	if _, err := cli.Ping(ctx); err != nil {
		return fmt.Errorf("no Docker engine answers at %s: %w (.ci/brokers.sh starts one)", cli.DaemonHost(), err)
	}
	return nil
}

// imageFor returns the image to run RabbitMQ version v from; see the file
// comment.
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

func harnessLabels(v string) map[string]string {
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
			if err != nil || n <= 0 {
				return false
			}
			err = syscall.Kill(n, 0)
			return n != os.Getpid() && errors.Is(err, syscall.ESRCH)
		}
		f := filters.NewArgs(filters.Arg("label", labelTest+"=true"))
		if cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f}); err == nil {
			for _, c := range cs {
				if stale(c.Labels) {
					err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
					logf("integration: removed leftover container %.12s of %s: %v", c.ID, c.Labels[labelOwner], err)
				}
			}
		}
		if ns, err := cli.NetworkList(ctx, dnetwork.ListOptions{Filters: f}); err == nil {
			for _, n := range ns {
				if stale(n.Labels) {
					err := cli.NetworkRemove(ctx, n.ID)
					logf("integration: removed leftover network %s of %s: %v", n.Name, n.Labels[labelOwner], err)
				}
			}
		}
	})
}

func stderrf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

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

// nodeSpec describes one RabbitMQ container to start.
type nodeSpec struct {
	version  string
	image    string
	hostname string                        // the container's host name; the node is rabbit@hostname
	net      *testcontainers.DockerNetwork // nil: the default bridge
	env      map[string]string
}

// startNode starts one RabbitMQ container with testcontainers' RabbitMQ
// module and returns it as a controllable Broker whose Stop terminates it.
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
			testcontainers.WithLabels(harnessLabels(spec.version)),
			testcontainers.WithEnv(env),
			testcontainers.WithConfigModifier(func(c *container.Config) { c.Hostname = spec.hostname }),
			// Only AMQP, on a loopback port of our choosing (the module also
			// asks for TLS and management ports, which the tests do not use).
			testcontainers.CustomizeRequestOption(func(req *testcontainers.GenericContainerRequest) error {
				req.ExposedPorts = []string{fmt.Sprintf("127.0.0.1:%d:5672/tcp", port)}
				return nil
			}),
		}
		if spec.net != nil {
			opts = append(opts, network.WithNetwork([]string{spec.hostname}, spec.net))
		}
		containerStarted.Store(true)
		c, err := rabbitmq.Run(ctx, spec.image, opts...)
		if err != nil {
			_ = testcontainers.TerminateContainer(c)
			lastErr = fmt.Errorf("start %s: %w", spec.image, err)
			if strings.Contains(err.Error(), "already allocated") || strings.Contains(err.Error(), "address already in use") {
				continue
			}
			if strings.Contains(err.Error(), "pull") || strings.Contains(err.Error(), "No such image") {
				lastErr = fmt.Errorf("%w (run .ci/brokers.sh %s to build warren-rabbitmq:%s from Debian packages, or name an image in %s)",
					lastErr, spec.version, spec.version, imageEnv(spec.version))
			}
			return nil, lastErr
		}
		ctl := &containerControl{cli: cli, c: c, id: c.GetContainerID(), alias: spec.hostname}
		if spec.net != nil {
			ctl.netID = spec.net.ID
		}
		b := &brokertest.Broker{
			URL:     fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", port),
			Node:    "rabbit@" + spec.hostname,
			Control: ctl,
			OnStop: func(ctx context.Context) error {
				return testcontainers.TerminateContainer(c, testcontainers.StopContext(ctx))
			},
		}
		return b, nil
	}
	return nil, lastErr
}

// startContainer is the container provider: RabbitMQ version v ("" for
// defaultVersion) in a container; Broker.Stop terminates it.
func startContainer(ctx context.Context, v string) (b *brokertest.Broker, err error) {
	if v == "" {
		v = defaultVersion
	}
	if err := dockerAnswers(ctx); err != nil {
		return nil, err
	}
	// testcontainers-go panics when it cannot settle on a Docker host.
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("testcontainers: %v", r)
		}
	}()
	cli, _ := docker()
	reapLeftovers(ctx, cli, stderrf)
	image := imageFor(ctx, cli, v)
	start := time.Now()
	b, err = startNode(ctx, cli, nodeSpec{version: v, image: image, hostname: "rmq-" + randHex(4)})
	if err != nil {
		return nil, err
	}
	got, err := readServerVersion(ctx, b.URL)
	if err == nil && !got.matches(v) {
		err = fmt.Errorf("image %s runs RabbitMQ %s, not %s.x", image, got, v)
	}
	if err != nil {
		stopQuietly(b)
		return nil, err
	}
	b.Source = fmt.Sprintf("testcontainers %s: RabbitMQ %s, node %s, container %.12s, up in %.1fs",
		image, got, b.Node, b.Control.(*containerControl).id, time.Since(start).Seconds())
	return b, nil
}

func stopQuietly(b *brokertest.Broker) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = b.Stop(ctx)
}

// startContainerCluster starts n RabbitMQ containers of version v on a
// network of their own, sharing an Erlang cookie, and joins them into a
// cluster. Cluster.Stop terminates the containers and removes the network.
func startContainerCluster(ctx context.Context, v string, n int) (*brokertest.Cluster, error) {
	if err := dockerAnswers(ctx); err != nil {
		return nil, err
	}
	cli, _ := docker()
	reapLeftovers(ctx, cli, stderrf)
	image := imageFor(ctx, cli, v)
	containerStarted.Store(true)
	nw, err := network.New(ctx, network.WithLabels(harnessLabels(v)))
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
		got, err := readServerVersion(ctx, b.URL)
		if err == nil && !got.matches(v) {
			err = fmt.Errorf("image %s runs RabbitMQ %s, not %s.x", image, got, v)
		}
		if err != nil {
			for _, b := range nodes {
				stopQuietly(b)
			}
			return nil, err
		}
		b.Source = fmt.Sprintf("testcontainers %s: RabbitMQ %s, node %s", image, got, b.Node)
	}
	return brokertest.NewCluster(ctx, nodes)
}

// containerControl controls the RabbitMQ node in a container through the
// Docker engine. It implements brokertest.Controller, Pauser and
// Partitioner.
type containerControl struct {
	cli   *client.Client
	c     testcontainers.Container
	id    string
	netID string // the cluster's network; "" on the default bridge
	alias string // the node's name on netID
}

// Ctl runs rabbitmqctl in the container (with the image's environment:
// ours finds the package's inner script, which runs as root with the
// node's HOME and so its cookie) and returns its combined output.
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
		select {
		case <-ctx.Done():
			return fmt.Errorf("container %.12s still runs after docker kill: %w", cc.id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
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

// checkWantedVersion is brokertest's Check: when WARREN_BROKER names a
// version, the broker found (from AMQP_URL too) must run it.
func checkWantedVersion(ctx context.Context, b *brokertest.Broker) error {
	want := brokertest.WantedVersion()
	if want == "" {
		return nil
	}
	got, err := readServerVersion(ctx, b.URL)
	if err != nil {
		return err
	}
	if !got.matches(want) {
		return fmt.Errorf("%s=%s, but the broker runs RabbitMQ %s", brokertest.VersionEnv, want, got)
	}
	return nil
}

// containerLeakIgnores returns the goleak options TestMain needs when the
// broker came from a container: testcontainers-go's Docker clients keep
// HTTP keep-alive connections, closing them asynchronously. Without a
// container it returns nothing.
func containerLeakIgnores() []goleak.Option {
	if !containerStarted.Load() {
		return nil
	}
	return []goleak.Option{
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	}
}

func TestContainerProviderDockerCheckFailsFastWhenNoEngineAnswers(t *testing.T) {
	faultCheckLeaks(t)
	took, err := faultWithin(t, dockerCheckTimeout+time.Second, "Docker check", func() error {
		return dockerAnswers(context.Background())
	})
	// Either outcome is fine here; what matters is that it comes quickly.
	t.Logf("Docker check after %v: %v", took, err)
	if took > dockerCheckTimeout+500*time.Millisecond {
		t.Errorf("Docker check took %v, want at most %v", took, dockerCheckTimeout+500*time.Millisecond)
	}
}

func TestContainerHarnessRefusesARemoteEngine(t *testing.T) {
	for host, ok := range map[string]bool{
		"unix:///var/run/docker.sock": true,
		"tcp://127.0.0.1:2375":        true,
		"tcp://localhost:2376":        true,
		"tcp://10.0.0.5:2375":         false,
		"tcp://docker.example:2376":   false,
	} {
		if err := checkLocalEngine(host); (err == nil) != ok {
			t.Errorf("checkLocalEngine(%q) = %v, want ok=%v", host, err, ok)
		}
	}
	if got := os.Getenv("TESTCONTAINERS_HOST_OVERRIDE"); got != "127.0.0.1" {
		t.Errorf("TESTCONTAINERS_HOST_OVERRIDE = %q, want 127.0.0.1 (set by the harness itself)", got)
	}
	if got := os.Getenv("TESTCONTAINERS_RYUK_DISABLED"); got != "true" {
		t.Errorf("TESTCONTAINERS_RYUK_DISABLED = %q, want true", got)
	}
}

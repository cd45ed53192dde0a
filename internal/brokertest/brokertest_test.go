package brokertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// startNode starts a private node for a test, skipping the test only when
// rabbitmq-server is not installed and a broker is not required.
func startTestNode(t *testing.T, ctx context.Context) *Broker {
	t.Helper()
	b, err := StartNode(ctx)
	if errors.Is(err, errNotInstalled) && !Required() {
		t.Skipf("cannot start a private node: %v", err)
	}
	if err != nil {
		t.Fatalf("StartNode: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Stop(ctx); err != nil {
			t.Errorf("cleanup Stop: %v", err)
		}
	})
	t.Logf("started %s in %v", b, b.BootTime())
	return b
}

// needServer skips the test if rabbitmq-server is not installed, or fails
// it if a broker is required.
func needServer(t *testing.T) {
	t.Helper()
	if _, err := locateSbin(""); err != nil {
		if Required() {
			t.Fatalf("a broker is required: %v", err)
		}
		t.Skip(err)
	}
}

// missingSbin returns a directory without rabbitmq-server, so that Find cannot
// start a private node.
func missingSbin(t *testing.T) string {
	return filepath.Join(t.TempDir(), "no-such-sbin")
}

// deadPid returns the pid of a process that has already exited.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("running true: %v", err)
	}
	return cmd.Process.Pid
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func dial(t *testing.T, url string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dialing %s: %v", url, err)
	}
	return conn
}

func TestPrivateNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := startTestNode(t, ctx)
	n := b.node

	if !b.Private() || !strings.HasSuffix(b.Node, "@localhost") {
		t.Errorf("Private() = %v, Node = %q", b.Private(), b.Node)
	}
	if want := "amqp://guest:guest@" + b.Addr() + "/"; b.URL != want {
		t.Errorf("URL = %q, want %q", b.URL, want)
	}
	if !strings.Contains(b.Source, b.Node) || !strings.Contains(b.Source, b.Addr()) {
		t.Errorf("Source %q does not name node and address", b.Source)
	}
	if owner, err := readPid(filepath.Join(n.dir, ownerPidFile)); err != nil || owner != os.Getpid() {
		t.Errorf("owner.pid = %d, %v; want %d", owner, err, os.Getpid())
	}
	if err := probeAMQP(ctx, b.Addr(), time.Second); err != nil {
		t.Fatalf("probe: %v", err)
	}

	conn := dial(t, b.URL)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("brokertest", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	out, err := b.Ctl(ctx, "list_connections", "user", "state")
	if err != nil {
		t.Fatalf("Ctl list_connections: %v", err)
	}
	t.Logf("list_connections:\n%s", out)
	if !strings.Contains(out, "guest") {
		t.Errorf("list_connections does not show our connection:\n%s", out)
	}
	if _, err := b.Ctl(ctx, "no_such_command"); err == nil || !strings.Contains(err.Error(), "no_such_command") {
		t.Errorf("Ctl with a bad command: err = %v, want one naming the command", err)
	}

	t.Run("URLWith", func(t *testing.T) {
		for _, args := range [][]string{
			{"add_vhost", "v/1"},
			{"add_user", "alice", "s3cret"},
			{"set_permissions", "-p", "v/1", "alice", ".*", ".*", ".*"},
		} {
			if _, err := b.Ctl(ctx, args...); err != nil {
				t.Fatal(err)
			}
		}
		for _, url := range []string{b.URLWith("guest", "guest", "/"), b.URLWith("alice", "s3cret", "v/1")} {
			conn := dial(t, url)
			conn.Close()
		}
	})

	t.Run("LocalDefault", func(t *testing.T) {
		t.Setenv("AMQP_URL", "")
		var logged []string
		got, err := Find(ctx, Options{
			TryLocalDefault: true,
			Logf:            func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) },
			localAddr:       b.Addr(),
			sbinDir:         missingSbin(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.Private() || got.Source != "local default broker "+b.Addr() || got.URL != b.URL {
			t.Errorf("Find = %+v", got)
		}
		if len(logged) != 1 || !strings.Contains(logged[0], got.Source) {
			t.Errorf("logged %q, want one line naming %q", logged, got.Source)
		}
		conn := dial(t, got.URL)
		conn.Close()
	})

	t.Run("Restart", func(t *testing.T) {
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		if err := b.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-closed:
		case <-ctx.Done():
			t.Fatal("connection not closed by Restart")
		}
		conn := dial(t, b.URL)
		conn.Close()
	})

	t.Logf("node output, last lines:\n%s", tailFile(filepath.Join(n.dir, outputFile), 5))
	start := time.Now()
	if err := b.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if err := probeAMQP(ctx, b.Addr(), time.Second); err == nil {
		t.Errorf("AMQP port %s still answers after Stop", b.Addr())
	}
	if _, err := os.Stat(n.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("node dir %s still there after Stop: %v", n.dir, err)
	}
	if pidAlive(n.pgid) {
		t.Errorf("node process %d still alive after Stop", n.pgid)
	}
	if err := b.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := b.Ctl(ctx, "status"); err == nil {
		t.Error("Ctl after Stop succeeded")
	}
}

// TestStartNodeTimeout checks that ctx bounds the start of a private node and
// that a failed start leaves nothing behind.
func TestStartNodeTimeout(t *testing.T) {
	t.Parallel()
	needServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	b, err := StartNode(ctx)
	if err == nil {
		b.Stop(context.Background())
		t.Fatal("StartNode booted a node in under a second")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error does not wrap context.DeadlineExceeded: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("StartNode took %v after a 1s timeout", d)
	}
	t.Logf("after %v: %v", time.Since(start), err)
	entries, _ := os.ReadDir(parentDir())
	for _, e := range entries {
		dir := filepath.Join(parentDir(), e.Name())
		if _, mine := live.Load(dir); !mine && strings.HasPrefix(e.Name(), fmt.Sprintf("warren-%d-", os.Getpid())) {
			t.Errorf("failed start left %s behind", dir)
		}
	}
}

func TestReapStale(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("Dirs", func(t *testing.T) {
		sleeper := exec.Command("sleep", "60")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { sleeper.Process.Kill(); sleeper.Wait() }()

		parent := parentDir()
		if err := os.MkdirAll(parent, 0o700); err != nil {
			t.Fatal(err)
		}
		mk := func(name string, owner int) string {
			dir := filepath.Join(parent, fmt.Sprintf("test-%d-%s", os.Getpid(), name))
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if owner > 0 {
				if err := os.WriteFile(filepath.Join(dir, ownerPidFile), []byte(strconv.Itoa(owner)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			return dir
		}
		dead := mk("dead", deadPid(t))
		alive := mk("alive", sleeper.Process.Pid)
		fresh := mk("fresh", 0)
		// Our own pid, but not a node this process runs: an earlier process
		// with the same pid left it.
		reused := mk("reused", os.Getpid())

		reapStale(t.Logf)

		for dir, wantGone := range map[string]bool{dead: true, alive: false, fresh: false, reused: true} {
			_, err := os.Stat(dir)
			if gone := errors.Is(err, os.ErrNotExist); gone != wantGone {
				t.Errorf("%s: gone = %v, want %v", filepath.Base(dir), gone, wantGone)
			}
		}
	})

	t.Run("OrphanedNode", func(t *testing.T) {
		b := startTestNode(t, ctx)
		n := b.node
		// Make the node look like the leftover of a test binary that was killed.
		if err := os.WriteFile(filepath.Join(n.dir, ownerPidFile), []byte(strconv.Itoa(deadPid(t))), 0o600); err != nil {
			t.Fatal(err)
		}
		live.Delete(n.dir)

		reapStale(t.Logf)

		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			t.Fatal("reaper did not kill the orphaned node")
		}
		if _, err := os.Stat(n.dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("orphaned node dir still there: %v", err)
		}
		if err := b.Stop(ctx); err != nil {
			t.Errorf("Stop after reaping: %v", err)
		}
	})
}

func TestFindAMQPURL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const url = "amqp://user:pw@127.0.0.1:1/vh"
	t.Setenv("AMQP_URL", url)

	b, err := Find(ctx, Options{TryLocalDefault: true, Logf: t.Logf, sbinDir: missingSbin(t)})
	if err != nil {
		t.Fatal(err)
	}
	if b.URL != url || b.Source != "AMQP_URL" || b.Private() || b.Node != "" || b.Addr() != "127.0.0.1:1" {
		t.Errorf("Find = %+v, Addr %q", b, b.Addr())
	}
	if _, err := b.Ctl(ctx, "status"); !errors.Is(err, ErrNotPrivate) {
		t.Errorf("Ctl: %v, want ErrNotPrivate", err)
	}
	if err := b.Restart(ctx); !errors.Is(err, ErrNotPrivate) {
		t.Errorf("Restart: %v, want ErrNotPrivate", err)
	}
	if err := b.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := b.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	// ForcePrivate ignores AMQP_URL.
	_, err = Find(ctx, Options{ForcePrivate: true, Logf: t.Logf, sbinDir: missingSbin(t)})
	if !errors.Is(err, ErrNoBroker) || !strings.Contains(err.Error(), "ForcePrivate") {
		t.Errorf("Find with ForcePrivate: %v, want ErrNoBroker mentioning ForcePrivate", err)
	}

	t.Setenv("AMQP_URL", "http://example.com/")
	if _, err := Find(ctx, Options{Logf: t.Logf, sbinDir: missingSbin(t)}); err == nil || errors.Is(err, ErrNoBroker) {
		t.Errorf("Find with a bad AMQP_URL: %v, want an error about AMQP_URL", err)
	}
}

func TestFindNoBroker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Setenv("AMQP_URL", "")
	t.Setenv(VersionEnv, "")

	b, err := Find(ctx, Options{
		TryLocalDefault: true,
		Logf:            t.Logf,
		localAddr:       closedAddr(t),
		sbinDir:         missingSbin(t),
	})
	if b != nil || !errors.Is(err, ErrNoBroker) {
		t.Fatalf("Find = %v, %v; want ErrNoBroker", b, err)
	}
	if !errors.Is(err, errNotInstalled) {
		t.Errorf("error does not wrap the private node's error: %v", err)
	}
	for _, want := range []string{"AMQP_URL: not set", "local default broker", "private node", "container provider: none registered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	t.Log(err)
}

func TestContainerProvider(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Setenv("AMQP_URL", "")
	t.Setenv(VersionEnv, "")
	t.Cleanup(func() { RegisterContainerProvider(nil) })

	stops := 0
	var asked []string
	RegisterContainerProvider(func(ctx context.Context, version string) (*Broker, error) {
		asked = append(asked, version)
		return &Broker{
			URL:    "amqp://guest:guest@127.0.0.1:1/",
			OnStop: func(context.Context) error { stops++; return nil },
		}, nil
	})
	b, err := Find(ctx, Options{Logf: t.Logf, sbinDir: missingSbin(t)})
	if err != nil {
		t.Fatal(err)
	}
	if b.Source != "container" || b.Private() || b.Addr() != "127.0.0.1:1" {
		t.Errorf("Find = %+v", b)
	}
	b.Stop(ctx)
	b.Stop(ctx)
	if stops != 1 {
		t.Errorf("OnStop called %d times, want 1", stops)
	}

	// ForcePrivate never uses the container provider.
	if _, err := Find(ctx, Options{ForcePrivate: true, Logf: t.Logf, sbinDir: missingSbin(t)}); !errors.Is(err, ErrNoBroker) {
		t.Errorf("Find with ForcePrivate: %v, want ErrNoBroker", err)
	}

	if !slices.Equal(asked, []string{""}) {
		t.Errorf("provider asked for versions %q, want only the default", asked)
	}
	RegisterContainerProvider(func(ctx context.Context, version string) (*Broker, error) { return nil, errBoom })
	_, err = Find(ctx, Options{Logf: t.Logf, sbinDir: missingSbin(t)})
	if !errors.Is(err, ErrNoBroker) || !errors.Is(err, errBoom) || !strings.Contains(err.Error(), errBoom.Error()) {
		t.Errorf("Find with a failing provider: %v", err)
	}
}

var errBoom = errors.New("docker is not running")

// WARREN_BROKER asks the container provider for that version and nothing
// else: no private node, no fallback, and a missing provider is an error.
func TestFindWantedVersion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Setenv("AMQP_URL", "")
	t.Setenv(VersionEnv, "4.3")
	t.Setenv("CI", "")
	t.Setenv("WARREN_REQUIRE_BROKER", "")
	t.Cleanup(func() { RegisterContainerProvider(nil) })
	if !Required() {
		t.Error("Required() = false with WARREN_BROKER set, want true")
	}

	RegisterContainerProvider(nil)
	// A sbin dir that would work must not be used: the version decides.
	_, err := Find(ctx, Options{Logf: t.Logf, sbinDir: "/nonexistent/but/unused"})
	if !errors.Is(err, ErrNoBroker) || !strings.Contains(err.Error(), "no container provider") {
		t.Errorf("Find without a provider: %v, want ErrNoBroker saying no provider is registered", err)
	}

	var asked []string
	RegisterContainerProvider(func(ctx context.Context, version string) (*Broker, error) {
		asked = append(asked, version)
		return &Broker{URL: "amqp://guest:guest@127.0.0.1:1/"}, nil
	})
	b, err := Find(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if b.Source != "container" || !slices.Equal(asked, []string{"4.3"}) {
		t.Errorf("Find = %v after asking for %q, want a container of 4.3", b, asked)
	}

	// A failing provider is a failure, with no fallback.
	RegisterContainerProvider(func(ctx context.Context, version string) (*Broker, error) { return nil, errBoom })
	if _, err := Find(ctx, Options{Logf: t.Logf}); !errors.Is(err, ErrNoBroker) || !errors.Is(err, errBoom) {
		t.Errorf("Find with a failing provider: %v, want ErrNoBroker wrapping the provider's error", err)
	}

	// Programs have no provider: for them the version changes nothing.
	_, err = Find(ctx, Options{TryLocalDefault: true, Logf: t.Logf, sbinDir: missingSbin(t), localAddr: closedAddr(t)})
	if err == nil || !strings.Contains(err.Error(), "local default broker") || !strings.Contains(err.Error(), "private node") {
		t.Errorf("Find with TryLocalDefault: %v, want the usual steps tried", err)
	}

	// AMQP_URL still wins; Check can refuse what was found.
	t.Setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
	stopped := false
	_, err = Find(ctx, Options{Logf: t.Logf, Check: func(_ context.Context, b *Broker) error {
		b.OnStop = func(context.Context) error { stopped = true; return nil }
		return errBoom
	}})
	if !errors.Is(err, ErrNoBroker) || !errors.Is(err, errBoom) || !stopped {
		t.Errorf("Find with a failing Check: %v (stopped %v), want ErrNoBroker wrapping the check's error, broker stopped", err, stopped)
	}
}

func TestProbeAMQP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	serve := func(reply string) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				buf := make([]byte, len(amqpHeader))
				c.Read(buf)
				c.Write([]byte(reply))
				time.AfterFunc(3*time.Second, func() { c.Close() })
			}
		}()
		return l.Addr().String()
	}

	if err := probeAMQP(ctx, serve("\x01\x00\x00"), time.Second); err != nil {
		t.Errorf("method frame: %v", err)
	}
	if err := probeAMQP(ctx, serve("HTTP/1.1 400 Bad Request\r\n\r\n"), time.Second); err == nil || !strings.Contains(err.Error(), "not an AMQP method frame") {
		t.Errorf("HTTP server: %v", err)
	}
	start := time.Now()
	if err := probeAMQP(ctx, serve(""), 300*time.Millisecond); err == nil {
		t.Error("silent server: no error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent server: probe took %v", d)
	}
	if err := probeAMQP(ctx, closedAddr(t), time.Second); err == nil {
		t.Error("closed port: no error")
	}
}

func TestURLWith(t *testing.T) {
	b := &Broker{URL: "amqp://guest:guest@127.0.0.1:5673/orig?heartbeat=5"}
	for _, tc := range []struct {
		user, pass, vhost, want string
	}{
		{"", "", "", "amqp://guest:guest@127.0.0.1:5673/orig?heartbeat=5"},
		{"alice", "p@ss", "", "amqp://alice:p%40ss@127.0.0.1:5673/orig?heartbeat=5"},
		{"", "", "/", "amqp://guest:guest@127.0.0.1:5673/?heartbeat=5"},
		{"", "", "v/1", "amqp://guest:guest@127.0.0.1:5673/v%2F1?heartbeat=5"},
		{"bob", "pw", "plain", "amqp://bob:pw@127.0.0.1:5673/plain?heartbeat=5"},
	} {
		if got := b.URLWith(tc.user, tc.pass, tc.vhost); got != tc.want {
			t.Errorf("URLWith(%q, %q, %q) = %q, want %q", tc.user, tc.pass, tc.vhost, got, tc.want)
		}
	}
	// amqp091-go must read the vhosts back as given.
	for vhost, want := range map[string]string{"/": "/", "v/1": "v/1", "plain": "plain"} {
		uri, err := amqp.ParseURI(b.URLWith("", "", vhost))
		if err != nil || uri.Vhost != want {
			t.Errorf("vhost %q parses as %q, %v", vhost, uri.Vhost, err)
		}
	}
	for url, want := range map[string]string{
		"amqp://h":            "h:5672",
		"amqps://h":           "h:5671",
		"amqp://u:p@[::1]:99": "[::1]:99",
		"amqp:///":            "localhost:5672",
	} {
		if got := (&Broker{URL: url}).Addr(); got != want {
			t.Errorf("Addr of %q = %q, want %q", url, got, want)
		}
	}
}

func TestRequired(t *testing.T) {
	for _, tc := range []struct {
		ci, require string
		want        bool
	}{
		{"", "", false},
		{"true", "", true},
		{"1", "", true},
		{"false", "", false},
		{"0", "", false},
		{"", "1", true},
		{"", "true", true},
		{"true", "0", false},
	} {
		t.Setenv(VersionEnv, "")
		t.Setenv("CI", tc.ci)
		t.Setenv("WARREN_REQUIRE_BROKER", tc.require)
		if got := Required(); got != tc.want {
			t.Errorf("CI=%q WARREN_REQUIRE_BROKER=%q: Required() = %v, want %v", tc.ci, tc.require, got, tc.want)
		}
	}
}

func TestNeed(t *testing.T) {
	t.Setenv(VersionEnv, "")
	t.Setenv("CI", "")
	t.Setenv("WARREN_REQUIRE_BROKER", "")
	var sub *testing.T
	t.Run("nil", func(t *testing.T) {
		sub = t
		Need(t, nil)
		t.Error("Need(nil) returned")
	})
	if !sub.Skipped() {
		t.Error("Need(nil) did not skip")
	}
	b := &Broker{URL: "amqp://x"}
	if Need(t, b) != b {
		t.Error("Need(b) != b")
	}
}

// childBroker is the broker RunMain finds in a child test process.
var childBroker *Broker

// childEnv selects what TestMain does in a child process started by
// runChild; empty in the normal test process.
const childEnv = "BROKERTEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "runmain-missing":
		os.Exit(RunMain(m, &childBroker, Options{sbinDir: "/nonexistent/sbin"}))
	case "runmain-private":
		os.Exit(RunMain(m, &childBroker, Options{ForcePrivate: true}))
	default:
		os.Exit(m.Run())
	}
}

// TestChildProcess is the test that runs in child processes.
func TestChildProcess(t *testing.T) {
	switch os.Getenv(childEnv) {
	case "":
		t.Skip("only runs in a child process")
	case "hold":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		b, err := StartNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("NODE %s %d\n", b.node.dir, b.node.pgid)
		<-ctx.Done() // until killed
	default:
		b := Need(t, childBroker)
		fmt.Printf("NODE %s %d\n", b.node.dir, b.node.pgid)
	}
}

// runChild runs this test binary's TestChildProcess in a child process with
// BROKERTEST_CHILD=mode and extra environment, and returns the child after
// Start with its stdout.
func runChild(t *testing.T, ctx context.Context, mode string, env ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildProcess$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "AMQP_URL=", "CI=", "WARREN_REQUIRE_BROKER=", childEnv+"="+mode)
	cmd.Env = append(cmd.Env, env...)
	out := new(syncBuffer)
	cmd.Stdout = out
	cmd.Stderr = out
	return cmd, out
}

// syncBuffer is a strings.Builder safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// nodeLine parses the "NODE dir pid" line a child prints.
func nodeLine(t *testing.T, out string) (dir string, pid int) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if _, err := fmt.Sscanf(line, "NODE %s %d", &dir, &pid); err == nil {
			return dir, pid
		}
	}
	t.Fatalf("no NODE line in child output:\n%s", out)
	return "", 0
}

func TestRunMain(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("NoBrokerSkips", func(t *testing.T) {
		cmd, out := runChild(t, ctx, "runmain-missing")
		if err := cmd.Run(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		for _, want := range []string{"no broker: the tests that need one will skip", "--- SKIP: TestChildProcess", "rabbitmq-server is not installed"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("child output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("NoBrokerRequiredFails", func(t *testing.T) {
		cmd, out := runChild(t, ctx, "runmain-missing", "CI=true")
		err := cmd.Run()
		if exit := (*exec.ExitError)(nil); !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("child: %v, want exit status 1\n%s", err, out)
		}
		if !strings.Contains(out.String(), "a broker is required") || strings.Contains(out.String(), "=== RUN") {
			t.Errorf("child should fail before running tests:\n%s", out)
		}
	})

	t.Run("PrivateNodeStopped", func(t *testing.T) {
		needServer(t)
		cmd, out := runChild(t, ctx, "runmain-private")
		if err := cmd.Run(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		if !strings.Contains(out.String(), "brokertest: using private node") {
			t.Errorf("child did not say which broker it used:\n%s", out)
		}
		dir, pid := nodeLine(t, out.String())
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("node dir %s left behind: %v", dir, err)
		}
		if pidAlive(pid) {
			t.Errorf("node process %d left behind", pid)
		}
	})
}

// TestKilledOwner kills a process that runs a private node, as a test
// timeout would, and checks that the node halts and its directory is reaped.
func TestKilledOwner(t *testing.T) {
	t.Parallel()
	needServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd, out := runChild(t, ctx, "hold")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var dir string
	var pid int
	for dir == "" {
		select {
		case <-ctx.Done():
			t.Fatalf("child did not start a node:\n%s", out)
		case err := <-exited:
			t.Fatalf("child exited (%v) without starting a node:\n%s", err, out)
		case <-time.After(100 * time.Millisecond):
		}
		if strings.Contains(out.String(), "NODE ") {
			dir, pid = nodeLine(t, out.String())
		}
	}
	cmd.Process.Kill()
	<-exited

	for deadline := time.Now().Add(10 * time.Second); pidAlive(pid); {
		if time.Now().After(deadline) {
			killGroup(pid)
			t.Fatalf("node process %d still alive after its owner was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Any StartNode, here or in a parallel test process, may have reaped
	// the directory already.
	reapStale(t.Logf)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("node dir %s not reaped: %v", dir, err)
	}
}

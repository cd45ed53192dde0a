package brokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errNotInstalled is wrapped by startNode's error when there is no
// rabbitmq-server installation to start a private node from.
var errNotInstalled = errors.New("brokertest: rabbitmq-server is not installed")

// errPortInUse marks a boot failure caused by a port taken between picking
// it and the node binding it; startNode retries once with new ports.
var errPortInUse = errors.New("brokertest: port already in use")

const (
	// sbinEnv names a directory holding rabbitmq-server and rabbitmqctl, for
	// installations other than the Debian package.
	sbinEnv = "WARREN_RABBITMQ_SBIN"
	// sbinGlob matches the Debian package's inner scripts. The wrappers on
	// PATH (/usr/sbin/rabbitmq-server) switch to the rabbitmq user, which
	// then cannot use directories created by the test process.
	sbinGlob = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"

	// dirMarkerEnv is set in a private node's environment to its directory,
	// so that the reaper can check that a pid still belongs to that node
	// before killing it.
	dirMarkerEnv = "WARREN_BROKERTEST_DIR"

	ownerPidFile  = "owner.pid"    // pid of the process that started the node
	leaderPidFile = "leader.pid"   // pid (and process group) of the node process
	rabbitPidFile = "rabbitmq.pid" // RABBITMQ_PID_FILE, written by the node
	outputFile    = "output.log"   // the node's stdout and stderr

	maxBootWait     = 60 * time.Second // rabbitmqctl wait --timeout when ctx has no deadline
	gracefulStop    = 15 * time.Second // cap on "rabbitmqctl stop"
	exitWait        = 5 * time.Second  // wait for the node to exit after "stop"
	killWait        = 10 * time.Second // wait for the node to exit after SIGKILL
	staleNoOwnerAge = time.Minute      // a dir without owner.pid younger than this may be in creation
)

var nodeSeq atomic.Int64

// live holds the directories of private nodes this process is running, so
// that the reaper never touches them even though their owner pid is alive.
var live sync.Map // dir string -> struct{}

// node is the private part of a Broker started by StartNode.
type node struct {
	name     string // Erlang node name, name@localhost
	addr     string // 127.0.0.1:port of the AMQP listener
	dir      string // everything the node owns lives under dir
	ctlPath  string
	ctlEnv   []string
	server   string        // path of the rabbitmq-server script
	env      []string      // the node's environment; launch reuses it on restarts
	pgid     int           // process group of the node (= pid of its beam process)
	lifeline *os.File      // write end of the node's stdin; see startProcess
	done     chan struct{} // closed when the node process has exited
	exitErr  error         // set before done is closed
	booted   time.Duration
	stopped  atomic.Bool
}

// StartNode starts a private RabbitMQ node from the local rabbitmq-server
// installation (the directory named by the WARREN_RABBITMQ_SBIN environment
// variable, else the Debian package's inner scripts, else rabbitmq-server
// on PATH) and waits until its AMQP
// listener answers. The node listens on free loopback ports, keeps its
// cookie, database and logs in its own temporary directory, and accepts
// guest/guest. ctx bounds the whole start, which takes about 5 s.
//
// The node halts by itself when the process that started it exits, even by
// SIGKILL, and before starting a node StartNode kills and removes leftover
// private nodes whose owning process has exited (for example a test binary
// killed on timeout).
//
// The caller must call [Broker.Stop] to stop the node and remove its
// directory.
func StartNode(ctx context.Context) (*Broker, error) {
	return startNode(ctx, Options{})
}

func startNode(ctx context.Context, opts Options) (*Broker, error) {
	sbin, err := locateSbin(opts.sbinDir)
	if err != nil {
		return nil, err
	}
	reapStale(opts.logf)
	return bootRetry(ctx, sbin, nodeConfig{})
}

// nodeConfig is what a caller chooses about a private node before it boots.
// The zero value gives a standalone node.
type nodeConfig struct {
	cookie string // Erlang cookie; "" picks a random one
	ports  []int  // AMQP and Erlang distribution port; nil picks free ones
}

// bootRetry boots a node, retrying once with fresh ports if a port was
// taken between picking it and the node binding it.
func bootRetry(ctx context.Context, sbin string, cfg nodeConfig) (*Broker, error) {
	for attempt := 1; ; attempt++ {
		b, err := bootNode(ctx, sbin, cfg)
		if err != nil && attempt < 2 && errors.Is(err, errPortInUse) && ctx.Err() == nil {
			cfg.ports = nil
			continue
		}
		return b, err
	}
}

func bootNode(ctx context.Context, sbin string, cfg nodeConfig) (*Broker, error) {
	start := time.Now()
	short := fmt.Sprintf("warren-%d-%d", os.Getpid(), nodeSeq.Add(1))
	parent := parentDir()
	dir := filepath.Join(parent, short)
	live.Store(dir, struct{}{})
	n := &node{
		name:    short + "@localhost",
		dir:     dir,
		ctlPath: filepath.Join(sbin, "rabbitmqctl"),
		server:  filepath.Join(sbin, "rabbitmq-server"),
	}
	ok := false
	defer func() {
		if !ok {
			n.kill()
			os.RemoveAll(dir)
			live.Delete(dir)
		}
	}()

	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("brokertest: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil { // left by an earlier process with our pid
		return nil, fmt.Errorf("brokertest: %w", err)
	}
	home := filepath.Join(dir, "home")
	for _, d := range []string{dir, home, filepath.Join(dir, "mnesia"), filepath.Join(dir, "log")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("brokertest: %w", err)
		}
	}
	ports := cfg.ports
	if ports == nil {
		var err error
		if ports, err = freePorts(2); err != nil {
			return nil, err
		}
	}
	port, distPort := ports[0], ports[1]
	n.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	// Server and rabbitmqctl find the Erlang cookie in $HOME/.erlang.cookie;
	// Erlang insists that only the owner can read it.
	cookie := cfg.cookie
	if cookie == "" {
		cookie = randomCookie()
	}
	config := fmt.Sprintf("listeners.tcp.default = %s\n"+
		"loopback_users = none\n"+
		"log.console = false\n"+
		"log.file.level = info\n", n.addr)
	files := []struct {
		name string
		data string
		perm os.FileMode
	}{
		{ownerPidFile, strconv.Itoa(os.Getpid()), 0o600},
		{filepath.Join("home", ".erlang.cookie"), cookie, 0o400},
		{"rabbitmq.conf", config, 0o600},
		{"enabled_plugins", "[].\n", 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.data), f.perm); err != nil {
			return nil, fmt.Errorf("brokertest: %w", err)
		}
	}

	base := cleanEnv()
	n.ctlEnv = append(slices.Clip(base), "HOME="+home, "RABBITMQ_CONF_ENV_FILE=/dev/null",
		// rabbitmqctl is an Erlang node too, by default listening on one of
		// the 11 ports from 35672, which every rabbitmqctl on the machine
		// shares: a 12th concurrent one fails with "Distribution failed".
		// Take any free loopback port instead.
		"RABBITMQ_CTL_DIST_PORT_MIN=0", "RABBITMQ_CTL_DIST_PORT_MAX=0",
		"RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}")
	n.env = append(slices.Clip(base),
		"HOME="+home,
		dirMarkerEnv+"="+dir,
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		// 3.10 accepts the path with or without ".conf"; give it in full.
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		// Never read /etc/rabbitmq/advanced.config: point at a missing file.
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, rabbitPidFile),
		// Never source /etc/rabbitmq/rabbitmq-env.conf.
		"RABBITMQ_CONF_ENV_FILE=/dev/null",
		// The distribution port listens on all interfaces unless told otherwise.
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		// Run the Erlang VM with an (unused) shell on stdin instead of
		// "-noinput"; see startProcess. This also makes the script exec the
		// VM instead of keeping a shell between us and it.
		"RABBITMQ_ALLOW_INPUT=1",
	)

	if err := n.launch(ctx); err != nil {
		return nil, err
	}
	n.booted = time.Since(start)
	ok = true
	return &Broker{
		URL:    "amqp://guest:guest@" + n.addr + "/",
		Source: fmt.Sprintf("private node %s on %s", n.name, n.addr),
		Node:   n.name,
		node:   n,
	}, nil
}

// launch starts the node's Erlang VM from n.server with n.env and waits
// until it has booted. It also restarts a node that has been halted, with
// the same name, directory and ports.
func (n *node) launch(ctx context.Context) error {
	// A pid file left by a killed VM would make rabbitmqctl wait for it.
	if err := os.Remove(filepath.Join(n.dir, rabbitPidFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("brokertest: %w", err)
	}
	out, err := os.OpenFile(filepath.Join(n.dir, outputFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	cmd := exec.Command(n.server)
	cmd.Dir = n.dir
	cmd.Env = n.env
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = groupProcAttr()
	err = n.startProcess(cmd)
	out.Close()
	if err != nil {
		return fmt.Errorf("brokertest: starting %s: %w", cmd.Path, err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, leaderPidFile), []byte(strconv.Itoa(n.pgid)), 0o600); err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	return n.waitBoot(ctx)
}

// startProcess starts cmd and arranges for n.done to be closed when it
// exits.
//
// The node's stdin is a pipe whose write end only this process holds (as
// n.lifeline) and never writes to. With RABBITMQ_ALLOW_INPUT the Erlang VM
// reads its shell from stdin and halts at end of file, which comes when
// this process closes the pipe or dies in any way. So a test binary killed
// on timeout takes its nodes with it.
func (n *node) startProcess(cmd *exec.Cmd) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdin = r
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return err
	}
	n.lifeline = w
	n.pgid = cmd.Process.Pid
	done := make(chan struct{}) // not n.done, which a restart replaces
	n.done = done
	go func() {
		n.exitErr = cmd.Wait()
		close(done)
	}()
	return nil
}

// exited reports whether the node process has exited.
func (n *node) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// waitBoot waits until the node has booted and its AMQP listener answers.
func (n *node) waitBoot(ctx context.Context) error {
	// rabbitmqctl wait does not notice a node that dies before writing its
	// pid file, so stop waiting when the node process exits.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := n.done // read now: a later restart replaces n.done
	go func() {
		select {
		case <-done:
			cancel()
		case <-wctx.Done():
		}
	}()
	timeout := maxBootWait
	if deadline, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(deadline))
	}
	secs := max(1, int(math.Ceil(timeout.Seconds())))
	_, err := n.run(wctx, "wait", "--timeout", strconv.Itoa(secs), filepath.Join(n.dir, rabbitPidFile))
	if err == nil {
		err = n.waitAMQP(wctx)
	}
	if err == nil {
		return nil
	}
	switch {
	case n.exited():
		err = fmt.Errorf("brokertest: node %s exited during boot (%v)", n.name, n.exitErr)
	case ctx.Err() != nil:
		err = fmt.Errorf("brokertest: node %s did not boot in time: %w", n.name, ctx.Err())
	}
	output := tailFile(filepath.Join(n.dir, outputFile), 20)
	if strings.Contains(strings.ToLower(output), "eaddrinuse") {
		err = fmt.Errorf("%w: %w", errPortInUse, err)
	}
	return fmt.Errorf("%w\n--- node output (%s):\n%s\n--- node log:\n%s", err, n.dir, output,
		tailFile(filepath.Join(n.dir, "log", n.name+".log"), 20))
}

// waitAMQP polls the AMQP listener until it answers, ctx ends or the node
// exits.
func (n *node) waitAMQP(ctx context.Context) error {
	for {
		err := probeAMQP(ctx, n.addr, time.Second)
		if err == nil {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("brokertest: waiting for AMQP on %s: %w (last error: %v)", n.addr, ctx.Err(), err)
		case <-n.done:
			t.Stop()
			return fmt.Errorf("brokertest: node %s exited (%v)", n.name, n.exitErr)
		case <-t.C:
		}
	}
}

// run runs the inner rabbitmqctl against the node with the node's HOME (and
// so its Erlang cookie), returning the combined output.
func (n *node) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.ctlPath, append([]string{"-n", n.name}, args...)...)
	cmd.Env = n.ctlEnv
	cmd.Dir = os.TempDir()
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	cmd.SysProcAttr = groupProcAttr()
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	out := buf.String()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return out, fmt.Errorf("brokertest: rabbitmqctl -n %s %s: %w: %s",
			n.name, strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

// kill kills the node's process group and waits for the node to exit.
func (n *node) kill() error {
	if n.done == nil {
		return nil // never started
	}
	killGroup(n.pgid)
	n.lifeline.Close()
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-n.done:
		return nil
	case <-t.C:
		return fmt.Errorf("brokertest: node %s (pid %d) did not exit after SIGKILL", n.name, n.pgid)
	}
}

// stop stops the node gracefully if it can within ctx, kills it otherwise,
// and removes its directory.
func (n *node) stop(ctx context.Context) error {
	n.stopped.Store(true)
	var errs []error
	if err := n.halt(ctx); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(n.dir); err != nil {
		errs = append(errs, fmt.Errorf("brokertest: %w", err))
	}
	live.Delete(n.dir)
	return errors.Join(errs...)
}

// halt stops the node's Erlang VM gracefully ("rabbitmqctl stop") if it can
// within ctx, kills it otherwise, and waits for it to exit. The node's
// directory stays, so that launch can start the node again.
func (n *node) halt(ctx context.Context) error {
	if !n.exited() {
		gctx, cancel := context.WithTimeout(ctx, gracefulStop)
		_, err := n.run(gctx, "stop")
		cancel()
		if err == nil {
			t := time.NewTimer(exitWait)
			select {
			case <-n.done:
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return n.kill()
}

// Ctl runs rabbitmqctl with args against the broker's node and returns its
// combined output. On failure the error includes the output. On a private
// node it runs the installation's inner rabbitmqctl with "-n NODE args..."
// in the node's own user environment (same HOME, so same Erlang cookie); on
// a container, its [Controller] runs it inside the container. Ctl returns
// [ErrNotPrivate] for brokers that cannot be controlled.
func (b *Broker) Ctl(ctx context.Context, args ...string) (string, error) {
	c := b.controller()
	if c == nil {
		return "", ErrNotPrivate
	}
	return c.Ctl(ctx, args...)
}

// StopApp stops the RabbitMQ application on a controllable node
// ("rabbitmqctl stop_app"), leaving the Erlang node running: the AMQP
// listener closes and every client connection is dropped.
func (b *Broker) StopApp(ctx context.Context) error {
	_, err := b.Ctl(ctx, "stop_app")
	return err
}

// StartApp starts the RabbitMQ application on a controllable node
// ("rabbitmqctl start_app") and waits until its AMQP listener answers again.
func (b *Broker) StartApp(ctx context.Context) error {
	if _, err := b.Ctl(ctx, "start_app"); err != nil {
		return err
	}
	return b.waitAMQP(ctx)
}

// Restart restarts the RabbitMQ application on a controllable node: StopApp, then
// StartApp. Client connections are dropped; durable entities survive.
func (b *Broker) Restart(ctx context.Context) error {
	if err := b.StopApp(ctx); err != nil {
		return err
	}
	return b.StartApp(ctx)
}

// BootTime returns how long a private node took to start, 0 for other
// brokers.
func (b *Broker) BootTime() time.Duration {
	if !b.Private() {
		return 0
	}
	return b.node.booted
}

// parentDir is the directory that holds one directory per private node.
func parentDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("warren-brokertest-%d", os.Getuid()))
}

var (
	sbinOnce sync.Once
	sbinDir  string
	sbinErr  error
)

// locateSbin returns the directory holding the inner rabbitmq-server and
// rabbitmqctl scripts.
func locateSbin(override string) (string, error) {
	if !privateNodesSupported {
		return "", fmt.Errorf("%w: private nodes need a Unix system", errNotInstalled)
	}
	if override != "" {
		return override, checkSbin(override)
	}
	if dir := os.Getenv(sbinEnv); dir != "" {
		return dir, checkSbin(dir)
	}
	sbinOnce.Do(func() { sbinDir, sbinErr = findInstalledSbin() })
	return sbinDir, sbinErr
}

func findInstalledSbin() (string, error) {
	var candidates []string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "dpkg", "-L", "rabbitmq-server").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if ok, _ := path.Match(sbinGlob, strings.TrimSpace(line)); ok {
				candidates = append(candidates, filepath.Dir(strings.TrimSpace(line)))
			}
		}
	}
	globbed, _ := filepath.Glob(sbinGlob)
	slices.Sort(globbed)
	slices.Reverse(globbed)
	for _, p := range globbed {
		candidates = append(candidates, filepath.Dir(p))
	}
	// Last, rabbitmq-server on PATH, for installations that run as the
	// user who starts them (the generic Unix tarball, Homebrew): its
	// directory, symlinks resolved, must hold rabbitmqctl too. Debian's
	// wrapper in /usr/sbin is never reached: its inner scripts come first.
	if p, err := exec.LookPath("rabbitmq-server"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
	}
	for _, dir := range candidates {
		if checkSbin(dir) == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: no %s (from dpkg -L rabbitmq-server or on disk), no rabbitmq-server on PATH, and %s is not set",
		errNotInstalled, sbinGlob, sbinEnv)
}

// checkSbin checks that dir holds executable rabbitmq-server and rabbitmqctl.
func checkSbin(dir string) error {
	for _, name := range []string{"rabbitmq-server", "rabbitmqctl"} {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w: %w", errNotInstalled, err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%w: %s is not an executable file", errNotInstalled, p)
		}
	}
	return nil
}

// cleanEnv returns the process environment without variables that would
// change how the node or rabbitmqctl behave.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "RABBITMQ_"),
			name == "HOME", name == dirMarkerEnv,
			name == "ERL_FLAGS", name == "ERL_AFLAGS", name == "ERL_ZFLAGS":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("brokertest: finding a free port: %w", err)
		}
		defer l.Close() // keep all open until all are picked, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// randomCookie returns a new random Erlang cookie.
func randomCookie() string {
	cookie := make([]byte, 20)
	for i := range cookie {
		cookie[i] = 'A' + randByte()%26
	}
	return string(cookie)
}

func randByte() byte {
	var b [1]byte
	rand.Read(b[:]) // never fails on supported platforms
	return b[0]
}

// ansiEscape matches the colour and window-title escape sequences the node
// writes to its output.
var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]|\x1b\\][^\x07\x1b]*(\x07|\x1b\\\\)")

// tailFile returns up to the last n lines of a file without terminal escape
// sequences, or a note why it can't.
func tailFile(name string, n int) string {
	data, err := os.ReadFile(name)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	text := ansiEscape.ReplaceAllString(string(data), "")
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// reapStale kills and removes private nodes left behind by processes that
// have exited. It never touches nodes of live processes, and only kills a
// pid whose environment proves it is the node that lived in the directory.
func reapStale(logf func(string, ...any)) {
	parent := parentDir()
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		dir := filepath.Join(parent, e.Name())
		if !e.IsDir() {
			continue
		}
		if _, mine := live.Load(dir); mine {
			continue
		}
		owner, err := readPid(filepath.Join(dir, ownerPidFile))
		if err != nil {
			// Perhaps being created right now by another process.
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < staleNoOwnerAge {
				continue
			}
		} else if owner != os.Getpid() && pidAlive(owner) {
			continue
		}
		marker := dirMarkerEnv + "=" + dir
		for _, f := range []string{leaderPidFile, rabbitPidFile} {
			pid, err := readPid(filepath.Join(dir, f))
			if err != nil || !procHasEnv(pid, marker) {
				continue
			}
			killGroup(pid)
			for deadline := time.Now().Add(killWait); procHasEnv(pid, marker) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			logf("brokertest: removing stale private node dir: %v", err)
			continue
		}
		logf("brokertest: reaped stale private node %s", dir)
	}
}

func readPid(name string) (int, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("brokertest: bad pid in %s", name)
	}
	return pid, nil
}

// Command instrbench counts the CPU instructions, heap allocations and
// bytes allocated per message of warren and of raw amqp091-go, scenario by
// scenario, and prints them as a Markdown table (make bench-instr).
//
// It builds one small program per scenario and library (the packages under
// benchmarks/internal/instr), and runs each under valgrind's callgrind,
// pinned to one core (taskset -c 0, GOMAXPROCS=1,
// GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off),
// at two message counts, n and k·n (-k, default 3). Callgrind's total of
// instructions executed by the whole process ("Collected :" on its stderr),
// at k·n minus at n, divided by (k-1)·n, is the instructions per message: start-up, dialing,
// set-up and tear-down are the same in both runs and cancel. The program
// reports runtime.MemStats deltas (Mallocs, TotalAlloc) of its message loop,
// and the same difference gives allocations and bytes per message. Every
// scenario is measured -repeat times (default 5), raw and warren taking
// turns, and the table gives the medians: the Go scheduler's work (which
// goroutine runs when, whether sysmon hands the P off during a write) depends
// on timing, so one run's count can be a few per cent off.
//
// The driver itself declares each run's queue (durable, deleted after the
// run, x-expires should it be left behind, x-max-length-bytes 64 MiB so that
// large bodies do not pile up on the broker), pre-fills it for the consume
// scenario (outside the measured process), and checks after the run that
// the queue holds what the program published, or nothing after consuming.
//
// With -warren DIR the warren programs are built against the warren module
// in DIR (a temporary copy of go.mod and go.sum whose replace directive
// points there), e.g. a git worktree of an older commit, for a before and
// after.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/benchmarks/internal/instr"
)

// A program is one of the packages under internal/instr.
type program struct {
	pkg  string   // import path below the benchmarks module
	args []string // its scenario's flags, besides -queue, -n and -body
}

func (p program) key() string { return p.pkg + " " + strings.Join(p.args, " ") }

// A scenario pairs a raw program with a warren program.
type scenario struct {
	name        string
	body        int
	n           int // the smaller message count; the other is k·n
	fill        bool
	raw, warren program
}

const pkgRoot = "github.com/warrenmq/warren/benchmarks/internal/instr/"

var (
	rawPublish     = program{pkg: "raw/publish"}
	rawConfirmEach = program{pkg: "raw/confirmeach"}
	rawWindow      = program{pkg: "raw/window", args: []string{"-window", "256"}}
	rawConsume     = program{pkg: "raw/consume", args: []string{"-prefetch", "300"}}
	wPublish       = program{pkg: "warren/publish"}
	wConfirmEach   = program{pkg: "warren/confirmeach"}
	wWindow        = program{pkg: "warren/window", args: []string{"-window", "256"}}
	wPublisher64   = program{pkg: "warren/publisher", args: []string{"-callers", "64"}}
	wPublisher512  = program{pkg: "warren/publisher", args: []string{"-callers", "512"}}
	wConsume       = program{pkg: "warren/consume", args: []string{"-prefetch", "300"}}
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// scenarios, with message counts n chosen so that the whole of make
// bench-instr (5 repeats, k = 3) takes 10-15 minutes on a 2-core machine:
// callgrind runs some 15-20 million instructions a second.
var scenarios = []scenario{
	{name: "publish, no confirms", body: 128, n: 5000, raw: rawPublish, warren: wPublish},
	{name: "confirmed, wait for each", body: 128, n: 1500, raw: rawConfirmEach, warren: wConfirmEach},
	{name: "confirmed, window 256", body: 128, n: 3072, raw: rawWindow, warren: wWindow},
	{name: "Publisher, 64 callers (raw: window 256)", body: 128, n: 3072, raw: rawWindow, warren: wPublisher64},
	{name: "Publisher, 512 callers (raw: window 256)", body: 128, n: 3072, raw: rawWindow, warren: wPublisher512},
	{name: "consume, prefetch 300, ack each", body: 128, n: 2500, fill: true, raw: rawConsume, warren: wConsume},
	{name: "publish, no confirms, 64 KiB", body: 64 * kib, n: 1000, raw: rawPublish, warren: wPublish},
	{name: "publish, no confirms, 1 MiB", body: mib, n: 100, raw: rawPublish, warren: wPublish},
	{name: "confirmed, window 256, 64 KiB", body: 64 * kib, n: 512, raw: rawWindow, warren: wWindow},
	{name: "confirmed, window 256, 1 MiB", body: mib, n: 256, raw: rawWindow, warren: wWindow},
}

// maxQueueBytes bounds each run's queue (x-max-length-bytes; the broker
// drops the oldest messages beyond it).
const maxQueueBytes = 64 * mib

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "instrbench:", err)
		os.Exit(1)
	}
}

type config struct {
	url       string
	warrenDir string
	repeat    int
	scale     float64
	k         int
	valgrind  string
	verbose   bool
}

func run() error {
	url := cmp.Or(os.Getenv("AMQP_URL"), instr.DefaultURL)
	var cfg config
	var only string
	flag.StringVar(&cfg.url, "url", url, "broker URL (default $AMQP_URL or the local broker)")
	flag.StringVar(&cfg.warrenDir, "warren", "", "build the warren programs against the warren module in this directory (default: the replace directive of benchmarks/go.mod)")
	flag.StringVar(&only, "scenarios", "", "comma-separated numbers (1-based, in table order) of the scenarios to run (default: all)")
	flag.IntVar(&cfg.repeat, "repeat", 5, "measure every scenario this many times (the table gives the medians and, past 1, every repeat)")
	flag.Float64Var(&cfg.scale, "scale", 1, "multiply every message count by this")
	flag.IntVar(&cfg.k, "k", 3, "the second run of each program handles k times the messages of the first")
	flag.StringVar(&cfg.valgrind, "valgrind", "valgrind", "the valgrind command")
	flag.BoolVar(&cfg.verbose, "v", true, "print each run on stderr")
	flag.Parse()
	if cfg.repeat < 1 || cfg.scale <= 0 || cfg.k < 2 {
		return errors.New("-repeat must be at least 1, -scale positive and -k at least 2")
	}
	chosen := scenarios
	if only != "" {
		chosen = nil
		for f := range strings.SplitSeq(only, ",") {
			i, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || i < 1 || i > len(scenarios) {
				return fmt.Errorf("-scenarios: %q is not a number from 1 to %d", f, len(scenarios))
			}
			chosen = append(chosen, scenarios[i-1])
		}
	}
	for i := range chosen {
		chosen[i].n = max(1, int(math.Round(float64(chosen[i].n)*cfg.scale)))
	}

	start := time.Now()
	ctx := context.Background()
	b, err := build(ctx, cfg.warrenDir)
	if err != nil {
		return err
	}
	defer os.RemoveAll(b.dir)
	vgVersion, err := exec.Command(cfg.valgrind, "--version").Output()
	if err != nil {
		return fmt.Errorf("valgrind (install it: apt-get install -y valgrind): %w", err)
	}

	admin, err := amqp.Dial(cfg.url)
	if err != nil {
		return fmt.Errorf("admin connection: %w", err)
	}
	defer admin.Close()
	brokerVersion, _ := admin.Properties["version"].(string)
	r := &runner{cfg: cfg, bin: b.dir, admin: admin, memo: map[string]measure{}}

	// results[i][side][repeat]
	results := make([][2][]perMsg, len(chosen))
	for rep := range cfg.repeat {
		r.memo = map[string]measure{} // a fresh measurement each repeat
		for i, s := range chosen {
			for side, p := range []program{s.raw, s.warren} {
				m, err := r.perMsg(ctx, s, p)
				if err != nil {
					return fmt.Errorf("%s, %s (repeat %d): %w", s.name, sideName[side], rep+1, err)
				}
				results[i][side] = append(results[i][side], m)
			}
		}
	}

	fmt.Printf("make bench-instr (`cd benchmarks && go run ./cmd/instrbench`), started %s, %s of running;\n",
		start.UTC().Format(time.RFC1123), time.Since(start).Round(time.Second))
	fmt.Printf("warren at %s; %s, %s, RabbitMQ %s at %s; %d logical CPUs, each program pinned to CPU 0 with GOMAXPROCS=1.\n",
		b.warrenRev, runtime.Version(), strings.TrimSpace(string(vgVersion)), cmp.Or(brokerVersion, "(version unknown)"), redact(cfg.url), runtime.NumCPU())
	fmt.Printf("Instructions: callgrind's total for the whole process, at k·n messages minus at n, over (k-1)·n; allocations and bytes: runtime.MemStats deltas of the message loop, the same difference. Bodies 128 B unless named; medians of %d repeat(s).\n\n", cfg.repeat)
	fmt.Println("| scenario | n, k·n | raw instr/msg | warren instr/msg | ratio | allocs/msg raw → warren | bytes/msg raw → warren |")
	fmt.Println("|---|---|--:|--:|--:|---|---|")
	for i, s := range chosen {
		raw, w := median(results[i][0]), median(results[i][1])
		fmt.Printf("| %s | %d, %d | %s | %s | %.2f× | %.1f → %.1f | %s → %s |\n", s.name, s.n, cfg.k*s.n,
			group(raw.instr), group(w.instr), w.instr/raw.instr, raw.allocs, w.allocs, group(raw.bytes), group(w.bytes))
	}
	if cfg.repeat > 1 {
		fmt.Println()
		fmt.Println("Every repeat (instructions per message; spread = (max - min) / median):")
		fmt.Println()
		fmt.Println("| scenario | raw | spread | warren | spread |")
		fmt.Println("|---|---|--:|---|--:|")
		for i, s := range chosen {
			fmt.Printf("| %s | %s | %.1f %% | %s | %.1f %% |\n", s.name,
				list(results[i][0]), spread(results[i][0]), list(results[i][1]), spread(results[i][1]))
		}
	}
	return nil
}

var sideName = [2]string{"raw", "warren"}

// built is the programs, built into dir.
type built struct {
	dir       string
	warrenRev string // the warren module's commit, and whether its tree differs
}

// build compiles every program into a temporary directory, against the
// warren module in warrenDir if set.
func build(ctx context.Context, warrenDir string) (*built, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMOD: %w", err)
	}
	modFile := strings.TrimSpace(string(gomod))
	if filepath.Base(modFile) != "go.mod" {
		return nil, errors.New("run instrbench inside the benchmarks module (cd benchmarks)")
	}
	modDir := filepath.Dir(modFile)
	dir, err := os.MkdirTemp("", "instrbench-")
	if err != nil {
		return nil, err
	}
	b := &built{dir: dir}
	args := []string{"build", "-o"}
	if warrenDir == "" {
		warrenDir = filepath.Join(modDir, "..")
	} else {
		// A copy of go.mod and go.sum whose replace directive points at
		// warrenDir; -mod=mod lets go add any sum that DIR's go.mod needs.
		if warrenDir, err = filepath.Abs(warrenDir); err != nil {
			return nil, err
		}
		tmpMod := filepath.Join(dir, "go.mod")
		for _, f := range []string{"go.mod", "go.sum"} {
			data, err := os.ReadFile(filepath.Join(modDir, f))
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
				return nil, err
			}
		}
		edit := exec.CommandContext(ctx, "go", "mod", "edit", "-modfile="+tmpMod, "-replace=github.com/warrenmq/warren="+warrenDir)
		if out, err := edit.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go mod edit: %v: %s", err, out)
		}
		args = []string{"build", "-modfile=" + tmpMod, "-mod=mod", "-o"}
	}
	b.warrenRev = revision(warrenDir)
	for _, p := range []program{rawPublish, rawConfirmEach, rawWindow, rawConsume, wPublish, wConfirmEach, wWindow, wPublisher64, wConsume} {
		cmd := exec.CommandContext(ctx, "go", append(args, filepath.Join(dir, binName(p)), pkgRoot+p.pkg)...)
		cmd.Dir = modDir
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("building %s: %v: %s", p.pkg, err, out)
		}
	}
	return b, nil
}

func binName(p program) string { return strings.ReplaceAll(p.pkg, "/", "-") }

// revision names the commit of the git tree holding dir, "(uncommitted
// changes)" added when its Go files, go.mod or go.sum differ from it.
func revision(dir string) string {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return dir + " (not a git tree)"
	}
	rev := "commit " + strings.TrimSpace(string(out))
	st, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=no", "--", "*.go", "go.mod", "go.sum", ":!benchmarks").Output()
	if err == nil && len(bytes.TrimSpace(st)) > 0 {
		rev += " (with uncommitted changes)"
	}
	return rev
}

// measure is one program's run at one message count.
type measure struct {
	instr uint64
	res   instr.Result
}

// perMsg is a program's cost per message: the difference of its runs at
// k·n and n, over (k-1)·n.
type perMsg struct{ instr, allocs, bytes float64 }

type runner struct {
	cfg   config
	bin   string
	admin *amqp.Connection
	seq   int
	memo  map[string]measure // by program, body and count: raw runs shared by scenarios
}

func (r *runner) perMsg(ctx context.Context, s scenario, p program) (perMsg, error) {
	lo, err := r.measure(ctx, s, p, s.n)
	if err != nil {
		return perMsg{}, err
	}
	hi, err := r.measure(ctx, s, p, r.cfg.k*s.n)
	if err != nil {
		return perMsg{}, err
	}
	n := float64((r.cfg.k - 1) * s.n)
	return perMsg{
		instr:  (float64(hi.instr) - float64(lo.instr)) / n,
		allocs: (float64(hi.res.Mallocs) - float64(lo.res.Mallocs)) / n,
		bytes:  (float64(hi.res.Bytes) - float64(lo.res.Bytes)) / n,
	}, nil
}

var collected = regexp.MustCompile(`(?m)^==\d+== Collected : (\d+)$`)

// measure runs program p of scenario s with n messages under callgrind, on
// a queue of its own.
func (r *runner) measure(ctx context.Context, s scenario, p program, n int) (measure, error) {
	key := fmt.Sprintf("%s body=%d fill=%t n=%d", p.key(), s.body, s.fill, n)
	if m, ok := r.memo[key]; ok {
		return m, nil
	}
	ch, err := r.admin.Channel()
	if err != nil {
		return measure{}, fmt.Errorf("admin channel: %w", err)
	}
	defer ch.Close()
	r.seq++
	q := fmt.Sprintf("instrbench-%d-%d", os.Getpid(), r.seq)
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{
		"x-expires":          int32(10 * time.Minute / time.Millisecond),
		"x-max-length-bytes": int64(maxQueueBytes),
	}); err != nil {
		return measure{}, fmt.Errorf("declaring the queue: %w", err)
	}
	defer func() { _, _ = ch.QueueDelete(q, false, false, false) }()
	want := n // what the queue holds after the run
	if s.fill {
		if err := fill(ctx, ch, q, n, s.body); err != nil {
			return measure{}, err
		}
		want = 0
	} else if s.body > 0 {
		want = min(n, maxQueueBytes/s.body)
	}

	args := []string{"-c", "0", r.cfg.valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
		filepath.Join(r.bin, binName(p)), "-queue", q, "-n", strconv.Itoa(n), "-body", strconv.Itoa(s.body)}
	cmd := exec.CommandContext(ctx, "taskset", append(args, p.args...)...)
	// valgrind 3.19 cannot decode RDTSCP, which the Go runtime's cputicks
	// uses when the CPU has it: cpu.rdtscp=off makes it use RDTSC.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1", "GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off", "AMQP_URL="+r.cfg.url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	if err := cmd.Run(); err != nil {
		return measure{}, fmt.Errorf("%s -n %d: %v\n%s", p.pkg, n, err, tail(stderr.String(), 20))
	}
	took := time.Since(began)
	m := measure{}
	sub := collected.FindStringSubmatch(stderr.String())
	if sub == nil {
		return measure{}, fmt.Errorf("%s -n %d: no \"Collected :\" line in callgrind's output:\n%s", p.pkg, n, tail(stderr.String(), 20))
	}
	if m.instr, err = strconv.ParseUint(sub[1], 10, 64); err != nil {
		return measure{}, err
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m.res); err != nil || m.res.N != n {
		return measure{}, fmt.Errorf("%s -n %d: the program printed %q, want its result for n=%d (%v)", p.pkg, n, stdout.String(), n, err)
	}
	if err := settle(ctx, ch, q, want); err != nil {
		return measure{}, fmt.Errorf("%s -n %d: %w", p.pkg, n, err)
	}
	if r.cfg.verbose {
		fmt.Fprintf(os.Stderr, "%-18s -n %-5d -body %-7d %14d instructions %8d mallocs  %5.1f s\n",
			binName(p)+" "+strings.Join(p.args, " "), n, s.body, m.instr, m.res.Mallocs, took.Seconds())
	}
	r.memo[key] = m
	return m, nil
}

// fill publishes n messages of body bytes to queue q with confirms, 256 at
// a time, and checks that q holds n.
func fill(ctx context.Context, ch *amqp.Channel, q string, n, body int) error {
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("pre-fill: confirm.select: %w", err)
	}
	msg := amqp.Publishing{DeliveryMode: amqp.Transient, Body: instr.Body(body)}
	dcs := make([]*amqp.DeferredConfirmation, 0, 256)
	for sent := 0; sent < n; {
		dcs = dcs[:0]
		for ; sent < n && len(dcs) < cap(dcs); sent++ {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, msg)
			if err != nil {
				return fmt.Errorf("pre-fill: %w", err)
			}
			dcs = append(dcs, dc)
		}
		for _, dc := range dcs {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return fmt.Errorf("pre-fill: confirm: ack %t, %v", ok, err)
			}
		}
	}
	return settle(ctx, ch, q, n)
}

// settle polls queue q (passive declare) until it holds want messages and
// no consumer, for up to 10 s: messages published without confirms and a
// closed consumer's channel reach the queue's books asynchronously.
func settle(ctx context.Context, ch *amqp.Channel, q string, want int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("inspecting queue %s: %w", q, err)
		}
		if st.Messages == want && st.Consumers == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("queue %s holds %d messages and %d consumers, want %d and 0", q, st.Messages, st.Consumers, want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func median(ms []perMsg) perMsg {
	pick := func(f func(perMsg) float64) float64 {
		v := make([]float64, len(ms))
		for i, m := range ms {
			v[i] = f(m)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return perMsg{
		instr:  pick(func(m perMsg) float64 { return m.instr }),
		allocs: pick(func(m perMsg) float64 { return m.allocs }),
		bytes:  pick(func(m perMsg) float64 { return m.bytes }),
	}
}

func spread(ms []perMsg) float64 {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, m := range ms {
		lo, hi = min(lo, m.instr), max(hi, m.instr)
	}
	return 100 * (hi - lo) / median(ms).instr
}

func list(ms []perMsg) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = group(m.instr)
	}
	return strings.Join(s, ", ")
}

// group formats v rounded to an integer, with thousands separators.
func group(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// redact drops the password from a broker URL.
func redact(raw string) string {
	if u, err := amqp.ParseURI(raw); err == nil {
		return fmt.Sprintf("%s:%d", u.Host, u.Port)
	}
	return "(unparsable URL)"
}

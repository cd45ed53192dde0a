// Command warrenbench runs warren's benchmark scenarios and prints one
// Markdown report: the machine, the broker, and per scenario a table of
// medians over interleaved rounds with ratios against a baseline.
//
//	go run ./cmd/warrenbench                       # everything (make bench)
//	go run ./cmd/warrenbench -list                 # scenario names
//	go run ./cmd/warrenbench -scenario pool/uncontended -contenders warren -cpuprofile cpu.out
//	go run ./cmd/warrenbench -scenario confirms            # one family
//	go run ./cmd/warrenbench -scenario publish,consume     # two others
//
// Scenarios needing a broker find one with internal/brokertest: AMQP_URL,
// else the local default broker (guest/guest on 127.0.0.1:5672), else a
// private node started from the local rabbitmq-server installation, which is
// stopped again at exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warrenmq/warren/benchmarks/internal/bench"
	"github.com/warrenmq/warren/benchmarks/internal/confirmbench"
	"github.com/warrenmq/warren/benchmarks/internal/consumebench"
	"github.com/warrenmq/warren/benchmarks/internal/poolbench"
	"github.com/warrenmq/warren/benchmarks/internal/publishbench"
	"github.com/warrenmq/warren/benchmarks/internal/rpcbench"
	"github.com/warrenmq/warren/internal/brokertest"
)

// suiteDef is one scenario family. New families are added here.
type suiteDef struct {
	name  string
	cases []string // case names, for -list and -scenario
	build func(ctx context.Context, e *env, cases []string) (*bench.Suite, error)
}

var suites = []suiteDef{
	{
		name:  "pool",
		cases: []string{"pool/uncontended", "pool/contended-64", "pool/contended-1024", "pool/handoff-64"},
		build: func(ctx context.Context, e *env, cases []string) (*bench.Suite, error) {
			opts := poolbench.Options{
				Contenders: e.contenders,
				Duration:   e.duration,
				Hold:       e.hold,
				Work:       e.work,
			}
			if len(opts.Contenders) == 0 || slices.Contains(opts.Contenders, poolbench.Warren) {
				url, err := e.brokerURL(ctx)
				if err != nil {
					return nil, err
				}
				opts.BrokerURL = url
			}
			s, err := poolbench.NewSuite(ctx, opts)
			if err != nil {
				return nil, err
			}
			s.Cases = slices.DeleteFunc(s.Cases, func(c *bench.Case) bool { return !slices.Contains(cases, c.Name) })
			return s, nil
		},
	},
	{
		name:  "publish",
		cases: []string{"publish/no-confirm-1"},
		build: func(ctx context.Context, e *env, _ []string) (*bench.Suite, error) {
			url, err := e.brokerURL(ctx)
			if err != nil {
				return nil, err
			}
			return publishbench.NewSuite(ctx, publishbench.Options{
				BrokerURL:  url,
				Contenders: e.contenders,
				Duration:   e.duration,
			})
		},
	},
	{
		name:  "confirms",
		cases: []string{"confirms/wait-each-1", "confirms/window-256", "confirms/publisher-64"},
		build: func(ctx context.Context, e *env, cases []string) (*bench.Suite, error) {
			url, err := e.brokerURL(ctx)
			if err != nil {
				return nil, err
			}
			s, err := confirmbench.NewSuite(ctx, confirmbench.Options{
				BrokerURL:          url,
				Contenders:         e.contenders,
				Duration:           e.duration,
				CeilingConnections: e.ceilingConns,
				CeilingChannels:    e.ceilingChans,
			})
			if err != nil {
				return nil, err
			}
			s.Cases = slices.DeleteFunc(s.Cases, func(c *bench.Case) bool { return !slices.Contains(cases, c.Name) })
			return s, nil
		},
	},
	{
		name:  "rpc",
		cases: []string{"rpc/call-1", "rpc/call-32"},
		build: func(ctx context.Context, e *env, cases []string) (*bench.Suite, error) {
			url, err := e.brokerURL(ctx)
			if err != nil {
				return nil, err
			}
			s, err := rpcbench.NewSuite(ctx, rpcbench.Options{
				BrokerURL:  url,
				Contenders: e.contenders,
				Duration:   e.duration,
			})
			if err != nil {
				return nil, err
			}
			s.Cases = slices.DeleteFunc(s.Cases, func(c *bench.Case) bool { return !slices.Contains(cases, c.Name) })
			return s, nil
		},
	},
	{
		name:  "consume",
		cases: []string{"consume/prefetch-1", "consume/prefetch-50", "consume/prefetch-300"},
		build: func(ctx context.Context, e *env, cases []string) (*bench.Suite, error) {
			url, err := e.brokerURL(ctx)
			if err != nil {
				return nil, err
			}
			// Only the selected prefetch counts: every case pre-fills and
			// consumes a fixed number of messages, -duration does not apply.
			var prefetches []int
			for _, c := range cases {
				var p int
				if _, err := fmt.Sscanf(c, "consume/prefetch-%d", &p); err != nil {
					return nil, fmt.Errorf("case %s: %w", c, err)
				}
				prefetches = append(prefetches, p)
			}
			return consumebench.NewSuite(ctx, consumebench.Options{
				BrokerURL:  url,
				Contenders: e.contenders,
				Prefetches: prefetches,
			})
		},
	},
}

// env is what suites share: flags and the broker, found at most once.
type env struct {
	contenders []string
	duration   time.Duration
	hold, work time.Duration
	// ceilingConns × ceilingChans is the shape of the confirms ceiling
	// contender; zero takes confirmbench's default.
	ceilingConns, ceilingChans int

	broker    *brokertest.Broker
	brokerErr error
	rabbitmq  string // version the broker reports
}

func (e *env) brokerURL(ctx context.Context) (string, error) {
	if e.broker == nil && e.brokerErr == nil {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		e.broker, e.brokerErr = brokertest.Find(fctx, brokertest.Options{TryLocalDefault: true, Logf: log.Printf})
		if e.brokerErr == nil {
			e.rabbitmq = serverVersion(e.broker.URL)
		}
	}
	if e.brokerErr != nil {
		return "", e.brokerErr
	}
	return e.broker.URL, nil
}

// serverVersion asks the broker for its product and version.
func serverVersion(url string) string {
	conn, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{"connection_name": "warrenbench-version"}})
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer conn.Close()
	product, _ := conn.Properties["product"].(string)
	version, _ := conn.Properties["version"].(string)
	return strings.TrimSpace(product + " " + version)
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("warrenbench: ")
	if err := run(); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run() error {
	var (
		scenario   = flag.String("scenario", "all", "comma-separated scenarios: all, a family (pool) or a case (pool/uncontended)")
		list       = flag.Bool("list", false, "list scenarios and exit")
		rounds     = flag.Int("rounds", 7, "measured rounds; contenders are interleaved within each")
		procs      = flag.Int("procs", 2, "GOMAXPROCS for the run")
		duration   = flag.Duration("duration", 0, "length of each measured pass (default 500ms for pool, 1s for publish, confirms and rpc; consume passes a fixed message count instead)")
		contenders = flag.String("contenders", "", "comma-separated contenders (default: all of each family, e.g. warren,chanpool,puddle or raw,warren,go-rabbitmq)")
		hold       = flag.Duration("hold", 0, "pool/handoff: lease held off-CPU (default 4ms)")
		work       = flag.Duration("work", 0, "pool/handoff: CPU work after Release (default 1ms)")
		ceiling    = flag.String("ceiling", "", fmt.Sprintf("confirms/publisher-64: shape of the ceiling contender, CONNECTIONSxCHANNELS (default %dx%d)",
			confirmbench.DefaultCeilingConnections, confirmbench.DefaultCeilingChannels))
		warmup     = flag.Bool("warmup", true, "run one unrecorded round first")
		verbose    = flag.Bool("v", false, "also print every round's values")
		quiet      = flag.Bool("q", false, "no progress lines on stderr")
		cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of the measured rounds to this file")
		memprofile = flag.String("memprofile", "", "write an allocation profile to this file at exit")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *list {
		for _, s := range suites {
			fmt.Println(s.name)
			for _, c := range s.cases {
				fmt.Println("  " + c)
			}
		}
		return nil
	}
	selected, err := selectCases(*scenario)
	if err != nil {
		return err
	}
	runtime.GOMAXPROCS(*procs)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	e := &env{duration: *duration, hold: *hold, work: *work}
	if *ceiling != "" {
		if e.ceilingConns, e.ceilingChans, err = parseShape(*ceiling); err != nil {
			return fmt.Errorf("-ceiling: %w", err)
		}
	}
	if *contenders != "" {
		e.contenders = strings.Split(*contenders, ",")
	}
	defer func() {
		if e.broker != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := e.broker.Stop(sctx); err != nil {
				log.Printf("stopping the broker: %v", err)
			}
		}
	}()

	var built []*bench.Suite
	closeSuites := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var errs []error
		for _, s := range built {
			if s.Close != nil {
				if err := s.Close(cctx); err != nil {
					errs = append(errs, fmt.Errorf("closing %s: %w", s.Name, err))
				}
			}
		}
		built = nil
		return errors.Join(errs...)
	}
	defer func() {
		if err := closeSuites(); err != nil {
			log.Print(err)
		}
	}()
	for _, d := range suites {
		if len(selected[d.name]) == 0 {
			continue
		}
		s, err := d.build(ctx, e, selected[d.name])
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		built = append(built, s)
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	clock := bench.ClockCost()
	loadBefore := bench.LoadAvg()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	rep, err := bench.Run(ctx, built, bench.Options{Rounds: *rounds, Warmup: *warmup, Progress: progress})
	if err != nil {
		return err
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	loadAfter := bench.LoadAvg()
	if *memprofile != "" {
		f, err := os.Create(*memprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return err
		}
	}

	w := os.Stdout
	fmt.Fprintf(w, "# warrenbench\n\n")
	fmt.Fprintf(w, "- Command: `%s`\n", strings.Join(append([]string{"warrenbench"}, os.Args[1:]...), " "))
	warm := "after one warm-up round"
	if !*warmup {
		warm = "no warm-up"
	}
	fmt.Fprintf(w, "- Date: %s; %d measured rounds (%s) in %s\n",
		rep.Started.Format(time.RFC1123), rep.Rounds, warm, rep.Elapsed.Round(time.Second))
	bench.ThisMachine().Write(w)
	fmt.Fprintf(w, "- Noise: load average %s before, %s after; this process used %.0f%% of GOMAXPROCS×wall; one clock read (time.Since) %.0f ns\n",
		loadBefore, loadAfter, 100*cpu.Seconds()/(rep.Elapsed.Seconds()*float64(runtime.GOMAXPROCS(0))), float64(clock.Nanoseconds()))
	if e.broker != nil {
		fmt.Fprintf(w, "- Broker: %s, %s\n", e.broker, e.rabbitmq)
	}
	if tree := warrenTree(); tree != "" {
		fmt.Fprintf(w, "- warren: %s\n", tree)
	}
	fmt.Fprintf(w, "- Modules: amqp091-go %s, go-rabbitmq %s, puddle/v2 %s, x/sync %s\n\n",
		bench.ModuleVersion("github.com/rabbitmq/amqp091-go"), bench.ModuleVersion("github.com/wagslane/go-rabbitmq"),
		bench.ModuleVersion("github.com/jackc/puddle/v2"), bench.ModuleVersion("golang.org/x/sync"))
	rep.TargetsMarkdown(w)
	rep.CeilingMarkdown(w)
	rep.Markdown(w)
	if *verbose {
		fmt.Fprintf(w, "## every round\n\n```\n")
		rep.RoundsText(w)
		fmt.Fprintf(w, "```\n")
	}
	// A suite's Close also checks the run (warren's pool must not have
	// opened or discarded a channel while measuring): its error fails it.
	return closeSuites()
}

// selectCases resolves -scenario into case names per family.
func selectCases(spec string) (map[string][]string, error) {
	sel := map[string][]string{}
	for _, want := range strings.Split(spec, ",") {
		want = strings.TrimSpace(want)
		found := false
		for _, s := range suites {
			for _, c := range s.cases {
				if want == "all" || want == s.name || want == c || strings.TrimPrefix(c, s.name+"/") == want {
					if !slices.Contains(sel[s.name], c) {
						sel[s.name] = append(sel[s.name], c)
					}
					found = true
				}
			}
		}
		if !found {
			return nil, errors.New("unknown scenario " + want + " (see -list)")
		}
	}
	return sel, nil
}

// parseShape reads "4x4": connections, then channels per connection, each
// from 1 to 64.
func parseShape(s string) (conns, chans int, err error) {
	c, n, ok := strings.Cut(s, "x")
	if ok {
		conns, err = strconv.Atoi(c)
	}
	if ok && err == nil {
		chans, err = strconv.Atoi(n)
	}
	if !ok || err != nil || conns < 1 || conns > 64 || chans < 1 || chans > 64 {
		return 0, 0, fmt.Errorf("%q: want CONNECTIONSxCHANNELS, each 1 to 64, e.g. 4x4", s)
	}
	return conns, chans, nil
}

// warrenTree describes the warren checkout being measured (the benchmarks
// module replaces warren with ../): its commit and any uncommitted Go
// files, "" when git cannot tell.
func warrenTree() string {
	head, err := exec.Command("git", "-C", "..", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	desc := "commit " + strings.TrimSpace(string(head))
	st, err := exec.Command("git", "-C", "..", "status", "--porcelain", "--untracked-files=no", "--", "*.go").Output()
	if err != nil {
		return desc
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(st)), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			files = append(files, f[len(f)-1])
		}
	}
	if len(files) > 0 {
		desc += " plus uncommitted changes to " + strings.Join(files, ", ")
	}
	return desc
}

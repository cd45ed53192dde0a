// Package poolbench compares warren's channel Pool with jackc/puddle v2 and
// with warren's own concurrency core (internal/chanpool): Acquire+Release
// uncontended, under contention in a tight loop, and under the conditions
// of puddle's issue #46 (off-CPU hold, CPU work after Release), where a
// resource handed to a sleeping waiter can stay unused for as long as the
// releasing goroutine keeps its P.
package poolbench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/warrenmq/warren/benchmarks/internal/bench"
)

// Options configure the pool suite. Zero fields take the defaults noted.
type Options struct {
	// BrokerURL is the RabbitMQ the warren contender dials. Required when
	// the warren contender is selected.
	BrokerURL string
	// Contenders to run, in order (default Warren, Chanpool, Puddle).
	Contenders []string
	// Size of every pool (default 8).
	Size int
	// Duration of each measured pass (default 500 ms).
	Duration time.Duration
	// Goroutines of the tight contended cases (default 64 and 1024).
	Goroutines []int
	// Handoff case: goroutines (default 64), lease held off-CPU for Hold
	// (default 4 ms), CPU work after Release (default 1 ms), each run
	// lasting HandoffDuration (default 1.5 s).
	HandoffGoroutines int
	Hold, Work        time.Duration
	HandoffDuration   time.Duration
}

func (o *Options) defaults() {
	if len(o.Contenders) == 0 {
		o.Contenders = []string{Warren, Chanpool, Puddle}
	}
	if o.Size == 0 {
		o.Size = 8
	}
	if o.Duration == 0 {
		o.Duration = 500 * time.Millisecond
	}
	if o.Goroutines == nil {
		o.Goroutines = []int{64, 1024}
	}
	if o.HandoffGoroutines == 0 {
		o.HandoffGoroutines = 64
	}
	if o.Hold == 0 {
		o.Hold = 4 * time.Millisecond
	}
	if o.Work == 0 {
		o.Work = time.Millisecond
	}
	if o.HandoffDuration == 0 {
		o.HandoffDuration = 1500 * time.Millisecond
	}
}

var (
	mNsOp     = bench.Metric{Key: "ns_op", Title: "ns/op", Unit: bench.Nanos}
	mAllocs   = bench.Metric{Key: "allocs_op", Title: "allocs/op", Unit: bench.Count}
	mBytes    = bench.Metric{Key: "bytes_op", Title: "B/op", Unit: bench.Count}
	mOps      = bench.Metric{Key: "ops_s", Title: "acq+rel/s", Unit: bench.Rate, Higher: true}
	mAcqP50   = bench.Metric{Key: "acq_p50", Title: "Acquire p50", Unit: bench.Nanos}
	mAcqP99   = bench.Metric{Key: "acq_p99", Title: "Acquire p99", Unit: bench.Nanos}
	mAcqMax   = bench.Metric{Key: "acq_max", Title: "Acquire max", Unit: bench.Nanos}
	mHandP50  = bench.Metric{Key: "hand_p50", Title: "hand-off p50", Unit: bench.Nanos}
	mHandP99  = bench.Metric{Key: "hand_p99", Title: "hand-off p99", Unit: bench.Nanos}
	mHandMax  = bench.Metric{Key: "hand_max", Title: "hand-off max", Unit: bench.Nanos}
	mStalls   = bench.Metric{Key: "hand_stalls", Title: "hand-offs ≥100µs", Unit: bench.Percent}
	contended = []bench.Metric{mOps, mNsOp, mAllocs, mAcqP50, mAcqP99, mAcqMax, mHandP50, mHandP99, mHandMax, mStalls}
)

// NewSuite sets up every selected contender (dialling the broker for
// warren) and returns the suite. Call its Close when done.
func NewSuite(ctx context.Context, opts Options) (*bench.Suite, error) {
	opts.defaults()
	pools := map[string]contender{}
	closeAll := func(ctx context.Context) error {
		var errs []error
		for name, c := range pools {
			if err := c.close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
		return errors.Join(errs...)
	}
	for _, name := range opts.Contenders {
		var (
			c   contender
			err error
		)
		switch name {
		case Warren:
			if opts.BrokerURL == "" {
				err = errors.New("no broker URL")
				break
			}
			c, err = newWarren(ctx, opts.BrokerURL, opts.Size)
		case Chanpool:
			c, err = newCore(ctx, opts.Size)
		case Puddle:
			c, err = newPuddle(ctx, opts.Size)
		default:
			err = fmt.Errorf("unknown contender (have %s, %s and %s)", Warren, Chanpool, Puddle)
		}
		if err != nil {
			_ = closeAll(ctx)
			return nil, fmt.Errorf("pool contender %s: %w", name, err)
		}
		pools[name] = c
	}
	baseline := Puddle
	if !slices.Contains(opts.Contenders, baseline) {
		baseline = opts.Contenders[len(opts.Contenders)-1]
	}
	s := &bench.Suite{
		Name: "pool",
		Doc: fmt.Sprintf("Acquire+Release on a pool of %d. warren: warren.Pool leasing real channels of one Client "+
			"(opened once before the run; the broker is not on the measured path). chanpool: warren's internal/chanpool "+
			"core alone, trivial resources. puddle: github.com/jackc/puddle/v2 %s, trivial resources. "+
			"Acquire latency and hand-off are measured in a separate timed pass (three clock reads and an atomic store per operation); "+
			"throughput, ns/op and allocs/op come from an untimed pass. A hand-off is an Acquire that began before "+
			"the resource it got was released; its time runs from that Release to the waiter returning with the "+
			"resource, while the resource is free and unused.",
			opts.Size, bench.ModuleVersion("github.com/jackc/puddle/v2")),
		Contenders: opts.Contenders,
		Baseline:   baseline,
		Close:      closeAll,
	}
	s.Cases = append(s.Cases, &bench.Case{
		Name:    "pool/uncontended",
		Doc:     fmt.Sprintf("One goroutine, pool of %d: Acquire then Release in a loop.", opts.Size),
		Metrics: []bench.Metric{mNsOp, mAllocs, mBytes},
		Run: func(ctx context.Context, who string) (bench.Result, error) {
			return serialTrial(pools[who], opts.Duration)
		},
	})
	for _, g := range opts.Goroutines {
		s.Cases = append(s.Cases, &bench.Case{
			Name: fmt.Sprintf("pool/contended-%d", g),
			Doc: fmt.Sprintf("%d goroutines, pool of %d, Acquire then Release in a tight loop (no hold, no work); "+
				"ns/op is wall time per operation (1/throughput).", g, opts.Size),
			Metrics: contended,
			Run: func(ctx context.Context, who string) (bench.Result, error) {
				spec := parallelSpec{goroutines: g, d: opts.Duration}
				r, err := parallelTrial(pools[who], spec)
				if err != nil {
					return nil, err
				}
				spec.timed = true
				lat, err := parallelTrial(pools[who], spec)
				if err != nil {
					return nil, err
				}
				for k, v := range lat {
					if _, ok := r[k]; !ok {
						r[k] = v
					}
				}
				return r, nil
			},
		})
	}
	if opts.HandoffGoroutines > 0 {
		g := opts.HandoffGoroutines
		s.Cases = append(s.Cases, &bench.Case{
			Name: fmt.Sprintf("pool/handoff-%d", g),
			Doc: fmt.Sprintf("puddle issue #46's conditions: %d goroutines, pool of %d, each lease held %v off-CPU "+
				"(time.Sleep, like waiting for the broker), then %v of CPU work after Release. Ceiling: %d/%v = %.0f/s "+
				"pool-bound, GOMAXPROCS %d / %v = %.0f/s CPU-bound. One timed pass.",
				g, opts.Size, opts.Hold, opts.Work, opts.Size, opts.Hold, float64(opts.Size)/opts.Hold.Seconds(),
				runtime.GOMAXPROCS(0), opts.Work, float64(runtime.GOMAXPROCS(0))/opts.Work.Seconds()),
			Metrics: contended,
			Run: func(ctx context.Context, who string) (bench.Result, error) {
				return parallelTrial(pools[who], parallelSpec{
					goroutines: g, d: opts.HandoffDuration, timed: true, hold: opts.Hold, work: opts.Work,
				})
			},
		})
	}
	if slices.Contains(opts.Contenders, Warren) && slices.Contains(opts.Contenders, Puddle) {
		s.Targets = targets
	}
	return s, nil
}

// targets checks the goals of the pool issue.
func targets(r *bench.Report) []bench.Target {
	var ts []bench.Target
	fmtN := func(v float64) string { return bench.Format(bench.Nanos, v) }
	for _, s := range r.Suites {
		if s.Name != "pool" {
			continue
		}
		for _, c := range s.Cases {
			switch {
			case c.Name == "pool/uncontended":
				ns := r.Median(c.Name, Warren, "ns_op")
				ts = append(ts, bench.Target{
					Goal: "uncontended Acquire+Release ≤ 60 ns",
					Got:  fmt.Sprintf("warren %s (puddle %s)", fmtN(ns), fmtN(r.Median(c.Name, Puddle, "ns_op"))),
					Met:  ns <= 60,
				})
				a := r.Median(c.Name, Warren, "allocs_op")
				ts = append(ts, bench.Target{
					Goal: "uncontended: 0 allocations per Acquire+Release",
					Got:  fmt.Sprintf("warren %s allocs/op", bench.Format(bench.Count, a)),
					Met:  a < 0.005, // rounds to 0.00
				})
			default:
				ratio := r.Ratio(c.Name, Warren, Puddle, "ops_s")
				ts = append(ts, bench.Target{
					Goal: c.Name + ": throughput ≥ puddle's",
					Got: fmt.Sprintf("warren/puddle %.2f× (%s vs %s)", ratio,
						bench.Format(bench.Rate, r.Median(c.Name, Warren, "ops_s")),
						bench.Format(bench.Rate, r.Median(c.Name, Puddle, "ops_s"))),
					Met: ratio >= 1,
				})
				p50 := r.Median(c.Name, Warren, "hand_p50")
				ts = append(ts, bench.Target{
					Goal: c.Name + ": no ~1 ms hand-off stall per contended Acquire (hand-off p50 < 100 µs)",
					Got: fmt.Sprintf("warren p50 %s, p99 %s, %s ≥100µs; puddle p50 %s, p99 %s, %s ≥100µs",
						fmtN(p50), fmtN(r.Median(c.Name, Warren, "hand_p99")),
						bench.Format(bench.Percent, r.Median(c.Name, Warren, "hand_stalls")),
						fmtN(r.Median(c.Name, Puddle, "hand_p50")), fmtN(r.Median(c.Name, Puddle, "hand_p99")),
						bench.Format(bench.Percent, r.Median(c.Name, Puddle, "hand_stalls"))),
					Met: !math.IsNaN(p50) && p50 < float64(StallThreshold),
				})
			}
		}
	}
	return ts
}
